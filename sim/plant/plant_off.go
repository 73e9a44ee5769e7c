//go:build !snaplab_plant

package plant

// Enabled reports whether this binary can plant bugs (built with -tags
// snaplab_plant). It is not.
const Enabled = false

// Is reports whether bug b is planted: never, in a build without the
// snaplab_plant tag. It is a constant false the compiler inlines, so every
// `if plant.Is(...)` branch is dead code and dropped.
func Is(b Bug) bool { return false }

// MapOrder returns xs in the order the bug Nondeterministic visits them.
// Without the snaplab_plant tag no bug is planted and xs is returned as
// it is.
func MapOrder[T comparable](xs []T) []T { return xs }
