package nbd

import (
	"fmt"
	"sync"
	"syscall"

	"snaplab/sim/block"
)

// memDev is a sparse in-memory test disk with 4 KiB pages, a Mapper and a
// Discarder. It records the operations it sees.
type memDev struct {
	name string
	size int64

	mu      sync.Mutex
	pages   map[int64][]byte
	ops     []string // "write OFF LEN", "fua OFF LEN", "flush", "discard OFF LEN"
	durable map[int64]bool
	dirty   map[int64]bool
}

const pageSize = 4096

func newMemDev(name string, size int64) *memDev {
	return &memDev{name: name, size: size, pages: map[int64][]byte{},
		durable: map[int64]bool{}, dirty: map[int64]bool{}}
}

func (m *memDev) Name() string { return m.name }
func (m *memDev) Size() int64  { return m.size }

func (m *memDev) ReadAt(p []byte, off int64) (int, error) {
	if err := block.CheckRange(m.name, "read", m.size, off, int64(len(p))); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for n := 0; n < len(p); {
		o := off + int64(n)
		po := int(o % pageSize)
		c := min(len(p)-n, pageSize-po)
		if pg := m.pages[o/pageSize]; pg != nil {
			copy(p[n:n+c], pg[po:])
		} else {
			clear(p[n : n+c])
		}
		n += c
	}
	return len(p), nil
}

func (m *memDev) write(p []byte, off int64, fua bool) (int, error) {
	if err := block.CheckRange(m.name, "write", m.size, off, int64(len(p))); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	kind := "write"
	if fua {
		kind = "fua"
	}
	m.ops = append(m.ops, fmt.Sprintf("%s %d %d", kind, off, len(p)))
	for n := 0; n < len(p); {
		o := off + int64(n)
		po := int(o % pageSize)
		c := min(len(p)-n, pageSize-po)
		pg := m.pages[o/pageSize]
		if pg == nil {
			pg = make([]byte, pageSize)
			m.pages[o/pageSize] = pg
		}
		copy(pg[po:], p[n:n+c])
		if fua {
			m.durable[o/pageSize] = true
		} else {
			m.dirty[o/pageSize] = true
		}
		n += c
	}
	return len(p), nil
}

func (m *memDev) WriteAt(p []byte, off int64) (int, error)    { return m.write(p, off, false) }
func (m *memDev) WriteAtFUA(p []byte, off int64) (int, error) { return m.write(p, off, true) }

func (m *memDev) Flush() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ops = append(m.ops, "flush")
	for k := range m.dirty {
		m.durable[k] = true
	}
	clear(m.dirty)
	return nil
}

func (m *memDev) Discard(off, length int64) error {
	if err := block.CheckRange(m.name, "discard", m.size, off, length); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ops = append(m.ops, fmt.Sprintf("discard %d %d", off, length))
	for o := off; o < off+length; {
		po := o % pageSize
		c := min(off+length-o, pageSize-po)
		if pg := m.pages[o/pageSize]; pg != nil {
			if po == 0 && c == pageSize {
				delete(m.pages, o/pageSize)
			} else {
				clear(pg[po : po+c])
			}
		}
		o += c
	}
	return nil
}

func (m *memDev) Map(off, length int64) ([]block.Extent, error) {
	if err := block.CheckRange(m.name, "map", m.size, off, length); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []block.Extent
	for o := off; o < off+length; {
		c := min(off+length-o, pageSize-o%pageSize)
		hole := m.pages[o/pageSize] == nil
		if k := len(out) - 1; k >= 0 && out[k].Hole == hole {
			out[k].Len += c
		} else {
			out = append(out, block.Extent{Off: o, Len: c, Hole: hole})
		}
		o += c
	}
	return out, nil
}

func (m *memDev) opLog() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.ops...)
}

// failDev fails every operation touching [badOff, badOff+badLen) with errno;
// Flush fails with errno when flushFails is set.
type failDev struct {
	*memDev
	badOff, badLen int64
	errno          syscall.Errno
	flushFails     bool
}

func (f *failDev) bad(op string, off, n int64) error {
	if off < f.badOff+f.badLen && f.badOff < off+n {
		return &block.Error{Dev: f.name, Op: op, Off: off, Len: n, Errno: f.errno,
			Err: fmt.Errorf("injected fault in [%d, %d)", f.badOff, f.badOff+f.badLen)}
	}
	return nil
}

func (f *failDev) ReadAt(p []byte, off int64) (int, error) {
	if err := f.bad("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	return f.memDev.ReadAt(p, off)
}

func (f *failDev) WriteAt(p []byte, off int64) (int, error) {
	if err := f.bad("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	return f.memDev.WriteAt(p, off)
}

func (f *failDev) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := f.bad("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	return f.memDev.WriteAtFUA(p, off)
}

func (f *failDev) Discard(off, n int64) error {
	if err := f.bad("discard", off, n); err != nil {
		return err
	}
	return f.memDev.Discard(off, n)
}

func (f *failDev) Map(off, n int64) ([]block.Extent, error) {
	if err := f.bad("map", off, n); err != nil {
		return nil, err
	}
	return f.memDev.Map(off, n)
}

func (f *failDev) Flush() error {
	if f.flushFails {
		return &block.Error{Dev: f.name, Op: "flush", Errno: f.errno}
	}
	return f.memDev.Flush()
}

// gateDev blocks reads (and optionally writes) until the gate is opened.
type gateDev struct {
	*memDev
	gate        chan struct{}
	blockWrites bool
	entered     chan string
}

func (g *gateDev) ReadAt(p []byte, off int64) (int, error) {
	g.entered <- "read"
	<-g.gate
	return g.memDev.ReadAt(p, off)
}

func (g *gateDev) WriteAt(p []byte, off int64) (int, error) {
	if g.blockWrites {
		g.entered <- "write"
		<-g.gate
	}
	return g.memDev.WriteAt(p, off)
}

// plainDev hides the optional interfaces of a memDev.
type plainDev struct{ d *memDev }

func (p plainDev) Name() string                             { return p.d.Name() }
func (p plainDev) Size() int64                              { return p.d.Size() }
func (p plainDev) ReadAt(b []byte, off int64) (int, error)  { return p.d.ReadAt(b, off) }
func (p plainDev) WriteAt(b []byte, off int64) (int, error) { return p.d.WriteAt(b, off) }
func (p plainDev) Flush() error                             { return p.d.Flush() }
