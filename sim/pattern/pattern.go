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
	"math/bits"
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

// unmix inverts mix: unmix(mix(x)) == x.
func unmix(y uint64) uint64 {
	y ^= y>>31 ^ y>>62
	y *= 0x319642b2d24d8ec3 // the inverse of 0x94d049bb133111eb mod 2^64
	y ^= y>>27 ^ y>>54
	y *= 0x96de1b173f119089 // the inverse of 0xbf58476d1ce4e5b9 mod 2^64
	y ^= y>>30 ^ y>>60
	return y - 0x9e3779b97f4a7c15
}

// Key identifies a named pattern among others (Identify); 0 for Zero.
func Key(name string) uint64 {
	if name == Zero {
		return 0
	}
	return seed(name)
}

// Identify returns the Key of the only pattern whose 8 bytes at the
// 8-aligned device offset off are word (read little-endian): a candidate
// for what data starting with word is, to be checked in full (Verify).
// Any word has exactly one candidate.
func Identify(word uint64, off int64) uint64 {
	return unmix(word) ^ uint64(off&^7)
}

// Fill writes the bytes of pattern name for device offsets [off, off+len(p)).
//
// The bytes at device offset o are byte o%8 of the little-endian word
// mix(seed(name) ^ (o &^ 7)): every aligned 8-byte word of the device is one
// mix call, written whole where p covers it.
func Fill(p []byte, name string, off int64) {
	if name == Zero {
		clear(p)
		return
	}
	fill(p, seed(name), off)
}

func fill(p []byte, s uint64, off int64) {
	if len(p) == 0 {
		return
	}
	var w [8]byte
	// A head up to the first aligned word.
	if h := int(off & 7); h != 0 {
		word := off &^ 7
		binary.LittleEndian.PutUint64(w[:], mix(s^uint64(word)))
		n := copy(p, w[h:])
		p = p[n:]
		off += int64(n)
	}
	// off is aligned from here on (or p is empty). Whole words: eight at
	// a time in vector registers where the CPU has them, else four at a
	// time (each mix is independent, so the CPU overlaps their
	// multiplications).
	o := uint64(off)
	if n := fillBlocks(p, s, o); n > 0 {
		p = p[n:]
		o += uint64(n)
	}
	for len(p) >= 32 {
		binary.LittleEndian.PutUint64(p[0:8], mix(s^o))
		binary.LittleEndian.PutUint64(p[8:16], mix(s^(o+8)))
		binary.LittleEndian.PutUint64(p[16:24], mix(s^(o+16)))
		binary.LittleEndian.PutUint64(p[24:32], mix(s^(o+24)))
		p = p[32:]
		o += 32
	}
	for len(p) >= 8 {
		binary.LittleEndian.PutUint64(p[:8], mix(s^o))
		p = p[8:]
		o += 8
	}
	if len(p) > 0 {
		binary.LittleEndian.PutUint64(w[:], mix(s^o))
		copy(p, w[:])
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
// nil or a *Mismatch. It allocates nothing when p matches.
func Verify(p []byte, name string, off int64) error {
	i := mismatch(p, name, off)
	if i < 0 {
		return nil
	}
	var w [1]byte
	Fill(w[:], name, off+int64(i))
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
	return &Mismatch{Off: off + int64(i), Want: w[0], Got: p[i], Looks: looks}
}

// Is reports whether p holds pattern name at device offset off, as Verify
// returning nil does; it never allocates.
func Is(p []byte, name string, off int64) bool { return mismatch(p, name, off) < 0 }

// mismatch returns the index of the first byte of p that differs from
// pattern name at device offset off, or -1.
func mismatch(p []byte, name string, off int64) int {
	if name == Zero {
		for i := 0; i+8 <= len(p); i += 8 {
			if binary.LittleEndian.Uint64(p[i:]) != 0 {
				return i + firstByte(binary.LittleEndian.Uint64(p[i:]))
			}
		}
		for i := len(p) &^ 7; i < len(p); i++ {
			if p[i] != 0 {
				return i
			}
		}
		return -1
	}
	s := seed(name)
	var w [8]byte
	i := 0
	if h := int(off & 7); h != 0 {
		binary.LittleEndian.PutUint64(w[:], mix(s^uint64(off&^7)))
		for ; i < len(p) && h+i < 8; i++ {
			if p[i] != w[h+i] {
				return i
			}
		}
	}
	// From here off+i is aligned, or p is done.
	x := off + int64(i)
	if i < len(p) {
		n := sameBlocks(p[i:], s, uint64(x))
		i += n
		x += int64(n)
	}
	for ; i+32 <= len(p); i, x = i+32, x+32 {
		a := binary.LittleEndian.Uint64(p[i:]) ^ mix(s^uint64(x))
		b := binary.LittleEndian.Uint64(p[i+8:]) ^ mix(s^uint64(x+8))
		c := binary.LittleEndian.Uint64(p[i+16:]) ^ mix(s^uint64(x+16))
		d := binary.LittleEndian.Uint64(p[i+24:]) ^ mix(s^uint64(x+24))
		if a|b|c|d != 0 {
			break // the word loop below finds the byte
		}
	}
	for ; i+8 <= len(p); i, x = i+8, x+8 {
		if d := binary.LittleEndian.Uint64(p[i:]) ^ mix(s^uint64(x)); d != 0 {
			return i + firstByte(d)
		}
	}
	if i < len(p) {
		binary.LittleEndian.PutUint64(w[:], mix(s^uint64(x)))
		for j := 0; i < len(p); i, j = i+1, j+1 {
			if p[i] != w[j] {
				return i
			}
		}
	}
	return -1
}

// firstByte is the index of the lowest non-zero byte of little-endian d != 0.
func firstByte(d uint64) int { return bits.TrailingZeros64(d) / 8 }
