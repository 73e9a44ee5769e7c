package block

import (
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// liveChunks counts chunks in use by some Mem, for the leak test.
var liveChunks atomic.Int64

// maxIdleChunks bounds the pool of idle chunks: 64 MiB. Exploration (a
// scenario after another, each with its own disks) frees chunks in bursts,
// at each garbage collection: with 16, a quarter of the chunks a scenario
// took were fresh mappings again.
const maxIdleChunks = 32

// idle holds the start of mapped chunks no Mem uses any more.
var idle struct {
	sync.Mutex
	starts []unsafe.Pointer
}

// idleChunks returns the number of chunks in the pool.
func idleChunks() int {
	idle.Lock()
	defer idle.Unlock()
	return len(idle.starts)
}

// newChunk returns a 2 MiB-aligned chunk, from the pool of idle ones or
// newly mapped with MADV_HUGEPAGE, and arranges for it to go back to the
// pool (or be unmapped) when it becomes unreachable. It returns nil when
// the mapping fails; the caller then falls back to the Go heap.
func newChunk() *chunk {
	idle.Lock()
	var start unsafe.Pointer
	if n := len(idle.starts); n > 0 {
		start = idle.starts[n-1]
		idle.starts[n-1] = nil
		idle.starts = idle.starts[:n-1]
	}
	idle.Unlock()
	used := start != nil
	if !used {
		start = mapChunk()
		if start == nil {
			return nil
		}
	}
	c := &chunk{mem: unsafe.Slice((*byte)(start), chunkSize), used: used}
	liveChunks.Add(1)
	runtime.AddCleanup(c, releaseChunk, start)
	return c
}

// releaseChunk takes back the memory of a chunk that became unreachable.
func releaseChunk(p unsafe.Pointer) {
	liveChunks.Add(-1)
	idle.Lock()
	if len(idle.starts) < maxIdleChunks {
		idle.starts = append(idle.starts, p)
		p = nil
	}
	idle.Unlock()
	if p != nil {
		unix.MunmapPtr(p, chunkSize)
	}
}

// mapChunk maps 2 MiB aligned to 2 MiB, or returns nil.
func mapChunk() unsafe.Pointer {
	// Map twice the size and keep the aligned 2 MiB inside.
	p, err := unix.MmapPtr(-1, 0, nil, 2*chunkSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return nil
	}
	head := uintptr((chunkSize - uintptr(p)%chunkSize) % chunkSize)
	if head > 0 {
		unix.MunmapPtr(p, head)
	}
	start := unsafe.Add(p, head)
	if tail := chunkSize - head; tail > 0 {
		unix.MunmapPtr(unsafe.Add(start, chunkSize), tail)
	}
	unix.Madvise(unsafe.Slice((*byte)(start), chunkSize), unix.MADV_HUGEPAGE) // advisory: an error only costs speed
	return start
}
