package snapshot

import (
	"snaplab/sim/dm"
)

// origins is dm-snapshot's global state (_origins, _dm_origins) for one
// control plane: per origin block device, its snapshots sorted by chunk
// size, largest first, and the snapshot-origin targets resumed on it.
type origins struct {
	list   []*origin
	policy Semantics
	hooks  Hooks
	probe  Probe // nil unless SetProbe
}

type origin struct {
	dev     dm.Node
	snaps   []*Snapshot
	targets []*originTarget // resumed snapshot-origin targets (__insert_dm_origin)
}

func state(c *dm.Control) *origins {
	return c.State("snapshot", func() any { return &origins{policy: Mainline} }).(*origins)
}

// SetSemantics selects the handover semantics of every snapshot target
// constructed afterwards on c.
func SetSemantics(c *dm.Control, s Semantics) { state(c).policy = s }

// SemanticsOf returns the semantics in force on c.
func SemanticsOf(c *dm.Control) Semantics { return state(c).policy }

// SetHooks installs observers of snapshot state changes (for the oracle).
func SetHooks(c *dm.Control, h Hooks) { state(c).hooks = h }

// Hooks observe snapshot state changes. Any field may be nil.
type Hooks struct {
	// Activated: a snapshot target became active (first resume). fresh is
	// true when its store had no exceptions when loaded (a new COW).
	Activated func(s *Snapshot, fresh bool)
	// HandedOver: src's exceptions moved to dst.
	HandedOver func(src, dst *Snapshot)
	// Invalidated: s became invalid (COW full, I/O error, cancelled handover).
	Invalidated func(s *Snapshot, why string)
	// Merged: a merging snapshot copied [sector, sector+count) back to the
	// origin and dropped those exceptions.
	Merged func(s *Snapshot, sector, count uint64)
}

func (o *origins) lookup(dev dm.Node) *origin {
	for _, og := range o.list {
		if og.dev == dev {
			return og
		}
	}
	return nil
}

// insert keeps the kernel's order: before the first snapshot with a smaller
// chunk size (__insert_snapshot).
func (og *origin) insert(s *Snapshot) {
	cs := s.store.ChunkSize()
	i := 0
	for ; i < len(og.snaps); i++ {
		if og.snaps[i].store.ChunkSize() < cs {
			break
		}
	}
	og.snaps = append(og.snaps, nil)
	copy(og.snaps[i+1:], og.snaps[i:])
	og.snaps[i] = s
}

func (o *origins) register(s *Snapshot) {
	og := o.lookup(s.originDev)
	if og == nil {
		og = &origin{dev: s.originDev}
		o.list = append(o.list, og)
	}
	og.insert(s)
	s.registered = true
}

func (o *origins) unregister(s *Snapshot) {
	if !s.registered {
		return
	}
	s.registered = false
	og := o.lookup(s.originDev)
	if og == nil {
		return
	}
	for i, x := range og.snaps {
		if x == s {
			og.snaps = append(og.snaps[:i], og.snaps[i+1:]...)
			break
		}
	}
	if len(og.snaps) == 0 && len(og.targets) == 0 {
		for i, x := range o.list {
			if x == og {
				o.list = append(o.list[:i], o.list[i+1:]...)
				break
			}
		}
	}
}

// reregister re-sorts s now that its chunk size is known.
func (o *origins) reregister(s *Snapshot) {
	if !s.registered {
		return
	}
	o.unregister(s)
	o.register(s)
}

// sharing scans the snapshots of s's origin that use s's COW device, as
// __find_snapshots_sharing_cow does: active ones are sources, inactive
// ones destinations. merge reports any snapshot-merge target on the origin.
func (o *origins) sharing(s *Snapshot) (count int, src, dest, merge *Snapshot) {
	og := o.lookup(s.originDev)
	if og == nil {
		return 0, nil, nil, nil
	}
	for _, x := range og.snaps {
		if x.merge {
			merge = x
		}
		if x.cowDev != s.cowDev {
			continue
		}
		if x.active {
			src = x
		} else {
			dest = x
		}
		count++
	}
	return count, src, dest, merge
}

// minimumChunkSize is the smallest chunk size of the origin's snapshots
// (get_origin_minimum_chunksize), 0 if none.
func (og *origin) minimumChunkSize() uint64 {
	m := uint64(0)
	for _, s := range og.snaps {
		cs := uint64(s.store.ChunkSize())
		if cs != 0 && (m == 0 || cs < m) {
			m = cs
		}
	}
	return m
}
