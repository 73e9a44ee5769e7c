package live

import (
	"context"
	"os"
	"path/filepath"

	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/nbd"
)

// Exported is a session with an NBD server on a private unix socket, for
// executors that plug the session's devices into a guest.
type Exported struct {
	*Driver
	Server *nbd.Server
	Socket string
	dir    string
}

// StartExported starts a session for sc without running its steps
// (StartEmpty) and an NBD server with no exports yet.
func StartExported(ctx context.Context, sc *script.Scenario, opts run.Options) (*Exported, error) {
	dir, err := os.MkdirTemp("", "snaplab-nbd-")
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "nbd.sock")
	l, err := nbd.ListenUnix(sock)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	srv := nbd.NewServer()
	go srv.Serve(l)
	d, err := StartEmpty(sc, opts)
	if err != nil {
		srv.Shutdown(ctx)
		os.RemoveAll(dir)
		return nil, err
	}
	return &Exported{Driver: d, Server: srv, Socket: sock, dir: dir}, nil
}

// Shutdown stops the NBD server (closing its connections) and removes the
// socket; call it after Close and after the guest let go of the disks.
func (x *Exported) Shutdown(ctx context.Context) {
	_ = x.Server.Shutdown(ctx)
	os.RemoveAll(x.dir)
}
