package block

import "unsafe"

// PoisonIdleChunks fills the pool of idle chunks with chunks whose every
// byte is 0xa5, so that Mems made next get memory that held data: a Mem
// must never show such bytes where nothing was written.
func PoisonIdleChunks() {
	idle.Lock()
	defer idle.Unlock()
	for len(idle.starts) < maxIdleChunks {
		p := mapChunk()
		if p == nil {
			break
		}
		idle.starts = append(idle.starts, p)
	}
	for _, p := range idle.starts {
		b := unsafe.Slice((*byte)(p), chunkSize)
		for i := range b {
			b[i] = 0xa5
		}
	}
}
