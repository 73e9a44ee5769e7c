package nbd

import (
	"bufio"
	"encoding/binary"
	"io"
	"testing"
	"time"
)

// BenchmarkAligned measures the aligned fast path: one connection that
// negotiated block sizes keeps 16 requests of 4 KiB in flight on a memory
// disk, as fio's nbd engine does in cmd/snaplab-bench's nbd group.
func BenchmarkAligned(b *testing.B) {
	for _, bc := range []struct {
		name string
		cmd  Command
	}{{"read4k", CmdRead}, {"write4k", CmdWrite}} {
		b.Run(bc.name, func(b *testing.B) {
			const depth, size = 16, 4096
			dev := newMemDev("bench", 64<<20)
			s := startServer(b, []Export{{Name: "d", Dev: plainDev{dev}}})
			c := dialRaw(b, s.addr)
			c.c.SetDeadline(timeZero)
			c.open("d", goOpts{blockSize: true})
			payload := make([]byte, size)
			sent := 0
			send := func() {
				off := uint64(sent%(64<<20/size)) * size
				h := reqBytes(0, bc.cmd, uint64(sent), off, size)
				if bc.cmd == CmdWrite {
					h = append(h, payload...)
				}
				c.write(h)
				sent++
			}
			r := bufio.NewReaderSize(c.c, 256<<10)
			buf := make([]byte, size)
			b.SetBytes(size)
			b.ResetTimer()
			for sent < min(depth, b.N) {
				send()
			}
			for i := 0; i < b.N; i++ {
				var h [16]byte
				if _, err := io.ReadFull(r, h[:]); err != nil {
					b.Fatal(err)
				}
				if binary.BigEndian.Uint32(h[4:]) != 0 {
					b.Fatal("errno")
				}
				if bc.cmd == CmdRead {
					if _, err := io.ReadFull(r, buf); err != nil {
						b.Fatal(err)
					}
				}
				if sent < b.N {
					send()
				}
			}
		})
	}
}

var timeZero time.Time
