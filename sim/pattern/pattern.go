// Package pattern defines the data patterns that scenarios write and verify.
//
// A pattern is named by a token ("A", "B", "v2", ...). Its content is a pure
// function of the name and the byte offset on the device being addressed,
// so data that lands at the wrong offset, or data of another pattern, never
// verifies. The special name "zero" is all zero bytes.
//
// The simulator, the guest agent and the NBD tests all use this package, so
// the same pattern means the same bytes everywhere.
package pattern

import (
	"encoding/binary"
	"fmt"
)

// Zero is the name of the all-zero pattern.
const Zero = "zero"

// Valid reports whether name can name a pattern: 1 to 32 characters from
// [A-Za-z0-9_.-].
func Valid(name string) error {
	if len(name) == 0 || len(name) > 32 {
		return fmt.Errorf("pattern name %q: must be 1 to 32 characters", name)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return fmt.Errorf("pattern name %q: invalid character %q", name, c)
		}
	}
	return nil
}

func seed(name string) uint64 {
	// FNV-1a 64.
	h := uint64(14695981039346656037)
	for i := 0; i < len(name); i++ {
		h ^= uint64(name[i])
		h *= 1099511628211
	}
	return h
}

func mix(x uint64) uint64 {
	// splitmix64 finaliser.
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// Fill writes the bytes of pattern name for device offsets [off, off+len(p)).
func Fill(p []byte, name string, off int64) {
	if name == Zero {
		clear(p)
		return
	}
	s := seed(name)
	var w [8]byte
	i := 0
	for i < len(p) {
		o := off + int64(i)
		word := o &^ 7
		binary.LittleEndian.PutUint64(w[:], mix(s^uint64(word)))
		n := copy(p[i:], w[o-word:])
		i += n
	}
}

// Mismatch describes the first byte where data differs from a pattern.
type Mismatch struct {
	Off  int64 // device offset of the first differing byte
	Want byte
	Got  byte
	// Looks is the best guess at what the data holds instead: "zero" or
	// "unknown".
	Looks string
}

func (m *Mismatch) Error() string {
	return fmt.Sprintf("data differs at offset %d: want %#02x, got %#02x (looks like %s)", m.Off, m.Want, m.Got, m.Looks)
}

// Verify checks that p holds pattern name at device offset off. It returns
// nil or a *Mismatch.
func Verify(p []byte, name string, off int64) error {
	want := make([]byte, len(p))
	Fill(want, name, off)
	for i := range p {
		if p[i] != want[i] {
			looks := "unknown"
			zero := true
			for j := i; j < len(p) && j < i+512; j++ {
				if p[j] != 0 {
					zero = false
					break
				}
			}
			if zero {
				looks = Zero
			}
			return &Mismatch{Off: off + int64(i), Want: want[i], Got: p[i], Looks: looks}
		}
	}
	return nil
}
