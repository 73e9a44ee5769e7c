//go:build snaplab_plant

package plant

import (
	"slices"
	"strings"
	"testing"
)

func TestSet(t *testing.T) {
	t.Cleanup(func() { Set("") })
	for _, tc := range []struct {
		name    string
		want    Bug // planted afterwards
		wantErr bool
	}{
		{"merge-skips-chunk", MergeSkipsChunk, false},
		{"no-such-bug", MergeSkipsChunk, true}, // an error keeps the bug planted before
		{"reload-wrong-chunk", ReloadWrongChunk, false},
		{"", "", false},
		{"REload-wrong-chunk", "", true},
	} {
		err := Set(tc.name)
		if (err != nil) != tc.wantErr {
			t.Errorf("Set(%q): error %v, want error %t", tc.name, err, tc.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), strings.Join(Names(), ", ")) {
			t.Errorf("Set(%q): %v does not list the known bugs", tc.name, err)
		}
		if Planted() != tc.want {
			t.Errorf("after Set(%q): planted %q, want %q", tc.name, Planted(), tc.want)
		}
		for _, b := range Bugs {
			if Is(b.Bug) != (b.Bug == tc.want) {
				t.Errorf("after Set(%q): Is(%q) = %t", tc.name, b.Bug, Is(b.Bug))
			}
		}
		if Is("") {
			t.Errorf("after Set(%q): Is(\"\") is true", tc.name)
		}
	}
}

// MapOrder keeps every element (duplicates too) and, over many calls,
// does not always keep the slice's order: the nondeterminism the bug
// Nondeterministic relies on.
func TestMapOrder(t *testing.T) {
	xs := []int{1, 2, 3, 2, 5, 6, 7, 8}
	sorted := slices.Sorted(slices.Values(xs))
	orders := map[string]bool{}
	for range 200 {
		got := MapOrder(xs)
		if s := slices.Sorted(slices.Values(got)); !slices.Equal(s, sorted) {
			t.Fatalf("MapOrder(%v) = %v: not the same elements", xs, got)
		}
		k := ""
		for _, x := range got {
			k += string(rune('0' + x))
		}
		orders[k] = true
	}
	if len(orders) < 2 {
		t.Fatalf("MapOrder gave one order in 200 calls: %v", orders)
	}
}
