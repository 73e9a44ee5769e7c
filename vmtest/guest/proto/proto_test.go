package proto

import (
	"errors"
	"strings"
	"syscall"
	"testing"
)

func TestDecodeRequest(t *testing.T) {
	for _, tc := range []struct {
		name, line string
		err        string
		id         uint64
	}{
		{"read", `{"id":3,"op":"read","serial":"d0","off":4096,"len":4096,"direct":true,"pattern":"A"}`, "", 3},
		{"write path", `{"id":4,"op":"write","path":"/dev/mapper/s","off":0,"len":512,"pattern":"B","fua":true}`, "", 4},
		{"exec", `{"id":5,"op":"exec","argv":["dmsetup","ls"]}`, "", 5},
		{"not json", `{"id":6,"op":"read"`, "bad request", 0},
		{"wrong type", `{"id":6,"op":"read","off":"x"}`, "cannot unmarshal", 6},
		{"unknown field", `{"id":7,"op":"hello","bogus":1}`, "unknown field", 7},
		{"unknown op", `{"id":8,"op":"format"}`, `unknown op "format"`, 8},
		{"no id", `{"op":"hello"}`, "id must be non-zero", 0},
		{"no target", `{"id":9,"op":"read","off":0,"len":512}`, "needs serial or path", 9},
		{"both targets", `{"id":9,"op":"read","serial":"a","path":"/dev/vda","len":512}`, "has both", 9},
		{"relative path", `{"id":9,"op":"fsync","path":"dev/vda"}`, "not absolute", 9},
		{"negative off", `{"id":10,"op":"read","serial":"d0","off":-1,"len":512}`, "offset -1 is negative", 10},
		{"zero len", `{"id":11,"op":"read","serial":"d0","off":0,"len":0}`, "length 0 must be positive", 11},
		{"huge len", `{"id":12,"op":"read","serial":"d0","len":1000000000}`, "exceeds the limit", 12},
		{"unaligned direct", `{"id":13,"op":"read","serial":"d0","off":100,"len":512,"direct":true}`, "512-byte alignment: offset 100", 13},
		{"write without pattern", `{"id":14,"op":"write","serial":"d0","len":512}`, "needs a pattern", 14},
		{"bad pattern", `{"id":15,"op":"write","serial":"d0","len":512,"pattern":"a b"}`, "invalid character", 15},
		{"fua on read", `{"id":16,"op":"read","serial":"d0","len":512,"fua":true}`, "writes only", 16},
		{"empty argv", `{"id":17,"op":"exec","argv":[]}`, "needs argv", 17},
		{"trailing", `{"id":18,"op":"hello"} {"id":19}`, "trailing data", 18},
		{"open", `{"id":20,"op":"open","path":"/dev/mapper/base","handle":"h"}`, "", 20},
		{"open without handle", `{"id":21,"op":"open","path":"/dev/mapper/base"}`, "needs a handle", 21},
		{"open without target", `{"id":22,"op":"open","handle":"h"}`, "needs serial or path", 22},
		{"close", `{"id":23,"op":"close","handle":"h"}`, "", 23},
		{"close with path", `{"id":24,"op":"close","handle":"h","path":"/dev/vda"}`, "handle only", 24},
		{"close without handle", `{"id":25,"op":"close"}`, "needs a handle", 25},
		{"resume", `{"id":26,"op":"resume","clock_ns":1796000000000000000}`, "", 26},
		{"resume, clock untouched", `{"id":27,"op":"resume"}`, "", 27},
		{"resume, negative clock", `{"id":28,"op":"resume","clock_ns":-1}`, "clock_ns -1 is negative", 28},
		{"discard", `{"id":29,"op":"discard","path":"/dev/mapper/s","off":4096,"len":8192}`, "", 29},
		{"discard by serial, past MaxIOLen", `{"id":30,"op":"discard","serial":"d0","len":1099511627776}`, "", 30},
		{"discard unaligned is the kernel's to refuse", `{"id":31,"op":"discard","serial":"d0","off":100,"len":512}`, "", 31},
		{"discard without target", `{"id":32,"op":"discard","off":0,"len":512}`, "needs serial or path", 32},
		{"discard negative off", `{"id":33,"op":"discard","serial":"d0","off":-512,"len":512}`, "offset -512 is negative", 33},
		{"discard zero len", `{"id":34,"op":"discard","serial":"d0","len":0}`, "length 0 must be positive", 34},
		{"discard overflowing range", `{"id":35,"op":"discard","serial":"d0","off":9223372036854775807,"len":512}`, "overflows", 35},
		{"discard with pattern", `{"id":36,"op":"discard","serial":"d0","len":512,"pattern":"A"}`, "target and a range only", 36},
		{"discard with direct", `{"id":37,"op":"discard","serial":"d0","len":512,"direct":true}`, "target and a range only", 37},
		{"discard with handle", `{"id":38,"op":"discard","serial":"d0","len":512,"handle":"h"}`, "target and a range only", 38},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := DecodeRequest([]byte(tc.line))
			if r.ID != tc.id {
				t.Errorf("id %d, want %d", r.ID, tc.id)
			}
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrBadRequest) {
				t.Fatalf("err = %v, want %q", err, tc.err)
			}
		})
	}
}

func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"id":3,"op":"read","serial":"d0","off":4096,"len":4096,"direct":true,"pattern":"A"}`))
	f.Add([]byte(`{"id":5,"op":"exec","argv":["dmsetup","ls"],"stdin":"x"}`))
	f.Add([]byte(`{"id":1,"op":"kmsg","cursor":7}`))
	f.Add([]byte(`{"id":2,"op":"discard","serial":"d0","off":4096,"len":4096}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRequest(b)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error %v does not wrap ErrBadRequest", err)
			}
			return
		}
		if r.ID == 0 || r.Validate() != nil {
			t.Fatalf("accepted invalid request %+v", r)
		}
		if (r.Op == OpRead || r.Op == OpWrite) && (r.Len <= 0 || r.Len > MaxIOLen || r.Off < 0) {
			t.Fatalf("accepted bad range %+v", r)
		}
		if r.Op == OpDiscard && (r.Len <= 0 || r.Off < 0 || r.Off+r.Len < r.Off || r.Pattern != "" || r.Handle != "") {
			t.Fatalf("accepted bad discard %+v", r)
		}
	})
}

func FuzzDecodeResponse(f *testing.F) {
	f.Add([]byte(`{"id":1,"op":"read","errno":"EIO","error":"x","elapsed_us":3}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeResponse(b)
		if err != nil {
			return
		}
		if r.Op == "" || r.Errno == "" {
			t.Fatalf("accepted %+v", r)
		}
		_ = r.Err(nil) // must not panic
	})
}

func TestErrnoNames(t *testing.T) {
	for _, e := range []syscall.Errno{0, syscall.EIO, syscall.ENOSPC, syscall.EINVAL, syscall.ENOENT, syscall.ETIMEDOUT, syscall.ENODEV, syscall.EBADMSG} {
		name := ErrnoName(e)
		back, err := ParseErrno(name)
		if err != nil || back != e {
			t.Errorf("%d → %q → %d, %v", e, name, back, err)
		}
	}
	if ErrnoName(syscall.EIO) != "EIO" || ErrnoName(0) != "OK" || ErrnoName(syscall.ENOENT) != "ENOENT" {
		t.Errorf("names: %s %s %s", ErrnoName(syscall.EIO), ErrnoName(0), ErrnoName(syscall.ENOENT))
	}
	if _, err := ParseErrno("EWHAT"); err == nil {
		t.Error("ParseErrno accepted EWHAT")
	}
	r := Response{Op: OpRead, Errno: "EIO", Device: "/dev/vdb", Phase: "read", Error: "boom"}
	err := r.Err(&Request{Off: 4096, Len: 512})
	if !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "/dev/vdb at offset 4096 length 512 (read): EIO") {
		t.Errorf("OpError: %v", err)
	}
	r = Response{Op: OpDiscard, Errno: "EOPNOTSUPP", Device: "/dev/mapper/s", Phase: "discard"}
	err = r.Err(&Request{Off: 8192, Len: 4096})
	if !errors.Is(err, syscall.EOPNOTSUPP) || !strings.Contains(err.Error(), "guest discard /dev/mapper/s at offset 8192 length 4096 (discard): EOPNOTSUPP") {
		t.Errorf("OpError: %v", err)
	}
}
