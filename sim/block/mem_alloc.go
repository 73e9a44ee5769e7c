package block

// Page buffers come from chunks: 2 MiB pieces of memory carved into pages in
// allocation order, so that the kernel can back them with transparent huge
// pages (on Linux, mem_alloc_linux.go maps them outside the Go heap with
// MADV_HUGEPAGE). Page faults on small anonymous pages cost tens of
// microseconds on some virtual machines, which made first writes into a
// fresh Mem ten times slower than overwrites; huge pages cut that by 4x.
//
// A chunk lives while any of its pages is referenced from a page struct
// (pageBuf.c); the garbage collector then releases it, to a small pool of
// idle chunks that later Mems reuse (the kernel zeroes a fresh mapping's
// memory when it is first touched, 2 MiB at a time: a scenario's small
// disks paid that for every chunk) or, past the pool's size, to the kernel.
// Pages a Mem drops go to a small free list first and are reused by the
// same Mem.
//
// Memory that was used before is not zeroed when it is handed out again
// unless the caller asks (get(true)): a page about to be written whole is
// not cleared first.

const (
	chunkSize   = 2 << 20
	maxFreeBufs = 1024
)

// chunk owns memory that page buffers slice. used says the memory may
// hold old data (it came from the pool); a fresh mapping reads as zeros.
type chunk struct {
	mem  []byte
	used bool
}

// pageBuf is one page buffer and the chunk that keeps it alive (nil when
// the buffer is an ordinary Go slice).
type pageBuf struct {
	b []byte
	c *chunk
}

// pageAlloc hands out page buffers. It is not safe for concurrent use; a
// Mem calls it under its mutex.
type pageAlloc struct {
	psize int
	cur   *chunk
	next  int
	free  []pageBuf
}

// get returns a page buffer; zero says the caller needs it zeroed (else it
// writes every byte before reading any).
func (a *pageAlloc) get(zero bool) pageBuf {
	pb, clean := a.take()
	if zero && !clean {
		clear(pb.b)
	}
	return pb
}

// getPart returns a page buffer that is zero outside [off, off+n), where
// the caller writes at once.
func (a *pageAlloc) getPart(off, n int) pageBuf {
	pb, clean := a.take()
	if !clean {
		clear(pb.b[:off])
		clear(pb.b[off+n:])
	}
	return pb
}

// take returns a page buffer and whether it is known to be all zeros.
func (a *pageAlloc) take() (pb pageBuf, clean bool) {
	if n := len(a.free); n > 0 {
		pb := a.free[n-1]
		a.free[n-1] = pageBuf{}
		a.free = a.free[:n-1]
		return pb, false
	}
	if a.cur == nil || a.next+a.psize > len(a.cur.mem) {
		a.cur, a.next = newChunk(), 0
		if a.cur == nil {
			return pageBuf{b: make([]byte, a.psize)}, true
		}
	}
	pb = pageBuf{b: a.cur.mem[a.next : a.next+a.psize : a.next+a.psize], c: a.cur}
	a.next += a.psize
	return pb, !a.cur.used
}

// put takes back a buffer the Mem no longer references.
func (a *pageAlloc) put(pb pageBuf) {
	if pb.b != nil && len(a.free) < maxFreeBufs {
		a.free = append(a.free, pb)
	}
}
