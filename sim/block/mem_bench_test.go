package block_test

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"snaplab/sim/block"
)

// BenchmarkMemPageSize compares page sizes for the workloads a Mem serves:
// random 4 KiB writes and reads on a 1 GiB disk (reported with the page
// memory held per byte written), sequential 1 MiB writes, and 4 KiB
// overwrites of flushed data (which keep undo copies).
func BenchmarkMemPageSize(b *testing.B) {
	const size = 1 << 30
	for _, shift := range []uint{12, 14, 16} {
		newM := func(b *testing.B) *block.Mem {
			m, err := block.NewMemPageShift("bench", size, shift)
			if err != nil {
				b.Fatal(err)
			}
			return m
		}
		b.Run(fmt.Sprintf("page%dK/rand4Kwrite", 1<<shift>>10), func(b *testing.B) {
			m := newM(b)
			p := make([]byte, 4096)
			rng := rand.New(rand.NewPCG(1, 2))
			written := map[int64]bool{}
			b.SetBytes(4096)
			for b.Loop() {
				off := rng.Int64N(size/4096) * 4096
				written[off] = true
				if _, err := m.WriteAt(p, off); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(m.Stats().Bytes)/float64(len(written)*4096), "held/written")
		})
		b.Run(fmt.Sprintf("page%dK/rand4Kread", 1<<shift>>10), func(b *testing.B) {
			m := newM(b)
			p := make([]byte, 1<<20)
			for off := int64(0); off < size; off += 1 << 20 {
				m.WriteAt(p, off)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			b.SetBytes(4096)
			for b.Loop() {
				if _, err := m.ReadAt(p[:4096], rng.Int64N(size/4096)*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("page%dK/seq1Mwrite", 1<<shift>>10), func(b *testing.B) {
			m := newM(b)
			p := make([]byte, 1<<20)
			off := int64(0)
			b.SetBytes(1 << 20)
			for b.Loop() {
				if _, err := m.WriteAt(p, off); err != nil {
					b.Fatal(err)
				}
				if off += 1 << 20; off == size {
					off = 0
					m.Flush()
				}
			}
		})
		b.Run(fmt.Sprintf("page%dK/overwrite4K", 1<<shift>>10), func(b *testing.B) {
			m := newM(b)
			const span = 64 << 20
			p := make([]byte, 1<<20)
			for off := int64(0); off < span; off += 1 << 20 {
				m.WriteAt(p, off)
			}
			m.Flush()
			rng := rand.New(rand.NewPCG(1, 2))
			b.SetBytes(4096)
			i := 0
			for b.Loop() {
				if _, err := m.WriteAt(p[:4096], rng.Int64N(span/4096)*4096); err != nil {
					b.Fatal(err)
				}
				if i++; i%4096 == 0 {
					b.ReportMetric(float64(m.Stats().UndoPages*m.Stats().PageSize)/float64(4096*4096), "undo/written")
					m.Flush()
				}
			}
		})
	}
}
