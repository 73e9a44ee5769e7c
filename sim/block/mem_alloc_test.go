//go:build linux

package block

import (
	"runtime"
	"testing"
	"time"
)

// Chunks of a Mem that is no longer referenced are released: kept idle for
// reuse, up to maxIdleChunks, or unmapped.
func TestMemChunksReleased(t *testing.T) {
	runtime.GC()
	base := liveChunks.Load()
	m, err := NewMem("leak", 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 1<<20)
	for off := int64(0); off < 32<<20; off += 1 << 20 {
		if _, err := m.WriteAt(p, off*7); err != nil {
			t.Fatal(err)
		}
	}
	if got := liveChunks.Load() - base; got < 16 {
		t.Fatalf("32 MiB written: %d new chunks, want at least 16", got)
	}
	m = nil
	deadline := time.Now().Add(10 * time.Second)
	defer func() {
		if n := idleChunks(); n > maxIdleChunks {
			t.Errorf("%d idle chunks kept, want at most %d", n, maxIdleChunks)
		}
	}()
	for liveChunks.Load() > base {
		if time.Now().After(deadline) {
			t.Fatalf("%d chunks still mapped 10 s after the Mem was dropped", liveChunks.Load()-base)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}
