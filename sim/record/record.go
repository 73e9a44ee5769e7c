// Package record reads and writes snaplab recordings: JSON Lines, one
// object per line, built from structs so the bytes are deterministic.
//
//	{"kind":"header","format":"snaplab-recording","format_version":1,...,"text":"<the scenario>"}
//	{"kind":"op","i":0,"t":0,"line":4,"text":"dmsetup create ..."}
//	{"kind":"choice","t":1500,"site":"sched.next","n":3,"pick":1}
//	{"kind":"event","t":1500,"site":"kcopyd.read"}
//	{"kind":"result","i":0,"t":0,"line":4,"exit":0,"stdout":"...","log":[...]}
//	{"kind":"open","t":0,"id":1,"dev":"base","errno":"OK"}       (an NBD client)
//	{"kind":"arrival","t":0,"handle":3,"dev":"base","op":"read","off":0,"len":4096,"open":1}
//	{"kind":"arrival","t":0,"handle":4,"dev":"base","op":"write","off":0,"len":4096,"blob":"xxh3:..."}
//	{"kind":"close","t":0,"id":1}
//	{"kind":"footer","steps":812,"virtual_ns":912345,"draws":[...],"trace_hash":"sha256:..."}
//
// The header embeds the scenario text, so a recording alone is enough to
// replay it. The footer's trace hash covers every byte before the footer.
//
// Data written from outside (NBD clients, guests) is recorded compactly: a
// write whose content is one of the scenario's patterns at its offset says
// "pattern":NAME; other content goes to the blob sidecar beside the file
// (NAME.blobs, see blobs.go) and the line names it, "blob":"xxh3:...";
// without a sidecar (a recording kept in memory) it is inline, "data" in
// base64. Format version 1 recordings (data always inline) still read and
// replay; a newer version is refused with an error that says so.
package record

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/zeebo/xxh3"

	"snaplab/sim/pattern"
	"snaplab/sim/world"
)

// Format identifies recordings; FormatVersion changes when lines change
// incompatibly.
const (
	Format        = "snaplab-recording"
	FormatVersion = 2
	// OldestVersion is the oldest format version Read accepts.
	OldestVersion = 1
)

// Header is the first line.
type Header struct {
	Kind          string `json:"kind"`
	Format        string `json:"format"`
	FormatVersion int    `json:"format_version"`
	Scenario      string `json:"scenario"`
	Executor      string `json:"executor"`
	Semantics     string `json:"semantics"`
	Seed          uint64 `json:"seed"`
	Text          string `json:"text"`
	// Dir is the absolute directory of the scenario file, which relative
	// image= paths are relative to; only when a disk has an image (and
	// absent from recordings made before it existed, whose image paths
	// are relative to the working directory).
	Dir string `json:"dir,omitempty"`
	// Blobs is the file name of the blob sidecar, in the recording's
	// directory, when the recording has one.
	Blobs string `json:"blobs,omitempty"`
	// Kernel is the kernel profile the run modelled (sim/profile), or a
	// guest's kernel release, when it is not the default 6.1.
	Kernel string `json:"kernel,omitempty"`
}

// Op is a scenario step starting.
type Op struct {
	Kind string `json:"kind"`
	I    int    `json:"i"`
	T    int64  `json:"t"`
	Line int    `json:"line"`
	Text string `json:"text"`
	// Guest marks a step a guest performed (vm executor); replay copies
	// its op and result lines and regenerates the NBD traffic it caused.
	Guest bool `json:"guest,omitempty"`
}

// Choice is a seeded decision.
type Choice struct {
	Kind string `json:"kind"`
	T    int64  `json:"t"`
	Site string `json:"site"`
	N    int    `json:"n"`
	Pick int    `json:"pick"`
}

// Event is a simulated event running.
type Event struct {
	Kind string `json:"kind"`
	T    int64  `json:"t"`
	Site string `json:"site"`
}

// Arrival is an I/O request arriving from outside the simulator (an NBD
// client in a guest), in arrival order.
type Arrival struct {
	Kind   string `json:"kind"`
	T      int64  `json:"t"`
	Handle uint64 `json:"handle"`
	Dev    string `json:"dev"`
	Op     string `json:"op"`
	Off    int64  `json:"off"`
	Len    int64  `json:"len"`
	FUA    bool   `json:"fua,omitempty"`
	Data   []byte `json:"data,omitempty"` // the bytes written (base64), when inline
	// Pattern names the pattern the write's bytes are, at Off (version 2).
	Pattern string `json:"pattern,omitempty"`
	// Blob names the bytes written in the blob sidecar (version 2).
	Blob string `json:"blob,omitempty"`
	// Open, when set, is the ID of the open (an Open line) the request
	// came through: it goes to the device that open is bound to, not to
	// whatever device has the name now.
	Open uint64 `json:"open,omitempty"`
}

// Open is a disk or dm device opened from outside the scenario (an NBD
// connection entering transmission). IDs count from 1 in session order,
// failed opens included.
type Open struct {
	Kind string `json:"kind"`
	T    int64  `json:"t"`
	ID   uint64 `json:"id"`
	Dev  string `json:"dev"`
	// Uncounted marks an open that does not count in the device's open
	// count (the vm executor's stand-ins for the guest's per-I/O opens).
	Uncounted bool   `json:"uncounted,omitempty"`
	Errno     string `json:"errno"` // "OK", or why the open failed (ENXIO)
}

// Close is an Open released.
type Close struct {
	Kind string `json:"kind"`
	T    int64  `json:"t"`
	ID   uint64 `json:"id"`
}

// Completion is an outside request finishing.
type Completion struct {
	Kind   string `json:"kind"`
	T      int64  `json:"t"`
	Handle uint64 `json:"handle"`
	Errno  string `json:"errno"`
	Data   string `json:"data,omitempty"` // sha256 of data read
	Check  string `json:"check"`
}

// Settle marks the world being run until nothing is left to run.
type Settle struct {
	Kind string `json:"kind"`
	T    int64  `json:"t"`
}

// Result is what a step produced.
type Result struct {
	Kind   string   `json:"kind"`
	I      int      `json:"i"`
	T      int64    `json:"t"`
	Line   int      `json:"line"`
	Exit   *int     `json:"exit,omitempty"`
	Stdout string   `json:"stdout,omitempty"`
	Stderr string   `json:"stderr,omitempty"`
	Log    []string `json:"log,omitempty"`
	Errno  string   `json:"errno,omitempty"`
	Data   string   `json:"data,omitempty"` // sha256 of data read
	Check  string   `json:"check"`          // "ok" or the failure
	Guest  bool     `json:"guest,omitempty"`
	// DM is an lvm step's device-mapper operations and their outcomes
	// ("load vg-snap: ok"), and DMLines the same operations as scenario
	// lines, which the simulator repeats (sim/lvmlog).
	DM      []string `json:"dm,omitempty"`
	DMLines []string `json:"dm_lines,omitempty"`
}

// Footer is the last line.
type Footer struct {
	Kind      string              `json:"kind"`
	Steps     uint64              `json:"steps"`
	VirtualNS int64               `json:"virtual_ns"`
	Draws     []world.StreamDraws `json:"draws"`
	Pass      bool                `json:"pass"`
	TraceHash string              `json:"trace_hash"`
}

// Writer writes a recording and hashes it.
type Writer struct {
	w    io.Writer
	h    hash.Hash
	err  error
	line []byte

	data     dataMode
	blobs    BlobSink
	patterns []string
	byKey    map[uint64]string // pattern.Key -> name
}

// dataMode is how a Writer records the data of outside writes.
type dataMode int

const (
	dataInline dataMode = iota // patterns, else base64 inline
	dataLegacy                 // version 1: always base64 inline
	dataBlobs                  // patterns, else a blob in the sidecar
	dataNames                  // patterns, else the blob's name only (a replay)
)

// NewWriter returns a writer on w. With w nil nothing is recorded: lines
// are neither encoded nor hashed (the cost of an unrecorded run), and Hash
// is "".
func NewWriter(w io.Writer) *Writer {
	if w == nil {
		return &Writer{err: errOff}
	}
	return &Writer{w: w, h: sha256.New()}
}

// errOff stops an unrecorded Writer at its first line; Err does not
// report it.
var errOff = errors.New("not recording")

// SetBlobs makes outside writes' data go to the sidecar b.
func (rw *Writer) SetBlobs(b BlobSink) { rw.data, rw.blobs = dataBlobs, b }

// SetBlobNames makes outside writes' data recorded by blob name without
// storing it: a replay regenerating a recording whose sidecar exists.
func (rw *Writer) SetBlobNames() { rw.data = dataNames }

// SetLegacy records data as format version 1 did: inline, no patterns.
func (rw *Writer) SetLegacy() { rw.data = dataLegacy }

// SetPatterns names the patterns whose content a write's data is
// recognised as (the scenario's).
func (rw *Writer) SetPatterns(names []string) {
	rw.patterns = append(rw.patterns[:0], names...)
	rw.byKey = make(map[uint64]string, len(names))
	for _, n := range names {
		if n != pattern.Zero {
			rw.byKey[pattern.Key(n)] = n
		}
	}
}

// Payload fills the arrival's record of data, the bytes a write carries:
// a pattern name, a blob name, or the bytes inline.
func (rw *Writer) Payload(a *Arrival, data []byte) {
	if rw.err == errOff {
		return
	}
	if rw.data == dataLegacy {
		a.Data = data
		return
	}
	if name := rw.patternOf(data, a.Off); name != "" {
		a.Pattern = name
		return
	}
	switch rw.data {
	case dataBlobs:
		a.Blob = rw.blobs.Put(data).String()
		if err := rw.blobs.Err(); err != nil && rw.err == nil {
			rw.err = err
		}
	case dataNames:
		a.Blob = IDOf(data).String()
	default:
		a.Data = data
	}
}

// ReadHash is what a completion line says of the data an outside read
// returned: from format version 2 "xxh3:" and 16 hex digits (XXH3-64, a
// tenth of sha256's cost on a busy server), in version 1 "sha256:" and the
// first 16 hex digits of the SHA-256.
func (rw *Writer) ReadHash(data []byte) string {
	if rw.err == errOff {
		return ""
	}
	if rw.data == dataLegacy {
		return DataHash(data)
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], xxh3.Hash(data))
	return "xxh3:" + hex.EncodeToString(b[:])
}

// Write appends one line.
func (rw *Writer) Write(v any) {
	if rw.err != nil {
		return
	}
	b, ok := appendLine(rw.line[:0], v)
	if !ok {
		var err error
		b, err = json.Marshal(v)
		if err != nil {
			rw.err = err
			return
		}
	}
	rw.emit(b, ok)
}

// WriteArrival, WriteCompletion, WriteSettle, WriteEvent and WriteChoice
// are Write for the lines a busy session writes per request or event,
// without boxing the line in an interface (an allocation each).
func (rw *Writer) WriteArrival(a *Arrival) {
	if rw.err == nil {
		rw.emit(appendArrival(rw.line[:0], a), true)
	}
}

// WriteCompletion: see WriteArrival.
func (rw *Writer) WriteCompletion(c *Completion) {
	if rw.err == nil {
		rw.emit(appendCompletion(rw.line[:0], c), true)
	}
}

// WriteSettle: see WriteArrival.
func (rw *Writer) WriteSettle(s *Settle) {
	if rw.err == nil {
		rw.emit(appendSettle(rw.line[:0], s), true)
	}
}

// emit ends line b and writes it; reuse keeps its buffer for the next.
func (rw *Writer) emit(b []byte, reuse bool) {
	b = append(b, '\n')
	rw.h.Write(b)
	_, rw.err = rw.w.Write(b)
	if reuse && cap(b) <= 64<<10 {
		rw.line = b
	}
}

// Hash is the trace hash of everything written so far ("" when not
// recording).
func (rw *Writer) Hash() string {
	if rw.h == nil {
		return ""
	}
	return "sha256:" + hex.EncodeToString(rw.h.Sum(nil))
}

// On reports whether lines are recorded (a Writer on nil records none):
// what only a line would show need not be computed otherwise.
func (rw *Writer) On() bool { return rw.err != errOff }

// Err returns the first write error.
func (rw *Writer) Err() error {
	if rw.err == errOff {
		return nil
	}
	return rw.err
}

// Observer adapts a Writer to world.Observer.
type Observer struct{ W *Writer }

// Choice implements world.Observer.
func (o Observer) Choice(t world.Time, site string, n, pick int) {
	if o.W.err == nil {
		o.W.emit(appendChoice(o.W.line[:0], &Choice{Kind: "choice", T: int64(t), Site: site, N: n, Pick: pick}), true)
	}
}

// Event implements world.Observer.
func (o Observer) Event(t world.Time, site string) {
	if o.W.err == nil {
		o.W.emit(appendEvent(o.W.line[:0], &Event{Kind: "event", T: int64(t), Site: site}), true)
	}
}

// Recording is a recording read back.
type Recording struct {
	Header  Header
	Lines   []string // every line, raw, header and footer included
	Choices []Choice
	Footer  *Footer

	dir   string      // the recording file's directory (ReadFile), where its sidecar is
	blobs *BlobReader // opened on the first Blob
}

// ReadFile reads the recording at path (Read); its blob sidecar, named in
// the header, is looked for beside it when a blob is first asked for.
func ReadFile(path string) (*Recording, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rec, err := Read(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	rec.dir = filepath.Dir(path)
	return rec, nil
}

// UseBlobs serves the recording's blobs from r (instead of the sidecar
// file its header names).
func (rec *Recording) UseBlobs(r *BlobReader) { rec.blobs = r }

// Blob returns the content a write's "blob" names, from the sidecar.
func (rec *Recording) Blob(name string) ([]byte, error) {
	id, err := ParseBlobID(name)
	if err != nil {
		return nil, err
	}
	if rec.blobs == nil {
		if rec.Header.Blobs == "" {
			return nil, fmt.Errorf("blob %s: the recording's header names no sidecar", name)
		}
		if rec.dir == "" {
			return nil, fmt.Errorf("blob %s: %w (read the recording with ReadFile)", name, ErrNoSidecar)
		}
		r, err := OpenBlobs(filepath.Join(rec.dir, rec.Header.Blobs))
		if err != nil {
			return nil, err
		}
		rec.blobs = r
	}
	return rec.blobs.Get(id)
}

// Close releases the sidecar, if one was opened.
func (rec *Recording) Close() error {
	if rec.blobs == nil {
		return nil
	}
	err := rec.blobs.Close()
	rec.blobs = nil
	return err
}

// Read parses a recording and validates every line (see validator);
// errors name the line, the field and its value.
func Read(r io.Reader) (*Recording, error) {
	rec := &Recording{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), MaxLine)
	v := newValidator()
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		rec.Lines = append(rec.Lines, line)
		var k struct {
			Kind string `json:"kind"`
		}
		if err := json.Unmarshal([]byte(line), &k); err != nil {
			return nil, fmt.Errorf("recording line %d: not a JSON object: %v", n, err)
		}
		if err := v.line(n, k.Kind, line, rec); err != nil {
			return nil, fmt.Errorf("recording line %d: %w", n, err)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("recording line %d: longer than %d bytes", n+1, MaxLine)
		}
		return nil, fmt.Errorf("recording: %v", err)
	}
	if n == 0 || rec.Header.Kind != "header" {
		return nil, fmt.Errorf("recording: no header line")
	}
	if rec.Footer == nil {
		return nil, fmt.Errorf("recording: no footer line (truncated?)")
	}
	return rec, nil
}

// MaxLine is the longest recording line Read accepts (a header holds the
// whole scenario; an arrival a write's data in base64).
const MaxLine = 64 << 20

// Tape replays recorded choices in order (world.Tape). A request for a
// different site, or a pick out of range, is a divergence.
type Tape struct {
	choices []Choice
	next    int
}

// NewTape returns a tape of the recording's choices.
func NewTape(rec *Recording) *Tape { return &Tape{choices: rec.Choices} }

// Next implements world.Tape.
func (t *Tape) Next(site string, n int) (int, bool, error) {
	if t.next >= len(t.choices) {
		return 0, false, nil
	}
	c := t.choices[t.next]
	t.next++
	if c.Site != site || c.N != n {
		return 0, false, fmt.Errorf("divergence at choice %d: recorded %s among %d, replay asks %s among %d", t.next, c.Site, c.N, site, n)
	}
	if c.Pick < 0 || c.Pick >= n {
		return 0, false, fmt.Errorf("divergence at choice %d: recorded pick %d is not among %d", t.next, c.Pick, n)
	}
	return c.Pick, true, nil
}

// Diff compares two recordings line by line and describes the first
// difference with up to context lines before it; "" when identical.
func Diff(a, b []string, nameA, nameB string, context int) string {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return describe(a, b, i, nameA, nameB, context)
		}
	}
	if len(a) != len(b) {
		return describe(a, b, n, nameA, nameB, context)
	}
	return ""
}

func describe(a, b []string, i int, nameA, nameB string, context int) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "first difference at line %d\n", i+1)
	for j := max(0, i-context); j < i; j++ {
		fmt.Fprintf(&sb, "  %s\n", a[j])
	}
	at := func(l []string) string {
		if i < len(l) {
			return l[i]
		}
		return "(end of recording)"
	}
	fmt.Fprintf(&sb, "- %s: %s\n+ %s: %s\n", nameA, at(a), nameB, at(b))
	return sb.String()
}

// SplitLines splits recording bytes into lines.
func SplitLines(b []byte) []string {
	b = bytes.TrimRight(b, "\n")
	if len(b) == 0 {
		return nil
	}
	return strings.Split(string(b), "\n")
}
