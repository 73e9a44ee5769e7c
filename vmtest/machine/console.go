package machine

import (
	"bytes"
	"os"
	"strings"
	"sync"
	"time"
)

// Ring keeps the tail of what is written to it (a guest's console, a
// process's stderr) and when it was last written.
type Ring struct {
	mu   sync.Mutex
	b    bytes.Buffer
	max  int
	last time.Time
}

// NewRing keeps at most max bytes: past that, the older half goes.
func NewRing(max int) *Ring { return &Ring{max: max} }

func (r *Ring) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last = time.Now()
	r.b.Write(p)
	if r.b.Len() > r.max {
		keep := r.b.Bytes()[r.b.Len()-r.max/2:]
		nb := append([]byte(nil), keep...)
		r.b.Reset()
		r.b.Write(nb)
	}
	return len(p), nil
}

// String is what the ring holds.
func (r *Ring) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.b.String()
}

// LastWrite is when something was last written, or since if never.
func (r *Ring) LastWrite(since time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last.IsZero() {
		return since
	}
	return r.last
}

// FileSink writes to a file and never fails: a full disk must not stop a
// guest's console. After a failed write it writes nothing more.
type FileSink struct {
	mu  sync.Mutex
	f   *os.File
	bad bool
}

// NewFileSink writes to f (nil: nowhere).
func NewFileSink(f *os.File) *FileSink { return &FileSink{f: f} }

func (w *FileSink) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f != nil && !w.bad {
		if _, err := w.f.Write(p); err != nil {
			w.bad = true
		}
	}
	return len(p), nil
}

// Close closes the file; later writes go nowhere.
func (w *FileSink) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
}

// Tail is the last lines of s.
func Tail(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}
