package guestexec

import (
	"context"
	"errors"
	"fmt"

	"snaplab/sim/block"
	"snaplab/sim/record"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/guest/proto"
)

// bufFile is the file the agent holds on a device for the scenario's
// buffered writes and fsyncs: opened at the first of them, closed when the
// scenario ends, so the write-back error of a buffered write reaches the
// fsync of the same file (errseq), as with a program that keeps its file
// open. The simulator's session holds a counted open of the device for it
// too (vm mode), as the guest's open counts in the real kernel's open
// count (kernel mode).
type bufFile struct {
	dev    string
	handle string
	open   run.OpenID // vm mode: the session's counted open
}

// bufOpen returns the agent's handle of dev's buffered file, noting it
// (and in vm mode opening dev in the session) on first use.
func (x *scenarioRun) bufOpen(dev string) (string, error) {
	for _, b := range x.bufs {
		if b.dev == dev {
			return b.handle, nil
		}
	}
	b := bufFile{dev: dev, handle: fmt.Sprintf("guestexec-%d/buffered/%s", x.e.runs, dev)}
	if x.e.mode == GuestIO {
		var oerr error
		if err := x.session(func(s *run.Session) { b.open, oerr = s.Open(dev) }); err != nil {
			return "", err
		}
		if oerr != nil {
			b.open = 0 // the guest's open fails as well, and says why
		}
	}
	x.bufs = append(x.bufs, b)
	return b.handle, nil
}

// syncStep is fsync DEV (through the device's buffered file) or sync.
func (x *scenarioRun) syncStep(ctx context.Context, st *script.Step) (msg string, err error) {
	idx, err := x.guestOp(st)
	if err != nil {
		return "", err
	}
	agent := x.e.vm.Agent()
	var ierr error
	if st.Kind == script.KSync {
		_, ierr = agent.Sync(ctx)
	} else {
		serial, path, terr := x.p.target(ctx, st.Dev)
		if terr != nil {
			return "", terr
		}
		h, herr := x.bufOpen(st.Dev)
		if herr != nil {
			return "", herr
		}
		_, ierr = agent.FsyncHandle(ctx, serial, path, h)
	}
	var ioErr error
	if ierr != nil {
		var oe *proto.OpError
		if !errors.As(ierr, &oe) {
			return "", fmt.Errorf("%s in the guest: %w", st.Kind, ierr)
		}
		ioErr = &block.Error{Dev: st.Dev, Op: st.Kind, Errno: oe.Errno, Err: ierr}
	}
	res := record.Result{Errno: block.ErrnoName(block.Errno(ioErr))}
	msg = run.CheckIO(st, st, run.IOOutcome{Err: ioErr})
	if res.Log, err = x.p.ioLog(ctx); err != nil {
		return "", err
	}
	if msg == "" {
		msg = run.CheckLog(st, res.Log)
	}
	return msg, x.guestResult(idx, st, res, msg)
}

// closeBuffered closes the scenario's buffered files in the guest (the
// last close writes the device's dirty pages back) and, in vm mode, the
// session's opens for them.
func (x *scenarioRun) closeBuffered(ctx context.Context) error {
	var first error
	for _, b := range x.bufs {
		if _, err := x.e.vm.Agent().CloseHandle(ctx, b.handle); err != nil {
			var oe *proto.OpError
			if !errors.As(err, &oe) && first == nil {
				first = fmt.Errorf("closing the buffered file of %s in the guest: %w", b.dev, err)
			}
		}
		if b.open != 0 {
			if err := x.session(func(s *run.Session) {
				if cerr := s.CloseOpen(b.open); cerr != nil && first == nil {
					first = cerr
				}
			}); err != nil && first == nil {
				first = err
			}
		}
	}
	x.bufs = nil
	return first
}
