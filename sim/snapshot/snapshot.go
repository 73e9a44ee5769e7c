// Package snapshot models the kernel's dm-snapshot targets (dm-snap.c):
// snapshot-origin and snapshot, with copy-on-write through pending
// exceptions, invalidation, PO overflow, and exception-store handover
// between two tables that share a COW device.
//
// Contract:
//   - Kernel strings (ctr errors, log lines) and status/table text are the
//     kernel's, byte for byte; they are written once, here.
//   - Asynchronous work (kcopyd copies, exception commits) runs as events of
//     the simulated world; commits happen in allocation order as in the
//     kernel's out_of_order_tree, copies may complete in any seeded order.
//   - Handover behaviour is one Semantics value chosen per control plane
//     (Mainline, the default, or Seed, the 2009 patch: docs/handover.md §2.1, §4);
//     nothing else in the package branches on it.
package snapshot

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/exstore"
	"snaplab/sim/plant"
)

// Register adds snapshot-origin and snapshot to c's target types.
func Register(c *dm.Control) {
	c.Register(&dm.TargetType{Name: "snapshot-origin", Version: [3]int{1, 9, 0}, Ctr: originCtr})
	c.Register(&dm.TargetType{Name: "snapshot", Version: [3]int{1, 16, 0}, Ctr: snapshotCtr})
	c.Register(&dm.TargetType{Name: "snapshot-merge", Version: [3]int{1, 5, 0}, Ctr: mergeCtr})
}

// Kernel log prefix of dm-snap.c.
const prefix = "snapshots"

// exTable is a completed-exception table: old chunk -> new chunk. Handover
// swaps tables by pointer; it never copies one.
type exTable struct{ m map[uint64]uint64 }

func newExTable() *exTable { return &exTable{m: map[uint64]uint64{}} }

// pendingEx is a pending exception (struct dm_snap_pending_exception).
type pendingEx struct {
	old, new   uint64
	seq        uint64
	started    bool
	copied     bool // the copy-out or whole-chunk write has finished
	copyError  bool
	originBios []*dm.Bio
	snapBios   []*snapBio
	fullBio    *snapBio
}

type snapBio struct {
	b   *dm.Bio
	off uint64 // sector offset within the chunk
}

// Snapshot is a snapshot target instance (struct dm_snapshot).
type Snapshot struct {
	ti        *dm.TargetInstance
	ctl       *dm.Control
	st        *origins
	policy    Semantics
	originDev dm.Node
	cowDev    dm.Node
	store     exstore.Store
	complete  *exTable
	pending   map[uint64]*pendingEx
	nextSeq   uint64 // exception_sequence of the next allocation
	doneSeq   uint64 // exception_complete_sequence
	outOfOrd  map[uint64]*pendingEx

	valid      bool
	active     bool
	suspended  bool // own flag (postsuspend/resume), as the Dec 2009 code and the seed keep it (docs/handover.md §3.3)
	overflowed bool
	merge      bool // a snapshot-merge target
	mg         merging
	registered bool
	features   []string
	loadedWith int // exceptions present when the metadata was read

	// Reads sent to the origin for chunks with no completed exception, by
	// chunk, until they end (track_chunk); a completed exception of such a
	// chunk waits in draining until they have (pending_complete's
	// __check_for_conflicting_io).
	tracked  map[uint64]int
	draining map[uint64]*pendingEx

	// Seed semantics: explicit handover links.
	handoverSnap *Snapshot
	isDest       bool
}

// Name is the name of the mapped device holding the snapshot's table.
func (s *Snapshot) Name() string { return s.ti.Device().Name() }

// Target is the snapshot's target instance.
func (s *Snapshot) Target() *dm.TargetInstance { return s.ti }

// COW is the snapshot's COW node.
func (s *Snapshot) COW() dm.Node { return s.cowDev }

// OriginDev is the snapshot's origin node.
func (s *Snapshot) OriginDev() dm.Node { return s.originDev }

// Valid reports s->valid.
func (s *Snapshot) Valid() bool { return s.valid }

// Overflowed reports s->snapshot_overflowed.
func (s *Snapshot) Overflowed() bool { return s.overflowed }

// Exceptions is the number of completed exceptions s holds.
func (s *Snapshot) Exceptions() int { return len(s.complete.m) }

// ChunkSize is the store's chunk size in sectors.
func (s *Snapshot) ChunkSize() uint32 { return s.store.ChunkSize() }

// PendingExceptions is the number of pending exceptions.
func (s *Snapshot) PendingExceptions() int { return len(s.pending) }

// Lookup returns the COW chunk holding old chunk c.
func (s *Snapshot) Lookup(c uint64) (uint64, bool) {
	n, ok := s.complete.m[c]
	return n, ok
}

func (s *Snapshot) logf(format string, a ...any) { s.ctl.Log.Printf(prefix, format, a...) }

func snapshotCtr(ti *dm.TargetInstance, args []string) (dm.Target, error) {
	return snapshotCtrType(ti, args, false)
}

func snapshotCtrType(ti *dm.TargetInstance, args []string, merge bool) (dm.Target, error) {
	c := ti.Control()
	st := state(c)
	if len(args) < 4 {
		return nil, dm.Errf("requires 4 or more arguments")
	}
	s := &Snapshot{ti: ti, ctl: c, st: st, policy: st.policy, complete: newExTable(),
		pending: map[uint64]*pendingEx{}, outOfOrd: map[uint64]*pendingEx{}, valid: true, merge: merge}
	// Feature arguments: [<#feature args> [<arg>]*].
	if len(args) > 4 {
		n, err := strconv.ParseUint(args[4], 10, 32)
		if err != nil || n > 2 || int(n) > len(args)-5 {
			return nil, dm.Errf("Invalid number of feature arguments")
		}
		zeroes, passdown := false, false
		for _, f := range args[5 : 5+n] {
			switch strings.ToLower(f) {
			case "discard_zeroes_cow":
				zeroes = true
			case "discard_passdown_origin":
				passdown = true
			default:
				return nil, dm.Errf("Unrecognised feature requested")
			}
		}
		if passdown && !zeroes {
			return nil, dm.Errf("discard_passdown_origin feature depends on discard_zeroes_cow")
		}
		if zeroes {
			s.features = append(s.features, "discard_zeroes_cow")
		}
		if passdown {
			s.features = append(s.features, "discard_passdown_origin")
		}
	}
	origin, err := ti.GetDevice(args[0])
	if err != nil {
		return nil, &dm.CtrError{Msg: "Cannot get origin device", Errno: ti.DeviceErrno(err)}
	}
	s.originDev = origin
	cow, err := ti.GetDevice(args[1])
	if err != nil {
		return nil, &dm.CtrError{Msg: "Cannot get COW device", Errno: ti.DeviceErrno(err)}
	}
	if cow == origin {
		// 6.12 opens the COW (in the table's mode) before this check; a
		// read-write table upgrades the device the read-only origin
		// opened, freeing the origin's handle, and the error path puts
		// both (sim/profile SameDevicePutTwice).
		if c.Profile.SameDevicePutTwice && ti.Table.Mode == "rw" {
			ti.PutFreedDevice(origin)
		}
		return nil, dm.Errf("COW device cannot be the same as origin device")
	}
	s.cowDev = cow
	lbs := max(cow.LogicalBlockSize(), origin.LogicalBlockSize())
	store, err := exstore.New(args[2:4], cow, lbs, func(level, pfx, msg string) { c.Log.Printf(pfx, "%s", msg) })
	if err != nil {
		return nil, dm.Errf("Couldn't create exception store")
	}
	s.store = store

	dest, err := s.policy.ctr(s)
	if err != nil {
		return nil, err
	}
	if dest {
		return s, nil
	}
	if err := s.readMetadata(); err != nil {
		s.st.unregister(s)
		if s.st.probe != nil {
			s.st.probe.Destroyed(s)
		}
		return nil, err
	}
	return s, nil
}

// readMetadata loads the store's exceptions (read_metadata in the ctr).
func (s *Snapshot) readMetadata() error {
	invalid, err := s.store.ReadMetadata(func(old, new uint64) error {
		if s.st.probe != nil {
			s.st.probe.Loading(s, old, new)
		}
		if plant.Is(plant.ReloadWrongChunk) {
			new++
		}
		s.complete.m[old] = new
		return nil
	})
	if err != nil {
		return &dm.CtrError{Msg: "Failed to read snapshot metadata", Errno: block.Errno(err)}
	}
	s.loadedWith = len(s.complete.m)
	if s.st.probe != nil {
		s.st.probe.Loaded(s)
	}
	if invalid {
		s.valid = false
		s.ctl.Log.Printf(prefix, "Snapshot is marked invalid.")
	}
	if s.store.ChunkSize() == 0 {
		return dm.Errf("Chunk size not set")
	}
	return nil
}

// MaxIO implements dm.MaxIOer: no bio crosses a chunk; a merging
// snapshot uses the origin's minimum chunk size (snapshot_merge_resume).
func (s *Snapshot) MaxIO(ti *dm.TargetInstance) uint64 {
	if s.merge {
		if og := s.st.lookup(s.originDev); og != nil {
			return og.minimumChunkSize()
		}
	}
	return uint64(s.store.ChunkSize())
}

// The words snapshot_status prints, instead of the usage figures, for a
// snapshot that is invalid or has overflowed.
const (
	StatusInvalid  = "Invalid"
	StatusOverflow = "Overflow"
)

// Status implements dm.Target (snapshot_status, STATUSTYPE_INFO).
func (s *Snapshot) Status(ti *dm.TargetInstance) string {
	switch {
	case !s.valid:
		return StatusInvalid
	case s.mg.failed:
		return "Merge failed"
	case s.overflowed:
		return StatusOverflow
	}
	a, t, m := s.store.Usage()
	return fmt.Sprintf("%d/%d %d", a, t, m)
}

// Table implements dm.Target (STATUSTYPE_TABLE).
func (s *Snapshot) Table(ti *dm.TargetInstance) string {
	out := fmt.Sprintf("%s %s %s", s.originDev.Dev(), s.cowDev.Dev(), s.store.TableArgs())
	if len(s.features) > 0 {
		out += fmt.Sprintf(" %d %s", len(s.features), strings.Join(s.features, " "))
	}
	return out
}

// PreResume implements dm.PreResumer.
func (s *Snapshot) PreResume(ti *dm.TargetInstance) error { return s.policy.preResume(s) }

// Resume implements dm.Resumer (snapshot_resume, and for snapshot-merge
// snapshot_merge_resume: the handover, then the merge starts).
func (s *Snapshot) Resume(ti *dm.TargetInstance) error {
	wasActive := s.active
	if err := s.policy.resume(s); err != nil {
		return err
	}
	if !wasActive && s.active && s.st.hooks.Activated != nil {
		s.st.hooks.Activated(s, s.loadedWith == 0)
	}
	if s.merge {
		s.startMerge()
	}
	return nil
}

// PreSuspend implements dm.PreSuspender: a merge stops (stop_merge).
func (s *Snapshot) PreSuspend(ti *dm.TargetInstance) error { return s.stopMerge() }

// PostSuspend implements dm.PostSuspender.
func (s *Snapshot) PostSuspend(ti *dm.TargetInstance) {
	s.suspended = true
	if s.st.probe != nil {
		pending := len(s.pending)
		if og := s.st.lookup(s.originDev); og != nil {
			pending = og.pendingOn()
		}
		s.st.probe.Suspended(s.originDev, pending)
	}
	if plant.Is(plant.SuspendDropsPending) {
		clear(s.pending)
	}
}

// Dtr implements dm.Destructor. Like snapshot_dtr it waits for the
// snapshot's pending exceptions to finish first.
func (s *Snapshot) Dtr(ti *dm.TargetInstance) error {
	if err := s.stopMerge(); err != nil {
		return err
	}
	if err := s.ctl.W.RunUntil("pending exceptions of "+s.Name()+" to complete", func() bool { return len(s.pending) == 0 }); err != nil {
		return err
	}
	if err := s.policy.dtr(s); err != nil {
		return err
	}
	s.st.unregister(s)
	if s.st.probe != nil {
		s.st.probe.Destroyed(s)
	}
	return nil
}

// originInternalSuspend quiesces the origin's mapped device around a
// handover (commit b735fede8d95, docs/handover.md §3.4, §7.4:
// dm_internal_suspend_fast of the snapshot-origin md), so
// that no pending exception exists when the stores are swapped. It returns
// the function that resumes it, or the simulator's failure to drain the
// origin's in-flight I/O (the world went quiet first: a hang in the kernel),
// the origin then resumed.
func (s *Snapshot) originInternalSuspend() (func(), error) {
	og := s.st.lookup(s.originDev)
	if og == nil || len(og.targets) == 0 {
		return func() {}, nil
	}
	md := og.targets[0].ti.Device()
	if md == s.ti.Device() {
		return func() {}, nil
	}
	if err := md.InternalSuspend(); err != nil {
		md.InternalResume()
		return nil, err
	}
	return md.InternalResume, nil
}

// handover moves src's exceptions and store to dst, as
// __handover_exceptions does (mainline), leaving src invalid.
func handover(src, dst *Snapshot) {
	srcValid, srcPending := src.valid, len(src.pending)
	dst.complete, src.complete = src.complete, dst.complete
	dstOverflow := dst.store.Overflow()
	dst.store, src.store = src.store, dst.store
	dst.store.SetOverflow(dstOverflow)
	dst.valid = src.valid
	if plant.Is(plant.InvalidSourceValidDest) {
		dst.valid = true
	}
	dst.overflowed = src.overflowed
	dst.loadedWith = len(dst.complete.m)
	if !plant.Is(plant.HandoverSourceNotEIO) {
		src.valid = false
	}
	if src.st.hooks.HandedOver != nil {
		src.st.hooks.HandedOver(src, dst)
	}
	if src.st.probe != nil {
		src.st.probe.HandedOver(src, dst, srcValid, srcPending)
	}
}

// invalidate is __invalidate_snapshot.
func (s *Snapshot) invalidate(errno syscall.Errno) {
	if !s.valid {
		return
	}
	switch errno {
	case syscall.EIO:
		s.logf("Invalidating snapshot: Error reading/writing.")
	case syscall.ENOMEM:
		s.logf("Invalidating snapshot: Unable to allocate exception.")
	}
	s.store.Drop()
	s.valid = false
	if s.st.probe != nil {
		s.st.probe.Invalidated(s)
	}
	s.ti.TableEvent()
	if s.st.hooks.Invalidated != nil {
		s.st.hooks.Invalidated(s, "invalidated: "+block.ErrnoName(errno))
	}
}

func (s *Snapshot) kill(b *dm.Bio, why string) {
	b.End(&block.Error{Dev: s.Name(), Op: b.Op.String(), Off: int64(s.ti.Begin+b.Sector) * block.SectorSize,
		Len: int64(b.Bytes()), Errno: syscall.EIO, Err: errors.New(why)})
}

func (s *Snapshot) chunkOf(sector uint64) (chunk, off uint64) {
	cs := uint64(s.store.ChunkSize())
	return sector / cs, sector % cs
}

func (s *Snapshot) cowSector(newChunk, off uint64) uint64 {
	return newChunk*uint64(s.store.ChunkSize()) + off
}

// Map implements dm.Target (snapshot_map).
func (s *Snapshot) Map(ti *dm.TargetInstance, b *dm.Bio) {
	if s.merge {
		s.mergeMap(ti, b)
		return
	}
	if b.Op == dm.OpFlush {
		ti.Remap(b, s.cowDev, 0)
		return
	}
	if !s.valid {
		s.kill(b, "snapshot invalid")
		return
	}
	if s.overflowed && (b.Op == dm.OpWrite || b.Op == dm.OpDiscard) {
		// A discard is a write (bio_data_dir): an overflowed snapshot
		// fails it too.
		s.kill(b, "snapshot overflowed")
		return
	}
	sector := ti.Begin + b.Sector // the kernel's bi_sector: the device's sector
	chunk, off := s.chunkOf(sector)
	if b.Op == dm.OpDiscard {
		s.mapDiscard(b, chunk, off)
		return
	}
	if nc, ok := s.complete.m[chunk]; ok {
		ti.Remap(b, s.cowDev, s.cowSector(nc, off))
		return
	}
	if b.Op == dm.OpRead {
		s.trackRead(b, chunk, sector)
		return
	}
	pe := s.pending[chunk]
	if pe == nil {
		pe = s.newPending(chunk)
		if pe == nil {
			if s.st.probe != nil {
				s.st.probe.Full(s, chunk, s.store.Overflow())
			}
			if s.store.Overflow() {
				if s.valid && !s.overflowed && !plant.Is(plant.OverflowNotFlagged) {
					s.overflowed = true
					s.logf("Snapshot overflowed: Unable to allocate exception.")
				}
			} else {
				s.invalidate(syscall.ENOMEM)
			}
			s.kill(b, "no space for exception")
			return
		}
	}
	sb := &snapBio{b: b, off: off}
	if !pe.started && b.Sectors() == uint64(s.store.ChunkSize()) {
		pe.started = true
		pe.fullBio = sb
		s.startFull(pe)
		return
	}
	pe.snapBios = append(pe.snapBios, sb)
	if !pe.started {
		pe.started = true
		s.startCopy(pe)
	}
}

// trackRead sends a read of a chunk with no completed exception to the
// origin and tracks it until it ends (track_chunk, stop_tracking_chunk in
// snapshot_end_io). A copy-out of that chunk completing meanwhile holds
// its origin writes back until the read is done (pendingComplete), so the
// read sees the chunk as it was, never an origin write that raced it.
func (s *Snapshot) trackRead(b *dm.Bio, chunk, sector uint64) {
	if s.tracked == nil {
		s.tracked = map[uint64]int{}
	}
	s.tracked[chunk]++
	s.originDev.Submit(b.Clone(sector, func(err error) {
		s.untrack(chunk)
		b.End(err)
	}))
}

// untrack ends the tracking of one read of chunk; the last one lets a
// completed exception waiting for the chunk's reads go on, as an event
// (the kernel polls for them: __check_for_conflicting_io).
func (s *Snapshot) untrack(chunk uint64) {
	if s.tracked[chunk]--; s.tracked[chunk] > 0 {
		return
	}
	delete(s.tracked, chunk)
	pe := s.draining[chunk]
	if pe == nil {
		return
	}
	delete(s.draining, chunk)
	s.ctl.W.After(0, "snapshot.drain", func() { s.finishPending(pe, false) })
}

func (s *Snapshot) mapDiscard(b *dm.Bio, chunk, off uint64) {
	nc, ok := s.complete.m[chunk]
	if !ok {
		// No exception: complete at once, no copy-out.
		b.End(nil)
		return
	}
	if hasFeature(s.features, "discard_zeroes_cow") && b.Sectors() == uint64(s.store.ChunkSize()) {
		zero := make([]byte, b.Bytes())
		s.ti.Remap(dm.NewBio(dm.OpWrite, 0, zero, false, b.End), s.cowDev, s.cowSector(nc, 0))
		return
	}
	s.ti.Remap(b, s.cowDev, s.cowSector(nc, off))
}

func hasFeature(fs []string, f string) bool {
	for _, x := range fs {
		if x == f {
			return true
		}
	}
	return false
}

// newPending allocates a pending exception for chunk (prepare_exception);
// nil when the store is full.
func (s *Snapshot) newPending(chunk uint64) *pendingEx {
	nc, err := s.store.Prepare()
	if err != nil {
		return nil
	}
	pe := &pendingEx{old: chunk, new: nc, seq: s.nextSeq}
	s.nextSeq++
	s.pending[chunk] = pe
	if s.st.probe != nil {
		s.st.probe.Allocated(s, chunk, nc)
	}
	return pe
}

// startCopy runs the kcopyd copy of the origin chunk to the COW as two
// events (read done, write done) and then copy_callback.
func (s *Snapshot) startCopy(pe *pendingEx) {
	w := s.ctl.W
	cs := uint64(s.store.ChunkSize())
	start := pe.old * cs
	originSectors := uint64(s.originDev.Size()) / block.SectorSize
	n := min(cs, originSectors-min(start, originSectors))
	bp := copyBuf(int(n * block.SectorSize))
	buf := *bp
	cow := s.cowDev
	origin := s.originDev
	w.After(dm.KcopyLatency, "kcopyd.read", func() {
		if _, err := origin.ReadAt(buf, int64(start)*block.SectorSize); err != nil {
			pe.copyError = true
		}
		early := plant.Is(plant.CommitBeforeCopy)
		if early {
			s.copyCallback(pe)
		}
		w.After(dm.KcopyLatency, "kcopyd.write", func() {
			if !pe.copyError {
				if _, err := cow.WriteAt(buf, int64(pe.new*cs)*block.SectorSize); err != nil {
					pe.copyError = true
				}
			}
			// The devices copy what they are given: the buffer is free.
			putCopyBuf(bp)
			pe.copied = true
			if !early {
				s.copyCallback(pe)
			}
		})
	})
}

// copyBufs holds kcopyd buffers of finished copies for reuse, by length,
// across controls: a copy's buffer is filled whole by its read before it
// is written anywhere, so what it held before never shows.
var copyBufs sync.Map // int -> *sync.Pool of *[]byte

// copyBuf returns a buffer of n bytes for a chunk copy; its content is
// whatever a previous copy left (the read fills it whole).
func copyBuf(n int) *[]byte {
	if p, ok := copyBufs.Load(n); ok {
		if b, ok := p.(*sync.Pool).Get().(*[]byte); ok {
			return b
		}
	}
	b := make([]byte, n)
	return &b
}

// putCopyBuf takes back the buffer of a finished copy.
func putCopyBuf(b *[]byte) {
	p, ok := copyBufs.Load(len(*b))
	if !ok {
		p, _ = copyBufs.LoadOrStore(len(*b), new(sync.Pool))
	}
	p.(*sync.Pool).Put(b)
}

// startFull writes a whole-chunk snapshot bio straight to the COW
// (start_full_bio).
func (s *Snapshot) startFull(pe *pendingEx) {
	b := pe.fullBio.b
	wb := dm.NewBio(dm.OpWrite, s.cowSector(pe.new, 0), b.Data, b.FUA, func(err error) {
		if err != nil {
			pe.copyError = true
		}
		pe.copied = true
		s.copyCallback(pe)
	})
	s.cowDev.Submit(wb)
}

// copyCallback commits exceptions in allocation order.
func (s *Snapshot) copyCallback(pe *pendingEx) {
	if pe.seq != s.doneSeq {
		s.outOfOrd[pe.seq] = pe
		return
	}
	s.doneSeq++
	s.completeException(pe)
	for {
		next, ok := s.outOfOrd[s.doneSeq]
		if !ok {
			return
		}
		delete(s.outOfOrd, s.doneSeq)
		s.doneSeq++
		s.completeException(next)
	}
}

func (s *Snapshot) completeException(pe *pendingEx) {
	store := s.store
	s.ctl.W.After(dm.CommitLatency, "exception.commit", func() {
		if s.st.probe != nil {
			s.st.probe.Committing(s, store, pe.old, pe.new, pe.copied)
		}
		store.Commit(pe.old, pe.new, !pe.copyError, func(ok bool) { s.pendingComplete(pe, ok) })
		if s.st.probe != nil {
			s.st.probe.Committed(s, store, pe.old, pe.new)
		}
	})
}

// pendingComplete is the kernel's pending_complete.
func (s *Snapshot) pendingComplete(pe *pendingEx, ok bool) {
	failed := false
	if !ok {
		s.invalidate(syscall.EIO)
		failed = true
	} else if !s.valid {
		failed = true
	} else {
		if s.st.probe != nil {
			s.st.probe.Completing(s, pe.old, pe.new)
		}
		s.complete.m[pe.old] = pe.new
		// Snapshot reads of the chunk now go to the COW; those still
		// reading the origin must end before any origin write is let
		// through. The pending exception stays meanwhile: origin writes
		// to the chunk join it.
		if s.tracked[pe.old] > 0 {
			if s.draining == nil {
				s.draining = map[uint64]*pendingEx{}
			}
			s.draining[pe.old] = pe
			return
		}
	}
	s.finishPending(pe, failed)
}

// finishPending is the end of pending_complete: the pending exception is
// gone, its snapshot bios go to the COW (or fail), its origin bios are
// retried.
func (s *Snapshot) finishPending(pe *pendingEx, failed bool) {
	delete(s.pending, pe.old)
	if pe.fullBio != nil {
		if failed {
			s.kill(pe.fullBio.b, "exception failed")
		} else {
			pe.fullBio.b.End(nil)
		}
	}
	for _, sb := range pe.snapBios {
		if failed {
			s.kill(sb.b, "exception failed")
			continue
		}
		s.ti.Remap(sb.b, s.cowDev, s.cowSector(pe.new, sb.off))
	}
	for _, ob := range pe.originBios {
		retryOrigin(s.st, s.originDev, ob)
	}
}

// originWrite is __origin_write for one origin bio at sector (b nil: an
// extent about to be overwritten by a merge). It returns true, the
// kernel's DM_MAPIO_SUBMITTED, when a valid, active snapshot has a pending
// exception for the chunk: b, if any, was queued on the first one.
// Invalid snapshots, such as a handover's source, are skipped before
// their chunk is computed.
func originWrite(st *origins, og *origin, sector uint64, b *dm.Bio) bool {
	wait := false
	var last *Snapshot
	var lastPE *pendingEx
	snaps := og.snaps
	if plant.Is(plant.OriginWriteSkipsCOW) {
		snaps = snaps[:max(len(snaps)-1, 0)]
	}
	if plant.Is(plant.Nondeterministic) {
		snaps = plant.MapOrder(snaps)
	}
	for _, snap := range snaps {
		if snap.merge {
			continue
		}
		if snap.ti.Table.Size() <= sector {
			continue
		}
		if !snap.valid || !snap.active {
			continue
		}
		chunk, _ := snap.chunkOf(sector)
		pe := snap.pending[chunk]
		if pe == nil {
			if _, ok := snap.complete.m[chunk]; ok {
				continue
			}
			pe = snap.newPending(chunk)
			if pe == nil {
				if st.probe != nil {
					st.probe.Full(snap, chunk, false)
				}
				snap.invalidate(syscall.ENOMEM)
				continue
			}
		}
		wait = true
		if b != nil {
			pe.originBios = append(pe.originBios, b)
			b = nil
			if !pe.started {
				pe.started = true
				last, lastPE = snap, pe
			}
		}
		if !pe.started {
			pe.started = true
			snap.startCopy(pe)
		}
	}
	if lastPE != nil {
		last.startCopy(lastPE)
	}
	return wait
}

// retryOrigin re-runs do_origin for a bio that waited on exceptions, then
// submits it to the origin device.
func retryOrigin(st *origins, dev dm.Node, b *dm.Bio) {
	og := st.lookup(dev)
	if og != nil && originWrite(st, og, b.Sector, b) {
		return
	}
	submitOrigin(st, dev, b)
}

// IsMerge reports whether s is a snapshot-merge target.
func (s *Snapshot) IsMerge() bool { return s.merge }

// Active reports s->active (resumed at least once).
func (s *Snapshot) Active() bool { return s.active }
