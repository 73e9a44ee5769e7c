package block

// Page buffers come from chunks: 2 MiB pieces of memory carved into pages in
// allocation order, so that the kernel can back them with transparent huge
// pages (on Linux, mem_alloc_linux.go maps them outside the Go heap with
// MADV_HUGEPAGE). Page faults on small anonymous pages cost tens of
// microseconds on some virtual machines, which made first writes into a
// fresh Mem ten times slower than overwrites; huge pages cut that by 4x.
//
// A chunk lives while any of its pages is referenced from a page struct
// (pageBuf.c); the garbage collector then releases it. Pages a Mem drops go
// to a small free list first and are reused, zeroed, by the same Mem.

const (
	chunkSize   = 2 << 20
	maxFreeBufs = 1024
)

// chunk owns memory that page buffers slice.
type chunk struct{ mem []byte }

// pageBuf is one page buffer and the chunk that keeps it alive (nil when
// the buffer is an ordinary Go slice).
type pageBuf struct {
	b []byte
	c *chunk
}

// pageAlloc hands out zeroed page buffers. It is not safe for concurrent
// use; a Mem calls it under its mutex.
type pageAlloc struct {
	psize int
	cur   *chunk
	next  int
	free  []pageBuf
}

func (a *pageAlloc) get() pageBuf {
	if n := len(a.free); n > 0 {
		pb := a.free[n-1]
		a.free[n-1] = pageBuf{}
		a.free = a.free[:n-1]
		clear(pb.b)
		return pb
	}
	if a.cur == nil || a.next+a.psize > len(a.cur.mem) {
		a.cur, a.next = newChunk(), 0
		if a.cur == nil {
			return pageBuf{b: make([]byte, a.psize)}
		}
	}
	pb := pageBuf{b: a.cur.mem[a.next : a.next+a.psize : a.next+a.psize], c: a.cur}
	a.next += a.psize
	return pb
}

// put takes back a buffer the Mem no longer references.
func (a *pageAlloc) put(pb pageBuf) {
	if pb.b != nil && len(a.free) < maxFreeBufs {
		a.free = append(a.free, pb)
	}
}
