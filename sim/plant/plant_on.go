//go:build snaplab_plant

package plant

// Enabled reports whether this binary can plant bugs (built with -tags
// snaplab_plant). It can.
const Enabled = true

// planted is the bug Set selected ("" none).
var planted Bug

// Set plants the bug named name (and no other) for the rest of the
// process; "" plants none. An unknown name is an error listing the known
// ones, and leaves the planted bug as it was. Call it before any
// simulation runs.
func Set(name string) error {
	if name == "" {
		planted = ""
		return nil
	}
	b, err := Lookup(name)
	if err != nil {
		return err
	}
	planted = b
	return nil
}

// Planted is the bug Set selected ("" none).
func Planted() Bug { return planted }

// Is reports whether bug b is planted.
func Is(b Bug) bool { return b != "" && b == planted }

// MapOrder returns xs in the order Go ranges over a map holding them: a
// different order from run to run (the bug Nondeterministic). Duplicates
// are kept. Only a tagged build has this nondeterminism; the determinism
// lint checks the untagged build, where MapOrder is the identity.
func MapOrder[T comparable](xs []T) []T {
	count := make(map[T]int, len(xs))
	for _, x := range xs {
		count[x]++
	}
	out := make([]T, 0, len(xs))
	for x, n := range count {
		for range n {
			out = append(out, x)
		}
	}
	return out
}
