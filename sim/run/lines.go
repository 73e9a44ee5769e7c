package run

import (
	"fmt"
	"strings"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/script"
)

// checkStdoutParts checks a dmsetup step's partial stdout assertions:
// each expect~="REGEX" matches somewhere in stdout (without its final
// newline, multi-line mode), each line="LINE" is a whole line of it.
func checkStdoutParts(st *script.Step, stdout string) string {
	out := strings.TrimSuffix(stdout, "\n")
	for _, re := range st.Expect.StdoutMatch {
		if !re.MatchString(out) {
			return fmt.Sprintf("stdout %q does not match expect~=%q", out, script.StdoutPattern(re))
		}
	}
	if len(st.Expect.StdoutLines) > 0 {
		return wantLines("stdout", st.Expect.StdoutLines, strings.Split(out, "\n"))
	}
	return ""
}

// logBlockErrors makes every request a fault rule fails on disk log the
// block layer's line for it (dm.BlockErrorLine), as the guest kernel
// logs a failed request to its virtio disk.
func (r *Session) logBlockErrors(f *block.Faulty, disk string) {
	log := r.ctl.Log
	f.Observe(func(x block.Failed) {
		log.Print(dm.BlockErrorLine(disk, x.Op, x.Off))
		if x.FUA {
			// The guest's virtio disk has no FUA: Linux's flush sequence
			// writes the data and then flushes, and a failed data write is
			// completed twice (blk_flush_complete_seq ends the request
			// again), so its line is logged twice (fua-write-error.scn).
			log.Print(dm.BlockErrorLine(disk, x.Op, x.Off))
		}
	})
}
