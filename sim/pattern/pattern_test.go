package pattern

import (
	"errors"
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
