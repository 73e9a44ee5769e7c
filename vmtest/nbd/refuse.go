package nbd

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"
)

// A connection over the WithMaxConns limit is not served, but told why: a
// greeting, then NBD_REP_ERR_POLICY with a message naming the limit for
// every option (so libnbd and qemu print it), NBD_OPT_ABORT acknowledged,
// NBD_OPT_EXPORT_NAME closed (it has no error reply). This is a negotiation
// of its own that keeps no state and opens no export, bounded by
// refuseTimeout; at most maxRefusing run at once, further connections are
// closed at once with a logged warning.
const (
	refuseTimeout = 2 * time.Second
	maxRefusing   = 16
)

// refuseLocked starts refusing nc. The caller holds s.mu.
func (s *Server) refuseLocked(nc net.Conn) {
	remote := nc.RemoteAddr().String()
	if s.refusing >= maxRefusing {
		s.log.Warn("nbd: connection limit reached, closing", "remote", remote, "limit", s.maxConns)
		nc.Close()
		return
	}
	s.log.Warn("nbd: connection limit reached, refusing", "remote", remote, "limit", s.maxConns)
	s.refusing++
	s.refusals[nc] = struct{}{}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		err := s.refuse(nc)
		nc.Close()
		s.mu.Lock()
		s.refusing--
		delete(s.refusals, nc)
		s.mu.Unlock()
		if err != nil {
			s.log.Debug("nbd: refused connection ended", "remote", remote, "err", err)
		}
	}()
}

// refuse answers nc's negotiation with refusals until it ends.
func (s *Server) refuse(nc net.Conn) error {
	nc.SetDeadline(time.Now().Add(refuseTimeout))
	msg := []byte(fmt.Sprintf("server busy: it serves %d connections, its connection limit; try again later", s.maxConns))
	r := bufio.NewReaderSize(nc, 512)
	w := bufio.NewWriterSize(nc, 512)
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicNBD)
	binary.BigEndian.PutUint64(hello[8:], magicIHaveOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	w.Write(hello[:])
	if err := w.Flush(); err != nil {
		return err
	}
	var cf [4]byte
	if _, err := io.ReadFull(r, cf[:]); err != nil {
		return err
	}
	for {
		var h [16]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return err
		}
		if binary.BigEndian.Uint64(h[0:]) != magicIHaveOpt {
			return fmt.Errorf("option magic 0x%016x", binary.BigEndian.Uint64(h[0:]))
		}
		opt, length := binary.BigEndian.Uint32(h[8:]), binary.BigEndian.Uint32(h[12:])
		if opt == optExportName {
			return fmt.Errorf("NBD_OPT_EXPORT_NAME while over the connection limit %d", s.maxConns)
		}
		if length > maxOptionLen {
			return fmt.Errorf("option %d with %d bytes", opt, length)
		}
		if _, err := r.Discard(int(length)); err != nil {
			return err
		}
		if opt == optAbort {
			w.Write(appendOptReply(nil, opt, repAck, nil))
			return w.Flush()
		}
		w.Write(appendOptReply(nil, opt, repErrPolicy, msg))
		if err := w.Flush(); err != nil {
			return err
		}
	}
}
