package guestexec

import "testing"

func TestNormalizeKmsg(t *testing.T) {
	names := map[string]string{"vdb": "cow", "vda": "origin", "dm-0": "snap"}
	name := func(k string) string {
		if n, ok := names[k]; ok {
			return n
		}
		return k
	}
	for _, tc := range []struct {
		in, want string
		keep     bool
	}{
		{"device-mapper: snapshots: Invalidating snapshot: Error reading/writing.", "device-mapper: snapshots: Invalidating snapshot: Error reading/writing.", true},
		{"I/O error, dev vdb, sector 16 op 0x1:(WRITE) flags 0x8800 phys_seg 1 prio class 2", "I/O error, dev cow, sector 16 op 0x1:(WRITE)", true},
		{"I/O error, dev vda, sector 8000 op 0x0:(READ) flags 0x80700 phys_seg 1 prio class 2", "I/O error, dev origin, sector 8000 op 0x0:(READ)", true},
		{"critical medium error, dev vdc, sector 0 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 0", "critical medium error, dev vdc, sector 0 op 0x0:(READ)", true},
		{"Buffer I/O error on dev dm-0, logical block 2, lost async page write", "Buffer I/O error on dev snap, logical block 2, lost async page write", true},
		{"Buffer I/O error on dev vdb, logical block 1000, async page read", "Buffer I/O error on dev cow, logical block 1000, async page read", true},
		// 6.12 names a freed device: garbage that differs from run to run.
		{"device-mapper: table: 253:0: device g\xef\xbf\xbd0 not in table devices list", "device-mapper: table: 253:0: device (freed) not in table devices list", true},
		{"device-mapper: table: 253:0: device \x01\x02 not in table devices list", "device-mapper: table: 253:0: device (freed) not in table devices list", true},
		{"device-mapper: table: 253:0: device 254:16 not in table devices list", "device-mapper: table: 253:0: device 254:16 not in table devices list", true},
		{"virtio_blk virtio3: [vdb] 32768 512-byte logical blocks (16.8 MB/16.0 MiB)", "", false},
		{" vdb: unknown partition table", "", false},
	} {
		got, keep := normalizeKmsg(tc.in, name)
		if got != tc.want || keep != tc.keep {
			t.Errorf("normalizeKmsg(%q) = %q, %v; want %q, %v", tc.in, got, keep, tc.want, tc.keep)
		}
	}
}
