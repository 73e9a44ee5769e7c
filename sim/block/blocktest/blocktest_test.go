package blocktest_test

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"snaplab/sim/block"
	"snaplab/sim/block/blocktest"
)

func newMem(t *testing.T, size int64) *block.Mem {
	m, err := block.NewMem("mem0", size)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMem(t *testing.T) {
	blocktest.TestDevice(t, func(t *testing.T, size int64) block.Device { return newMem(t, size) })
}

// Broken devices, each with one defect, and the subtest that must catch it.
type dropHigh struct{ *block.Mem }

func (d dropHigh) WriteAt(p []byte, off int64) (int, error) {
	if off >= d.Size()/2 && off+int64(len(p)) <= d.Size() {
		return len(p), nil
	}
	return d.Mem.WriteAt(p, off)
}

type stray struct{ *block.Mem }

func (d stray) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p))+8192 <= d.Size() && len(p) > 0 {
		d.Mem.WriteAt(p[:1], off+int64(len(p))+4096)
	}
	return d.Mem.WriteAt(p, off)
}

type plainErr struct{ *block.Mem }

func (d plainErr) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.Mem.ReadAt(p, off)
	if err != nil {
		return n, errors.New("out of range")
	}
	return n, nil
}

type wrongOff struct{ *block.Mem }

func (d wrongOff) WriteAt(p []byte, off int64) (int, error) {
	n, err := d.Mem.WriteAt(p, off)
	var e *block.Error
	if errors.As(err, &e) {
		e.Off = 0
	}
	return n, err
}

type noopDiscard struct{ *block.Mem }

func (noopDiscard) Discard(off, length int64) error { return nil }

type allHoles struct{ *block.Mem }

func (d allHoles) Map(off, length int64) ([]block.Extent, error) {
	return []block.Extent{{Off: off, Len: length, Hole: true}}, nil
}

type gappyMap struct{ *block.Mem }

func (d gappyMap) Map(off, length int64) ([]block.Extent, error) {
	ext, err := d.Mem.Map(off, length)
	if len(ext) > 1 {
		ext = ext[1:]
	}
	return ext, err
}

type lossyFUA struct{ *block.Mem }

func (d lossyFUA) WriteAtFUA(p []byte, off int64) (int, error) {
	return d.Mem.WriteAtFUA(p[:len(p)/2], off)
}

type wrongSize struct{ *block.Mem }

func (d wrongSize) Size() int64 { return d.Mem.Size() - 512 }

type dirtyFresh struct{ *block.Mem }

var broken = []struct {
	name    string
	make    func(m *block.Mem) block.Device
	failing string // the subtest that must fail
}{
	{"dropHigh", func(m *block.Mem) block.Device { return dropHigh{m} }, "ReadAfterWrite"},
	{"stray", func(m *block.Mem) block.Device { return stray{m} }, "ReadAfterWrite"},
	{"plainErr", func(m *block.Mem) block.Device { return plainErr{m} }, "OutOfRange"},
	{"wrongOff", func(m *block.Mem) block.Device { return wrongOff{m} }, "OutOfRange"},
	{"noopDiscard", func(m *block.Mem) block.Device { return noopDiscard{m} }, "Discard"},
	{"allHoles", func(m *block.Mem) block.Device { return allHoles{m} }, "Map"},
	{"gappyMap", func(m *block.Mem) block.Device { return gappyMap{m} }, "Map"},
	{"lossyFUA", func(m *block.Mem) block.Device { return lossyFUA{m} }, "FUA"},
	{"wrongSize", func(m *block.Mem) block.Device { return wrongSize{m} }, "Size"},
	{"dirtyFresh", func(m *block.Mem) block.Device {
		m.WriteAt([]byte{1}, 3<<20)
		return dirtyFresh{m}
	}, "FreshZero"},
}

// TestBrokenHelper runs TestDevice on the broken device named by
// $BLOCKTEST_BROKEN; TestCatchesBrokenDevices runs it in a child process.
func TestBrokenHelper(t *testing.T) {
	name := os.Getenv("BLOCKTEST_BROKEN")
	if name == "" {
		t.Skip("run by TestCatchesBrokenDevices")
	}
	for _, b := range broken {
		if b.name == name {
			blocktest.TestDevice(t, func(t *testing.T, size int64) block.Device { return b.make(newMem(t, size)) })
			return
		}
	}
	t.Fatalf("no broken device %q", name)
}

func TestCatchesBrokenDevices(t *testing.T) {
	for _, b := range broken {
		t.Run(b.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenHelper$/^"+b.failing+"$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), "BLOCKTEST_BROKEN="+b.name)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("TestDevice passed a device with defect %s:\n%s", b.name, out)
			}
			if !strings.Contains(string(out), "--- FAIL: TestBrokenHelper/"+b.failing+" ") {
				t.Fatalf("defect %s: subtest %s did not fail:\n%s", b.name, b.failing, out)
			}
		})
	}
}
