package dm

import (
	"fmt"
	"strconv"
	"syscall"

	"snaplab/sim/block"
)

func registerBasicTargets(c *Control) {
	c.Register(&TargetType{Name: "linear", Version: [3]int{1, 4, 0}, Ctr: linearCtr})
	c.Register(&TargetType{Name: "error", Version: [3]int{1, 6, 0}, Ctr: func(ti *TargetInstance, args []string) (Target, error) {
		return errorTarget{}, nil
	}})
	c.Register(&TargetType{Name: "zero", Version: [3]int{1, 2, 0}, Ctr: func(ti *TargetInstance, args []string) (Target, error) {
		if len(args) != 0 {
			return nil, Errf("No arguments required")
		}
		return zeroTarget{}, nil
	}})
}

// linear: <dev_path> <offset>
type linear struct {
	dev   Node
	start uint64
}

func linearCtr(ti *TargetInstance, args []string) (Target, error) {
	if len(args) != 2 {
		return nil, Errf("Invalid argument count")
	}
	start, err := strconv.ParseUint(args[1], 10, 64)
	if err != nil {
		return nil, Errf("Invalid device sector")
	}
	dev, err := ti.GetDevice(args[0])
	if err != nil {
		return nil, Errf("Device lookup failed")
	}
	if (start+ti.Len)*block.SectorSize > uint64(dev.Size()) {
		// dm-table's device_area_is_invalid logs this and the load fails.
		ti.Control().Log.Printf("table", "%s: %s too small for target: start=%d, len=%d, dev_size=%d",
			ti.Table.md.dev, dev.Dev(), start, ti.Len, dev.Size()/block.SectorSize)
		return nil, Errf("Device lookup failed")
	}
	return &linear{dev: dev, start: start}, nil
}

func (l *linear) Map(ti *TargetInstance, b *Bio) {
	if b.Op == OpFlush {
		// dm core sends each target an empty flush at sector 0. 6.1's
		// linear_map moves it like any bio: to start + (0 - begin). A
		// target at the table's start (every COW slot a scenario makes)
		// flushes at its start; further in, Linux's sector wraps below
		// zero, which the simulator does not model (it uses start). 6.12
		// remaps only bios with data: an empty flush stays at sector 0.
		if ti.Control().Profile.LinearRemapsEmptyFlush || !flushBypassesMap(ti.Table) {
			ti.Remap(b, l.dev, l.start)
		} else {
			ti.Remap(b, l.dev, 0)
		}
		return
	}
	ti.Remap(b, l.dev, l.start+b.Sector)
}

// flushBypassesMap reports whether 6.12's dm core sends an empty flush
// straight to the table's devices (flush_bypasses_map: every target is
// linear), its sector unmapped.
func flushBypassesMap(t *Table) bool {
	for _, ti := range t.Targets {
		if _, ok := ti.Target.(*linear); !ok {
			return false
		}
	}
	return true
}

// SupportsDiscard implements DiscardTarget: linear passes discards down,
// so it takes them when its device does.
func (l *linear) SupportsDiscard(ti *TargetInstance) bool { return SupportsDiscard(l.dev) }

func (l *linear) Status(ti *TargetInstance) string { return "" }
func (l *linear) Table(ti *TargetInstance) string {
	return fmt.Sprintf("%s %d", l.dev.Dev(), l.start)
}
func (l *linear) SyncMap(ti *TargetInstance, sector uint64) (Node, uint64, error) {
	return l.dev, l.start + sector, nil
}

// error: every bio fails with EIO.
type errorTarget struct{}

func (errorTarget) Map(ti *TargetInstance, b *Bio) {
	b.End(&block.Error{Dev: ti.Device().Name(), Op: b.Op.String(), Off: int64(ti.Begin+b.Sector) * block.SectorSize,
		Len: int64(b.Bytes()), Errno: syscall.EIO, Err: fmt.Errorf("error target")})
}
func (errorTarget) Status(*TargetInstance) string { return "" }
func (errorTarget) Table(*TargetInstance) string  { return "" }
func (errorTarget) SyncMap(ti *TargetInstance, sector uint64) (Node, uint64, error) {
	return nil, 0, &block.Error{Dev: ti.Device().Name(), Op: "io", Off: int64(ti.Begin+sector) * block.SectorSize, Errno: syscall.EIO, Err: fmt.Errorf("error target")}
}

// zero: reads return zeros, writes are dropped.
type zeroTarget struct{}

func (zeroTarget) Map(ti *TargetInstance, b *Bio) {
	if b.Op == OpRead {
		clear(b.Data)
	}
	ti.Control().W.After(0, "zero.io", func() { b.End(nil) })
}
func (zeroTarget) Status(*TargetInstance) string { return "" }
func (zeroTarget) Table(*TargetInstance) string  { return "" }
func (zeroTarget) SyncMap(ti *TargetInstance, sector uint64) (Node, uint64, error) {
	return nil, 0, nil
}
