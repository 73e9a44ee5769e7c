package block_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"

	"snaplab/sim/block"
	"snaplab/sim/pattern"
)

// step is one operation on a Faulty and its expected outcome: "" for
// success, else "ERRNO site" ("EINVAL -" for a range error).
type step struct {
	op     string // r, w, fua, f, d
	off, n int64
	want   string
}

func do(f *block.Faulty, s step) error {
	p := make([]byte, s.n)
	pattern.Fill(p, "X", s.off)
	switch s.op {
	case "r":
		_, err := f.ReadAt(p, s.off)
		return err
	case "w":
		_, err := f.WriteAt(p, s.off)
		return err
	case "fua":
		_, err := f.WriteAtFUA(p, s.off)
		return err
	case "f":
		return f.Flush()
	case "d":
		return f.Discard(s.off, s.n)
	}
	panic("bad step " + s.op)
}

func outcome(err error) string {
	if err == nil {
		return ""
	}
	var e *block.Error
	if !errors.As(err, &e) {
		return "not a *block.Error: " + err.Error()
	}
	site := "-"
	if e.Err != nil {
		if rest, ok := strings.CutPrefix(e.Err.Error(), "fault site "); ok {
			site = rest
		}
	}
	return block.ErrnoName(e.Errno) + " " + site
}

func TestFaultRules(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		name  string
		rules []string
		steps []step
	}{
		{"no rules", nil, []step{{"r", 0, 512, ""}, {"w", 0, 512, ""}, {"fua", 0, 512, ""}, {"f", 0, 0, ""}, {"d", 0, 4096, ""}}},
		{"write eio", []string{"write eio"}, []step{
			{"w", 0, 512, "EIO write.eio"}, {"fua", 4096, 512, "EIO write.eio"}, {"r", 0, 512, ""}, {"f", 0, 0, ""}, {"d", 0, 512, ""},
			{"w", 8192, 0, "EIO write.eio"}}},
		{"errno enospc, count", []string{"write enospc count=2"}, []step{
			{"w", 0, 512, "ENOSPC write.enospc"}, {"w", 0, 512, "ENOSPC write.enospc"}, {"w", 0, 512, ""}, {"w", 0, 512, ""}}},
		{"byte range", []string{"write eio off=0 len=4096"}, []step{
			{"w", 0, 4096, "EIO write.eio"}, {"w", 4096, 4096, ""}, {"w", 4095, 2, "EIO write.eio"}, {"w", 4000, 0, "EIO write.eio"},
			{"w", 4096, 0, ""}, {"r", 0, 512, ""}}},
		{"sector range", []string{"read eio off=8s len=1s"}, []step{
			{"r", 0, 4096, ""}, {"r", 4096, 1, "EIO read.eio"}, {"r", 4607, 10, "EIO read.eio"}, {"r", 4608, 512, ""}}},
		{"after and count", []string{"read eio after=3 count=1"}, []step{
			{"r", 0, 512, ""}, {"w", 0, 512, ""}, {"r", 0, 512, ""}, {"r", 0, 512, ""}, {"r", 0, 512, "EIO read.eio"}, {"r", 0, 512, ""}}},
		{"after counts only matching ops", []string{"read eio off=0 len=512 after=1"}, []step{
			{"r", 4096, 512, ""}, {"r", 0, 512, ""}, {"r", 4096, 512, ""}, {"r", 0, 512, "EIO read.eio"}}},
		{"out-of-range ops are EINVAL and not counted", []string{"any eio after=1"}, []step{
			{"r", 1 << 30, 512, "EINVAL -"}, {"w", -1, 512, "EINVAL -"}, {"d", 2 * mib, 1, "EINVAL -"},
			{"r", 0, 512, ""}, {"r", 0, 512, "EIO any.eio"}}},
		{"flush", []string{"flush eio"}, []step{{"w", 0, 512, ""}, {"f", 0, 0, "EIO flush.eio"}, {"fua", 0, 512, ""}}},
		{"discard range", []string{"discard eio off=1MiB len=1MiB"}, []step{
			{"d", 0, 4096, ""}, {"d", mib - 1, 2, "EIO discard.eio"}, {"w", mib, 512, ""}, {"d", mib + 4096, 4096, "EIO discard.eio"}}},
		{"any", []string{"any erofs after=1"}, []step{
			{"w", 0, 512, ""}, {"r", 0, 512, "EROFS any.erofs"}, {"f", 0, 0, "EROFS any.erofs"}, {"d", 0, 512, "EROFS any.erofs"},
			{"fua", 0, 512, "EROFS any.erofs"}}},
		{"ranged rules never match a flush", []string{"any eio off=0 len=4096"}, []step{{"f", 0, 0, ""}, {"w", 0, 512, "EIO any.eio"}}},
		{"first rule that fires wins; later rules do not see the op",
			[]string{"write eio site=first count=1", "write enospc site=second after=1"}, []step{
				{"w", 0, 512, "EIO first"}, {"w", 0, 512, ""}, {"w", 0, 512, "ENOSPC second"}}},
		{"ratio 0 never fires", []string{"any eio ratio=0/5"}, []step{{"w", 0, 512, ""}, {"r", 0, 512, ""}}},
		{"ratio 1 always fires", []string{"read eio ratio=7/7 count=1"}, []step{{"r", 0, 512, "EIO read.eio"}, {"r", 0, 512, ""}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := block.WithFaults(newMem(t, 2*mib), rand.New(rand.NewPCG(1, 1)))
			for _, s := range c.rules {
				r, err := block.ParseRule(s)
				if err != nil {
					t.Fatal(err)
				}
				if err := f.Set(r); err != nil {
					t.Fatal(err)
				}
			}
			for i, s := range c.steps {
				if got := outcome(do(f, s)); got != s.want {
					t.Errorf("step %d %+v: got %q, want %q", i, s, got, s.want)
				}
			}
		})
	}
}

func TestFaultErrorAndNoIO(t *testing.T) {
	m := newMem(t, 1<<20)
	f := block.WithFaults(m, nil)
	if err := f.Set(block.Rule{Op: block.OpWrite, Off: 4096, Len: 4096}); err != nil {
		t.Fatal(err)
	}
	p := bytes.Repeat([]byte{0xab}, 1000)
	n, err := f.WriteAt(p, 5000)
	var e *block.Error
	if n != 0 || !errors.As(err, &e) {
		t.Fatalf("WriteAt = %d, %v; want 0 and a *block.Error", n, err)
	}
	want := block.Error{Dev: "disk0", Op: "write", Off: 5000, Len: 1000, Errno: syscall.EIO}
	if e.Dev != want.Dev || e.Op != want.Op || e.Off != want.Off || e.Len != want.Len || e.Errno != want.Errno {
		t.Errorf("error %+v, want %+v", *e, want)
	}
	if !errors.Is(err, syscall.EIO) || block.Errno(err) != syscall.EIO {
		t.Errorf("errors.Is(%v, EIO) is false", err)
	}
	if got, want := err.Error(), "disk0 write at offset 5000 length 1000: EIO: fault site write.eio"; got != want {
		t.Errorf("message %q, want %q", got, want)
	}
	// No I/O reached the disk.
	if got := readAll(t, m); !bytes.Equal(got, make([]byte, len(got))) {
		t.Error("a failed write changed the disk")
	}
	if f.Fired("write.eio") != 1 {
		t.Errorf("Fired = %d, want 1", f.Fired("write.eio"))
	}
	// Failed discards do nothing either.
	if _, err := m.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Set(block.Rule{Op: block.OpDiscard, Errno: syscall.ENOSPC}); err != nil {
		t.Fatal(err)
	}
	if err := f.Discard(0, 4096); block.Errno(err) != syscall.ENOSPC {
		t.Fatalf("Discard: %v, want ENOSPC", err)
	}
	q := make([]byte, len(p))
	if _, err := f.ReadAt(q, 0); err != nil || !bytes.Equal(p, q) {
		t.Fatalf("a failed discard changed the disk (%v)", err)
	}
}

func TestFaultRatioSeeded(t *testing.T) {
	run := func(seed uint64) string {
		f := block.WithFaults(newMem(t, 1<<20), rand.New(rand.NewPCG(seed, 0)))
		r, err := block.ParseRule("any eio ratio=1/4")
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Set(r); err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for i := range 400 {
			if do(f, step{op: []string{"r", "w", "f", "d"}[i%4], n: 512}) != nil {
				b.WriteByte('x')
			} else {
				b.WriteByte('.')
			}
		}
		return b.String()
	}
	a, b, c := run(1), run(1), run(2)
	if a != b {
		t.Fatal("same seed, different faults")
	}
	if a == c {
		t.Fatal("different seeds, same faults")
	}
	if n := strings.Count(a, "x"); n < 60 || n > 140 {
		t.Fatalf("ratio 1/4 fired %d times in 400 ops", n)
	}
}

func TestFaultSetClearRules(t *testing.T) {
	f := block.WithFaults(newMem(t, 1<<20), nil)
	mustSet := func(s string) {
		t.Helper()
		r, err := block.ParseRule(s)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Set(r); err != nil {
			t.Fatal(err)
		}
	}
	rules := func() string {
		var s []string
		for _, r := range f.Rules() {
			s = append(s, r.Site+": "+r.String())
		}
		return strings.Join(s, "; ")
	}
	mustSet("write eio count=1")
	mustSet("read eio")
	mustSet("any enospc site=late after=100")
	if got, want := rules(), "write.eio: write eio count=1; read.eio: read eio; late: any enospc site=late after=100"; got != want {
		t.Fatalf("Rules = %s, want %s", got, want)
	}
	if do(f, step{op: "w", n: 512}) == nil || do(f, step{op: "w", n: 512}) != nil {
		t.Fatal("count=1 rule did not fire exactly once")
	}
	// Replacing a site keeps its place and restarts its counters.
	mustSet("write eio count=1 after=0")
	if got := rules(); !strings.HasPrefix(got, "write.eio: write eio count=1; read.eio") {
		t.Fatalf("after replace: %s", got)
	}
	if f.Fired("write.eio") != 0 || do(f, step{op: "w", n: 512}) == nil {
		t.Fatal("replaced rule did not restart its counters")
	}
	f.Clear("read.eio")
	f.Clear("no.such.site")
	if got, want := rules(), "write.eio: write eio count=1; late: any enospc site=late after=100"; got != want {
		t.Fatalf("after Clear: %s, want %s", got, want)
	}
	if err := do(f, step{op: "r", n: 512}); err != nil {
		t.Fatalf("read after Clear: %v", err)
	}
	// Defaults are filled in; invalid rules are refused with the reason.
	if err := f.Set(block.Rule{Op: block.OpFlush}); err != nil {
		t.Fatal(err)
	}
	if r := f.Rules()[2]; r.Site != "flush.eio" || r.Errno != syscall.EIO {
		t.Fatalf("defaults: %+v", r)
	}
	for _, c := range []struct {
		r    block.Rule
		want string
	}{
		{block.Rule{Op: "erase"}, `unknown operation "erase"`},
		{block.Rule{Op: block.OpRead, Site: "a b"}, `invalid character ' '`},
		{block.Rule{Op: block.OpRead, Off: 5}, "off=5 without len"},
		{block.Rule{Op: block.OpRead, Off: -1, Len: 5}, "negative range"},
		{block.Rule{Op: block.OpFlush, Len: 5}, "a flush has no byte range"},
		{block.Rule{Op: block.OpRead, Count: -1}, "negative count"},
		{block.Rule{Op: block.OpRead, After: -1}, "negative after"},
		{block.Rule{Op: block.OpRead, Ratio: block.Ratio{Num: 3, Den: 2}}, "ratio 3/2 is above 1"},
		{block.Rule{Op: block.OpRead, Ratio: block.Ratio{Num: 3}}, "zero denominator"},
		{block.Rule{Op: block.OpRead, Ratio: block.Ratio{Num: 1, Den: 2}}, "needs the rng"},
	} {
		if err := f.Set(c.r); err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "disk0") {
			t.Errorf("Set(%+v): %v, want an error naming disk0 and containing %q", c.r, err, c.want)
		}
	}
	if n := len(f.Rules()); n != 3 {
		t.Fatalf("refused rules were added: %d rules", n)
	}
}

func TestFaultMapPassesThrough(t *testing.T) {
	m := newMem(t, 1<<20)
	if _, err := m.WriteAt(make([]byte, 10), 8192); err != nil {
		t.Fatal(err)
	}
	f := block.WithFaults(m, nil)
	if err := f.Set(block.Rule{Op: block.OpAny}); err != nil {
		t.Fatal(err)
	}
	got, err := f.Map(0, 1<<20)
	want, _ := m.Map(0, 1<<20)
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Map = %v, %v; want %v", got, err, want)
	}
	if f.Unwrap() != block.Device(m) {
		t.Fatal("Unwrap does not return the wrapped device")
	}
	// Without a Mapper underneath, everything is data.
	g := block.WithFaults(plain{m}, nil)
	if got, err := g.Map(100, 1000); err != nil || fmt.Sprint(got) != "[{100 1000 false}]" {
		t.Fatalf("fallback Map = %v, %v", got, err)
	}
}

// Observe hears each failed operation once, with where a flush was sent
// and whether a write was FUA (the simulator logs the block layer's lines
// from it).
func TestFaultObserve(t *testing.T) {
	m, err := block.NewMem("cow", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	f := block.WithFaults(m, nil)
	var heard []string
	f.Observe(func(x block.Failed) {
		heard = append(heard, fmt.Sprintf("%s %d %d fua=%t %s", x.Op, x.Off, x.N, x.FUA, block.ErrnoName(x.Err.Errno)))
	})
	for _, r := range []string{"write eio off=4096 len=4096 site=w", "flush eio site=f"} {
		rule, err := block.ParseRule(r)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Set(rule); err != nil {
			t.Fatal(err)
		}
	}
	p := make([]byte, 512)
	f.WriteAt(p, 0) // no rule fires: not heard
	f.WriteAt(p, 4096)
	block.WriteFUA(f, p, 4608)
	f.Flush()
	block.FlushAt(f, 2<<20)
	want := []string{
		"write 4096 512 fua=false EIO",
		"write 4608 512 fua=true EIO",
		"flush 0 0 fua=false EIO",
		"flush 2097152 0 fua=false EIO",
	}
	if strings.Join(heard, "\n") != strings.Join(want, "\n") {
		t.Fatalf("heard\n%s\nwant\n%s", strings.Join(heard, "\n"), strings.Join(want, "\n"))
	}
}
