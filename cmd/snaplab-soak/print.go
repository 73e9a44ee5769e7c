package main

import (
	"fmt"
	"io"
	"time"
)

// Print writes a run's figures, one per line, then its problems.
func Print(w io.Writer, d time.Duration, r *Result) {
	fmt.Fprintf(w, "soak: duration %v\n", d)
	fmt.Fprintf(w, "soak: ops %d (errors %d), bytes verified %d MiB, mismatches %d\n", r.Ops, r.Errors, r.BytesVerified>>20, r.Mismatches)
	fmt.Fprintf(w, "soak: connections reset with a write outstanding %d, floods %d, suspend/resume cycles %d\n", r.Aborts, r.Floods, r.Suspends)
	fmt.Fprintf(w, "soak: server RSS start %d MiB, peak %d MiB (after a warm-up quarter: first half %d, second half %d), end %d MiB\n",
		r.RSSStart>>20, r.RSSMax>>20, r.RSSMaxFirst>>20, r.RSSMaxSecond>>20, r.RSSEnd>>20)
	fmt.Fprintf(w, "soak: 4 KiB read p99 during the load %v\n", r.SmallReadP99.Round(time.Microsecond))
	fmt.Fprintf(w, "soak: goroutines %d before, %d after; descriptors %d before, %d after; in flight after: %s\n",
		r.GoroutinesBefore, r.GoroutinesAfter, r.FDsBefore, r.FDsAfter, r.InFlightAfter)
	fmt.Fprintf(w, "soak: serve exit %d\n", r.ServeExit)
	for _, p := range r.Problems {
		fmt.Fprintf(w, "soak: PROBLEM: %s\n", p)
	}
	if len(r.Problems) == 0 {
		fmt.Fprintln(w, "soak: ok")
	}
}
