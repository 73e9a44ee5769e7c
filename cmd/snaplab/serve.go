package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/live"
	"snaplab/vmtest/nbd"
)

const serveHelp = `serve [flags] SCENARIO

Runs the scenario's steps (the setup), then serves every disk and dm device
of the simulation as an NBD export named after it, and prints the NBD URIs.
Control lines (dmsetup ..., fault ..., log ...) are read from standard input
and, with -control, from a unix socket (one line per request, the reply is
the command's output followed by a line "ok" or "fail: REASON"). Exports
follow the devices: created devices appear, removed ones go. "quit" or end
of input stops the server; the session's recording is written on exit and
replays in process with "snaplab replay".`

func cmdServe(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("serve", serveHelp, stderr)
	socket := fs.String("socket", "", "serve NBD on this unix socket (default: a new one in a temporary directory)")
	listen := fs.String("listen", "", "serve NBD over TCP on this address (127.0.0.1:PORT unless a host is given)")
	control := fs.String("control", "", "also accept control lines on this unix socket")
	recPath := fs.String("record", "out/recordings/serve.jsonl", "write the session's recording here")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "snaplab serve: want one scenario file")
		return 2
	}
	if *socket != "" && *listen != "" {
		fmt.Fprintln(stderr, "snaplab serve: -socket and -listen are exclusive")
		return 2
	}
	text, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(stderr, "snaplab serve: %v\n", err)
		return 1
	}
	sc, err := script.Parse(fs.Arg(0), string(text))
	if err != nil {
		fmt.Fprintf(stderr, "snaplab serve: %v\n", err)
		return 1
	}
	sc.Name, sc.Dir = strings.TrimSuffix(filepath.Base(fs.Arg(0)), ".scn"), filepath.Dir(fs.Arg(0))
	var rec bytes.Buffer
	d, err := live.Start(sc, run.Options{Record: &rec})
	if err != nil {
		fmt.Fprintf(stderr, "snaplab serve: %v\n", err)
		return 1
	}
	var l net.Listener
	switch {
	case *listen != "":
		l, err = nbd.Listen(*listen)
	default:
		path := *socket
		if path == "" {
			dir, derr := os.MkdirTemp("", "snaplab-serve-")
			if derr != nil {
				fmt.Fprintf(stderr, "snaplab serve: %v\n", derr)
				return 1
			}
			defer os.RemoveAll(dir)
			path = filepath.Join(dir, "nbd.sock")
		}
		l, err = nbd.ListenUnix(path)
	}
	if err != nil {
		d.Close()
		fmt.Fprintf(stderr, "snaplab serve: %v\n", err)
		return 1
	}
	srv := nbd.NewServer()
	var mu sync.Mutex // serialises export syncing and output
	sync_ := func() {
		mu.Lock()
		defer mu.Unlock()
		have := map[string]bool{}
		for _, dev := range d.Devices() {
			have[dev.Name] = true
			_ = srv.AddExport(nbd.Export{Name: dev.Name, Description: "snaplab " + sc.Name + ": " + dev.Name, Dev: d.Device(dev.Name), PreferredBlock: dev.PreferredBlock})
		}
		for _, name := range srv.Exports() {
			if !have[name] {
				_ = srv.RemoveExport(name)
			}
		}
	}
	sync_()
	go srv.Serve(l)
	for _, name := range srv.Exports() {
		fmt.Fprintln(stdout, nbd.URI(l.Addr(), name))
	}
	fmt.Fprintln(stdout, "ready: control lines on stdin (\"quit\" to stop)")

	handle := func(line string, w io.Writer) bool {
		line = strings.TrimSpace(line)
		if line == "quit" || line == "exit" {
			return false
		}
		out, failure, err := d.Exec(line)
		sync_()
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprint(w, out)
		switch {
		case err != nil:
			fmt.Fprintf(w, "fail: %v\n", err)
			return false
		case failure != "":
			fmt.Fprintf(w, "fail: %s\n", failure)
		default:
			fmt.Fprintln(w, "ok")
		}
		return true
	}
	stop := make(chan struct{})
	var once sync.Once
	quit := func() { once.Do(func() { close(stop) }) }
	if *control != "" {
		cl, err := net.Listen("unix", *control)
		if err != nil {
			fmt.Fprintf(stderr, "snaplab serve: control socket: %v\n", err)
		} else {
			defer os.Remove(*control)
			defer cl.Close()
			go func() {
				for {
					c, err := cl.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						sc := bufio.NewScanner(c)
						for sc.Scan() {
							if !handle(sc.Text(), c) {
								quit()
								return
							}
						}
					}()
				}
			}()
		}
	}
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if !handle(sc.Text(), stdout) {
				break
			}
		}
		quit()
	}()
	<-stop
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
	rep := d.Close()
	if *recPath != "" {
		if err := os.MkdirAll(filepath.Dir(*recPath), 0o755); err == nil {
			if err := os.WriteFile(*recPath, rec.Bytes(), 0o644); err != nil {
				fmt.Fprintf(stderr, "snaplab serve: %v\n", err)
			} else {
				fmt.Fprintf(stdout, "recording: %s\n", *recPath)
			}
		}
	}
	if !rep.Pass() {
		for _, f := range rep.Failures {
			fmt.Fprintf(stdout, "failure: %s\n", f)
		}
		return 1
	}
	return 0
}
