package script

import (
	"fmt"
	"regexp"
	"strings"
)

// parseStdoutPart parses a dmsetup step's partial stdout check:
// expect~="REGEX" (the regexp, in multi-line mode, matches somewhere in
// stdout) or line="LINE" (LINE is one whole line of stdout). Both repeat.
func parseStdoutPart(st *Step, key, v string) error {
	switch key {
	case "expect~":
		if v == "" {
			return fmt.Errorf("expect~=\"\": an empty regular expression matches any output (want expect~=\"REGEX\")")
		}
		re, err := regexp.Compile("(?m)" + v)
		if err != nil {
			return fmt.Errorf("expect~=%q: invalid regular expression: %v", v, err)
		}
		st.Expect.StdoutMatch = append(st.Expect.StdoutMatch, re)
	case "line":
		if strings.Contains(v, "\n") {
			return fmt.Errorf("line=%q: one line of stdout, without a newline (use one line= per line)", v)
		}
		st.Expect.StdoutLines = append(st.Expect.StdoutLines, v)
	}
	return nil
}

// StdoutPattern is the text of a compiled expect~= regexp, as written.
func StdoutPattern(re *regexp.Regexp) string { return strings.TrimPrefix(re.String(), "(?m)") }

// takeLogs moves an I/O line's log="LINE" words (repeatable) into
// st.Expect.Log and returns the other words.
func takeLogs(st *Step, args []string) []string {
	rest := args[:0:0]
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "log="); ok {
			st.Expect.Log = append(st.Expect.Log, v)
			continue
		}
		rest = append(rest, a)
	}
	return rest
}

// checkIOExtras checks the combinations of an I/O line's words that the
// executors cannot run.
func checkIOExtras(st *Step) error {
	if st.Async != "" && len(st.Expect.Log) > 0 {
		return fmt.Errorf("%s: log= on an asynchronous I/O (async=%s): put it on its wait step, which sees what the I/O logged", st.Kind, st.Async)
	}
	if !st.Buffered {
		return nil
	}
	switch {
	case st.FUA:
		return fmt.Errorf("write: buffered and fua together (a buffered write reaches the device at fsync, sync or the scenario's end)")
	case st.Async != "":
		return fmt.Errorf("write: buffered and async=%s together (a buffered write completes in the page cache: it never waits on a device)", st.Async)
	}
	return nil
}

// parseSync parses "fsync DEV [expect=ERRNO] [log=LINE]..." and
// "sync [log=LINE]...".
func parseSync(st *Step, args []string) error {
	args = takeLogs(st, args)
	if st.Kind == KSync {
		if len(args) != 0 {
			return fmt.Errorf("sync: want \"sync [log=LINE]...\" (sync(2) writes back every device and returns no error), got %q", strings.Join(args, " "))
		}
		return nil
	}
	pos, kv, err := splitKV(args, "expect")
	if err != nil {
		return fmt.Errorf("fsync: %v", err)
	}
	if len(pos) != 1 {
		return fmt.Errorf("fsync: want \"fsync DEV [expect=ERRNO] [log=LINE]...\"")
	}
	if err := validName(pos[0]); err != nil {
		return fmt.Errorf("fsync: device: %v", err)
	}
	st.Dev = pos[0]
	if err := parseIOExpect(st, kv.val("expect"), false); err != nil {
		return fmt.Errorf("fsync: %v", err)
	}
	return nil
}
