package live

import (
	"bytes"
	"runtime"
	"testing"

	"snaplab/sim/block"
	"snaplab/sim/record"
	"snaplab/sim/run"
	"snaplab/sim/script"
)

// A client's discard costs no buffer of its size, live and in replay (a
// discard of a whole 1 TiB device allocated 1 TiB). What remains is the
// oracle's per-sector bookkeeping of what the discard left unknown (about
// 420 bytes a sector), so the bound is well under the two discards' size.
func TestDiscardNeedsNoBuffer(t *testing.T) {
	sc, err := script.Parse("huge", "disk big 256MiB\ndmsetup create lin --table \"0 524288 linear big 0\"\n")
	if err != nil {
		t.Fatal(err)
	}
	var rec bytes.Buffer
	d, err := Start(sc, run.Options{Record: &rec})
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for _, name := range []string{"big", "lin"} {
		if err := d.Device(name).(block.Discarder).Discard(0, 256<<20); err != nil {
			t.Fatalf("discard of %s: %v", name, err)
		}
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 384<<20 {
		t.Fatalf("two 256 MiB discards allocated %d MiB", grew>>20)
	}
	if rep := d.Close(); !rep.Pass() {
		t.Fatalf("session failed: %v", rep.Failures)
	}
	r, err := record.Read(bytes.NewReader(rec.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&before)
	rep, diff, err := run.Replay(r, run.Options{})
	if err != nil || diff != "" || !rep.Pass() {
		t.Fatalf("replay: %v %s %v", err, diff, rep)
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 384<<20 {
		t.Fatalf("replaying two 256 MiB discards allocated %d MiB", grew>>20)
	}
}
