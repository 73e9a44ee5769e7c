package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
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
follow the devices: created devices appear, removed ones go. An NBD
connection holds its device open (dmsetup info's Open count; remove is
refused while it lasts). "stats" prints the server's connections, requests
and bytes in flight. "quit" or end of input stops the server; the session's
recording streams to -record and replays in process with "snaplab replay".

TCP is on loopback unless -listen names another address; there, TLS is
required (-tls-creds DIR) unless -insecure is given.`

func cmdServe(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("serve", serveHelp, stderr)
	socket := fs.String("socket", "", "serve NBD on this unix socket (default: a new one in a temporary directory)")
	listen := fs.String("listen", "", "serve NBD over TCP on this address (127.0.0.1:PORT unless a host is given)")
	control := fs.String("control", "", "also accept control lines on this unix socket")
	recPath := fs.String("record", "out/recordings/serve.jsonl", "stream the session's recording to this file, and the data clients write to its sidecar (NAME.blobs); \"off\" records nothing (the session cannot be replayed)")
	maxConns := fs.Int("max-connections", nbdDefaultMaxConns, "most NBD connections served at once; more are refused with a message")
	insecure := fs.Bool("insecure", false, "with -listen on an address other hosts can reach: serve without TLS anyway")
	tlsCreds := fs.String("tls-creds", "", "require TLS (NBD STARTTLS) with the x509 credentials in DIR: ca-cert.pem, server-cert.pem, server-key.pem, as qemu-nbd's tls-creds-x509 and nbdkit's --tls-certificates lay them out")
	imagesAnywhere := imagesAnywhereFlag(fs)
	tlsVerify := fs.Bool("tls-verify-peer", false, "with -tls-creds: clients must present a certificate signed by ca-cert.pem")
	prof := profileFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := prof.start(); err != nil {
		fmt.Fprintf(stderr, "snaplab serve: %v\n", err)
		return 2
	}
	defer prof.stop(stderr)
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "snaplab serve: want one scenario file")
		return 2
	}
	if *socket != "" && *listen != "" {
		fmt.Fprintln(stderr, "snaplab serve: -socket and -listen are exclusive")
		return 2
	}
	if *maxConns < 1 {
		fmt.Fprintf(stderr, "snaplab serve: -max-connections %d: want at least 1\n", *maxConns)
		return 2
	}
	if *listen != "" {
		open, err := nbd.Exposed(*listen)
		if err != nil {
			fmt.Fprintf(stderr, "snaplab serve: -listen %s: %v\n", *listen, err)
			return 2
		}
		if open && !*insecure && *tlsCreds == "" {
			fmt.Fprintf(stderr, "snaplab serve: -listen %s is reachable from other hosts; refusing to serve NBD there without TLS (give -tls-creds DIR, or -insecure to serve in the clear)\n", *listen)
			return 2
		}
		if open && *tlsCreds == "" {
			fmt.Fprintf(stderr, "snaplab serve: warning: serving NBD without TLS on %s, reachable from other hosts (-insecure)\n", *listen)
		}
	}
	if *socket != "" {
		if err := dirExists(filepath.Dir(*socket)); err != nil {
			fmt.Fprintf(stderr, "snaplab serve: -socket %s: %v\n", *socket, err)
			return 2
		}
	}
	if *control != "" {
		if err := dirExists(filepath.Dir(*control)); err != nil {
			fmt.Fprintf(stderr, "snaplab serve: -control %s: %v\n", *control, err)
			return 2
		}
	}
	srvOpts := []nbd.Option{nbd.WithMaxConns(*maxConns)}
	if *tlsVerify && *tlsCreds == "" {
		fmt.Fprintln(stderr, "snaplab serve: -tls-verify-peer needs -tls-creds")
		return 2
	}
	if *tlsCreds != "" {
		cfg, err := nbd.LoadX509Dir(*tlsCreds, *tlsVerify)
		if err != nil {
			fmt.Fprintf(stderr, "snaplab serve: -tls-creds: %v\n", err)
			return 2
		}
		srvOpts = append(srvOpts, nbd.WithTLS(cfg, nbd.TLSRequired))
	}
	sc, err := script.ParseFile(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(stderr, "snaplab serve: %v\n", err)
		return 1
	}
	// The recording streams to its file as the session runs.
	opts := run.Options{AllowImagesOutside: *imagesAnywhere}
	rf, err := createRecording(*recPath, true, &opts)
	if err != nil {
		fmt.Fprintf(stderr, "snaplab serve: -record: %v\n", err)
		return 1
	}
	d, err := live.Start(sc, opts)
	if err != nil {
		rf.close()
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
	srv := nbd.NewServer(srvOpts...)
	var mu sync.Mutex // serialises export syncing and output
	// sync_ exports every device of the session (new ones as they appear)
	// and withdraws the exports of devices that are gone.
	sync_ := func() error {
		mu.Lock()
		defer mu.Unlock()
		_, err := live.Sync(d, srv, func(dev live.DeviceInfo) (nbd.Export, bool) {
			return nbd.Export{Name: dev.Name, Description: "snaplab " + sc.Name + ": " + dev.Name, Dev: d.Device(dev.Name), PreferredBlock: dev.PreferredBlock, Serial: true}, true
		})
		return err
	}
	if err := sync_(); err != nil {
		d.Close()
		fmt.Fprintf(stderr, "snaplab serve: %v\n", err)
		return 1
	}
	go srv.Serve(l)
	for _, name := range srv.Exports() {
		uri := nbd.URI(l.Addr(), name)
		if *tlsCreds != "" { // nbds: TLS required (doc/uri.md)
			uri = "nbds" + strings.TrimPrefix(uri, "nbd")
		}
		fmt.Fprintln(stdout, uri)
	}
	fmt.Fprintln(stdout, "ready: control lines on stdin (\"quit\" to stop)")

	handle := func(line string, w io.Writer) bool {
		line = strings.TrimSpace(line)
		if line == "quit" || line == "exit" {
			return false
		}
		if line == "stats" {
			st := srv.Stats()
			mu.Lock()
			defer mu.Unlock()
			fmt.Fprintf(w, "goroutines %d\nconnections %d\nrefusing %d\nrequests-in-flight %d\nbytes-in-flight %d\nwaiting %d\nok\n",
				runtime.NumGoroutine(), st.Conns, st.Refusing, st.Requests, st.Bytes, st.Waiting)
			return true
		}
		out, failure, err := d.Exec(line)
		if serr := sync_(); serr != nil && err == nil {
			err = serr
		}
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
	// serveLines answers the control lines read from r on w until quit or
	// the end of r; it reports whether quit was asked for.
	serveLines := func(r io.Reader, w io.Writer) bool {
		lr := newLineReader(r, maxControlLine)
		for {
			line, err := lr.next()
			if errors.Is(err, errLineTooLong) {
				mu.Lock()
				fmt.Fprintf(w, "fail: control line longer than %d bytes refused\n", maxControlLine)
				mu.Unlock()
				continue
			}
			if err != nil {
				return false
			}
			if !handle(line, w) {
				return true
			}
		}
	}
	stop := make(chan struct{})
	var once sync.Once
	quit := func() { once.Do(func() { close(stop) }) }
	if *control != "" {
		cl, err := listenControl(*control)
		if err != nil {
			srv.Shutdown(context.Background())
			d.Close()
			fmt.Fprintf(stderr, "snaplab serve: -control: %v\n", err)
			return 1
		}
		defer cl.Close()
		go func() {
			for {
				c, err := cl.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					if serveLines(c, c) {
						quit()
					}
				}()
			}
		}()
	}
	go func() {
		serveLines(os.Stdin, stdout)
		quit()
	}()
	<-stop
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		fmt.Fprintf(stderr, "snaplab serve: shutdown: %v\n", err)
	}
	rep := d.Close()
	switch err := rf.close(); {
	case rf == nil:
		fmt.Fprintln(stdout, "recording: off (this session cannot be replayed)")
	case err != nil:
		fmt.Fprintf(stderr, "snaplab serve: recording %s: %v\n", *recPath, err)
	default:
		fmt.Fprintf(stdout, "recording: %s\n", *recPath)
	}
	if !rep.Pass() {
		for _, f := range rep.Failures {
			fmt.Fprintf(stdout, "failure: %s\n", f)
		}
		return 1
	}
	return 0
}
