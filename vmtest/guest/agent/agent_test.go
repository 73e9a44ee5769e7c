package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"snaplab/vmtest/guest/proto"
)

// fakeGuest builds a sysfs tree with two virtio disks backed by regular
// files and serves the agent on one end of a pipe.
func fakeGuest(t *testing.T, tweak ...func(*Config)) (*proto.Client, string, chan error) {
	t.Helper()
	root := t.TempDir()
	sys, dev := filepath.Join(root, "sys"), filepath.Join(root, "dev")
	for name, serial := range map[string]string{"vda": "origin", "vdb": "cow"} {
		os.MkdirAll(filepath.Join(sys, name), 0o755)
		os.WriteFile(filepath.Join(sys, name, "serial"), []byte(serial+"\n"), 0o644)
		os.WriteFile(filepath.Join(sys, name, "size"), []byte("128\n"), 0o644)
	}
	os.MkdirAll(filepath.Join(sys, "loop0"), 0o755)
	os.MkdirAll(dev, 0o755)
	for _, name := range []string{"vda", "vdb"} {
		if err := os.WriteFile(filepath.Join(dev, name), make([]byte, 64<<10), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	kmsg := filepath.Join(root, "kmsg")
	os.WriteFile(kmsg, []byte("6,1,100,-;first\n SUBSYSTEM=block\n3,2,200,-;I/O error, dev vda, sector 8\n4,3,300,c;third \\x41\n"), 0o644)
	host, guest := net.Pipe()
	served := make(chan error, 1)
	cfg := Config{SysBlock: sys, DevDir: dev, Kmsg: kmsg, Kernel: "6.1.0-test", Modules: []string{"virtio_blk"},
		DiskWait: 50 * time.Millisecond, Env: []string{"PATH=/usr/bin:/bin", "FROM_AGENT=1"}, Uptime: func() float64 { return 1.5 }}
	poweredOff := false
	cfg.Poweroff = func() { poweredOff = true }
	for _, f := range tweak {
		f(&cfg)
	}
	go func() {
		err := Serve(context.Background(), guest, cfg)
		if err == nil && !poweredOff {
			err = errors.New("served to EOF")
		}
		guest.Close()
		served <- err
	}()
	c := proto.NewClient(host)
	t.Cleanup(func() { c.Close() })
	return c, dev, served
}

func TestAgent(t *testing.T) {
	c, dev, served := fakeGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	ready, err := c.Ready(ctx)
	if !c.IsReady() {
		t.Error("IsReady false after Ready")
	}
	if err != nil || ready.Kernel != "6.1.0-test" || ready.Uptime != 1.5 {
		t.Fatalf("ready: %+v %v", ready, err)
	}
	disks, err := c.Disks(ctx)
	if err != nil || len(disks) != 2 || disks[0] != (proto.Disk{Serial: "origin", Name: "vda", Size: 65536}) || disks[1].Serial != "cow" {
		t.Fatalf("disks: %+v %v", disks, err)
	}

	t.Run("write then verify", func(t *testing.T) {
		w, err := c.Write(ctx, proto.WriteReq{Serial: "cow", Off: 4096, Len: 8192, Pattern: "A", Fsync: true})
		if err != nil || w.N != 8192 || w.Device != filepath.Join(dev, "vdb") {
			t.Fatalf("write: %+v %v", w, err)
		}
		r, err := c.Read(ctx, proto.ReadReq{Serial: "cow", Off: 4096, Len: 8192, Pattern: "A", Head: 4})
		if err != nil || r.Verify == nil || !r.Verify.OK || len(r.SHA256) != 64 || len(r.Head) != 4 {
			t.Fatalf("read: %+v %v", r, err)
		}
		// Wrong pattern: a verdict naming the first differing offset, not an error.
		r, err = c.Read(ctx, proto.ReadReq{Serial: "cow", Off: 0, Len: 8192, Pattern: "A"})
		if err != nil || r.Verify == nil || r.Verify.OK || r.Verify.Off != 0 || r.Verify.Looks != "zero" {
			t.Fatalf("mismatch read: %+v %v", r.Verify, err)
		}
		// Pattern offset shifted: data written at 4096 with pattern offset 0.
		zero := int64(0)
		c.Write(ctx, proto.WriteReq{Path: filepath.Join(dev, "vda"), Off: 4096, Len: 512, Pattern: "B", PatternOff: &zero})
		r, err = c.Read(ctx, proto.ReadReq{Serial: "origin", Off: 4096, Len: 512, Pattern: "B", PatternOff: &zero})
		if err != nil || !r.Verify.OK {
			t.Fatalf("pattern_off read: %+v %v", r.Verify, err)
		}
	})

	t.Run("errors name errno and target", func(t *testing.T) {
		_, err := c.Read(ctx, proto.ReadReq{Serial: "nosuch", Off: 0, Len: 512, WaitMS: 20})
		if !errors.Is(err, syscall.ENODEV) || !strings.Contains(err.Error(), `serial "nosuch"`) {
			t.Errorf("missing disk: %v", err)
		}
		_, err = c.Read(ctx, proto.ReadReq{Serial: "cow", Off: 1 << 20, Len: 512})
		if !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "offset 1048576") {
			t.Errorf("read past end: %v", err)
		}
		_, err = c.Read(ctx, proto.ReadReq{Serial: "cow", Off: 3, Len: 512, Direct: true})
		if !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "alignment") {
			t.Errorf("unaligned direct: %v", err)
		}
		_, err = c.Fsync(ctx, "", "/nonexistent/dev")
		if !errors.Is(err, syscall.ENOENT) {
			t.Errorf("fsync missing path: %v", err)
		}
	})

	t.Run("exec", func(t *testing.T) {
		r, err := c.Exec(ctx, proto.ExecReq{Argv: []string{"sh", "-c", "cat; echo err >&2; echo $FROM_AGENT $EXTRA; exit 3"}, Env: []string{"EXTRA=x"}, Stdin: "in\n"})
		if err != nil || r.Stdout != "in\n1 x\n" || r.Stderr != "err\n" || r.Exit != 3 {
			t.Fatalf("exec: %+v %v", r, err)
		}
		_, err = c.Exec(ctx, proto.ExecReq{Argv: []string{"/no/such/program"}})
		if !errors.Is(err, syscall.ENOENT) {
			t.Errorf("exec missing program: %v", err)
		}
		r, err = c.Exec(ctx, proto.ExecReq{Argv: []string{"sleep", "10"}, TimeoutMS: 50})
		if !errors.Is(err, syscall.ETIMEDOUT) || r.Exit != -1 {
			t.Errorf("exec timeout: %+v %v", r, err)
		}
	})

	t.Run("open holds the device until close", func(t *testing.T) {
		held := func(path string) int {
			ents, _ := os.ReadDir("/proc/self/fd")
			n := 0
			for _, e := range ents {
				if l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && l == path {
					n++
				}
			}
			return n
		}
		vdb := filepath.Join(dev, "vdb")
		before := held(vdb)
		r, err := c.OpenHandle(ctx, proto.OpenReq{Serial: "cow", Handle: "h1"})
		if err != nil || r.Device != vdb {
			t.Fatalf("open: %+v %v", r, err)
		}
		if got := held(vdb); got != before+1 {
			t.Fatalf("%d open files on %s after open, want %d", got, vdb, before+1)
		}
		if _, err := c.OpenHandle(ctx, proto.OpenReq{Path: filepath.Join(dev, "vda"), Handle: "h1"}); !errors.Is(err, syscall.EEXIST) {
			t.Errorf("open under a handle name in use: %v, want EEXIST", err)
		}
		_, err = c.OpenHandle(ctx, proto.OpenReq{Path: filepath.Join(dev, "mapper", "gone"), Handle: "h2"})
		if !errors.Is(err, syscall.ENOENT) || !strings.Contains(err.Error(), "mapper/gone") {
			t.Errorf("open of a missing path: %v, want ENOENT naming it", err)
		}
		if _, err := c.CloseHandle(ctx, "h1"); err != nil {
			t.Fatal(err)
		}
		if got := held(vdb); got != before {
			t.Fatalf("%d open files on %s after close, want %d", got, vdb, before)
		}
		if _, err := c.CloseHandle(ctx, "h1"); !errors.Is(err, syscall.EBADF) {
			t.Errorf("close twice: %v, want EBADF", err)
		}
		if _, err := c.CloseHandle(ctx, "h2"); !errors.Is(err, syscall.EBADF) {
			t.Errorf("close of a failed open: %v, want EBADF", err)
		}
	})

	t.Run("kmsg", func(t *testing.T) {
		recs, next, err := c.Kmsg(ctx, 2)
		if err != nil || len(recs) != 2 || next != 4 || recs[0].Level != 3 || recs[0].Msg != "I/O error, dev vda, sector 8" || recs[1].Msg != "third A" {
			t.Fatalf("kmsg: %+v %d %v", recs, next, err)
		}
	})

	t.Run("bad request gets EINVAL, connection survives", func(t *testing.T) {
		resp, err := c.Do(ctx, proto.Request{Op: "format"})
		if err != nil || resp.Errno != "EINVAL" || !strings.Contains(resp.Error, `unknown op "format"`) {
			t.Fatalf("bad op: %+v %v", resp, err)
		}
		if _, err := c.Hello(ctx); err != nil {
			t.Fatalf("hello after bad request: %v", err)
		}
	})

	if err := c.Poweroff(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

func TestAgentEOFEndsServe(t *testing.T) {
	c, _, served := fakeGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-served; err == nil || !strings.Contains(err.Error(), "served to EOF") {
		t.Fatalf("Serve after host close: %v", err)
	}
	if _, err := c.Hello(ctx); !errors.Is(err, proto.ErrClosed) {
		t.Fatalf("call after close: %v", err)
	}
}

func TestParseKmsgRecord(t *testing.T) {
	for _, tc := range []struct {
		in  string
		out proto.KmsgRecord
		err string
	}{
		{"6,339,5140900,-;NET: Registered protocol family 10\n", proto.KmsgRecord{Seq: 339, Level: 6, USec: 5140900, Msg: "NET: Registered protocol family 10"}, ""},
		{"30,1,2,-,caller=T1;msg;with;semicolons\n", proto.KmsgRecord{Seq: 1, Level: 6, USec: 2, Msg: "msg;with;semicolons"}, ""},
		{"3,2,200,-;tab\\x09end\n SUBSYSTEM=block\n", proto.KmsgRecord{Seq: 2, Level: 3, USec: 200, Msg: "tab\tend"}, ""},
		{"no header\n", proto.KmsgRecord{}, "no ';'"},
		{"6,1;x\n", proto.KmsgRecord{}, "2 fields"},
		{"a,1,2,-;x\n", proto.KmsgRecord{}, `priority "a"`},
		{"6,-1,2,-;x\n", proto.KmsgRecord{}, `sequence "-1"`},
	} {
		got, err := ParseKmsgRecord([]byte(tc.in))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.out {
			t.Errorf("%q: got %+v %v, want %+v", tc.in, got, err, tc.out)
		}
	}
}

func FuzzParseKmsgRecord(f *testing.F) {
	f.Add([]byte("6,339,5140900,-;NET: Registered\n"))
	f.Add([]byte("3,2,200,-;tab\\x09end\\x\n SUBSYSTEM=block\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseKmsgRecord(b)
		if err == nil && (r.Level < 0 || r.Level > 7) {
			t.Fatalf("level %d", r.Level)
		}
	})
}

// TestResumeSetsClock: resume sets the wall clock to the host's and answers
// as hello; a clock that cannot be set is the request's error.
func TestResumeSetsClock(t *testing.T) {
	var set []time.Time
	fail := false
	c, _, _ := fakeGuest(t, func(cfg *Config) {
		cfg.SetClock = func(tm time.Time) error {
			if fail {
				return syscall.EPERM
			}
			set = append(set, tm)
			return nil
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	before := time.Now()
	r, err := c.Do(ctx, proto.Request{Op: proto.OpResume, ClockNS: before.UnixNano()})
	if err != nil || r.Errno != "OK" || r.Kernel != "6.1.0-test" || r.Uptime != 1.5 || len(r.Modules) != 1 {
		t.Fatalf("resume: %+v %v", r, err)
	}
	if len(set) != 1 || !set[0].Equal(time.Unix(0, before.UnixNano())) {
		t.Errorf("clock set to %v, want %v", set, before)
	}
	if r, err := c.Do(ctx, proto.Request{Op: proto.OpResume}); err != nil || r.Errno != "OK" || len(set) != 1 {
		t.Errorf("resume without a clock: %+v %v; clock set %d times, want 1", r, err, len(set))
	}
	fail = true
	_, err = c.Resume(ctx)
	if !errors.Is(err, syscall.EPERM) || !strings.Contains(err.Error(), "wall clock") {
		t.Errorf("resume with a clock that cannot be set: %v", err)
	}
}

// TestUptime: the uptime ready and hello report is /proc/uptime's.
func TestUptime(t *testing.T) {
	got := (&server{}).uptime()
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		t.Skip(err)
	}
	var want float64
	if _, err := fmt.Sscan(string(b), &want); err != nil {
		t.Fatalf("/proc/uptime %q: %v", b, err)
	}
	if d := want - got; d < 0 || d > 1 {
		t.Errorf("uptime %.2f, /proc/uptime read after it %.2f", got, want)
	}
}
