package pattern

import "golang.org/x/sys/cpu"

// useAVX2 says fillAVX2 and diffAVX2 may run (tests turn it off to check
// the plain Go code against them).
var useAVX2 = cpu.X86.HasAVX2

// fillAVX2 writes the pattern of seed s to p, whose length is a multiple
// of 64, at device offset off, a multiple of 8: eight words at a time.
//
//go:noescape
func fillAVX2(p []byte, s, off uint64)

// diffAVX2 returns the index of the first 64-byte block of p that differs
// from the pattern of seed s at device offset off, or len(p) (arguments as
// for fillAVX2).
//
//go:noescape
func diffAVX2(p []byte, s, off uint64) int

// fillBlocks fills the longest prefix of p that is a multiple of 64 bytes
// (off is a multiple of 8) and returns its length.
func fillBlocks(p []byte, s, off uint64) int {
	if !useAVX2 {
		return 0
	}
	n := len(p) &^ 63
	fillAVX2(p[:n], s, off)
	return n
}

// sameBlocks returns the length of the longest prefix of p, a multiple of
// 64 bytes, that holds the pattern (off is a multiple of 8).
func sameBlocks(p []byte, s, off uint64) int {
	if !useAVX2 {
		return 0
	}
	return diffAVX2(p[:len(p)&^63], s, off)
}
