package guestexec

import (
	"regexp"
	"strings"

	"snaplab/sim/dm"
)

// The kernel log lines a scenario can check, and their normal form (the
// form the simulator logs them in, sim/dm's BlockErrorLine and
// BufferWriteErrorLine):
//
//   - device-mapper's lines, as they are;
//   - the block layer's line for a failed request
//     (blk_print_req_error: "I/O error, dev vdb, sector 16 op
//     0x1:(WRITE) flags 0x8800 phys_seg 1 prio class 2") without the
//     request's flags, phys_seg and prio class, which depend on how the
//     guest built the request: "I/O error, dev cow, sector 16 op
//     0x1:(WRITE)";
//   - the page cache's "Buffer I/O error on dev dm-0, logical block 2,
//     lost async page write" (and "async page read").
//
// Device names become the scenario's: a virtio disk (vdX) the name of the
// disk (its serial), a dm device (dm-N) the name of the device with minor
// N. A name the executor cannot map stays as the kernel wrote it. A device
// name read from freed memory ("device <garbage> not in table devices
// list", which 6.12 logs) becomes dm.FreedDeviceName.
var (
	freedRE    = regexp.MustCompile(`^(device-mapper: table: \S+: device )(.*)( not in table devices list)$`)
	devNumRE   = regexp.MustCompile(`^[0-9]+:[0-9]+$`)
	reqErrorRE = regexp.MustCompile(`^(.+ error), dev (\S+), sector (\d+) op (0x[0-9a-f]+:\(\w+\)) flags .*$`)
	bufErrorRE = regexp.MustCompile(`^Buffer I/O error on dev (\S+), (.*)$`)
)

// normalizeKmsg returns the normal form of a kernel log message and
// whether a scenario can check it. name maps a kernel device name (vdb,
// dm-0) to the scenario's.
func normalizeKmsg(msg string, name func(kdev string) string) (string, bool) {
	switch {
	case strings.HasPrefix(msg, dm.LogPrefix):
		// 6.12 names a freed device here, garbage bytes that differ
		// from run to run (dm.FreedDeviceName).
		if m := freedRE.FindStringSubmatch(msg); m != nil && !devNumRE.MatchString(m[2]) {
			return m[1] + dm.FreedDeviceName + m[3], true
		}
		return msg, true
	case strings.HasPrefix(msg, dm.BufferErrorPrefix):
		m := bufErrorRE.FindStringSubmatch(msg)
		if m == nil {
			return msg, true
		}
		return dm.BufferErrorPrefix + name(m[1]) + ", " + m[2], true
	}
	if m := reqErrorRE.FindStringSubmatch(msg); m != nil {
		return m[1] + ", dev " + name(m[2]) + ", sector " + m[3] + " op " + m[4], true
	}
	return "", false
}
