package run

import (
	"fmt"

	"snaplab/sim/block"
	"snaplab/sim/script"
)

// IOOutcome is how an I/O request of a scenario step came back, on any
// executor: what CheckIO needs to check the step's expectations.
type IOOutcome struct {
	// Err is nil or why the request failed; block.Errno gives its errno.
	Err error
	// Verify checks the data a successful read returned against a named
	// pattern (nil: it matches). The sim executor verifies its buffer;
	// a guest executor reports the verdict the agent reached in the guest.
	Verify func(pattern string) error
	// Oracle is the simulator's objection to what a read returned ("" for
	// none); a failed errno or data expectation is reported first.
	Oracle string
}

// CheckIO checks the expectations of step st against how the I/O of step
// io came back (st is io itself, or the wait step of an asynchronous io):
// the errno (expect=ERRNO, else success), then the data (data=PATTERN).
// It returns "" or the failure; every executor uses it, so a failure reads
// the same wherever it happened.
func CheckIO(io, st *script.Step, out IOOutcome) string {
	errno := block.Errno(out.Err)
	e := st.Expect
	if e.Errno != nil && errno != *e.Errno {
		if out.Err == nil {
			return fmt.Sprintf("%s: got OK, want %s", io.Kind, block.ErrnoName(*e.Errno))
		}
		return fmt.Sprintf("%s: got %s, want %s (%v)", io.Kind, block.ErrnoName(errno), block.ErrnoName(*e.Errno), out.Err)
	}
	if e.Errno == nil && out.Err != nil && out.Oracle == "" {
		return fmt.Sprintf("%s failed: %v", io.Kind, out.Err)
	}
	if e.Data != "" && out.Err == nil {
		if out.Verify == nil {
			return fmt.Sprintf("data: want pattern %s: nothing verified the data", e.Data)
		}
		if err := out.Verify(e.Data); err != nil {
			return fmt.Sprintf("data: want pattern %s: %v", e.Data, err)
		}
	}
	return out.Oracle
}
