package block

import (
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// liveChunks counts mapped chunks, for the leak test.
var liveChunks atomic.Int64

// newChunk maps a 2 MiB-aligned chunk with MADV_HUGEPAGE and arranges for
// it to be unmapped when it becomes unreachable. It returns nil when the
// mapping fails; the caller then falls back to the Go heap.
func newChunk() *chunk {
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
	mem := unsafe.Slice((*byte)(start), chunkSize)
	unix.Madvise(mem, unix.MADV_HUGEPAGE) // advisory: an error only costs speed
	c := &chunk{mem: mem}
	liveChunks.Add(1)
	runtime.AddCleanup(c, func(p unsafe.Pointer) {
		unix.MunmapPtr(p, chunkSize)
		liveChunks.Add(-1)
	}, start)
	return c
}
