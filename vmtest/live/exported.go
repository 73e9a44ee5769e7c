package live

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/machine"
	"snaplab/vmtest/nbd"
)

// Exported is a session with an NBD server, for executors that plug the
// session's devices into a guest: on a private unix socket, or on TCP for
// a guest on another host.
type Exported struct {
	*Driver
	Server *nbd.Server
	Socket string // the unix socket, or ""
	Host   string // with TCP: the host the server listens on
	Port   int    // with TCP: its port
	dir    string
}

// StartExported starts a session for sc without running its steps
// (StartEmpty) and an NBD server with no exports yet, on a private unix
// socket.
func StartExported(ctx context.Context, sc *script.Scenario, opts run.Options) (*Exported, error) {
	return StartExportedOn(ctx, sc, opts, "")
}

// StartExportedOn is StartExported with the server listening on TCP on
// host (an address a guest's host reaches this one on; the port is
// chosen), or on a private unix socket when host is "".
func StartExportedOn(ctx context.Context, sc *script.Scenario, opts run.Options, host string) (*Exported, error) {
	x := &Exported{}
	var l net.Listener
	if host == "" {
		dir, err := os.MkdirTemp("", "snaplab-nbd-")
		if err != nil {
			return nil, err
		}
		x.dir, x.Socket = dir, filepath.Join(dir, "nbd.sock")
		if l, err = nbd.ListenUnix(x.Socket); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	} else {
		var err error
		if l, err = net.Listen("tcp", net.JoinHostPort(host, "0")); err != nil {
			return nil, fmt.Errorf("NBD server: listen on %s: %w", host, err)
		}
		x.Host, x.Port = host, l.Addr().(*net.TCPAddr).Port
	}
	x.Server = nbd.NewServer()
	go x.Server.Serve(l)
	d, err := StartEmpty(sc, opts)
	if err != nil {
		x.Server.Shutdown(ctx)
		if x.dir != "" {
			os.RemoveAll(x.dir)
		}
		return nil, err
	}
	x.Driver = d
	return x, nil
}

// Source is where the guest finds export name: the unix socket or the TCP
// address.
func (x *Exported) Source(name string) machine.NBD {
	return machine.NBD{Socket: x.Socket, Host: x.Host, Port: x.Port, Export: name}
}

// Shutdown stops the NBD server (closing its connections) and removes the
// socket; call it after Close and after the guest let go of the disks. An
// error is a connection the server had to cut when ctx ended, or the
// socket's directory left behind.
func (x *Exported) Shutdown(ctx context.Context) error {
	err := x.Server.Shutdown(ctx)
	if x.dir != "" { // a unix socket's (TCP leaves no file)
		if rerr := os.RemoveAll(x.dir); rerr != nil && err == nil {
			err = rerr
		}
	}
	if err != nil {
		return fmt.Errorf("NBD server shutdown: %w", err)
	}
	return nil
}

// Sync makes srv's exports match d's devices: each device export admits
// (ok) is exported as export returns it, unless an export of that name is
// there already; an export whose device is gone, or no longer admitted,
// is withdrawn. It returns the withdrawn names, in order, for the caller
// to unplug from a guest. serve and the guest executors share it.
func Sync(d *Driver, srv *nbd.Server, export func(DeviceInfo) (nbd.Export, bool)) (withdrawn []string, err error) {
	have := map[string]bool{}
	for _, name := range srv.Exports() {
		have[name] = true
	}
	want := map[string]bool{}
	devs, err := d.Devices()
	if err != nil {
		return nil, err
	}
	for _, dev := range devs {
		e, ok := export(dev)
		if !ok {
			continue
		}
		want[e.Name] = true
		if have[e.Name] {
			continue
		}
		if err := srv.AddExport(e); err != nil {
			return withdrawn, fmt.Errorf("exporting %s: %w", dev.Name, err)
		}
	}
	for _, name := range srv.Exports() {
		if want[name] {
			continue
		}
		if err := srv.RemoveExport(name); err != nil {
			return withdrawn, fmt.Errorf("withdrawing the export of %s: %w", name, err)
		}
		withdrawn = append(withdrawn, name)
	}
	return withdrawn, nil
}

// Sync is Sync on the session's own server.
func (x *Exported) Sync(export func(DeviceInfo) (nbd.Export, bool)) ([]string, error) {
	return Sync(x.Driver, x.Server, export)
}
