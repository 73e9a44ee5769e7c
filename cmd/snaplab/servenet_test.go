package main

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReachableFromOthers(t *testing.T) {
	for _, c := range []struct {
		addr string
		open bool
	}{
		{"10809", false},
		{":10809", false},
		{"127.0.0.1:10809", false},
		{"[::1]:10809", false},
		{"localhost:10809", false},
		{"/tmp/x.sock", false},
		{"unix:/tmp/x.sock", false},
		{"0.0.0.0:10809", true},
		{"[::]:10809", true},
		{"192.0.2.7:10809", true},
	} {
		got, err := reachableFromOthers(c.addr)
		if err != nil || got != c.open {
			t.Errorf("reachableFromOthers(%q) = %v, %v; want %v", c.addr, got, err, c.open)
		}
	}
	if _, err := reachableFromOthers("no-port"); err == nil {
		t.Error("an address without a port was accepted")
	}
}

func TestLineReaderBoundsLines(t *testing.T) {
	long := strings.Repeat("x", 200)
	in := "dmsetup ls\n" + long + "\n" + long + long + "\nquit\nlast"
	lr := newLineReader(strings.NewReader(in), 64)
	var got []string
	for {
		line, err := lr.next()
		if errors.Is(err, errLineTooLong) {
			got = append(got, "TOO LONG")
			continue
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, line)
	}
	want := []string{"dmsetup ls", "TOO LONG", "TOO LONG", "quit", "last"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("lines %q, want %q", got, want)
	}
}

func TestListenControlStaleAndLive(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ctl")
	// A stale socket: bound, then its listener gone without unlinking.
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatal("stale socket not left behind:", err)
	}
	cl, err := listenControl(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer cl.Close()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("control socket mode %o, want 600", perm)
	}
	if _, err := listenControl(path); err == nil || !strings.Contains(err.Error(), "a server is already listening") {
		t.Errorf("second listener on a live socket: %v", err)
	}
	plain := filepath.Join(dir, "file")
	os.WriteFile(plain, nil, 0o644)
	if _, err := listenControl(plain); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("listening over a regular file: %v", err)
	}
	if err := dirExists(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing directory passed")
	}
}
