package machine

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRing(t *testing.T) {
	r := NewRing(8)
	since := time.Unix(1, 0)
	if got := r.LastWrite(since); !got.Equal(since) {
		t.Errorf("LastWrite before any write: %v", got)
	}
	r.Write([]byte("abcdef"))
	r.Write([]byte("ghij")) // 10 > 8: the older bytes go, the last 4 stay
	if got := r.String(); got != "ghij" {
		t.Errorf("ring holds %q, want the last half, %q", got, "ghij")
	}
	if r.LastWrite(since).Equal(since) {
		t.Error("LastWrite not updated")
	}
}

func TestFileSink(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := NewFileSink(f)
	if n, err := w.Write([]byte("boot\n")); n != 5 || err != nil {
		t.Fatalf("Write: %d, %v", n, err)
	}
	w.Close()
	// Closed (or failing): writes still succeed, going nowhere.
	if n, err := w.Write([]byte("more\n")); n != 5 || err != nil {
		t.Fatalf("Write after Close: %d, %v", n, err)
	}
	if b, _ := os.ReadFile(path); string(b) != "boot\n" {
		t.Errorf("file holds %q", b)
	}
	if n, err := NewFileSink(nil).Write([]byte("x")); n != 1 || err != nil {
		t.Errorf("a sink without a file: %d, %v", n, err)
	}
}

func TestTail(t *testing.T) {
	s := "a\nb\nc\nd\n"
	if got := Tail(s, 2); got != "c\nd" {
		t.Errorf("Tail 2: %q", got)
	}
	if got := Tail(s, 9); got != strings.TrimRight(s, "\n") {
		t.Errorf("Tail 9: %q", got)
	}
}
