package nbd

import (
	"errors"
	"fmt"

	"snaplab/sim/block"
)

// Devices that count their users (block.Opener) are opened by each
// connection as it enters transmission and closed when it ends, after its
// last request: the export's device is then in use exactly as long as a
// client is attached, as a kernel block device is while nbd-client holds
// it.

// openExport returns the export a connection entering transmission uses:
// e itself, or, when e's device is a block.Opener, a copy of e whose Dev is
// a handle opened for this connection (release it with closeHandle).
func (s *Server) openExport(e *Export) (*Export, error) {
	o, ok := e.Dev.(block.Opener)
	if !ok {
		return e, nil
	}
	h, err := o.Open()
	if err == nil && h == nil {
		err = errors.New("no handle from Open")
	}
	if err != nil {
		return nil, fmt.Errorf("export %q: opening device %s: %w", e.Name, e.Dev.Name(), err)
	}
	c := *e
	c.Dev = h
	c.handle = h
	return &c, nil
}

// closeHandle closes the handle openExport opened for e, if any.
func (s *Server) closeHandle(e *Export) {
	if e == nil || e.handle == nil {
		return
	}
	if err := e.handle.Close(); err != nil {
		s.log.Warn("nbd: closing device handle", "export", e.Name, "device", e.handle.Name(), "err", err)
	}
}
