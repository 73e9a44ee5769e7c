package record

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// Random data is stored raw without trying to compress it; text, zeros and
// small blobs are compressed.
func TestLooksRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	random := make([]byte, 4096)
	for i := range random {
		random[i] = byte(r.Uint32())
	}
	half := append(append([]byte(nil), random[:2048]...), make([]byte, 2048)...)
	for _, tc := range []struct {
		name string
		data []byte
		want bool
	}{
		{"random", random, true},
		{"text", bytes.Repeat([]byte("the quick brown fox "), 300), false},
		{"zeros", make([]byte, 1<<20), false},
		{"half random, half zeros", half, false},
		{"small random", random[:1000], false},
	} {
		if got := looksRandom(tc.data); got != tc.want {
			t.Errorf("%s: looksRandom = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Data of random words and zero words (fio's buffers are so made) is
// random enough: the sample must not sit on one word offset.
func TestLooksRandomWords(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	b := make([]byte, 4096)
	for w := 0; w < len(b)/8; w++ {
		if w%8 == 7 {
			continue // a zero word
		}
		for i := 0; i < 8; i++ {
			b[w*8+i] = byte(r.Uint32())
		}
	}
	if !looksRandom(b) {
		t.Error("random words with zero words: not taken as random")
	}
	for i := 0; i < len(b); i += 8 {
		b[i] = 0 // the first byte of every word
	}
	if !looksRandom(b) {
		t.Error("random words whose first bytes are zero: not taken as random")
	}
}

func BenchmarkLooksRandom4K(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 2))
	p := make([]byte, 4096)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	for b.Loop() {
		looksRandom(p)
	}
}
