package nbd

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func reqBytes(flags uint16, cmd Command, handle, off uint64, length uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, uint16(cmd))
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

// FuzzRequest decodes arbitrary request headers and validates them against
// sessions of every kind; whatever check accepts must be safe to run on the
// device.
func FuzzRequest(f *testing.F) {
	f.Add(reqBytes(0, CmdRead, 1, 0, 512), uint8(0))
	f.Add(reqBytes(FlagFUA, CmdWrite, 2, 4096, 4096), uint8(7))
	f.Add(reqBytes(FlagNoHole, CmdWriteZeroes, 3, diskSize-512, 512), uint8(3))
	f.Add(reqBytes(FlagReqOne, CmdBlockStatus, 4, 0, 1<<30), uint8(15))
	f.Add(reqBytes(0, CmdFlush, 5, 0, 0), uint8(1))
	f.Add(reqBytes(0xffff, 0xffff, 0, ^uint64(0), ^uint32(0)), uint8(0xff))
	f.Add([]byte("short"), uint8(0))
	f.Fuzz(func(t *testing.T, hdr []byte, mode uint8) {
		req, err := parseRequest(hdr)
		if err != nil {
			if len(hdr) == requestSize && binary.BigEndian.Uint32(hdr) == magicRequest {
				t.Fatalf("valid header refused: %v", err)
			}
			return
		}
		if !bytes.Equal(reqBytes(req.flags, req.cmd, req.handle, req.offset, req.length), hdr) {
			t.Fatalf("decode/encode mismatch for % x: %+v", hdr, req)
		}
		e := &Export{Name: "f", Dev: newMemDev("f", diskSize), ReadOnly: mode&8 != 0, PreferredBlock: 4096}
		s := &session{exp: e, name: "f", sr: mode&1 != 0, meta: mode&2 != 0, blockSizes: mode&4 != 0}
		errno, msg := s.check(req)
		if errno != 0 {
			if msg == "" {
				t.Fatalf("errno %v without a message for %+v", errno, req)
			}
			return
		}
		end := req.offset + uint64(req.length)
		switch req.cmd {
		case CmdFlush:
			if req.offset != 0 || req.length != 0 {
				t.Fatalf("accepted flush with a range: %+v", req)
			}
			return
		case CmdRead, CmdWrite, CmdTrim, CmdWriteZeroes, CmdBlockStatus:
		default:
			t.Fatalf("accepted command %v", req.cmd)
		}
		if req.length == 0 || end < req.offset || end > diskSize {
			t.Fatalf("accepted out-of-range %+v", req)
		}
		if (req.cmd == CmdRead || req.cmd == CmdWrite) && req.length > MaxPayload {
			t.Fatalf("accepted oversized %+v", req)
		}
		if e.ReadOnly && req.cmd != CmdRead && req.cmd != CmdBlockStatus {
			t.Fatalf("accepted %v on a read-only export", req.cmd)
		}
		if req.cmd == CmdBlockStatus && !s.meta {
			t.Fatal("accepted BLOCK_STATUS without a meta context")
		}
		if s.blockSizes && req.cmd != CmdBlockStatus && (req.offset|uint64(req.length))%MinBlock != 0 {
			t.Fatalf("accepted misaligned %+v", req)
		}
	})
}

func optBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// FuzzOption runs option haggling over arbitrary client bytes; the server
// must answer every option it consumed with well-formed replies and never
// panic.
func FuzzOption(f *testing.F) {
	flags := binary.BigEndian.AppendUint32(nil, flagCFixedNewstyle|flagCNoZeroes)
	seed := func(parts ...[]byte) []byte { return bytes.Join(append([][]byte{flags}, parts...), nil) }
	f.Add(seed(optBytes(optList, nil), optBytes(optGo, infoData("disk", infoBlockSize))))
	f.Add(seed(optBytes(optStructuredReply, nil), optBytes(optSetMetaContext, metaData("disk", metaAllocation)),
		optBytes(optListMetaContext, metaData("disk")), optBytes(optInfo, infoData("disk", 0, 1, 2, 3))))
	f.Add(seed(optBytes(99, []byte("x")), optBytes(optExportName, []byte("disk"))))
	f.Add(seed(optBytes(optAbort, nil)))
	f.Add(seed(optBytes(optGo, []byte{0, 0, 0, 200, 1})))
	f.Add([]byte{0, 0, 0, 0})
	s := NewServer()
	if err := s.AddExport(Export{Name: "disk", Description: "d", Dev: newMemDev("d", 1<<20)}); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		sess, err := s.negotiate(bufio.NewReader(bytes.NewReader(in)), bufio.NewWriter(&out))
		if err == nil && (sess == nil || sess.exp == nil) {
			t.Fatal("negotiation succeeded without an export")
		}
		if err == nil && sess.meta && !sess.sr {
			t.Fatal("meta context without structured replies")
		}
		if err != nil && !errors.Is(err, errAbort) && err.Error() == "" {
			t.Fatal("empty error")
		}
		// The server's output parses as greeting, then option replies,
		// then possibly an EXPORT_NAME answer.
		r := bytes.NewReader(out.Bytes())
		var g [18]byte
		if _, err := io.ReadFull(r, g[:]); err != nil {
			t.Fatalf("no greeting: %v", err)
		}
		for r.Len() > 0 {
			if r.Len() == 10 || r.Len() == 134 { // EXPORT_NAME answer
				return
			}
			var h [20]byte
			if _, err := io.ReadFull(r, h[:]); err != nil {
				t.Fatalf("truncated option reply: %v", err)
			}
			if binary.BigEndian.Uint64(h[:]) != magicOptReply {
				t.Fatalf("bad reply magic in % x", h)
			}
			if pos, err := r.Seek(int64(binary.BigEndian.Uint32(h[16:])), io.SeekCurrent); err != nil || pos > r.Size() {
				t.Fatal("reply length beyond output")
			}
		}
	})
}
