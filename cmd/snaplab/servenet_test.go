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
