// Package plant holds the simulator's planted bugs: deliberate defects in
// sim/snapshot and sim/exstore that prove the checks (the generator's
// expectations, the oracle on every read, the invariants after every
// step, the determinism gate) can fail. Issue 12 item 6: each bug must be
// found by a campaign of at most 300 generated scenarios and shrunk to a
// scenario of at most 12 steps (scenarios/explore's planted spec).
//
// Contract:
//
//   - A defect sits in the simulator as `if plant.Is(plant.X) { ... }` at
//     the place a developer could make that mistake; Bugs lists each one
//     with what it breaks.
//   - In a normal build (no build tag) Is is constant false: nothing can
//     switch a bug on, and the compiler drops the planted branches. Only a
//     binary built with `-tags snaplab_plant` has Set, which selects one
//     bug for the whole process (`snaplab explore --plant NAME`).
//   - Set is called before the simulator runs, never while it does: Is
//     only reads what Set wrote, so cases running on several goroutines see
//     one value. Nothing here draws randomness or reads the environment;
//     only the bug Nondeterministic leaks Go's map order, which is its
//     point (the determinism gate must catch it).
package plant

import (
	"fmt"
	"strings"
)

// Bug names one planted defect.
type Bug string

// The planted bugs.
const (
	// OriginWriteSkipsCOW: __origin_write walks the origin's snapshots with
	// an off-by-one bound and never copies a chunk out for the last one.
	OriginWriteSkipsCOW Bug = "origin-write-skips-cow"
	// HandoverSourceNotEIO: the handover swaps the stores but leaves the
	// source valid, so the old table keeps serving I/O instead of EIO.
	HandoverSourceNotEIO Bug = "handover-source-not-eio"
	// InvalidSourceValidDest: a handover from an invalid source leaves the
	// destination valid (mainline copies "valid" as true; the seed's
	// refusal forgets to invalidate the destination).
	InvalidSourceValidDest Bug = "invalid-source-valid-dest"
	// CommitBeforeCopy: kcopyd's callback runs when the origin chunk has
	// been read, so the exception is committed before the COW write of
	// its copy has finished.
	CommitBeforeCopy Bug = "commit-before-copy"
	// InvalidationHeaderNotWritten: persistent_drop_snapshot clears valid
	// in memory only; the header on the COW still says valid.
	InvalidationHeaderNotWritten Bug = "invalidation-header-not-written"
	// SuspendDropsPending: a snapshot's postsuspend forgets its pending
	// exceptions (as if suspend had drained them), so a later write to
	// such a chunk allocates a second exception for it.
	SuspendDropsPending Bug = "suspend-drops-pending"
	// ReloadWrongChunk: reading a persistent store's metadata skips the
	// header chunk a second time: every reloaded exception points one COW
	// chunk too far.
	ReloadWrongChunk Bug = "reload-wrong-chunk"
	// OverflowNotFlagged: a PO snapshot that runs out of room fails the
	// write but never sets snapshot_overflowed, so later writes to its
	// existing exceptions still succeed.
	OverflowNotFlagged Bug = "overflow-not-flagged"
	// MergeSkipsChunk: a merge step copies one chunk less than it commits
	// (an off-by-one in the extent's length): that chunk's snapshot data
	// never reaches the origin.
	MergeSkipsChunk Bug = "merge-skips-chunk"
	// AreaNotZeroed: when a persistent store's metadata area fills, the
	// in-memory area is not zeroed before it becomes the next area, so the
	// next area is written with the previous one's stale entries.
	AreaNotZeroed Bug = "area-not-zeroed"
	// Nondeterministic: __origin_write visits the origin's snapshots in Go
	// map order (a set of snapshots kept in a map): the order of copies,
	// the snapshot an origin write waits on and the kernel log lines
	// differ from run to run.
	Nondeterministic Bug = "nondeterministic"
)

// Bugs lists every planted bug with a one-line description, in a fixed
// order.
var Bugs = []struct {
	Bug  Bug
	What string
}{
	{OriginWriteSkipsCOW, "an origin write skips copy-on-write for one snapshot (the last one of the origin)"},
	{HandoverSourceNotEIO, "the old table is not made to return EIO after handover"},
	{InvalidSourceValidDest, "the destination does not become invalid from an invalid source"},
	{CommitBeforeCopy, "a commit happens before its copy completes"},
	{InvalidationHeaderNotWritten, "the header is not rewritten on invalidation"},
	{SuspendDropsPending, "a pending exception is lost at suspend"},
	{ReloadWrongChunk, "the wrong COW chunk is used after reload"},
	{OverflowNotFlagged, "a PO snapshot's overflow is not flagged"},
	{MergeSkipsChunk, "a merge skips a chunk"},
	{AreaNotZeroed, "a metadata area is not zeroed before use"},
	{Nondeterministic, "origin writes visit snapshots in Go's map order"},
}

// Names are the bugs' names, in Bugs' order.
func Names() []string {
	out := make([]string, len(Bugs))
	for i, b := range Bugs {
		out[i] = string(b.Bug)
	}
	return out
}

// Lookup returns the bug named name, or an error naming the known bugs.
func Lookup(name string) (Bug, error) {
	for _, b := range Bugs {
		if string(b.Bug) == name {
			return b.Bug, nil
		}
	}
	return "", fmt.Errorf("unknown bug %q; known bugs: %s", name, strings.Join(Names(), ", "))
}
