package record

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"strconv"

	"snaplab/sim/pattern"
)

// appendLine appends the JSON of the line kinds a busy session writes most
// (one per request or event) without reflection; ok is false for other
// values, which go through encoding/json. The bytes are exactly those
// encoding/json produces for the same struct (FuzzAppendLine checks it), so
// recordings do not depend on which path wrote a line.
func appendLine(b []byte, v any) ([]byte, bool) {
	switch x := v.(type) {
	case Arrival:
		return appendArrival(b, &x), true
	case Completion:
		return appendCompletion(b, &x), true
	case Settle:
		return appendSettle(b, &x), true
	case Event:
		return appendEvent(b, &x), true
	case Choice:
		return appendChoice(b, &x), true
	case Op:
		return appendOp(b, &x), true
	case Result:
		return appendResult(b, &x), true
	}
	return b, false
}

func appendOp(b []byte, x *Op) []byte {
	b = append(b, `{"kind":`...)
	b = appendString(b, x.Kind)
	b = appendInt(b, `,"i":`, int64(x.I))
	b = appendInt(b, `,"t":`, x.T)
	b = appendInt(b, `,"line":`, int64(x.Line))
	b = append(b, `,"text":`...)
	b = appendString(b, x.Text)
	if x.Guest {
		b = append(b, `,"guest":true`...)
	}
	return append(b, '}')
}

func appendResult(b []byte, x *Result) []byte {
	b = append(b, `{"kind":`...)
	b = appendString(b, x.Kind)
	b = appendInt(b, `,"i":`, int64(x.I))
	b = appendInt(b, `,"t":`, x.T)
	b = appendInt(b, `,"line":`, int64(x.Line))
	if x.Exit != nil {
		b = appendInt(b, `,"exit":`, int64(*x.Exit))
	}
	if x.Stdout != "" {
		b = append(b, `,"stdout":`...)
		b = appendString(b, x.Stdout)
	}
	if x.Stderr != "" {
		b = append(b, `,"stderr":`...)
		b = appendString(b, x.Stderr)
	}
	if len(x.Log) > 0 {
		b = append(b, `,"log":[`...)
		for i, l := range x.Log {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, l)
		}
		b = append(b, ']')
	}
	if x.Errno != "" {
		b = append(b, `,"errno":`...)
		b = appendString(b, x.Errno)
	}
	if x.Data != "" {
		b = append(b, `,"data":`...)
		b = appendString(b, x.Data)
	}
	b = append(b, `,"check":`...)
	b = appendString(b, x.Check)
	if x.Guest {
		b = append(b, `,"guest":true`...)
	}
	b = appendStrings(b, `,"dm":[`, x.DM)
	b = appendStrings(b, `,"dm_lines":[`, x.DMLines)
	return append(b, '}')
}

// appendStrings appends key (ending in '[') and ss as a JSON array, unless
// ss is empty (omitempty).
func appendStrings(b []byte, key string, ss []string) []byte {
	if len(ss) == 0 {
		return b
	}
	b = append(b, key...)
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s)
	}
	return append(b, ']')
}

func appendArrival(b []byte, x *Arrival) []byte {
	b = append(b, `{"kind":`...)
	b = appendString(b, x.Kind)
	b = appendInt(b, `,"t":`, x.T)
	b = appendUint(b, `,"handle":`, x.Handle)
	b = append(b, `,"dev":`...)
	b = appendString(b, x.Dev)
	b = append(b, `,"op":`...)
	b = appendString(b, x.Op)
	b = appendInt(b, `,"off":`, x.Off)
	b = appendInt(b, `,"len":`, x.Len)
	if x.FUA {
		b = append(b, `,"fua":true`...)
	}
	if len(x.Data) > 0 {
		b = append(b, `,"data":"`...)
		b = base64.StdEncoding.AppendEncode(b, x.Data)
		b = append(b, '"')
	}
	if x.Pattern != "" {
		b = append(b, `,"pattern":`...)
		b = appendString(b, x.Pattern)
	}
	if x.Blob != "" {
		b = append(b, `,"blob":`...)
		b = appendString(b, x.Blob)
	}
	if x.Open != 0 {
		b = appendUint(b, `,"open":`, x.Open)
	}
	return append(b, '}')
}

func appendCompletion(b []byte, x *Completion) []byte {
	b = append(b, `{"kind":`...)
	b = appendString(b, x.Kind)
	b = appendInt(b, `,"t":`, x.T)
	b = appendUint(b, `,"handle":`, x.Handle)
	b = append(b, `,"errno":`...)
	b = appendString(b, x.Errno)
	if x.Data != "" {
		b = append(b, `,"data":`...)
		b = appendString(b, x.Data)
	}
	b = append(b, `,"check":`...)
	b = appendString(b, x.Check)
	return append(b, '}')
}

func appendSettle(b []byte, x *Settle) []byte {
	b = append(b, `{"kind":`...)
	b = appendString(b, x.Kind)
	b = appendInt(b, `,"t":`, x.T)
	return append(b, '}')
}

func appendEvent(b []byte, x *Event) []byte {
	b = append(b, `{"kind":`...)
	b = appendString(b, x.Kind)
	b = appendInt(b, `,"t":`, x.T)
	b = append(b, `,"site":`...)
	b = appendString(b, x.Site)
	return append(b, '}')
}

func appendChoice(b []byte, x *Choice) []byte {
	b = append(b, `{"kind":`...)
	b = appendString(b, x.Kind)
	b = appendInt(b, `,"t":`, x.T)
	b = append(b, `,"site":`...)
	b = appendString(b, x.Site)
	b = appendInt(b, `,"n":`, int64(x.N))
	b = appendInt(b, `,"pick":`, int64(x.Pick))
	return append(b, '}')
}

func appendInt(b []byte, key string, v int64) []byte {
	return strconv.AppendInt(append(b, key...), v, 10)
}

func appendUint(b []byte, key string, v uint64) []byte {
	return strconv.AppendUint(append(b, key...), v, 10)
}

// appendString appends s as encoding/json quotes it: printable ASCII
// other than '"', '\\', '<', '>' and '&' as is, anything else through
// encoding/json itself.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// patternOf returns the name of the scenario pattern that data is at
// device offset off, or "". At an aligned offset the first word names the
// only candidate (pattern.Identify); elsewhere the first bytes rule out
// most patterns at the cost of one word each. A candidate is then compared
// in full.
func (rw *Writer) patternOf(data []byte, off int64) string {
	if len(data) == 0 {
		return ""
	}
	var head [8]byte
	n := min(len(data), len(head))
	if isZero(data[:n]) && isZero(data) {
		return pattern.Zero
	}
	if off%8 == 0 && len(data) >= 8 {
		// The first word names the one pattern it could start.
		name := rw.byKey[pattern.Identify(binary.LittleEndian.Uint64(data), off)]
		if name != "" && isPattern(data, name, off) {
			return name
		}
		return ""
	}
	for _, name := range rw.patterns {
		if name == pattern.Zero {
			continue
		}
		pattern.Fill(head[:n], name, off)
		if bytes.Equal(head[:n], data[:n]) && isPattern(data, name, off) {
			return name
		}
	}
	return ""
}

var zeros [4096]byte

func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeros))
		if !bytes.Equal(p[:n], zeros[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

func isPattern(p []byte, name string, off int64) bool {
	var want [4096]byte
	for len(p) > 0 {
		n := min(len(p), len(want))
		pattern.Fill(want[:n], name, off)
		if !bytes.Equal(p[:n], want[:n]) {
			return false
		}
		p, off = p[n:], off+int64(n)
	}
	return true
}
