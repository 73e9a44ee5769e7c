//go:build !snaplab_plant

package plant

import "testing"

// Without the tag nothing can be planted.
func TestNothingPlanted(t *testing.T) {
	if Enabled {
		t.Fatal("Enabled in a build without snaplab_plant")
	}
	for _, b := range Bugs {
		if Is(b.Bug) {
			t.Errorf("Is(%q) in a build without snaplab_plant", b.Bug)
		}
	}
	xs := []int{3, 1, 2, 1}
	if got := MapOrder(xs); len(got) != 4 || got[0] != 3 || got[1] != 1 || got[2] != 2 || got[3] != 1 {
		t.Errorf("MapOrder(%v) = %v, want it unchanged", xs, got)
	}
}
