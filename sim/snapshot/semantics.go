package snapshot

import (
	"syscall"

	"snaplab/sim/dm"
	"snaplab/sim/plant"
)

// Semantics is a handover policy: when and how a snapshot table loaded on
// a COW device already in use takes over the live table's exceptions.
type Semantics interface {
	Name() string
	// ctr registers s (or links it for handover) after its store exists;
	// dest=true means s is a handover destination and must not read the
	// metadata.
	ctr(s *Snapshot) (dest bool, err error)
	preResume(s *Snapshot) error
	// resume and dtr fail only as the simulator does: the world went
	// quiet while they waited (*world.ErrStuck).
	resume(s *Snapshot) error
	dtr(s *Snapshot) error
}

// The two semantics.
var (
	// Mainline is Linux since Dec 2009 (commit c1f0c183f6ac .. 6.x,
	// docs/handover.md §2.2, §3): the destination is
	// registered at ctr, handover happens only when it resumes, preresume
	// refuses out-of-order resumes, removing the source cancels.
	Mainline Semantics = mainline{}
	// Seed is the Nov 2009 patch (docs/handover.md §2.1, §4): explicit links made at
	// ctr, handover at whichever comes first of source remove, source
	// resume or destination resume.
	Seed Semantics = seed{}
)

// ParseSemantics maps "mainline" and "seed" to their values.
func ParseSemantics(name string) (Semantics, bool) {
	switch name {
	case "mainline":
		return Mainline, true
	case "seed":
		return Seed, true
	}
	return nil, false
}

// Kernel strings of the mainline handover.
const (
	msgPairing        = "Snapshot cow pairing for exception table handover failed"
	msgSourceResume   = "Unable to resume snapshot source until handover completes."
	msgNotSuspended   = "Unable to perform snapshot handover until source is suspended."
	msgCancel         = "Cancelling snapshot handover."
	msgSeedTwoDevices = "Unable to handover snapshot to two devices at once."
	msgSeedInvalid    = "Unable to handover exceptions from an invalid snapshot."
)

type mainline struct{}

func (mainline) Name() string { return "mainline" }

// ctr is register_snapshot with __validate_exception_handover.
func (mainline) ctr(s *Snapshot) (bool, error) {
	count, src, dest, merge := s.st.sharing(s)
	if count == 2 || dest != nil {
		if count == 2 && s.st.probe != nil {
			s.st.probe.Refused(s)
		}
		return false, dm.Errf(msgPairing)
	}
	if src != nil {
		if err := validateMerge(s, src, merge); err != nil {
			return false, err
		}
	}
	s.st.register(s)
	if src != nil {
		// Chunk size will be set during the handover.
		s.store.ClearChunkSize()
		return true, nil
	}
	return false, nil
}

func (mainline) preResume(s *Snapshot) error {
	_, src, dest, _ := s.st.sharing(s)
	if src != nil && dest != nil {
		if s == src {
			s.logf(msgSourceResume)
			return syscall.EINVAL
		}
		if !src.ti.Suspended() {
			s.logf(msgNotSuspended)
			return syscall.EINVAL
		}
	}
	return nil
}

func (mainline) resume(s *Snapshot) error {
	resumeOrigin, err := s.originInternalSuspend()
	if err != nil {
		return err
	}
	_, src, dest, _ := s.st.sharing(s)
	if src != nil && dest != nil {
		handover(src, dest)
	}
	resumeOrigin()
	s.st.reregister(s)
	s.active = true
	s.suspended = false
	return nil
}

func (mainline) dtr(s *Snapshot) error {
	_, src, dest, _ := s.st.sharing(s)
	if src != nil && dest != nil && s == src {
		dest.valid = false
		s.logf(msgCancel)
		if s.st.hooks.Invalidated != nil {
			s.st.hooks.Invalidated(dest, "handover cancelled")
		}
	}
	return nil
}

type seed struct{}

func (seed) Name() string { return "seed" }

// findUsingCOW is the seed's find_snapshot_using_cow: the first registered
// snapshot of the same origin with the same COW.
func findUsingCOW(s *Snapshot) *Snapshot {
	og := s.st.lookup(s.originDev)
	if og == nil {
		return nil
	}
	for _, x := range og.snaps {
		if x != s && x.cowDev == s.cowDev {
			return x
		}
	}
	return nil
}

func (seed) ctr(s *Snapshot) (bool, error) {
	if src := findUsingCOW(s); src != nil {
		if src.handoverSnap != nil {
			if s.st.probe != nil {
				s.st.probe.Refused(s)
			}
			return false, dm.Errf(msgSeedTwoDevices)
		}
		src.handoverSnap = s
		s.handoverSnap = src
		s.isDest = true
		// register_snapshot and read_metadata are deferred to the handover.
		return true, nil
	}
	s.st.register(s)
	return false, nil
}

func (seed) preResume(s *Snapshot) error { return nil }

// handoverSeed is the seed's handover_exceptions(old, new) followed by the
// deferred register_snapshot(new).
func handoverSeed(old, new *Snapshot) error {
	resumeOrigin, err := old.originInternalSuspend()
	if err != nil {
		return err
	}
	defer resumeOrigin()
	if !old.valid {
		if old.st.probe != nil {
			old.st.probe.HandedOver(old, new, false, len(old.pending))
		}
		if !plant.Is(plant.InvalidSourceValidDest) {
			new.valid = false
		}
		old.logf(msgSeedInvalid)
		if old.st.hooks.Invalidated != nil {
			old.st.hooks.Invalidated(new, "handover from an invalid snapshot")
		}
		// The patch returns here without clearing the links, and its
		// callers then hit BUG_ON(s->handover_snap). We model the evident
		// intent: the links are cleared and the destination is invalid.
	} else {
		handover(old, new)
		old.active = false
	}
	old.handoverSnap = nil
	new.handoverSnap = nil
	new.isDest = false
	old.st.register(new)
	return nil
}

func (seed) resume(s *Snapshot) error {
	if s.handoverSnap != nil {
		var err error
		if s.isDest {
			err = handoverSeed(s.handoverSnap, s)
		} else {
			err = handoverSeed(s, s.handoverSnap)
		}
		if err != nil {
			return err
		}
	}
	s.active = true
	s.suspended = false
	return nil
}

func (seed) dtr(s *Snapshot) error {
	if s.handoverSnap == nil {
		return nil
	}
	if !s.isDest {
		return handoverSeed(s, s.handoverSnap)
	}
	// Allow table_clear to cancel the handover.
	src := s.handoverSnap
	src.handoverSnap = nil
	s.handoverSnap = nil
	s.isDest = false
	return nil
}
