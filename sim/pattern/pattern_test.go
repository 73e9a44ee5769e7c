package pattern

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"testing"
)

func TestFillIsOffsetDependent(t *testing.T) {
	a := make([]byte, 4096)
	Fill(a, "A", 0)
	b := make([]byte, 4096)
	Fill(b, "A", 4096)
	if string(a) == string(b) {
		t.Fatal("pattern A at offsets 0 and 4096 is identical")
	}
	// Unaligned fills agree with aligned ones.
	c := make([]byte, 100)
	Fill(c, "A", 13)
	if string(c) != string(a[13:113]) {
		t.Fatal("unaligned fill differs from aligned fill")
	}
}

func TestVerify(t *testing.T) {
	p := make([]byte, 1024)
	Fill(p, "B", 512)
	if err := Verify(p, "B", 512); err != nil {
		t.Fatal(err)
	}
	if err := Verify(p, "A", 512); err == nil {
		t.Fatal("pattern B verified as A")
	}
	if err := Verify(p, "B", 0); err == nil {
		t.Fatal("pattern B at 512 verified at offset 0")
	}
	z := make([]byte, 1024)
	err := Verify(z, "B", 512)
	var m *Mismatch
	if !errors.As(err, &m) || m.Looks != Zero || m.Off != 512 {
		t.Fatalf("zero data: got %v", err)
	}
	if err := Verify(z, Zero, 0); err != nil {
		t.Fatal(err)
	}
}

func TestValid(t *testing.T) {
	for _, ok := range []string{"A", "v2", "x_y.z-1"} {
		if err := Valid(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a b", "é", "0123456789012345678901234567890123"} {
		if Valid(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// refFill is Fill as first written, one mix call per byte run: the bytes
// of every pattern must never change (recordings and the kernel goldens
// hold them).
func refFill(p []byte, name string, off int64) {
	if name == Zero {
		clear(p)
		return
	}
	s := seed(name)
	var w [8]byte
	for i := 0; i < len(p); {
		o := off + int64(i)
		word := o &^ 7
		binary.LittleEndian.PutUint64(w[:], mix(s^uint64(word)))
		i += copy(p[i:], w[o-word:])
	}
}

// bothWays runs f with vector code (where the CPU has it) and without.
func bothWays(t *testing.T, f func(t *testing.T)) {
	t.Run("vector", f)
	saved := useAVX2
	useAVX2 = false
	defer func() { useAVX2 = saved }()
	t.Run("plain", f)
}

func TestFillMatchesReference(t *testing.T) { bothWays(t, testFillMatchesReference) }

func testFillMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 5000 {
		n := rng.IntN(300)
		if rng.IntN(10) == 0 {
			n = rng.IntN(70000)
		}
		off := rng.Int64N(1 << 40)
		name := []string{"A", "w17", "v2", Zero, "x_y.z-1"}[rng.IntN(5)]
		got, want := make([]byte, n), make([]byte, n)
		for i := range got {
			got[i] = 0xa5 // Fill must overwrite every byte
		}
		Fill(got, name, off)
		refFill(want, name, off)
		if !bytes.Equal(got, want) {
			t.Fatalf("Fill(%d bytes, %q, %d) differs from the reference", n, name, off)
		}
	}
	// A fixed vector: pattern A's first bytes.
	p := make([]byte, 12)
	Fill(p, "A", 4)
	if got := hex.EncodeToString(p); got != "c01acd1f90ef4eef3627703b" {
		t.Fatalf("pattern A at 4: %s", got)
	}
}

// Verify reports the first differing byte, wherever it is, as a plain
// byte-by-byte comparison would.
func TestVerifyFindsFirstDifference(t *testing.T) { bothWays(t, testVerifyFindsFirstDifference) }

func testVerifyFindsFirstDifference(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 5000 {
		n := 1 + rng.IntN(200)
		if rng.IntN(4) == 0 {
			n = 1 + rng.IntN(5000)
		}
		off := rng.Int64N(1 << 30)
		name := []string{"A", "B", Zero}[rng.IntN(3)]
		p := make([]byte, n)
		Fill(p, name, off)
		if err := Verify(p, name, off); err != nil {
			t.Fatalf("intact data: %v", err)
		}
		i := rng.IntN(n)
		p[i] ^= byte(1 + rng.IntN(255))
		if j := rng.IntN(n); j > i {
			p[j] ^= 1
		}
		var m *Mismatch
		if err := Verify(p, name, off); !errors.As(err, &m) || m.Off != off+int64(i) || m.Got != p[i] {
			t.Fatalf("%d bytes at %d, byte %d changed: %v", n, off, i, err)
		}
		want := make([]byte, 1)
		refFill(want, name, off+int64(i))
		if m.Want != want[0] {
			t.Fatalf("want byte %#x, reported %#x", want[0], m.Want)
		}
	}
}

func TestVerifyAllocatesNothing(t *testing.T) {
	p := make([]byte, 64<<10)
	Fill(p, "A", 4096)
	if n := testing.AllocsPerRun(10, func() {
		if Verify(p, "A", 4096) != nil {
			t.Fatal("mismatch")
		}
	}); n != 0 {
		t.Fatalf("%v allocations per Verify", n)
	}
}

func BenchmarkFill(b *testing.B) {
	p := make([]byte, 64<<10)
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		Fill(p, "w12", 1<<20)
	}
}

func BenchmarkVerify(b *testing.B) {
	p := make([]byte, 64<<10)
	Fill(p, "w12", 1<<20)
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		if Verify(p, "w12", 1<<20) != nil {
			b.Fatal("mismatch")
		}
	}
}

// Identify finds a pattern from its first word at any aligned offset, and
// unmix inverts mix.
func TestIdentify(t *testing.T) {
	for _, x := range []uint64{0, 1, 1 << 63, 0x0123456789abcdef, ^uint64(0)} {
		if got := unmix(mix(x)); got != x {
			t.Fatalf("unmix(mix(%#x)) = %#x", x, got)
		}
	}
	for _, name := range []string{"A", "B", "v2", "a-long.pattern_name"} {
		for _, off := range []int64{0, 8, 512, 1 << 40} {
			p := make([]byte, 8)
			Fill(p, name, off)
			if got := Identify(binary.LittleEndian.Uint64(p), off); got != Key(name) {
				t.Errorf("Identify(%s at %d) = %#x, want %#x", name, off, got, Key(name))
			}
		}
	}
}
