package run

import (
	"testing"

	"snaplab/sim/block"
	"snaplab/sim/script"
)

// Options.Tap hears the disks' requests, the dm stack's copy-on-write
// among them, and not an image's content.
func TestTapHearsDisks(t *testing.T) {
	sc, err := script.Parse("tap", `disk origin 1MiB
disk cow 1MiB
dmsetup create snap --table "0 2048 snapshot origin cow P 8"
dmsetup create base --table "0 2048 snapshot-origin origin"
write base 0 4KiB pattern=A
flush base
discard origin 64KiB 4KiB
`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	rep := Run(sc, Options{Tap: func(disk string, r block.Request) {
		got = append(got, disk+" "+string(r.Op))
		if r.Op == block.OpWrite && len(r.Data) != int(r.Len) {
			t.Errorf("write of %d bytes with %d bytes of data", r.Len, len(r.Data))
		}
	}})
	if !rep.Pass() {
		t.Fatal(rep.Failures)
	}
	has := func(s string) int {
		n := 0
		for _, g := range got {
			if g == s {
				n++
			}
		}
		return n
	}
	// The COW's header, the copy and its exception metadata; the origin's
	// write; both flushed; the discard.
	if has("cow write") < 2 || has("origin write") != 1 || has("origin discard") != 1 || has("cow flush") < 1 || has("origin flush") < 1 {
		t.Errorf("requests: %v", got)
	}
}
