//go:build !linux

package block

// PoisonIdleChunks does nothing: outside Linux, page buffers come from the
// Go heap.
func PoisonIdleChunks() {}
