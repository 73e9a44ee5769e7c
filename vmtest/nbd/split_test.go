package nbd

import (
	"bytes"
	"sync"
	"testing"
)

// sizeDev records the length of every call that reaches it.
type sizeDev struct {
	*memDev
	mu    sync.Mutex
	sizes []int64
}

func (d *sizeDev) note(n int64) {
	d.mu.Lock()
	d.sizes = append(d.sizes, n)
	d.mu.Unlock()
}

func (d *sizeDev) ReadAt(p []byte, off int64) (int, error) {
	d.note(int64(len(p)))
	return d.memDev.ReadAt(p, off)
}

func (d *sizeDev) WriteAt(p []byte, off int64) (int, error) {
	d.note(int64(len(p)))
	return d.memDev.WriteAt(p, off)
}

func (d *sizeDev) Discard(off, n int64) error {
	d.note(n)
	return d.memDev.Discard(off, n)
}

// TestLargeRequestsAreSplit: a 32 MiB READ or WRITE reaches the device as
// calls of at most 1 MiB, a 64 MiB TRIM as calls of at most 16 MiB, so on
// a device serving one call at a time (the simulator) another client's
// small read waits behind one piece of each large request, not all of it;
// the data is whole.
func TestLargeRequestsAreSplit(t *testing.T) {
	dev := &sizeDev{memDev: newMemDev("d", 128<<20)}
	s := startServer(t, []Export{{Name: "d", Dev: dev}})
	c := dialRaw(t, s.addr)
	c.open("d", goOpts{blockSize: true})
	data := bytes.Repeat([]byte("snaplab!"), (32<<20)/8)
	c.send(0, CmdWrite, 1, 1<<20, uint32(len(data)), data)
	if errno, _ := c.readSimple(); errno != 0 {
		t.Fatalf("write: errno %d", errno)
	}
	c.send(0, CmdRead, 2, 1<<20, uint32(len(data)), nil)
	if errno, _ := c.readSimple(); errno != 0 {
		t.Fatalf("read: errno %d", errno)
	}
	if got := c.read(len(data)); !bytes.Equal(got, data) {
		t.Fatal("32 MiB read back differs")
	}
	c.send(0, CmdTrim, 3, 64<<20, 64<<20, nil)
	if errno, _ := c.readSimple(); errno != 0 {
		t.Fatalf("trim: errno %d", errno)
	}
	dev.mu.Lock()
	defer dev.mu.Unlock()
	var data2, discards int
	for _, n := range dev.sizes {
		if n > maxDiscardCall || (n > maxDataCall && n != maxDiscardCall) {
			t.Errorf("a device call of %d bytes", n)
		}
		if n == maxDataCall {
			data2++
		} else if n == maxDiscardCall {
			discards++
		}
	}
	if data2 != 64 || discards != 4 {
		t.Errorf("%d calls of 1 MiB (want 64: 32 written, 32 read), %d of 16 MiB (want 4)", data2, discards)
	}
}
