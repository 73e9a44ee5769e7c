package record

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"snaplab/sim/block"
	"snaplab/sim/pattern"
	"snaplab/sim/profile"
	"snaplab/sim/script"
)

// Executors are the executors that write recordings (the header's
// "executor").
var Executors = []string{"sim", "vm", "kernel"}

// Limits on what a recording line may ask of a replay. Outside requests
// come from NBD clients (whose READ and WRITE payloads are at most 32 MiB,
// TRIM lengths 32-bit) or from a scenario's own I/O lines (at most 64 MiB).
const (
	// MaxArrivalIO bounds the length of a read or write arrival.
	MaxArrivalIO = 64 << 20
	// MaxArrivalDiscard bounds the length of a discard arrival (NBD's
	// 32-bit length, in whole sectors).
	MaxArrivalDiscard = 1<<32 - block.SectorSize
	// maxDevName is the longest dm device name (DM_NAME_LEN, 128 with
	// its NUL).
	maxDevName = 127
)

// validator checks each line of a recording as Read meets it: every field
// of every kind, and what lines say about each other (op indices in order,
// completions of earlier arrivals, one footer, last). What only a replay
// can know (the size of a device when a request arrives) Replay checks.
type validator struct {
	ops       int             // op lines so far
	results   int             // result lines so far
	lastT     int64           // latest "t" so far
	handles   map[uint64]bool // arrival handle -> still pending
	maxHandle uint64
	opens     uint64          // open lines so far (IDs count from 1)
	openOK    map[uint64]bool // open ID -> succeeded and not closed
	footer    bool
	version   int // the header's format_version
}

func newValidator() *validator {
	return &validator{handles: map[uint64]bool{}, openOK: map[uint64]bool{}}
}

// fieldError is a line's field holding a bad value.
func fieldError(field string, value any, why string) error {
	return fmt.Errorf("%s %s: %s", field, quoteValue(value), why)
}

func quoteValue(v any) string {
	switch x := v.(type) {
	case string:
		if len(x) > 80 {
			x = x[:80] + "..."
		}
		return strconv.Quote(x)
	default:
		return fmt.Sprint(v)
	}
}

// decode unmarshals line into v, naming the field a type error is in.
func decode(line string, v any) error {
	if err := json.Unmarshal([]byte(line), v); err != nil {
		if te, ok := err.(*json.UnmarshalTypeError); ok && te.Field != "" {
			return fmt.Errorf("field %s: %s is not a valid %s", te.Field, te.Value, te.Type)
		}
		return err
	}
	return nil
}

func (v *validator) time(t int64) error {
	if t < 0 {
		return fieldError("t", t, "negative time")
	}
	if t < v.lastT {
		return fieldError("t", t, fmt.Sprintf("before the previous line's time %d (virtual time never goes back)", v.lastT))
	}
	v.lastT = t
	return nil
}

// line validates line n (1-based) of kind k; rec receives the header, the
// choices and the footer.
func (v *validator) line(n int, kind, line string, rec *Recording) error {
	if v.footer {
		return fmt.Errorf("%s line after the footer (the footer is the last line)", kind)
	}
	if n == 1 && kind != "header" {
		return fmt.Errorf("kind %q: the first line must be the header", kind)
	}
	switch kind {
	case "header":
		if n != 1 {
			return fmt.Errorf("header not on line 1")
		}
		if err := decode(line, &rec.Header); err != nil {
			return err
		}
		v.version = rec.Header.FormatVersion
		return validHeader(&rec.Header)
	case "op":
		var op Op
		if err := decode(line, &op); err != nil {
			return err
		}
		if op.I != v.ops {
			return fieldError("i", op.I, fmt.Sprintf("want %d (ops are numbered in order from 0)", v.ops))
		}
		v.ops++
		if op.Line < 1 {
			return fieldError("line", op.Line, "not a line number")
		}
		if err := validText(op.Text); err != nil {
			return err
		}
		return v.time(op.T)
	case "choice":
		var c Choice
		if err := decode(line, &c); err != nil {
			return err
		}
		if c.Site == "" {
			return fieldError("site", c.Site, "empty")
		}
		if c.N < 2 {
			return fieldError("n", c.N, "a choice is among 2 or more")
		}
		if c.Pick < 0 || c.Pick >= c.N {
			return fieldError("pick", c.Pick, fmt.Sprintf("outside [0, %d)", c.N))
		}
		rec.Choices = append(rec.Choices, c)
		return v.time(c.T)
	case "event":
		var e Event
		if err := decode(line, &e); err != nil {
			return err
		}
		if e.Site == "" {
			return fieldError("site", e.Site, "empty")
		}
		return v.time(e.T)
	case "settle":
		var s Settle
		if err := decode(line, &s); err != nil {
			return err
		}
		return v.time(s.T)
	case "arrival":
		var a Arrival
		if err := decode(line, &a); err != nil {
			return err
		}
		if err := v.arrival(&a); err != nil {
			return err
		}
		return v.time(a.T)
	case "completion":
		var c Completion
		if err := decode(line, &c); err != nil {
			return err
		}
		pending, known := v.handles[c.Handle]
		switch {
		case !known:
			return fieldError("handle", c.Handle, "no earlier arrival has this handle")
		case !pending:
			return fieldError("handle", c.Handle, "this arrival already completed")
		}
		v.handles[c.Handle] = false
		if err := validErrno("errno", c.Errno); err != nil {
			return err
		}
		if err := v.validReadHash("data", c.Data); err != nil {
			return err
		}
		if c.Check == "" {
			return fieldError("check", c.Check, `empty (want "ok" or the failure)`)
		}
		return v.time(c.T)
	case "result":
		var r Result
		if err := decode(line, &r); err != nil {
			return err
		}
		if r.I < 0 || r.I >= v.ops {
			return fieldError("i", r.I, fmt.Sprintf("no earlier op has this index (%d ops so far)", v.ops))
		}
		v.results++
		if r.Line < 1 {
			return fieldError("line", r.Line, "not a line number")
		}
		if r.Exit != nil && (*r.Exit < -1 || *r.Exit > 255) {
			return fieldError("exit", *r.Exit, "not an exit status")
		}
		if r.Errno != "" {
			if err := validErrno("errno", r.Errno); err != nil {
				return err
			}
		}
		if !strings.HasPrefix(r.Data, sparsePrefix) {
			if err := validDataHash("data", r.Data); err != nil {
				return err
			}
		} else if err := validDigest("data", r.Data, sparsePrefix); err != nil {
			return err
		}
		if r.Check == "" {
			return fieldError("check", r.Check, `empty (want "ok" or the failure)`)
		}
		return v.time(r.T)
	case "open":
		var o Open
		if err := decode(line, &o); err != nil {
			return err
		}
		if o.ID != v.opens+1 {
			return fieldError("id", o.ID, fmt.Sprintf("want %d (opens are numbered in order from 1)", v.opens+1))
		}
		v.opens++
		if err := validDev(o.Dev); err != nil {
			return err
		}
		if err := validErrno("errno", o.Errno); err != nil {
			return err
		}
		v.openOK[o.ID] = o.Errno == "OK"
		return v.time(o.T)
	case "close":
		var c Close
		if err := decode(line, &c); err != nil {
			return err
		}
		if c.ID < 1 || c.ID > v.opens {
			return fieldError("id", c.ID, "no earlier open has this id")
		}
		return v.time(c.T)
	case "footer":
		var f Footer
		if err := decode(line, &f); err != nil {
			return err
		}
		if f.VirtualNS < v.lastT {
			return fieldError("virtual_ns", f.VirtualNS, fmt.Sprintf("before the last line's time %d", v.lastT))
		}
		for i, d := range f.Draws {
			if d.Stream == "" {
				return fieldError(fmt.Sprintf("draws[%d].stream", i), d.Stream, "empty")
			}
		}
		if err := validDigest("trace_hash", f.TraceHash, "sha256:"); err != nil {
			return err
		}
		v.footer = true
		rec.Footer = &f
		return nil
	}
	return fmt.Errorf("unknown kind %q", kind)
}

func (v *validator) arrival(a *Arrival) error {
	if a.Handle <= v.maxHandle {
		return fieldError("handle", a.Handle, fmt.Sprintf("not after the previous arrival's handle %d (handles count up from 1)", v.maxHandle))
	}
	v.maxHandle = a.Handle
	v.handles[a.Handle] = true
	// Through an open that was closed, a request names no device.
	if a.Dev != "" || a.Open == 0 {
		if err := validDev(a.Dev); err != nil {
			return err
		}
	}
	if a.Off < 0 || a.Off%block.SectorSize != 0 {
		return fieldError("off", a.Off, "not a byte offset that is a multiple of 512")
	}
	if a.Len < 0 || a.Len%block.SectorSize != 0 {
		return fieldError("len", a.Len, "not a length that is a multiple of 512")
	}
	switch a.Op {
	case "read", "write":
		if a.Len > MaxArrivalIO {
			return fieldError("len", a.Len, fmt.Sprintf("a %s of more than %d bytes", a.Op, MaxArrivalIO))
		}
	case "discard":
		if a.Len > MaxArrivalDiscard {
			return fieldError("len", a.Len, fmt.Sprintf("a discard of more than %d bytes", int64(MaxArrivalDiscard)))
		}
	case "flush":
		if a.Off != 0 || a.Len != 0 {
			return fmt.Errorf("off %d len %d: a flush has neither", a.Off, a.Len)
		}
	default:
		return fieldError("op", a.Op, "want read, write, flush or discard")
	}
	if err := v.payload(a); err != nil {
		return err
	}
	if a.FUA && a.Op != "write" {
		return fieldError("fua", a.FUA, "only a write has FUA")
	}
	if a.Open != 0 && (a.Open > v.opens || !v.openOK[a.Open]) {
		return fieldError("open", a.Open, "no earlier successful open has this id")
	}
	return nil
}

// payload checks what a write carries: its bytes inline (version 1 and
// later), or (version 2) one pattern name or one blob name; other ops
// carry nothing.
func (v *validator) payload(a *Arrival) error {
	n := 0
	if len(a.Data) > 0 {
		n++
	}
	if a.Pattern != "" {
		n++
		if v.version < 2 {
			return fieldError("pattern", a.Pattern, "format version 1 has no pattern field")
		}
		if err := pattern.Valid(a.Pattern); err != nil {
			return fieldError("pattern", a.Pattern, err.Error())
		}
	}
	if a.Blob != "" {
		n++
		if v.version < 2 {
			return fieldError("blob", a.Blob, "format version 1 has no blob field")
		}
		if _, err := ParseBlobID(a.Blob); err != nil {
			return fieldError("blob", a.Blob, fmt.Sprintf("want %q and 32 hex digits", BlobPrefix))
		}
	}
	switch {
	case a.Op != "write" && n > 0:
		return fmt.Errorf("a %s carries no data (data, pattern or blob)", a.Op)
	case a.Op != "write":
		return nil
	case n > 1:
		return fmt.Errorf("a write carries one of data, pattern and blob, not %d", n)
	case len(a.Data) > 0 && int64(len(a.Data)) != a.Len:
		return fieldError("data", fmt.Sprintf("%d bytes", len(a.Data)), fmt.Sprintf("a write of len %d carries exactly that many bytes", a.Len))
	case n == 0 && a.Len > 0:
		return fieldError("data", "0 bytes", fmt.Sprintf("a write of len %d carries data, a pattern or a blob", a.Len))
	}
	return nil
}

func validHeader(h *Header) error {
	if h.Format != Format {
		return fmt.Errorf("format %q, want %q", h.Format, Format)
	}
	if h.FormatVersion < OldestVersion || h.FormatVersion > FormatVersion {
		return fmt.Errorf("format_version %d: this snaplab reads versions %d to %d (a newer snaplab wrote it?)", h.FormatVersion, OldestVersion, FormatVersion)
	}
	if h.Blobs != "" && (h.FormatVersion < 2 || h.Blobs != filepath.Base(h.Blobs) || h.Blobs == "." || h.Blobs == ".." || strings.ContainsRune(h.Blobs, 0)) {
		return fieldError("blobs", h.Blobs, "not a file name in the recording's directory (format version 2 and later)")
	}
	if strings.ContainsAny(h.Scenario, "\n\x00") {
		return fieldError("scenario", h.Scenario, "a scenario name is one line")
	}
	known := false
	for _, e := range Executors {
		known = known || h.Executor == e
	}
	if !known {
		return fieldError("executor", h.Executor, "want "+strings.Join(Executors, ", "))
	}
	if h.Semantics != "mainline" && h.Semantics != "seed" {
		return fieldError("semantics", h.Semantics, "want mainline or seed")
	}
	if _, err := profile.Lookup(h.Kernel); err != nil {
		return fieldError("kernel", h.Kernel, "want one of "+strings.Join(profile.Names(), ", ")+" (or none: 6.1)")
	}
	if h.Dir != "" && (!filepath.IsAbs(h.Dir) || filepath.Clean(h.Dir) != h.Dir || strings.ContainsRune(h.Dir, 0)) {
		return fieldError("dir", h.Dir, "not a clean absolute directory path")
	}
	if _, err := script.Parse(h.Scenario, h.Text); err != nil {
		return fmt.Errorf("text: the scenario does not parse: %v", err)
	}
	return nil
}

func validText(s string) error {
	if strings.TrimSpace(s) == "" {
		return fieldError("text", s, "empty")
	}
	if strings.ContainsRune(s, '\n') {
		return fieldError("text", s, "a step is one line")
	}
	if strings.ContainsRune(s, 0) {
		return fieldError("text", s, "a NUL byte (a scenario is text)")
	}
	return nil
}

func validDev(s string) error {
	if s == "" || len(s) > maxDevName || strings.ContainsAny(s, "\n\x00") {
		return fieldError("dev", s, "not a device name")
	}
	return nil
}

func validErrno(field, s string) error {
	if _, err := block.ParseErrno(s); err == nil {
		return nil
	}
	if n, ok := strings.CutPrefix(s, "errno"); ok {
		if v, err := strconv.ParseUint(n, 10, 16); err == nil && v > 0 && strconv.FormatUint(v, 10) == n {
			return nil
		}
	}
	return fieldError(field, s, "not an errno name (OK, EIO, ..., or errnoN)")
}

// validDataHash checks the short data hash of a read ("sha256:" and 16 hex
// digits), or "" for none.
func validDataHash(field, s string) error {
	if s == "" {
		return nil
	}
	h, ok := strings.CutPrefix(s, "sha256:")
	if ok && (len(h) == 16 || len(h) == 64) && isHex(h) {
		return nil
	}
	return fieldError(field, s, `want "sha256:" and 16 or 64 hex digits`)
}

// validReadHash checks the hash of the data an outside read returned: as
// validDataHash in version 1; from version 2, "xxh3:" and 16 hex digits.
func (v *validator) validReadHash(field, s string) error {
	if v.version < 2 {
		return validDataHash(field, s)
	}
	if h, ok := strings.CutPrefix(s, "xxh3:"); s == "" || ok && len(h) == 16 && isHex(h) {
		return nil
	}
	return fieldError(field, s, `want "xxh3:" and 16 hex digits`)
}

// sparsePrefix starts the digest of an image file (see the run package).
const sparsePrefix = "sparse-sha256:"

// validDigest checks a full digest: prefix and 64 hex digits.
func validDigest(field, s, prefix string) error {
	if h, ok := strings.CutPrefix(s, prefix); ok && len(h) == 64 && isHex(h) {
		return nil
	}
	return fieldError(field, s, fmt.Sprintf("want %q and 64 hex digits", prefix))
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
