package script

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// bigScenario is a scenario of about size bytes whose lines look like the
// library's: comments, dmsetup lines with quoted tables and assertions,
// I/O with patterns, expectations and async IDs, waits, faults, log checks.
func bigScenario(size int) string {
	var b strings.Builder
	b.Grow(size + 256)
	b.WriteString("# a large generated scenario\nsemantics mainline\ndisk origin 64MiB\ndisk cow 8MiB\n")
	for i := 0; b.Len() < size; i++ {
		switch i % 10 {
		case 0:
			fmt.Fprintf(&b, "# step group %d: an origin write, then the snapshot keeps the old data\n", i)
		case 1:
			fmt.Fprintf(&b, "dmsetup create s%d --table \"0 131072 snapshot origin cow P 8\"\n", i)
		case 2:
			fmt.Fprintf(&b, "write origin %dKiB 4KiB pattern=A%d async=w%d   # copy-on-write\n", (i%1000)*4, i%7, i)
		case 3:
			fmt.Fprintf(&b, "wait w%d expect=OK\n", i-1)
		case 4:
			fmt.Fprintf(&b, "read origin %dKiB 4KiB expect=A%d\n", ((i-2)%1000)*4, (i-2)%7)
		case 5:
			fmt.Fprintf(&b, "dmsetup status s%d expect=\"0 131072 snapshot 24/16384 16\"\n", i-4)
		case 6:
			fmt.Fprintf(&b, "fault cow write eio off=%dKiB len=4KiB after=3 count=1\n", i%100)
		case 7:
			b.WriteString("log expect=\"device-mapper: snapshots: Invalidating snapshot: Unable to allocate exception.\"\n")
		case 8:
			fmt.Fprintf(&b, "discard origin %dKiB 8KiB\n", (i%100)*8)
		case 9:
			fmt.Fprintf(&b, "dmsetup remove s%d exit=0 stderr=\"x\" log=\"y z\"\n\n", i-8)
		}
	}
	return b.String()
}

// parseMemory parses text and returns the bytes allocated while parsing
// and the bytes still held by the parsed scenario (beyond the text), each
// per byte of text.
func parseMemory(t testing.TB, text string) (alloc, held float64) {
	var before, after, kept runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	sc, err := Parse("big.scn", text)
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	runtime.GC()
	runtime.ReadMemStats(&kept)
	runtime.KeepAlive(sc)
	n := float64(len(text))
	return float64(after.TotalAlloc-before.TotalAlloc) / n, (float64(kept.HeapAlloc) - float64(before.HeapAlloc)) / n
}

// BenchmarkParse50MB reports what parsing a 50 MB scenario costs, per
// byte of text: allocated (alloc-x) and held by the result (held-x).
func BenchmarkParse50MB(b *testing.B) {
	text := bigScenario(50 << 20)
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	var alloc, held float64
	for i := 0; i < b.N; i++ {
		alloc, held = parseMemory(b, text)
	}
	b.ReportMetric(alloc, "alloc-x")
	b.ReportMetric(held, "held-x")
}
