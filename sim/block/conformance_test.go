package block_test

import (
	"math/rand/v2"
	"testing"

	"snaplab/sim/block"
	"snaplab/sim/block/blocktest"
)

func newMem(t *testing.T, size int64) *block.Mem {
	t.Helper()
	m, err := block.NewMem("disk0", size)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// plain hides a device's optional interfaces.
type plain struct{ block.Device }

func TestMemConformance(t *testing.T) {
	blocktest.TestDevice(t, func(t *testing.T, size int64) block.Device { return newMem(t, size) })
}

func TestFaultyConformance(t *testing.T) {
	blocktest.TestDevice(t, func(t *testing.T, size int64) block.Device {
		return block.WithFaults(newMem(t, size), rand.New(rand.NewPCG(1, 2)))
	})
}

// Faulty over a device without FUA, discard or map falls back to write and
// flush, writing zeros and reporting all data.
func TestFaultyFallbackConformance(t *testing.T) {
	blocktest.TestDevice(t, func(t *testing.T, size int64) block.Device {
		return block.WithFaults(plain{newMem(t, size)}, nil)
	})
}

// Stacked wrappers, the inner one with a rule that never matches the
// conformance tests' operations.
func TestFaultyStackedConformance(t *testing.T) {
	blocktest.TestDevice(t, func(t *testing.T, size int64) block.Device {
		inner := block.WithFaults(newMem(t, size), nil)
		if err := inner.Set(block.Rule{Op: block.OpWrite, Off: size - 4096, Len: 4096, After: 1 << 40}); err != nil {
			t.Fatal(err)
		}
		return block.WithFaults(inner, nil)
	})
}

// A bare device still passes the mandatory checks; the optional ones skip.
func TestPlainConformance(t *testing.T) {
	blocktest.TestDevice(t, func(t *testing.T, size int64) block.Device { return plain{newMem(t, size)} })
}
