package block

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"syscall"
)

// Op is the kind of operation a fault rule matches.
type Op string

// The operations of a Device that fault rules match. A FUA write is a
// write. OpAny matches all four.
const (
	OpRead    Op = "read"
	OpWrite   Op = "write"
	OpFlush   Op = "flush"
	OpDiscard Op = "discard"
	OpAny     Op = "any"
)

// Ratio is a probability Num/Den. The zero Ratio means "always".
type Ratio struct {
	Num, Den uint64
}

// Rule is a fault site: which operations fail, and how.
//
// Its text form, as scenario files and recordings spell it, is
//
//	OP [ERRNO] [site=NAME] [off=SIZE len=SIZE] [after=N] [count=N] [ratio=NUM/DEN]
//
// for example "write eio off=0 len=4096", "read eio after=3 count=1",
// "any eio ratio=1/50" or "write enospc". OP is read, write, flush,
// discard or any; ERRNO is a lower-case errno name (default eio). SIZE is
// a number of bytes, optionally with a suffix KiB, MiB, GiB, TiB or s
// (512-byte sectors). String prints this form with keys in the order
// above, sizes in bytes, and defaults left out.
type Rule struct {
	// Site names the rule; the default is OP.ERRNO, e.g. "write.eio".
	// 1 to 64 characters from [A-Za-z0-9_.:-].
	Site string
	Op   Op
	// Errno is the error a fired rule returns; 0 means EIO.
	Errno syscall.Errno
	// Off and Len restrict the rule to operations that overlap
	// [Off, Off+Len). Len 0 means the whole device (and then Off is 0).
	// Ranged rules never match a flush.
	Off, Len int64
	// After lets the first After matching operations pass.
	After int64
	// Count limits the rule to failing at most Count operations; 0 means
	// no limit.
	Count int64
	// Ratio fails a matching operation with probability Num/Den, drawn
	// from the Faulty's rng.
	Ratio Ratio
}

func (r Rule) errno() syscall.Errno {
	if r.Errno == 0 {
		return syscall.EIO
	}
	return r.Errno
}

// DefaultSite is the site name of r when Site is empty: "OP.ERRNO".
func (r Rule) DefaultSite() string {
	return string(r.Op) + "." + errnoToken(r.errno())
}

func (r Rule) normalize() Rule {
	r.Errno = r.errno()
	if r.Site == "" {
		r.Site = r.DefaultSite()
	}
	return r
}

// Validate reports what is wrong with r, if anything. An empty Site and a
// zero Errno are valid: they stand for their defaults.
func (r Rule) Validate() error {
	name := r.Site
	if name == "" {
		name = r.DefaultSite()
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("fault rule %s: %s", name, fmt.Sprintf(format, a...))
	}
	if _, err := parseOp(string(r.Op)); err != nil {
		return bad("%v", err)
	}
	if r.Site != "" {
		if err := validSite(r.Site); err != nil {
			return bad("%v", err)
		}
	}
	if r.Errno > 4095 {
		return bad("errno %d out of range", int(r.Errno))
	}
	switch {
	case r.Off < 0 || r.Len < 0:
		return bad("negative range off=%d len=%d", r.Off, r.Len)
	case r.Len == 0 && r.Off != 0:
		return bad("off=%d without len", r.Off)
	case r.Len > math.MaxInt64-r.Off:
		return bad("range off=%d len=%d overflows", r.Off, r.Len)
	case r.Len > 0 && r.Op == OpFlush:
		return bad("a flush has no byte range")
	case r.After < 0:
		return bad("negative after=%d", r.After)
	case r.Count < 0:
		return bad("negative count=%d", r.Count)
	case r.Ratio.Den == 0 && r.Ratio.Num != 0:
		return bad("ratio %d/0 has a zero denominator", r.Ratio.Num)
	case r.Ratio.Num > r.Ratio.Den:
		return bad("ratio %d/%d is above 1", r.Ratio.Num, r.Ratio.Den)
	}
	return nil
}

// String prints r in its canonical text form; ParseRule reads it back.
func (r Rule) String() string {
	var b strings.Builder
	b.WriteString(string(r.Op))
	b.WriteByte(' ')
	b.WriteString(errnoToken(r.errno()))
	if r.Site != "" && r.Site != r.DefaultSite() {
		fmt.Fprintf(&b, " site=%s", r.Site)
	}
	if r.Len > 0 {
		fmt.Fprintf(&b, " off=%d len=%d", r.Off, r.Len)
	}
	if r.After > 0 {
		fmt.Fprintf(&b, " after=%d", r.After)
	}
	if r.Count > 0 {
		fmt.Fprintf(&b, " count=%d", r.Count)
	}
	if r.Ratio.Den > 0 {
		fmt.Fprintf(&b, " ratio=%d/%d", r.Ratio.Num, r.Ratio.Den)
	}
	return b.String()
}

// ParseRule parses the text form of a rule (see Rule). The result has its
// Site and Errno filled in. Errors quote the rule and name the bad token.
func ParseRule(s string) (Rule, error) {
	fields := strings.Fields(s)
	fail := func(tok, format string, a ...any) (Rule, error) {
		return Rule{}, fmt.Errorf("fault rule %q: token %q: %s", s, tok, fmt.Sprintf(format, a...))
	}
	if len(fields) == 0 {
		return Rule{}, fmt.Errorf("fault rule %q: empty; want OP [ERRNO] [key=value...]", s)
	}
	var r Rule
	op, err := parseOp(fields[0])
	if err != nil {
		return fail(fields[0], "%v", err)
	}
	r.Op = op
	r.Errno = syscall.EIO
	rest := fields[1:]
	if len(rest) > 0 && !strings.Contains(rest[0], "=") {
		e, err := parseErrnoToken(rest[0])
		if err != nil {
			return fail(rest[0], "%v", err)
		}
		r.Errno = e
		rest = rest[1:]
	}
	seen := map[string]bool{}
	for _, tok := range rest {
		key, val, ok := strings.Cut(tok, "=")
		if !ok {
			return fail(tok, "want key=value (keys: site, off, len, after, count, ratio)")
		}
		key = strings.ToLower(key)
		if seen[key] {
			return fail(tok, "duplicate key %s", key)
		}
		seen[key] = true
		switch key {
		case "site":
			if err := validSite(val); err != nil {
				return fail(tok, "%v", err)
			}
			r.Site = val
		case "off", "len":
			n, err := parseSize(val)
			if err != nil {
				return fail(tok, "%v", err)
			}
			if key == "off" {
				r.Off = n
			} else {
				r.Len = n
			}
		case "after", "count":
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil || n < 0 || !isDigits(val) {
				return fail(tok, "%s must be a non-negative integer", key)
			}
			if key == "after" {
				r.After = n
			} else {
				r.Count = n
			}
		case "ratio":
			num, den, ok := strings.Cut(val, "/")
			a, err1 := strconv.ParseUint(num, 10, 64)
			b, err2 := strconv.ParseUint(den, 10, 64)
			if !ok || err1 != nil || err2 != nil || !isDigits(num) || !isDigits(den) {
				return fail(tok, "ratio must be NUM/DEN")
			}
			if b == 0 || a > b {
				return fail(tok, "ratio must have 0 <= NUM <= DEN and DEN > 0")
			}
			r.Ratio = Ratio{a, b}
		default:
			return fail(tok, "unknown key %q (keys: site, off, len, after, count, ratio)", key)
		}
	}
	switch {
	case seen["off"] && !seen["len"]:
		return Rule{}, fmt.Errorf("fault rule %q: off= without len=", s)
	case seen["len"] && r.Len == 0:
		return Rule{}, fmt.Errorf("fault rule %q: len=0: an empty range matches nothing; leave off and len out to match the whole device", s)
	case r.Len > math.MaxInt64-r.Off:
		return Rule{}, fmt.Errorf("fault rule %q: range off=%d len=%d overflows", s, r.Off, r.Len)
	case r.Len > 0 && r.Op == OpFlush:
		return Rule{}, fmt.Errorf("fault rule %q: a flush has no byte range", s)
	}
	return r.normalize(), nil
}

func parseOp(s string) (Op, error) {
	switch op := Op(strings.ToLower(s)); op {
	case OpRead, OpWrite, OpFlush, OpDiscard, OpAny:
		return op, nil
	}
	return "", fmt.Errorf("unknown operation %q (want read, write, flush, discard or any)", s)
}

// errnoToken is the lower-case errno name used in rule text.
func errnoToken(e syscall.Errno) string { return strings.ToLower(ErrnoName(e)) }

func parseErrnoToken(s string) (syscall.Errno, error) {
	u := strings.ToUpper(s)
	if n, ok := strings.CutPrefix(u, "ERRNO"); ok && isDigits(n) {
		v, err := strconv.Atoi(n)
		if err == nil && v > 0 && v <= 4095 {
			return syscall.Errno(v), nil
		}
	}
	e, err := ParseErrno(u)
	if err != nil || e == 0 {
		return 0, fmt.Errorf("unknown errno %q (want eio, enospc, einval, eperm, enxio, enomem, ebusy, enodev, erofs, eagain or errnoN)", s)
	}
	return e, nil
}

func validSite(s string) error {
	if len(s) == 0 || len(s) > 64 {
		return fmt.Errorf("site name %q must be 1 to 64 characters", s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == ':' || c == '-') {
			return fmt.Errorf("site name %q: invalid character %q", s, c)
		}
	}
	return nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// parseSize parses a byte count: digits with an optional suffix KiB, MiB,
// GiB, TiB or s (512-byte sectors).
func parseSize(s string) (int64, error) {
	num, mult := s, int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"s", SectorSize}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = n, u.mult
			break
		}
	}
	if !isDigits(num) {
		return 0, fmt.Errorf("size %q: want digits with an optional suffix KiB, MiB, GiB, TiB or s (sectors)", s)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n * mult, nil
}
