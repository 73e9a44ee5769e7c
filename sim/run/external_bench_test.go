package run

import (
	"math/rand/v2"
	"testing"

	"snaplab/sim/dm"
	"snaplab/sim/pattern"
	"snaplab/sim/script"
)

// benchSession is a session with a 1 GiB disk d, as `snaplab serve` drives
// it.
func benchSession(b *testing.B) *Session {
	b.Helper()
	sc, err := script.Parse("b.scn", "disk d 1GiB\nwrite d 0 4KiB pattern=A\n")
	if err != nil {
		b.Fatal(err)
	}
	s := NewSession(sc, Options{})
	if msg := s.Exec(&sc.Steps[0]); msg != "" {
		b.Fatal(msg)
	}
	return s
}

// The outside-request path: a 4 KiB write then a read of it, at random
// 4 KiB offsets, of client data (random bytes) or of a scenario pattern.
func BenchmarkExternal4KiB(b *testing.B) {
	for _, kind := range []string{"random", "pattern"} {
		b.Run(kind, func(b *testing.B) {
			s := benchSession(b)
			rng := rand.New(rand.NewPCG(1, 2))
			data, buf := make([]byte, 4096), make([]byte, 4096)
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			var failed error
			done := func(err error) {
				if err != nil {
					failed = err
				}
			}
			b.SetBytes(2 * 4096)
			b.ReportAllocs()
			for b.Loop() {
				off := rng.Int64N(1<<30/4096) * 4096
				if kind == "pattern" {
					pattern.Fill(data, "A", off)
				} else {
					data[0]++
				}
				s.External("d", dm.OpWrite, off, data, false, done)
				s.External("d", dm.OpRead, off, buf, false, done)
				s.Settle()
			}
			if failed != nil {
				b.Fatal(failed)
			}
			if rep := s.Finish(); !rep.Pass() {
				b.Fatal(rep.Failures)
			}
		})
	}
}
