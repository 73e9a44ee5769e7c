package snapshot

import (
	"snaplab/sim/dm"
)

// originTarget is the snapshot-origin target (struct dm_origin).
type originTarget struct {
	ti            *dm.TargetInstance
	dev           dm.Node
	st            *origins
	splitBoundary uint64
}

func originCtr(ti *dm.TargetInstance, args []string) (dm.Target, error) {
	if len(args) != 1 {
		return nil, dm.Errf("origin: incorrect number of arguments")
	}
	dev, err := ti.GetDevice(args[0])
	if err != nil {
		return nil, &dm.CtrError{Msg: "Cannot get target device", Errno: ti.DeviceErrno(err)}
	}
	return &originTarget{ti: ti, dev: dev, st: state(ti.Control())}, nil
}

// Map implements dm.Target (origin_map): reads and flushes go straight to
// the origin; writes first trigger copy-on-write in every snapshot.
func (o *originTarget) Map(ti *dm.TargetInstance, b *dm.Bio) {
	sector := ti.Begin + b.Sector // origin_map does not subtract the target offset
	if b.Op != dm.OpWrite {
		ti.Remap(b, o.dev, sector)
		return
	}
	lb := b.Child(sector)
	og := o.st.lookup(o.dev)
	if og != nil && originWrite(o.st, og, sector, lb) {
		return
	}
	submitOrigin(o.st, o.dev, lb)
}

// MaxIO implements dm.MaxIOer: origin writes split at the smallest chunk
// size of the origin's snapshots, as computed at the last resume.
func (o *originTarget) MaxIO(ti *dm.TargetInstance) uint64 { return o.splitBoundary }

// Resume implements dm.Resumer (origin_resume).
func (o *originTarget) Resume(ti *dm.TargetInstance) error {
	og := o.st.lookup(o.dev)
	if og == nil {
		og = &origin{dev: o.dev}
		o.st.list = append(o.st.list, og)
	}
	o.splitBoundary = og.minimumChunkSize()
	for _, t := range og.targets {
		if t == o {
			return nil
		}
	}
	og.targets = append(og.targets, o)
	return nil
}

// PostSuspend implements dm.PostSuspender (origin_postsuspend).
func (o *originTarget) PostSuspend(ti *dm.TargetInstance) {
	o.remove()
	if o.st.probe != nil {
		pending := 0
		if og := o.st.lookup(o.dev); og != nil {
			pending = og.pendingOn()
		}
		o.st.probe.Suspended(o.dev, pending)
	}
}

// Dtr implements dm.Destructor.
func (o *originTarget) Dtr(ti *dm.TargetInstance) error { o.remove(); return nil }

func (o *originTarget) remove() {
	og := o.st.lookup(o.dev)
	if og == nil {
		return
	}
	for i, t := range og.targets {
		if t == o {
			og.targets = append(og.targets[:i], og.targets[i+1:]...)
			break
		}
	}
	if len(og.snaps) == 0 && len(og.targets) == 0 {
		for i, x := range o.st.list {
			if x == og {
				o.st.list = append(o.st.list[:i], o.st.list[i+1:]...)
				break
			}
		}
	}
}

// Status implements dm.Target: the origin reports nothing.
func (o *originTarget) Status(ti *dm.TargetInstance) string { return "" }

// Table implements dm.Target.
func (o *originTarget) Table(ti *dm.TargetInstance) string { return o.dev.Dev().String() }
