package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"snaplab/sim/block"
)

// check validates a request against the session before it reaches the
// device. It returns 0, or the errno to answer with and why.
func (s *session) check(req request) (syscall.Errno, string) {
	e := s.exp
	allowed := uint16(0)
	if !e.ReadOnly {
		allowed = FlagFUA
	}
	writes := false
	switch req.cmd {
	case CmdRead:
		if s.sr {
			allowed |= FlagDF
		}
	case CmdWrite, CmdTrim:
		writes = true
	case CmdWriteZeroes:
		writes = true
		allowed |= FlagNoHole
	case CmdFlush:
	case CmdBlockStatus:
		allowed |= FlagReqOne
	default:
		return errInval, fmt.Sprintf("unknown command %d", uint16(req.cmd))
	}
	if bad := req.flags &^ allowed; bad != 0 {
		return errInval, fmt.Sprintf("%s: unsupported command flags 0x%x", req.cmd, bad)
	}
	if req.cmd == CmdFlush {
		if req.offset != 0 || req.length != 0 {
			return errInval, fmt.Sprintf("FLUSH with offset %d length %d, both must be 0", req.offset, req.length)
		}
		return 0, ""
	}
	if writes && e.ReadOnly {
		return errPerm, fmt.Sprintf("%s: export %q is read-only", req.cmd, s.name)
	}
	if req.cmd == CmdBlockStatus && !s.meta {
		return errInval, "BLOCK_STATUS without a negotiated metadata context"
	}
	if req.length == 0 {
		return errInval, fmt.Sprintf("%s at offset %d with length 0", req.cmd, req.offset)
	}
	if (req.cmd == CmdRead || req.cmd == CmdWrite) && req.length > MaxPayload {
		return errInval, fmt.Sprintf("%s length %d exceeds the maximum payload %d", req.cmd, req.length, MaxPayload)
	}
	size := uint64(e.Dev.Size())
	if req.offset > size || uint64(req.length) > size-req.offset {
		msg := fmt.Sprintf("%s at offset %d length %d is beyond the end of device %s (%d bytes)",
			req.cmd, req.offset, req.length, e.Dev.Name(), size)
		if req.cmd == CmdWrite || req.cmd == CmdWriteZeroes {
			return errNoSpc, msg
		}
		return errInval, msg
	}
	if s.blockSizes && req.cmd != CmdBlockStatus && (req.offset%MinBlock != 0 || req.length%MinBlock != 0) {
		return errInval, fmt.Sprintf("%s at offset %d length %d is not aligned to the %d-byte minimum block size",
			req.cmd, req.offset, req.length, MinBlock)
	}
	return 0, ""
}

// maxDescriptors bounds one BLOCK_STATUS reply.
const maxDescriptors = 1 << 16

// zeros is the source for WRITE_ZEROES that cannot discard.
var zeros = make([]byte, 1<<20)

// do executes a validated request on the device and queues its reply. A
// request of a connection that broke meanwhile is dropped instead.
func (t *transmission) do(r Request, req request, payload *[]byte, cost int64) {
	if t.isGone() {
		t.drop(r, payload, cost)
		return
	}
	dev := t.dev
	off := int64(req.offset)
	n := int64(req.length)
	fua := req.flags&FlagFUA != 0
	var err error
	switch req.cmd {
	case CmdRead:
		t.read(r, req, cost)
		return
	case CmdWrite:
		err = writeRange(dev, t.lk, *payload, off, n, fua, false)
		putBuf(payload)
	case CmdFlush:
		err = dev.Flush()
	case CmdTrim:
		// Advisory: only the whole sectors inside the range, and nothing
		// on a device that does not take discards (EOPNOTSUPP).
		if d, ok := dev.(block.Discarder); ok {
			if a, b := alignUp(off), alignDown(off+n); a < b {
				id := t.lk.lockShared(a, b)
				if err = devDiscard(dev, d, a, b-a); errors.Is(err, syscall.EOPNOTSUPP) {
					err = nil
				}
				t.lk.unlock(id)
				if err == nil && fua {
					err = dev.Flush()
				}
			}
		}
	case CmdWriteZeroes:
		err = writeRange(dev, t.lk, nil, off, n, fua, req.flags&FlagNoHole != 0)
	case CmdBlockStatus:
		t.blockStatus(r, req, cost)
		return
	}
	if err != nil {
		t.fail(r, req, cost, err)
		return
	}
	t.finish(r, req, cost, 0, "", reply{})
}

func (t *transmission) fail(r Request, req request, cost int64, err error) {
	errno := nbdErrno(err)
	if errors.Is(err, errUnaligned) {
		t.c.log.Error("nbd: unaligned device I/O refused", "cmd", req.cmd, "handle", req.handle,
			"offset", req.offset, "length", req.length, "err", err)
	}
	t.c.log.Debug("nbd: device error", "cmd", req.cmd, "handle", req.handle,
		"offset", req.offset, "length", req.length, "errno", errno, "err", err)
	t.finish(r, req, cost, errno, err.Error(), reply{})
}

// extents returns the device's map of [off, off+n), checked to tile the
// range exactly with merged neighbours, or nil when the device has no map
// or its answer is unusable. The device is asked about the covering
// sectors; the answer is clipped to the range.
func extents(dev block.Device, off, n int64) ([]block.Extent, error) {
	m, ok := dev.(block.Mapper)
	if !ok {
		return nil, nil
	}
	a, b := alignDown(off), alignUp(off+n)
	if err := unaligned(dev, "map", a, b-a); err != nil {
		return nil, err
	}
	ext, err := m.Map(a, b-a)
	if err != nil {
		return nil, err
	}
	out := ext[:0:0]
	pos := a
	for _, x := range ext {
		if x.Off != pos || x.Len <= 0 || x.Len > b-pos {
			return nil, nil // not a tiling: do not trust it
		}
		pos += x.Len
		if lo, hi := max(x.Off, off), min(x.Off+x.Len, off+n); lo < hi {
			x.Off, x.Len = lo, hi-lo
		} else {
			continue
		}
		if k := len(out); k > 0 && out[k-1].Hole == x.Hole {
			out[k-1].Len += x.Len
		} else {
			out = append(out, x)
		}
	}
	if pos != b {
		return nil, nil
	}
	return out, nil
}

func (t *transmission) read(r Request, req request, cost int64) {
	dev := t.dev
	off, n := int64(req.offset), int64(req.length)
	if !aligned(req.offset, req.length) {
		// Read the covering sectors, answer the bytes asked for, in one
		// data chunk when structured.
		a := alignDown(off)
		buf := getBuf(int(coverLen(req.offset, req.length)))
		if err := devRead(dev, *buf, a); err != nil {
			putBuf(buf)
			t.fail(r, req, cost, fmt.Errorf("unaligned read of %d bytes at offset %d: %w", n, off, err))
			return
		}
		data := (*buf)[off-a : off-a+n]
		var h []byte
		if t.sess.sr {
			h = appendChunkHeader(nil, replyFlagDone, chunkOffsetData, req.handle, uint32(8+n))
			h = binary.BigEndian.AppendUint64(h, uint64(off))
		} else {
			h = appendSimpleReply(make([]byte, 0, simpleReplySize), 0, req.handle)
		}
		t.finish(r, req, cost, 0, "", reply{parts: [][]byte{h, data}, buf: buf})
		return
	}
	buf := getBuf(int(n))
	if !t.sess.sr {
		if err := devRead(dev, *buf, off); err != nil {
			putBuf(buf)
			t.fail(r, req, cost, err)
			return
		}
		t.finish(r, req, cost, 0, "", reply{parts: [][]byte{appendSimpleReply(make([]byte, 0, simpleReplySize), 0, req.handle), *buf}, buf: buf})
		return
	}
	var ext []block.Extent
	if req.flags&FlagDF == 0 {
		var err error
		if ext, err = extents(dev, off, n); err != nil {
			putBuf(buf)
			t.fail(r, req, cost, err)
			return
		}
		for _, x := range ext {
			if (x.Off|x.Len)%MinBlock != 0 {
				ext = nil // a finer map than sectors: read it all as data
				break
			}
		}
	}
	if len(ext) == 0 {
		ext = []block.Extent{{Off: off, Len: n}}
	}
	parts := make([][]byte, 0, 2*len(ext))
	for i, x := range ext {
		flags := uint16(0)
		if i == len(ext)-1 {
			flags = replyFlagDone
		}
		if x.Hole {
			h := appendChunkHeader(nil, flags, chunkOffsetHole, req.handle, 12)
			h = binary.BigEndian.AppendUint64(h, uint64(x.Off))
			parts = append(parts, binary.BigEndian.AppendUint32(h, uint32(x.Len)))
			continue
		}
		data := (*buf)[x.Off-off : x.Off-off+x.Len]
		if err := devRead(dev, data, x.Off); err != nil {
			putBuf(buf)
			t.fail(r, req, cost, err)
			return
		}
		h := appendChunkHeader(nil, flags, chunkOffsetData, req.handle, uint32(8+x.Len))
		parts = append(parts, binary.BigEndian.AppendUint64(h, uint64(x.Off)), data)
	}
	t.finish(r, req, cost, 0, "", reply{parts: parts, buf: buf})
}

func (t *transmission) blockStatus(r Request, req request, cost int64) {
	off, n := int64(req.offset), int64(req.length)
	ext, err := extents(t.dev, off, n)
	if err != nil {
		t.fail(r, req, cost, err)
		return
	}
	if len(ext) == 0 {
		ext = []block.Extent{{Off: off, Len: n}}
	}
	// The protocol allows answering a prefix; the cap is what cost charged.
	ext = ext[:min(len(ext), descriptorCap(req))]
	b := appendChunkHeader(nil, replyFlagDone, chunkBlockStatus, req.handle, uint32(4+8*len(ext)))
	b = binary.BigEndian.AppendUint32(b, metaAllocationID)
	for _, x := range ext {
		status := uint32(0)
		if x.Hole {
			status = stateHole | stateZero
		}
		b = binary.BigEndian.AppendUint32(b, uint32(x.Len))
		b = binary.BigEndian.AppendUint32(b, status)
	}
	t.finish(r, req, cost, 0, "", reply{parts: [][]byte{b}})
}
