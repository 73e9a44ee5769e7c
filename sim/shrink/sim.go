package shrink

import (
	"strings"

	"snaplab/sim/run"
	"snaplab/sim/script"
)

// Signature is how a scenario fails on the simulator (the sim executor
// with the scenario's own settings): the text of the first failing step
// and its message with every run of digits replaced by '#', so that a
// candidate failing on the same line for another reason ("no disk or
// device named snap3" instead of "EIO: no space for exception") is not
// taken for the same failure. It is "" when text does not parse or passes.
func Signature(text string) string { return SignatureIn("", run.Options{}, text) }

// SignatureIn is Signature for a scenario whose file is in dir (relative
// image= paths are relative to it), run with opts (e.g.
// AllowImagesOutside).
func SignatureIn(dir string, opts run.Options, text string) string {
	sc, err := script.Parse("shrink.scn", text)
	if err != nil {
		return ""
	}
	sc.Dir = dir
	rep := run.Run(sc, opts)
	if rep.Pass() {
		return ""
	}
	f := rep.Failures[0]
	return f.Text + "\n" + Digitless(f.Msg)
}

// SimFails returns the predicate for Shrink that holds when a text fails
// on the simulator with signature sig.
func SimFails(sig string) func(text string) bool { return SimFailsIn("", run.Options{}, sig) }

// SimFailsIn is SimFails with SignatureIn's dir and opts.
func SimFailsIn(dir string, opts run.Options, sig string) func(text string) bool {
	return func(text string) bool { return sig != "" && SignatureIn(dir, opts, text) == sig }
}

// Digitless is s with every run of digits replaced by '#': the part of a
// failure message that stays when offsets, devices and pattern names vary.
func Digitless(s string) string {
	var b strings.Builder
	digit := false
	for _, c := range s {
		if c >= '0' && c <= '9' {
			if !digit {
				b.WriteByte('#')
			}
			digit = true
			continue
		}
		digit = false
		b.WriteRune(c)
	}
	return b.String()
}
