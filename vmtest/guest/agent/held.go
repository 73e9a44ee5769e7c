package agent

import (
	"context"
	"fmt"
	"io"
	"os"

	"snaplab/sim/pattern"
	"snaplab/vmtest/guest/proto"
)

// heldRW returns the file held under req.Handle, opening the request's
// disk or path read-write (buffered: no O_DIRECT) and holding it when it
// is not held yet. A handle held by an open request (read-only) is
// refused for writing with EBADF, as the kernel would.
func (s *server) heldRW(ctx context.Context, req proto.Request) (*os.File, proto.Response, bool) {
	s.hmu.Lock()
	f := s.held[req.Handle]
	s.hmu.Unlock()
	if f != nil {
		return f, proto.Response{}, true
	}
	f, _, resp, ok := s.openTarget(ctx, req, os.O_RDWR)
	if !ok {
		return nil, resp, false
	}
	s.hmu.Lock()
	defer s.hmu.Unlock()
	if g := s.held[req.Handle]; g != nil {
		f.Close()
		return g, proto.Response{}, true
	}
	s.held[req.Handle] = f
	return f, proto.Response{}, true
}

// writeHeld is a buffered write through the file held under req.Handle:
// the data goes to the page cache, and the write succeeds unless a block
// it changes only in part cannot be read.
func (s *server) writeHeld(ctx context.Context, req proto.Request) proto.Response {
	f, resp, ok := s.heldRW(ctx, req)
	if !ok {
		return resp
	}
	buf := make([]byte, req.Len)
	pattern.Fill(buf, req.Pattern, patternOff(req))
	n, err := f.WriteAt(buf, req.Off)
	if err == nil && n < len(buf) {
		err = io.ErrShortWrite
	}
	if err != nil {
		r := fail(fmt.Errorf("buffered write %s at offset %d length %d: %w", f.Name(), req.Off+int64(n), req.Len-int64(n), err), "write")
		r.Device, r.N = f.Name(), int64(n)
		return r
	}
	return proto.Response{Device: f.Name(), N: int64(n)}
}

// fsyncHeld fsyncs the file held under req.Handle (opened if need be):
// it writes the device's dirty pages back, and reports the write-back
// errors this file has not seen yet.
func (s *server) fsyncHeld(ctx context.Context, req proto.Request) proto.Response {
	f, resp, ok := s.heldRW(ctx, req)
	if !ok {
		return resp
	}
	if err := f.Sync(); err != nil {
		r := fail(fmt.Errorf("fsync %s: %w", f.Name(), err), "fsync")
		r.Device = f.Name()
		return r
	}
	return proto.Response{Device: f.Name()}
}
