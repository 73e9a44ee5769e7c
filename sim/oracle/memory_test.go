package oracle_test

import (
	"encoding/binary"
	"math/rand/v2"
	"runtime"
	"syscall"
	"testing"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/oracle"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/sim/world"
)

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// oracleOn1TiB is an oracle following a 1 TiB disk no byte of which is
// ever written (the writes here only tell the oracle).
func oracleOn1TiB(t testing.TB) (*oracle.Oracle, dm.Node) {
	t.Helper()
	ctl := dm.NewControl(world.New(0))
	o := oracle.New(ctl)
	m, err := block.NewMem("d", 1<<40)
	if err != nil {
		t.Fatal(err)
	}
	node, err := ctl.AddDisk(m, 512)
	if err != nil {
		t.Fatal(err)
	}
	return o, node
}

// What the oracle keeps for writes whose content it cannot know (failed
// writes, discards from outside: their sectors become unknown) grows with
// the runs of sectors written, not with the sectors: 1 GiB of random 4 KiB
// writes on a 1 TiB disk costs about 6 MiB (per-sector maps cost 107
// MiB), and a discard of the whole device frees it all.
func TestOracleMemoryOutsideWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("262144 writes")
	}
	o, d := oracleOn1TiB(t)
	before := heapInUse()
	const writes = 1 << 18 // 1 GiB of 4 KiB writes
	rng := rand.New(rand.NewPCG(1, 2))
	for range writes {
		off := rng.Int64N(1<<40/4096) * 4096
		o.EndWrite(o.BeginWrite(d, off, 4096, ""), syscall.EIO)
	}
	grown := int64(heapInUse()) - int64(before)
	t.Logf("1 GiB of random 4 KiB writes: the oracle holds %.1f MiB (%.1f bytes a write)", float64(grown)/(1<<20), float64(grown)/writes)
	if grown > 8<<20 {
		t.Errorf("the oracle holds %d MiB for 1 GiB of random 4 KiB writes, want at most 8 MiB", grown>>20)
	}
	// Every written sector reads as unknown (anything goes), the others
	// as zeros.
	rng = rand.New(rand.NewPCG(1, 2))
	for range 100 {
		off := rng.Int64N(1<<40/4096) * 4096
		junk := make([]byte, 4096)
		junk[17] = 1
		if err := o.CheckRead(o.BeginRead(d, off, 4096), junk, nil, false); err != nil {
			t.Fatalf("written at %d: %v", off, err)
		}
	}
	if err := o.CheckRead(o.BeginRead(d, 4096, 512), []byte{511: 1}, nil, false); err == nil {
		t.Error("a sector never written does not read as zeros")
	}

	// A discard of the whole device leaves one run: unknown.
	o.EndWrite(o.BeginWrite(d, 0, 1<<40, ""), syscall.EIO)
	if after := int64(heapInUse()) - int64(before); after > 64<<10 {
		t.Errorf("after a whole-device discard the oracle holds %d KiB, want at most 64", after>>10)
	}
	runtime.KeepAlive(o)
}

// Outside writes of arbitrary data are kept by each sector's hash: 1 GiB
// of random 4 KiB writes on a 1 TiB disk costs about 115 bytes a write (64
// of hashes, a mask byte, the boundaries of the disk's runs and of the
// hashes' index, with their leaves' slack): 29 MiB, 2.8% of the data. Each
// write is checked, and a discard of the whole device frees it all.
func TestOracleMemoryHashedWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("262144 writes")
	}
	o, d := oracleOn1TiB(t)
	before := heapInUse()
	const writes = 1 << 18 // 1 GiB of 4 KiB writes
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 4096)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	offs := make([]int64, writes)
	for i := range offs {
		offs[i] = rng.Int64N(1<<40/4096) * 4096
		binary.LittleEndian.PutUint64(data, uint64(i)) // each write its own data
		o.EndWrite(o.BeginWriteData(d, offs[i], data), nil)
	}
	grown := int64(heapInUse()) - int64(before) - writes*8 // less offs
	t.Logf("1 GiB of random 4 KiB writes of arbitrary data: the oracle holds %.1f MiB (%.1f bytes a write, %.1f a sector)", float64(grown)/(1<<20), float64(grown)/writes, float64(grown)/writes/8)
	if grown > 40<<20 {
		t.Errorf("the oracle holds %d MiB for 1 GiB of random 4 KiB writes of arbitrary data, want at most 40 MiB", grown>>20)
	}
	// Each write is checked: its own data passes (unless a later write
	// overlapped it), another's fails.
	for i := writes - 100; i < writes; i++ {
		binary.LittleEndian.PutUint64(data, uint64(i))
		if err := o.CheckRead(o.BeginRead(d, offs[i], 4096), data, nil, false); err != nil {
			t.Fatalf("write %d at %d: %v", i, offs[i], err)
		}
		binary.LittleEndian.PutUint64(data, uint64(i+1))
		if err := o.CheckRead(o.BeginRead(d, offs[i], 4096), data, nil, false); err == nil {
			t.Fatalf("write %d at %d: other data passes", i, offs[i])
		}
	}
	offs = nil
	o.EndWrite(o.BeginWrite(d, 0, 1<<40, ""), syscall.EIO)
	if after := int64(heapInUse()) - int64(before); after > 256<<10 {
		t.Errorf("after a whole-device discard the oracle holds %d KiB, want at most 256", after>>10)
	}
	runtime.KeepAlive(o)
}

// A discard of a whole 1 TiB device costs the oracle no memory on the way
// either: nothing per sector is made.
func TestOracleWholeDeviceDiscard(t *testing.T) {
	o, d := oracleOn1TiB(t)
	before := heapInUse()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	total := ms.TotalAlloc
	w := o.BeginWrite(d, 0, 1<<40, "")
	o.EndWrite(w, syscall.EIO)
	runtime.ReadMemStats(&ms)
	if n := ms.TotalAlloc - total; n > 64<<10 {
		t.Errorf("a whole-device discard allocated %d KiB, want at most 64", n>>10)
	}
	if grown := int64(heapInUse()) - int64(before); grown > 16<<10 {
		t.Errorf("a whole-device discard left %d KiB, want at most 16", grown>>10)
	}
	// A read anywhere accepts anything.
	if err := o.CheckRead(o.BeginRead(d, 1<<39, 1<<20), make([]byte, 1<<20), nil, false); err != nil {
		t.Fatal(err)
	}
	runtime.KeepAlive(o)
}

// The same through a session, as `snaplab serve` drives it: outside writes
// to a 1 TiB disk cost the Go heap a few percent of the bytes written (the
// disk's own page table, and the oracle's runs; the data itself lives
// outside the heap), where per-sector maps in the oracle cost more than
// ten percent on their own.
func TestSessionMemoryOutsideWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("64 MiB of writes")
	}
	sc, err := script.Parse("big.scn", "disk d 1TiB\n")
	if err != nil {
		t.Fatal(err)
	}
	s := run.NewSession(sc, run.Options{})
	if msg := s.Exec(&sc.Steps[0]); msg != "" {
		t.Fatal(msg)
	}
	before := heapInUse()
	const writes = 1 << 14 // 64 MiB
	rng := rand.New(rand.NewPCG(3, 4))
	data := make([]byte, 4096)
	failed := 0
	done := func(err error) {
		if err != nil {
			failed++
		}
	}
	for i := range writes {
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		s.External("d", dm.OpWrite, rng.Int64N(1<<40/4096)*4096, data, false, done)
		if i%64 == 63 {
			s.Settle()
		}
	}
	s.Settle()
	grown := int64(heapInUse()) - int64(before)
	written := int64(writes * len(data))
	t.Logf("64 MiB of random 4 KiB writes through a session: the heap grew %.1f MiB (%.1f%% of the bytes written)", float64(grown)/(1<<20), 100*float64(grown)/float64(written))
	if failed > 0 {
		t.Fatalf("%d writes failed", failed)
	}
	if grown > written/10 {
		t.Errorf("the heap grew %d KiB for %d KiB written, want at most a tenth", grown>>10, written>>10)
	}
	s.ExternalDiscard("d", 0, 0, 1<<40, done)
	s.Settle()
	if rep := s.Finish(); !rep.Pass() || failed > 0 {
		t.Fatalf("%v, %d failed", rep.Failures, failed)
	}
	runtime.KeepAlive(s)
}
