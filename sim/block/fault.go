package block

import (
	"fmt"
	"math/rand/v2"
	"sync"
)

// Faulty wraps a Device and fails its operations as its rules say, in the
// manner of an nbdkit error filter. Wrappers stack: a Faulty is a Device and
// can be wrapped again.
//
// Each rule is a named fault site. For every read, write, flush or discard
// that is inside the device, the rules are consulted in the order their
// sites were first Set; the first rule that fires fails the operation with
// its errno, and later rules do not see it. A failed operation performs no
// I/O on the wrapped device. Out-of-range operations fail with EINVAL
// before any rule sees them.
//
// Randomness comes only from the *rand.Rand given to WithFaults, drawn once
// per operation that reaches a rule with a Ratio, so a seeded rng gives the
// same faults for the same sequence of operations. A Faulty is safe for
// concurrent use, but then the sequence is the arrival order.
//
// Faulty always offers FUAWriter, Discarder and Mapper. It passes them
// through to the wrapped device when it has them; otherwise a FUA write is
// a write and a flush, a discard writes zeros, and Map reports all data.
type Faulty struct {
	d   Device
	mu  sync.Mutex
	rng *rand.Rand
	rs  []*ruleState
	// fired, when set, hears of every operation a rule failed (Observe).
	fired func(Failed)
}

// Failed is an operation a rule failed, as Observe reports it.
type Failed struct {
	Op     Op
	Off, N int64 // the operation's range (a flush: where it was sent, and 0)
	// FUA is set for a write with forced unit access (WriteAtFUA): a
	// guest's block layer completes such a failed request twice.
	FUA bool
	Err *Error
}

type ruleState struct {
	Rule
	seen  int64 // matching operations seen
	fired int64
}

var (
	_ Device    = (*Faulty)(nil)
	_ FUAWriter = (*Faulty)(nil)
	_ Discarder = (*Faulty)(nil)
	_ Mapper    = (*Faulty)(nil)
	_ FlushAter = (*Faulty)(nil)
)

// WithFaults wraps d with no rules. rng is needed only by rules with a
// Ratio; it may be nil otherwise.
func WithFaults(d Device, rng *rand.Rand) *Faulty {
	return &Faulty{d: d, rng: rng}
}

// Observe makes fn hear of every operation a rule fails, as it fails
// (the simulator logs the block layer's I/O error line for it). fn runs
// with the Faulty's lock held: it must not call the Faulty.
func (f *Faulty) Observe(fn func(Failed)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fired = fn
}

// Unwrap returns the wrapped device.
func (f *Faulty) Unwrap() Device { return f.d }

// Name returns the wrapped device's name.
func (f *Faulty) Name() string { return f.d.Name() }

// Size returns the wrapped device's size.
func (f *Faulty) Size() int64 { return f.d.Size() }

// Set adds rule, or replaces the rule with the same site in place. An
// empty Site and a zero Errno get their defaults (see Rule). The rule's
// counters start from zero.
func (f *Faulty) Set(rule Rule) error {
	rule = rule.normalize()
	if err := rule.Validate(); err != nil {
		return fmt.Errorf("%s: set fault: %w", f.d.Name(), err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if rule.Ratio.Den > 0 && f.rng == nil {
		return fmt.Errorf("%s: set fault %s: ratio rule needs the rng WithFaults was given, and it was nil", f.d.Name(), rule)
	}
	for i, s := range f.rs {
		if s.Site == rule.Site {
			f.rs[i] = &ruleState{Rule: rule}
			return nil
		}
	}
	f.rs = append(f.rs, &ruleState{Rule: rule})
	return nil
}

// Clear removes the rule of a site. Clearing an absent site does nothing.
func (f *Faulty) Clear(site string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, s := range f.rs {
		if s.Site == site {
			f.rs = append(f.rs[:i:i], f.rs[i+1:]...)
			return
		}
	}
}

// Rules returns the current rules in the order they are consulted.
func (f *Faulty) Rules() []Rule {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Rule, len(f.rs))
	for i, s := range f.rs {
		out[i] = s.Rule
	}
	return out
}

// Fired reports how many operations the rule of site has failed since it
// was Set, or 0 when there is no such rule.
func (f *Faulty) Fired(site string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.rs {
		if s.Site == site {
			return s.fired
		}
	}
	return 0
}

// fault returns the error of the first rule that fires for op on
// [off, off+n), or nil. ranged is false for flush, which has no range; fua
// marks a FUA write for the observer.
func (f *Faulty) fault(op Op, off, n int64, ranged, fua bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.rs {
		if s.Op != OpAny && s.Op != op {
			continue
		}
		if s.Len > 0 && (!ranged || !overlaps(off, n, s.Off, s.Len)) {
			continue
		}
		if s.seen < s.After {
			s.seen++
			continue
		}
		s.seen++
		if s.Count > 0 && s.fired >= s.Count {
			continue
		}
		if s.Ratio.Den > 0 && f.rng.Uint64N(s.Ratio.Den) >= s.Ratio.Num {
			continue
		}
		s.fired++
		err := &Error{Dev: f.d.Name(), Op: string(op), Off: off, Len: n, Errno: s.Errno,
			Err: fmt.Errorf("fault site %s", s.Site)}
		if f.fired != nil {
			f.fired(Failed{Op: op, Off: off, N: n, FUA: fua, Err: err})
		}
		return err
	}
	return nil
}

// overlaps reports whether [off, off+n) meets [roff, roff+rlen); an empty
// operation meets the range when its offset is inside it.
func overlaps(off, n, roff, rlen int64) bool {
	if n == 0 {
		return off >= roff && off-roff < rlen
	}
	return off < roff+rlen && roff < off+n
}

func (f *Faulty) check(op Op, off, n int64) error { return f.checkFUA(op, off, n, false) }

func (f *Faulty) checkFUA(op Op, off, n int64, fua bool) error {
	if err := CheckRange(f.d.Name(), string(op), f.d.Size(), off, n); err != nil {
		return err
	}
	return f.fault(op, off, n, true, fua)
}

// ReadAt reads from the wrapped device unless a rule fails the read.
func (f *Faulty) ReadAt(p []byte, off int64) (int, error) {
	if err := f.check(OpRead, off, int64(len(p))); err != nil {
		return 0, err
	}
	return f.d.ReadAt(p, off)
}

// WriteAt writes to the wrapped device unless a rule fails the write.
func (f *Faulty) WriteAt(p []byte, off int64) (int, error) {
	if err := f.check(OpWrite, off, int64(len(p))); err != nil {
		return 0, err
	}
	return f.d.WriteAt(p, off)
}

// WriteAtFUA is a write for the rules; it writes with FUA (or a write and
// a flush) on the wrapped device.
func (f *Faulty) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := f.checkFUA(OpWrite, off, int64(len(p)), true); err != nil {
		return 0, err
	}
	return WriteFUA(f.d, p, off)
}

// Flush flushes the wrapped device unless a rule fails the flush. Rules
// with a byte range never match a flush.
func (f *Faulty) Flush() error { return f.FlushAt(0) }

// FlushAt is Flush of a request sent at byte off: the observer hears off
// (rules still ignore it).
func (f *Faulty) FlushAt(off int64) error {
	if err := f.fault(OpFlush, off, 0, false, false); err != nil {
		return err
	}
	return f.d.Flush()
}

// Discard discards on the wrapped device, or writes zeros when it is not a
// Discarder, unless a rule fails the discard.
func (f *Faulty) Discard(off, length int64) error {
	if err := f.check(OpDiscard, off, length); err != nil {
		return err
	}
	if d, ok := f.d.(Discarder); ok {
		return d.Discard(off, length)
	}
	buf := make([]byte, min(length, 1<<20))
	for done := int64(0); done < length; {
		n := min(length-done, int64(len(buf)))
		if _, err := f.d.WriteAt(buf[:n], off+done); err != nil {
			return err
		}
		done += n
	}
	return nil
}

// Map maps through the wrapped device, or reports [off, off+length) as one
// data extent when it is not a Mapper. Rules do not apply to Map.
func (f *Faulty) Map(off, length int64) ([]Extent, error) {
	if m, ok := f.d.(Mapper); ok {
		return m.Map(off, length)
	}
	if err := CheckRange(f.d.Name(), "map", f.d.Size(), off, length); err != nil {
		return nil, err
	}
	if length == 0 {
		return nil, nil
	}
	return []Extent{{Off: off, Len: length}}, nil
}
