package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const diskSize = 8 << 20

func stdExports(t testing.TB) (*memDev, []Export) {
	d := newMemDev("disk0", diskSize)
	return d, []Export{
		{Name: "disk", Description: "a test disk", Dev: d, PreferredBlock: 65536},
		{Name: "ro", Description: "read-only", Dev: d, ReadOnly: true},
	}
}

func TestHandshakeRejectsBadClients(t *testing.T) {
	_, ex := stdExports(t)
	s := startServer(t, ex)
	for _, tc := range []struct {
		name  string
		flags uint32
	}{
		{"non-fixed newstyle", 0},
		{"only no-zeroes", flagCNoZeroes},
		{"unknown flag bits", flagCFixedNewstyle | 1<<7},
		{"oldstyle-looking garbage", 0x00420281},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, s.addr)
			c.greet(tc.flags)
			c.closed()
		})
	}
	t.Run("bad option magic", func(t *testing.T) {
		c := dialRaw(t, s.addr)
		c.greet(flagCFixedNewstyle)
		c.write(make([]byte, 16))
		c.closed()
	})
	t.Run("export name unknown", func(t *testing.T) {
		c := dialRaw(t, s.addr)
		c.greet(flagCFixedNewstyle)
		c.sendOpt(optExportName, []byte("nosuch"))
		c.closed()
	})
	t.Run("abort", func(t *testing.T) {
		c := dialRaw(t, s.addr)
		c.greet(flagCFixedNewstyle)
		c.sendOpt(optAbort, nil)
		if r := c.readOptReply(); r.typ != repAck || r.opt != optAbort {
			t.Fatalf("ABORT reply %+v", r)
		}
		c.closed()
	})
}

func TestOptions(t *testing.T) {
	_, ex := stdExports(t)
	s := startServer(t, ex)
	c := dialRaw(t, s.addr)
	c.greet(flagCFixedNewstyle)

	type step struct {
		name string
		opt  uint32
		data []byte
		want []uint32 // reply types in order
	}
	steps := []step{
		{"unknown option", 99, []byte("xyz"), []uint32{repErrUnsup}},
		{"starttls without TLS configured", optStartTLS, nil, []uint32{repErrPolicy}},
		{"list", optList, nil, []uint32{repServer, repServer, repAck}},
		{"list with data", optList, []byte{1}, []uint32{repErrInvalid}},
		{"info unknown export", optInfo, infoData("nosuch"), []uint32{repErrUnknown}},
		{"info truncated", optInfo, []byte{0, 0, 0, 9, 'a'}, []uint32{repErrInvalid}},
		{"info", optInfo, infoData("disk", infoName, infoDescription, infoBlockSize),
			[]uint32{repInfo, repInfo, repInfo, repInfo, repAck}},
		{"meta before structured", optSetMetaContext, metaData("disk", metaAllocation), []uint32{repErrInvalid}},
		{"structured with data", optStructuredReply, []byte{0}, []uint32{repErrInvalid}},
		{"structured", optStructuredReply, nil, []uint32{repAck}},
		{"structured again", optStructuredReply, nil, []uint32{repErrInvalid}},
		{"list meta all", optListMetaContext, metaData("disk"), []uint32{repMetaContext, repAck}},
		{"list meta base:", optListMetaContext, metaData("disk", "base:"), []uint32{repMetaContext, repAck}},
		{"list meta other namespace", optListMetaContext, metaData("disk", "qemu:dirty-bitmap:x"), []uint32{repAck}},
		{"set meta unknown export", optSetMetaContext, metaData("nosuch", metaAllocation), []uint32{repErrUnknown}},
		{"set meta garbage", optSetMetaContext, []byte{0, 0, 0, 4, 'd', 'i', 's', 'k', 0, 0, 0, 1}, []uint32{repErrInvalid}},
		{"set meta", optSetMetaContext, metaData("disk", metaAllocation, "x-foo:bar"), []uint32{repMetaContext, repAck}},
		{"oversized option", 98, make([]byte, maxOptionLen+1), []uint32{repErrTooBig}},
	}
	var info, list []optReply
	for _, st := range steps {
		c.sendOpt(st.opt, st.data)
		rs := c.readUntilAck()
		var got []uint32
		for _, r := range rs {
			got = append(got, r.typ)
			if r.opt != st.opt {
				t.Errorf("%s: reply for option %d, want %d", st.name, r.opt, st.opt)
			}
		}
		if !slices.Equal(got, st.want) {
			t.Errorf("%s: reply types %x, want %x", st.name, got, st.want)
		}
		switch st.name {
		case "info":
			info = rs
		case "list":
			list = rs
		case "set meta":
			if id := binary.BigEndian.Uint32(rs[0].data); id != metaAllocationID || string(rs[0].data[4:]) != metaAllocation {
				t.Errorf("set meta: context %d %q", id, rs[0].data[4:])
			}
		case "unknown option", "info unknown export":
			if len(rs[0].data) == 0 {
				t.Errorf("%s: error reply carries no message", st.name)
			}
		}
	}
	// LIST: name length, name, description.
	var names []string
	for _, r := range list[:len(list)-1] {
		nl := binary.BigEndian.Uint32(r.data)
		names = append(names, string(r.data[4:4+nl])+"|"+string(r.data[4+nl:]))
	}
	if want := []string{"disk|a test disk", "ro|read-only"}; !slices.Equal(names, want) {
		t.Errorf("LIST: %q, want %q", names, want)
	}
	// INFO items.
	got := map[uint16][]byte{}
	for _, r := range info[:len(info)-1] {
		got[binary.BigEndian.Uint16(r.data)] = r.data[2:]
	}
	if sz := binary.BigEndian.Uint64(got[infoExport]); sz != diskSize {
		t.Errorf("INFO size %d", sz)
	}
	wantFlags := uint16(flagHasFlags | flagSendFlush | flagSendFUA | flagSendTrim | flagSendWriteZeroes | flagCanMultiConn)
	if f := binary.BigEndian.Uint16(got[infoExport][8:]); f != wantFlags {
		t.Errorf("INFO flags 0x%x, want 0x%x (before structured replies: no DF)", f, wantFlags)
	}
	if string(got[infoName]) != "disk" || string(got[infoDescription]) != "a test disk" {
		t.Errorf("INFO name %q description %q", got[infoName], got[infoDescription])
	}
	bs := got[infoBlockSize]
	if mn, pr, mx := binary.BigEndian.Uint32(bs), binary.BigEndian.Uint32(bs[4:]), binary.BigEndian.Uint32(bs[8:]); mn != 512 || pr != 65536 || mx != 32<<20 {
		t.Errorf("block sizes %d/%d/%d", mn, pr, mx)
	}
	// GO still works after all that, and the session has the meta context.
	c.sendOpt(optGo, infoData("disk"))
	rs := c.readUntilAck()
	if f := binary.BigEndian.Uint16(rs[0].data[10:]); f&flagSendDF == 0 {
		t.Errorf("GO after structured replies: flags 0x%x lack SEND_DF", f)
	}
	c.send(FlagReqOne, CmdBlockStatus, 7, 0, 4096, nil)
	if ch := c.readChunk(); ch.typ != chunkBlockStatus || ch.handle != 7 {
		t.Errorf("BLOCK_STATUS reply %+v", ch)
	}
}

func TestExportName(t *testing.T) {
	_, ex := stdExports(t)
	s := startServer(t, ex)
	for _, noZeroes := range []bool{false, true} {
		t.Run(fmt.Sprint("no-zeroes=", noZeroes), func(t *testing.T) {
			c := dialRaw(t, s.addr)
			f := uint32(flagCFixedNewstyle)
			if noZeroes {
				f |= flagCNoZeroes
			}
			c.greet(f)
			c.sendOpt(optExportName, []byte("ro"))
			b := c.read(10)
			if sz := binary.BigEndian.Uint64(b); sz != diskSize {
				t.Errorf("size %d", sz)
			}
			if fl := binary.BigEndian.Uint16(b[8:]); fl != flagHasFlags|flagReadOnly|flagSendFlush|flagCanMultiConn {
				t.Errorf("flags 0x%x", fl)
			}
			if !noZeroes && !bytes.Equal(c.read(124), make([]byte, 124)) {
				t.Error("padding is not zero")
			}
			// No block sizes negotiated: unaligned reads are fine.
			c.send(0, CmdRead, 1, 3, 5, nil)
			if errno, h := c.readSimple(); errno != 0 || h != 1 {
				t.Fatalf("unaligned read: errno %d handle %d", errno, h)
			}
			c.read(5)
		})
	}
}

func TestDefaultExport(t *testing.T) {
	_, ex := stdExports(t)
	s := startServer(t, ex, WithDefaultExport("disk"))
	c := dialRaw(t, s.addr)
	if sz, _ := c.open("", goOpts{}); sz != diskSize {
		t.Fatalf("default export size %d", sz)
	}
}

func TestRequestValidation(t *testing.T) {
	d, ex := stdExports(t)
	s := startServer(t, ex)
	type tc struct {
		name    string
		export  string
		o       goOpts
		flags   uint16
		cmd     Command
		off     uint64
		length  uint32
		payload int // bytes of payload actually sent
		want    syscall.Errno
	}
	bs := goOpts{blockSize: true}
	cases := []tc{
		{"read ok", "disk", bs, 0, CmdRead, 4096, 4096, 0, 0},
		{"unknown command", "disk", bs, 0, 42, 0, 512, 0, syscall.EINVAL},
		{"cache not offered", "disk", bs, 0, CmdCache, 0, 512, 0, syscall.EINVAL},
		{"unknown flag", "disk", bs, 1 << 9, CmdRead, 0, 512, 0, syscall.EINVAL},
		{"no-hole on write", "disk", bs, FlagNoHole, CmdWrite, 0, 512, 512, syscall.EINVAL},
		{"fast-zero not offered", "disk", bs, FlagFastZero, CmdWriteZeroes, 0, 512, 0, syscall.EINVAL},
		{"df without structured", "disk", bs, FlagDF, CmdRead, 0, 512, 0, syscall.EINVAL},
		{"req-one on read", "disk", bs, FlagReqOne, CmdRead, 0, 512, 0, syscall.EINVAL},
		{"read past end", "disk", bs, 0, CmdRead, diskSize - 512, 1024, 0, syscall.EINVAL},
		{"read offset past end", "disk", bs, 0, CmdRead, 1 << 62, 512, 0, syscall.EINVAL},
		{"read wraps", "disk", bs, 0, CmdRead, ^uint64(0) - 511, 1024, 0, syscall.EINVAL},
		{"write past end", "disk", bs, 0, CmdWrite, diskSize, 512, 512, syscall.ENOSPC},
		{"write-zeroes past end", "disk", bs, 0, CmdWriteZeroes, diskSize - 512, 1024, 0, syscall.ENOSPC},
		{"trim past end", "disk", bs, 0, CmdTrim, diskSize - 512, 1024, 0, syscall.EINVAL},
		{"misaligned read offset", "disk", bs, 0, CmdRead, 100, 512, 0, syscall.EINVAL},
		{"misaligned write length", "disk", bs, 0, CmdWrite, 0, 100, 100, syscall.EINVAL},
		{"misaligned trim", "disk", bs, 0, CmdTrim, 512, 1000, 0, syscall.EINVAL},
		{"oversized read", "disk", bs, 0, CmdRead, 0, MaxPayload + 512, 0, syscall.EINVAL},
		{"oversized write", "disk", bs, 0, CmdWrite, 0, MaxPayload + 512, MaxPayload + 512, syscall.EINVAL},
		{"zero-length read", "disk", bs, 0, CmdRead, 0, 0, 0, syscall.EINVAL},
		{"flush with range", "disk", bs, 0, CmdFlush, 512, 0, 0, syscall.EINVAL},
		{"flush", "disk", bs, FlagFUA, CmdFlush, 0, 0, 0, 0},
		{"block status without meta", "disk", bs, 0, CmdBlockStatus, 0, 512, 0, syscall.EINVAL},
		{"write to read-only", "ro", bs, 0, CmdWrite, 0, 512, 512, syscall.EPERM},
		{"trim on read-only", "ro", bs, 0, CmdTrim, 0, 512, 0, syscall.EPERM},
		{"write-zeroes on read-only", "ro", bs, 0, CmdWriteZeroes, 0, 512, 0, syscall.EPERM},
		{"fua on read-only", "ro", bs, FlagFUA, CmdRead, 0, 512, 0, syscall.EINVAL},
		{"read on read-only", "ro", bs, 0, CmdRead, 0, 512, 0, 0},
		// Served by read-modify-write of sector 8 (the check below is about offset 0).
		{"misaligned without block sizes", "disk", goOpts{}, 0, CmdWrite, 4096 + 7, 9, 9, 0},
	}
	for _, sr := range []bool{false, true} {
		for _, c := range cases {
			t.Run(fmt.Sprintf("%s/structured=%v", c.name, sr), func(t *testing.T) {
				rc := dialRaw(t, s.addr)
				o := c.o
				o.sr = sr
				if sr && c.name == "df without structured" {
					t.Skip("DF is valid with structured replies")
				}
				rc.open(c.export, o)
				rc.send(c.flags, c.cmd, 0xabc, c.off, c.length, make([]byte, c.payload))
				n := 0
				if c.cmd == CmdRead {
					n = int(c.length)
				}
				var errno uint32
				var h uint64
				if !sr && c.cmd == CmdRead && c.want == 0 {
					errno, h = rc.readSimple()
					rc.read(n)
				} else {
					var chunks []chunk
					errno, h, _, chunks = rc.readReply(c.off, min(n, 1<<20))
					if sr && c.want != 0 && (len(chunks) != 1 || chunks[0].typ != chunkError || len(chunks[0].payload) <= 6) {
						t.Errorf("structured error reply: %+v, want one ERROR chunk with a message", chunks)
					}
				}
				if syscall.Errno(errno) != c.want || h != 0xabc {
					t.Errorf("errno %d (%v) handle %#x, want %d (%v)", errno, syscall.Errno(errno), h, c.want, c.want)
				}
				// The connection is still in sync.
				rc.send(0, CmdFlush, 0xdef, 0, 0, nil)
				if errno, h, _, _ := rc.readReply(0, 0); errno != 0 || h != 0xdef {
					t.Errorf("follow-up flush: errno %d handle %#x", errno, h)
				}
			})
		}
	}
	if ops := d.opLog(); slices.ContainsFunc(ops, func(s string) bool { return strings.HasPrefix(s, "write 0 ") }) {
		t.Errorf("a refused write reached the device: %q", ops)
	}
}

func TestReadWriteAndStructuredReads(t *testing.T) {
	d, ex := stdExports(t)
	s := startServer(t, ex)
	rc := dialRaw(t, s.addr)
	rc.open("disk", goOpts{sr: true, meta: true, blockSize: true})
	data := bytes.Repeat([]byte("snaplab!"), 512) // 4 KiB
	rc.send(FlagFUA, CmdWrite, 1, 8192, 4096, data)
	if errno, _, _, _ := rc.readReply(0, 0); errno != 0 {
		t.Fatalf("write: errno %d", errno)
	}
	if ops := d.opLog(); !slices.Contains(ops, "fua 8192 4096") {
		t.Errorf("FUA write did not reach the device as FUA: %q", ops)
	}
	// [0,8K) hole, [8K,12K) data, [12K,16K) hole.
	rc.send(0, CmdRead, 2, 0, 16384, nil)
	errno, _, got, chunks := rc.readReply(0, 16384)
	if errno != 0 || !bytes.Equal(got[8192:12288], data) || !bytes.Equal(got[:8192], make([]byte, 8192)) {
		t.Fatalf("structured read: errno %d, data mismatch", errno)
	}
	var types []uint16
	for _, ch := range chunks {
		types = append(types, ch.typ)
	}
	if want := []uint16{chunkOffsetHole, chunkOffsetData, chunkOffsetHole}; !slices.Equal(types, want) {
		t.Errorf("chunk types %v, want %v", types, want)
	}
	// DF: one data chunk.
	rc.send(FlagDF, CmdRead, 3, 0, 16384, nil)
	_, _, got2, chunks := rc.readReply(0, 16384)
	if len(chunks) != 1 || chunks[0].typ != chunkOffsetData || !bytes.Equal(got, got2) {
		t.Errorf("DF read: %d chunks", len(chunks))
	}
	// Block status.
	rc.send(0, CmdBlockStatus, 4, 0, 16384, nil)
	ch := rc.readChunk()
	var desc [][2]uint32
	for p := ch.payload[4:]; len(p) >= 8; p = p[8:] {
		desc = append(desc, [2]uint32{binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])})
	}
	if want := [][2]uint32{{8192, 3}, {4096, 0}, {4096, 3}}; ch.typ != chunkBlockStatus || ch.flags != replyFlagDone ||
		binary.BigEndian.Uint32(ch.payload) != metaAllocationID || !slices.Equal(desc, want) {
		t.Errorf("block status chunk %+v descriptors %v, want %v", ch, desc, want)
	}
	// Trim makes it a hole again; write-zeroes with NO_HOLE writes data.
	rc.send(0, CmdTrim, 5, 8192, 4096, nil) // disjoint ranges: order does not matter
	rc.send(FlagNoHole|FlagFUA, CmdWriteZeroes, 6, 0, 4096, nil)
	rc.send(0, CmdWriteZeroes, 7, 4096, 4096, nil)
	for range 3 {
		if errno, _, _, _ := rc.readReply(0, 0); errno != 0 {
			t.Fatalf("trim/zero errno %d", errno)
		}
	}
	rc.send(0, CmdBlockStatus, 8, 0, 16384, nil)
	ch = rc.readChunk()
	if st0, l0 := binary.BigEndian.Uint32(ch.payload[8:]), binary.BigEndian.Uint32(ch.payload[4:]); l0 != 4096 || st0 != 0 {
		t.Errorf("after NO_HOLE zero: first extent %d status %d, want 4096 data", l0, st0)
	}
	if st1 := binary.BigEndian.Uint32(ch.payload[16:]); st1 != 3 {
		t.Errorf("after trim: second extent status %d, want hole|zero", st1)
	}
}

func TestNoMapperNoDiscarder(t *testing.T) {
	d := newMemDev("plain", 1<<20)
	s := startServer(t, []Export{{Name: "p", Dev: plainDev{d}}})
	rc := dialRaw(t, s.addr)
	rc.open("p", goOpts{sr: true, meta: true})
	rc.send(0, CmdBlockStatus, 1, 0, 1<<20, nil)
	ch := rc.readChunk()
	if len(ch.payload) != 12 || binary.BigEndian.Uint32(ch.payload[4:]) != 1<<20 || binary.BigEndian.Uint32(ch.payload[8:]) != 0 {
		t.Errorf("block status without a Mapper: % x, want one data extent", ch.payload)
	}
	// One at a time: the server may reorder concurrent requests.
	for _, c := range []struct {
		cmd    Command
		length uint32
		data   []byte
	}{
		{CmdWrite, 512, bytes.Repeat([]byte{7}, 512)},
		{CmdTrim, 512, nil},        // no Discarder: no-op success
		{CmdWriteZeroes, 256, nil}, // writes zeros
	} {
		rc.send(0, c.cmd, 2, 0, c.length, c.data)
		if errno, _, _, _ := rc.readReply(0, 0); errno != 0 {
			t.Fatalf("%v: errno %d", c.cmd, errno)
		}
	}
	rc.send(0, CmdRead, 5, 0, 512, nil)
	_, _, got, chunks := rc.readReply(0, 512)
	if want := append(make([]byte, 256), bytes.Repeat([]byte{7}, 256)...); !bytes.Equal(got, want) || len(chunks) != 1 {
		t.Errorf("read after zero: %d chunks, data % x...", len(chunks), got[250:260])
	}
}

func TestDeviceErrorMapping(t *testing.T) {
	const bad = 1 << 20
	var exports []Export
	errnos := []syscall.Errno{syscall.EIO, syscall.ENOSPC, syscall.EPERM, syscall.EINVAL, syscall.EROFS, syscall.EBUSY}
	for _, e := range errnos {
		exports = append(exports, Export{Name: errName(e), Dev: &failDev{memDev: newMemDev("f", 4<<20), badOff: bad, badLen: 4096, errno: e}})
	}
	exports = append(exports, Export{Name: "flushfail", Dev: &failDev{memDev: newMemDev("f", 4<<20), errno: syscall.EIO, flushFails: true}})
	s := startServer(t, exports)
	want := map[syscall.Errno]syscall.Errno{syscall.EIO: syscall.EIO, syscall.ENOSPC: syscall.ENOSPC, syscall.EPERM: syscall.EPERM,
		syscall.EINVAL: syscall.EINVAL, syscall.EROFS: syscall.EPERM, syscall.EBUSY: syscall.EIO}
	for _, e := range errnos {
		for _, sr := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/structured=%v", errName(e), sr), func(t *testing.T) {
				rc := dialRaw(t, s.addr)
				rc.open(errName(e), goOpts{sr: sr, meta: sr, blockSize: true})
				reqs := []struct {
					cmd     Command
					flags   uint16
					payload int
				}{{CmdRead, 0, 0}, {CmdWrite, 0, 4096}, {CmdWrite, FlagFUA, 4096}, {CmdTrim, 0, 0}, {CmdWriteZeroes, 0, 0}, {CmdWriteZeroes, FlagNoHole, 0}}
				if sr {
					reqs = append(reqs, struct {
						cmd     Command
						flags   uint16
						payload int
					}{CmdBlockStatus, 0, 0})
				}
				for i, r := range reqs {
					rc.send(r.flags, r.cmd, uint64(i), bad, 4096, make([]byte, r.payload))
					errno, _, _, chunks := rc.readReply(bad, 4096)
					if syscall.Errno(errno) != want[e] {
						t.Errorf("%v flags %#x: errno %v, want %v", r.cmd, r.flags, syscall.Errno(errno), want[e])
					}
					if sr && (len(chunks) == 0 || !strings.Contains(string(chunks[len(chunks)-1].payload), "injected fault")) {
						t.Errorf("%v: error chunk lacks the device error text: %+v", r.cmd, chunks)
					}
				}
			})
		}
	}
	t.Run("flush", func(t *testing.T) {
		rc := dialRaw(t, s.addr)
		rc.open("flushfail", goOpts{})
		rc.send(0, CmdFlush, 1, 0, 0, nil)
		if errno, _ := rc.readSimple(); syscall.Errno(errno) != syscall.EIO {
			t.Errorf("flush errno %d", errno)
		}
	})
}

// errName names an errno for subtest and export names.
func errName(e syscall.Errno) string { return strings.ToUpper(strings.ReplaceAll(e.Error(), " ", "-")) }

func TestConcurrentRepliesOutOfOrder(t *testing.T) {
	g := &gateDev{memDev: newMemDev("g", 1<<20), gate: make(chan struct{}), entered: make(chan string, 4)}
	s := startServer(t, []Export{{Name: "g", Dev: g}})
	rc := dialRaw(t, s.addr)
	rc.open("g", goOpts{})
	rc.send(0, CmdRead, 1, 0, 512, nil) // blocks in the device
	if op := <-g.entered; op != "read" {
		t.Fatal(op)
	}
	gate := sync.OnceFunc(func() { close(g.gate) })
	t.Cleanup(gate)
	rc.send(0, CmdWrite, 2, 0, 512, make([]byte, 512))
	rc.send(0, CmdFlush, 3, 0, 0, nil)
	got := map[uint64]bool{}
	for range 2 {
		errno, h := rc.readSimple()
		if errno != 0 || h == 1 {
			t.Fatalf("reply handle %d errno %d while the read is still blocked", h, errno)
		}
		got[h] = true
	}
	if !got[2] || !got[3] {
		t.Fatalf("replies for %v, want 2 and 3", got)
	}
	gate()
	if errno, h := rc.readSimple(); errno != 0 || h != 1 {
		t.Fatalf("read reply handle %d errno %d", h, errno)
	}
	rc.read(512)
}

func TestFlushCoversCompletedWrites(t *testing.T) {
	d := newMemDev("d", 4<<20)
	s := startServer(t, []Export{{Name: "d", Dev: d}})
	rc := dialRaw(t, s.addr)
	rc.open("d", goOpts{blockSize: true})
	const n = 32
	for i := range n {
		rc.send(0, CmdWrite, uint64(i), uint64(i)*pageSize, pageSize, bytes.Repeat([]byte{byte(i)}, pageSize))
	}
	for range n {
		if errno, _ := rc.readSimple(); errno != 0 {
			t.Fatal(errno)
		}
	}
	d.mu.Lock()
	dirty := len(d.dirty)
	d.mu.Unlock()
	if dirty != n {
		t.Fatalf("%d dirty pages before flush, want %d", dirty, n)
	}
	rc.send(0, CmdFlush, 99, 0, 0, nil)
	if errno, h := rc.readSimple(); errno != 0 || h != 99 {
		t.Fatal(errno, h)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range int64(n) {
		if !d.durable[i] {
			t.Errorf("page %d acknowledged before FLUSH is not durable after it", i)
		}
	}
}

type recObserver struct {
	mu        sync.Mutex
	arrived   []Request
	completed map[uint64]syscall.Errno
}

func (o *recObserver) Arrived(r Request) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.arrived = append(o.arrived, r)
}

func (o *recObserver) Completed(r Request, e syscall.Errno) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.completed[r.Handle] = e
}

func TestObserver(t *testing.T) {
	obs := &recObserver{completed: map[uint64]syscall.Errno{}}
	_, ex := stdExports(t)
	s := startServer(t, ex, WithObserver(obs))
	rc := dialRaw(t, s.addr)
	rc.open("disk", goOpts{blockSize: true})
	rc.send(0, CmdWrite, 10, 0, 512, make([]byte, 512))
	rc.send(0, CmdRead, 11, 7, 512, nil) // misaligned: EINVAL
	rc.send(FlagFUA, CmdFlush, 12, 0, 0, nil)
	for range 3 {
		rc.readReply(0, 0)
	}
	rc.send(0, CmdDisc, 13, 0, 0, nil)
	rc.closed()
	s.Shutdown(context.Background())
	obs.mu.Lock()
	defer obs.mu.Unlock()
	var got []string
	for _, r := range obs.arrived {
		got = append(got, fmt.Sprintf("%s %d %s %d %d %d", r.Export, r.Handle, r.Command, r.Flags, r.Offset, r.Length))
		if r.Conn != 1 {
			t.Errorf("conn %d", r.Conn)
		}
	}
	want := []string{"disk 10 WRITE 0 0 512", "disk 11 READ 0 7 512", "disk 12 FLUSH 1 0 0", "disk 13 DISC 0 0 0"}
	if !slices.Equal(got, want) {
		t.Errorf("arrived %q, want %q", got, want)
	}
	if wantC := map[uint64]syscall.Errno{10: 0, 11: syscall.EINVAL, 12: 0, 13: 0}; fmt.Sprint(obs.completed) != fmt.Sprint(wantC) {
		t.Errorf("completed %v, want %v", obs.completed, wantC)
	}
}

func TestDiscDrainsInFlight(t *testing.T) {
	g := &gateDev{memDev: newMemDev("g", 1<<20), gate: make(chan struct{}), entered: make(chan string, 4)}
	s := startServer(t, []Export{{Name: "g", Dev: g}})
	rc := dialRaw(t, s.addr)
	rc.open("g", goOpts{})
	rc.send(0, CmdRead, 1, 0, 512, nil)
	<-g.entered
	rc.send(0, CmdDisc, 2, 0, 0, nil)
	time.AfterFunc(50*time.Millisecond, func() { close(g.gate) })
	if errno, h := rc.readSimple(); errno != 0 || h != 1 {
		t.Fatalf("in-flight read after DISC: errno %d handle %d", errno, h)
	}
	rc.read(512)
	rc.closed()
}

// fdCount counts this process's open file descriptors.
func fdCount(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// settle waits for goroutine and fd counts to fall back to a baseline.
func settle(t testing.TB, goroutines, fds int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		g, f := runtime.NumGoroutine(), fdCount(t)
		if g <= goroutines && f <= fds {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("leak: %d goroutines (baseline %d), %d fds (baseline %d)\n%s",
				g, goroutines, f, fds, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMalformedClientsCloseOnlyTheirConnection(t *testing.T) {
	d, ex := stdExports(t)
	s := startServer(t, ex)
	g0, f0 := runtime.NumGoroutine(), fdCount(t)

	good := dialRaw(t, s.addr)
	good.open("disk", goOpts{sr: true, blockSize: true})

	misbehave := map[string]func(c *rawClient){
		"bad request magic": func(c *rawClient) {
			c.open("disk", goOpts{})
			c.write(bytes.Repeat([]byte{0xff}, 28))
			c.closed()
		},
		"vanish mid header": func(c *rawClient) {
			c.open("disk", goOpts{})
			c.write([]byte{0x25, 0x60, 0x95, 0x13, 0, 0})
		},
		"vanish mid payload": func(c *rawClient) {
			c.open("disk", goOpts{})
			b := binary.BigEndian.AppendUint32(nil, magicRequest)
			b = binary.BigEndian.AppendUint16(b, 0)
			b = binary.BigEndian.AppendUint16(b, uint16(CmdWrite))
			b = binary.BigEndian.AppendUint64(b, 1)
			b = binary.BigEndian.AppendUint64(b, 0)
			b = binary.BigEndian.AppendUint32(b, 1<<20)
			c.write(append(b, make([]byte, 1000)...))
		},
		"vanish mid option": func(c *rawClient) {
			c.greet(flagCFixedNewstyle)
			c.write(binary.BigEndian.AppendUint64(nil, magicIHaveOpt)[:5])
		},
		"vanish in greeting": func(c *rawClient) { c.read(5) },
		"vanish with requests in flight": func(c *rawClient) {
			c.open("disk", goOpts{})
			for i := range 50 {
				c.send(0, CmdRead, uint64(i), 0, 1<<20, nil)
			}
		},
	}
	for name, f := range misbehave {
		t.Run(name, func(t *testing.T) {
			c := dialRaw(t, s.addr)
			f(c)
			c.c.Close()
			// The good connection still works.
			good.send(0, CmdWrite, 1, 0, 512, bytes.Repeat([]byte{9}, 512))
			if errno, _, _, _ := good.readReply(0, 0); errno != 0 {
				t.Fatalf("good client write: errno %d", errno)
			}
			good.send(0, CmdRead, 2, 0, 512, nil)
			if errno, _, got, _ := good.readReply(0, 512); errno != 0 || got[0] != 9 {
				t.Fatalf("good client read: errno %d data %d", errno, got[0])
			}
		})
	}
	good.c.Close()
	settle(t, g0, f0)
	if ops := d.opLog(); slices.Contains(ops, "write 0 1048576") {
		t.Error("a truncated write payload reached the device")
	}
}

func TestShutdownWaitsForInFlight(t *testing.T) {
	g0, f0 := runtime.NumGoroutine(), fdCount(t)
	g := &gateDev{memDev: newMemDev("g", 1<<20), gate: make(chan struct{}), entered: make(chan string, 4)}
	dir := t.TempDir()
	l, err := Listen(dir + "/s")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer()
	if err := s.AddExport(Export{Name: "g", Dev: g}); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	rc := dialRaw(t, l.Addr())
	rc.open("g", goOpts{})
	idle := dialRaw(t, l.Addr())
	idle.greet(flagCFixedNewstyle) // stuck in negotiation
	rc.send(0, CmdRead, 1, 0, 512, nil)
	<-g.entered
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(g.gate)
	if errno, h := rc.readSimple(); errno != 0 || h != 1 {
		t.Fatalf("in-flight read: errno %d handle %d", errno, h)
	}
	rc.read(512)
	rc.closed()
	idle.closed()
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != ErrServerClosed {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := os.Stat(dir + "/s"); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
	rc.c.Close()
	idle.c.Close()
	settle(t, g0, f0)
}

func TestShutdownDeadline(t *testing.T) {
	g := &gateDev{memDev: newMemDev("g", 1<<20), gate: make(chan struct{}), entered: make(chan string, 4)}
	s := startServer(t, []Export{{Name: "g", Dev: g}})
	rc := dialRaw(t, s.addr)
	rc.open("g", goOpts{})
	rc.send(0, CmdRead, 1, 0, 512, nil)
	<-g.entered
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); err != context.DeadlineExceeded {
		t.Fatalf("Shutdown with a stuck device: %v", err)
	}
	rc.closed() // connection closed at the deadline
	close(g.gate)
}

func TestManyClientsOneMisbehaving(t *testing.T) {
	d := newMemDev("m", 64<<20)
	s := startServer(t, []Export{{Name: "m", Dev: d}})
	g0, f0 := runtime.NumGoroutine(), fdCount(t)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 63 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc := dialRaw(t, s.addr)
			rc.open("m", goOpts{sr: i%2 == 0, blockSize: true})
			base := uint64(i) << 20
			for j := range 16 {
				rc.send(0, CmdWrite, uint64(j), base+uint64(j)*4096, 4096, bytes.Repeat([]byte{byte(i), byte(j)}, 2048))
			}
			for range 16 {
				rc.readReply(0, 0)
			}
			rc.send(0, CmdRead, 100, base, 16*4096, nil)
			errno, _, got, _ := rc.readReply(base, 16*4096)
			if errno != 0 && i%2 == 0 {
				errs <- fmt.Errorf("client %d: errno %d", i, errno)
				return
			}
			if i%2 == 1 {
				got = rc.read(16 * 4096)
			}
			for j := range 16 {
				if got[j*4096] != byte(i) || got[j*4096+1] != byte(j) {
					errs <- fmt.Errorf("client %d block %d: % x", i, j, got[j*4096:j*4096+2])
					return
				}
			}
			rc.send(0, CmdDisc, 0, 0, 0, nil)
			rc.closed()
			rc.c.Close()
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		rc := dialRaw(t, s.addr)
		rc.open("m", goOpts{})
		for i := range 20 {
			rc.send(0, CmdRead, uint64(i), 0, 4096, nil)
		}
		rc.write([]byte("GARBAGE GARBAGE GARBAGE GARBAGE"))
		rc.c.(*net.UnixConn).CloseWrite()
		rc.closed()
		rc.c.Close()
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	settle(t, g0, f0)
}

func TestListenAndURI(t *testing.T) {
	l, err := Listen("0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a := l.Addr().(*net.TCPAddr)
	if !a.IP.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("Listen(\"0\") bound %v, want 127.0.0.1", a)
	}
	if u := URI(a, "cow"); u != fmt.Sprintf("nbd://127.0.0.1:%d/cow", a.Port) {
		t.Errorf("URI %q", u)
	}
	if u := URI(&net.UnixAddr{Name: "/run/x y/nbd.sock", Net: "unix"}, "a b"); u != "nbd+unix:///a%20b?socket=/run/x+y/nbd.sock" {
		t.Errorf("URI %q", u)
	}
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/file", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen("unix:" + dir + "/file"); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("listening over a regular file: %v", err)
	}
	ul, err := Listen(dir + "/s")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(dir + "/s"); err == nil || !strings.Contains(err.Error(), "already listening") {
		t.Errorf("second listener on a live socket: %v", err)
	}
	ul.Close()
}

func TestAddExportValidation(t *testing.T) {
	d := newMemDev("d", 1<<20)
	s := NewServer()
	for _, tc := range []struct {
		e    Export
		want string
	}{
		{Export{Name: "a"}, "no device"},
		{Export{Name: "a", Dev: d, PreferredBlock: 3000}, "preferred block size 3000"},
		{Export{Name: "a", Dev: d, PreferredBlock: 256}, "preferred block size 256"},
		{Export{Name: "a", Dev: newMemDev("odd", 1000)}, "size 1000"},
		{Export{Name: "a\x00b", Dev: d}, "NUL"},
		{Export{Name: strings.Repeat("n", 5000), Dev: d}, "limit 4096"},
	} {
		if err := s.AddExport(tc.e); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("AddExport(%q): %v, want error containing %q", tc.e.Name, err, tc.want)
		}
	}
	if err := s.AddExport(Export{Name: "a", Dev: d}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddExport(Export{Name: "a", Dev: d}); err == nil {
		t.Error("duplicate export accepted")
	}
	if got := s.Exports(); !slices.Equal(got, []string{"a"}) {
		t.Errorf("Exports %q", got)
	}
	if err := s.RemoveExport("a"); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveExport("a"); err == nil {
		t.Error("removing a missing export succeeded")
	}
}

func TestMaxConns(t *testing.T) {
	_, ex := stdExports(t)
	s := startServer(t, ex, WithMaxConns(1))
	a := dialRaw(t, s.addr)
	a.open("disk", goOpts{})
	b := dialRaw(t, s.addr)
	b.closed()
}
