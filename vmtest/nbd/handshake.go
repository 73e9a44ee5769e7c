package nbd

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
)

// session is what option haggling settled for the transmission phase.
type session struct {
	exp        *Export
	name       string // export name as the client asked for it
	sr         bool   // structured replies
	meta       bool   // base:allocation selected
	blockSizes bool   // client asked for NBD_INFO_BLOCK_SIZE and must obey it
	noZeroes   bool
}

// errAbort ends a negotiation the client aborted with NBD_OPT_ABORT.
var errAbort = errors.New("client sent NBD_OPT_ABORT")

// negotiation holds option-haggling state.
type negotiation struct {
	s          *Server
	r          *bufio.Reader
	w          *bufio.Writer
	sess       session
	metaSet    bool   // SET_META_CONTEXT selected base:allocation...
	metaExport string // ...for this export name
	buf        []byte
	nc         net.Conn  // the connection NBD_OPT_STARTTLS upgrades (nil: none)
	tc         *tls.Conn // after NBD_OPT_STARTTLS: the TLS connection r and w use
}

// negotiate runs the fixed-newstyle handshake and option haggling over r
// and w alone: with no connection to upgrade, NBD_OPT_STARTTLS is refused.
func (s *Server) negotiate(r *bufio.Reader, w *bufio.Writer) (*session, error) {
	sess, _, err := s.negotiateConn(nil, r, w)
	return sess, err
}

// negotiateConn runs the fixed-newstyle handshake and option haggling on
// nc, read through r and written through w. It returns the session to
// serve, errAbort, or an error naming the protocol violation (after which
// the connection is closed). If the client switched to TLS with
// NBD_OPT_STARTTLS, the returned *tls.Conn is not nil (even with an error):
// r and w have been reset onto it, and the transmission phase must write
// through it instead of nc.
func (s *Server) negotiateConn(nc net.Conn, r *bufio.Reader, w *bufio.Writer) (*session, *tls.Conn, error) {
	n := &negotiation{s: s, r: r, w: w, nc: nc}
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicNBD)
	binary.BigEndian.PutUint64(hello[8:], magicIHaveOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	w.Write(hello[:])
	if err := w.Flush(); err != nil {
		return nil, nil, fmt.Errorf("sending greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(r, cf[:]); err != nil {
		return nil, nil, fmt.Errorf("reading client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return nil, nil, fmt.Errorf("client flags 0x%08x: unknown bits 0x%08x (an oldstyle client?)",
			flags, flags&^(flagCFixedNewstyle|flagCNoZeroes))
	}
	if flags&flagCFixedNewstyle == 0 {
		return nil, nil, fmt.Errorf("client flags 0x%08x: client does not speak fixed newstyle, which this server requires", flags)
	}
	n.sess.noZeroes = flags&flagCNoZeroes != 0
	for {
		done, err := n.option()
		if err != nil {
			return nil, n.tc, err
		}
		if err := n.w.Flush(); err != nil {
			return nil, n.tc, fmt.Errorf("sending option reply: %w", err)
		}
		if done {
			return &n.sess, n.tc, nil
		}
	}
}

// option reads and answers one option; done reports entry into
// transmission.
func (n *negotiation) option() (done bool, err error) {
	var h [16]byte
	if _, err := io.ReadFull(n.r, h[:]); err != nil {
		return false, fmt.Errorf("reading option header: %w", err)
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != magicIHaveOpt {
		return false, fmt.Errorf("option magic 0x%016x, want 0x%016x", m, uint64(magicIHaveOpt))
	}
	opt := binary.BigEndian.Uint32(h[8:])
	length := binary.BigEndian.Uint32(h[12:])
	if n.s.tls != nil && n.s.tls.mode == TLSRequired && n.tc == nil && opt != optStartTLS && opt != optAbort {
		return n.tlsRequired(opt, length)
	}
	if length > maxOptionLen {
		if opt == optExportName {
			return false, fmt.Errorf("NBD_OPT_EXPORT_NAME with %d bytes of name", length)
		}
		if _, err := io.CopyN(io.Discard, n.r, int64(length)); err != nil {
			return false, fmt.Errorf("skipping %d bytes of option %d: %w", length, opt, err)
		}
		n.errReply(opt, repErrTooBig, "option %d data is %d bytes, limit %d", opt, length, maxOptionLen)
		return false, nil
	}
	if cap(n.buf) < int(length) {
		n.buf = make([]byte, length)
	}
	data := n.buf[:length]
	if _, err := io.ReadFull(n.r, data); err != nil {
		return false, fmt.Errorf("reading %d bytes of option %d: %w", length, opt, err)
	}
	switch opt {
	case optExportName:
		return n.exportName(data)
	case optStartTLS:
		return n.startTLS(length)
	case optAbort:
		n.reply(opt, repAck, nil)
		n.w.Flush()
		return false, errAbort
	case optList:
		if length != 0 {
			n.errReply(opt, repErrInvalid, "NBD_OPT_LIST carries %d bytes of data, want none", length)
			return false, nil
		}
		for _, e := range n.s.exportList() {
			d := binary.BigEndian.AppendUint32(nil, uint32(len(e.Name)))
			d = append(d, e.Name...)
			d = append(d, e.Description...)
			n.reply(opt, repServer, d)
		}
		n.reply(opt, repAck, nil)
	case optInfo, optGo:
		return n.infoGo(opt, data)
	case optStructuredReply:
		switch {
		case length != 0:
			n.errReply(opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY carries %d bytes of data, want none", length)
		case n.sess.sr:
			n.errReply(opt, repErrInvalid, "structured replies already negotiated")
		default:
			n.sess.sr = true
			n.reply(opt, repAck, nil)
		}
	case optListMetaContext, optSetMetaContext:
		n.metaContext(opt, data)
	default:
		n.errReply(opt, repErrUnsup, "option %d is not supported", opt)
	}
	return false, nil
}

func (n *negotiation) reply(opt, typ uint32, data []byte) {
	n.w.Write(appendOptReply(nil, opt, typ, data))
}

func (n *negotiation) errReply(opt, typ uint32, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if len(msg) > maxString {
		msg = msg[:maxString]
	}
	n.s.log.Debug("nbd: option refused", "option", opt, "reply", typ, "msg", msg)
	n.reply(opt, typ, []byte(msg))
}

func (n *negotiation) exportName(data []byte) (bool, error) {
	name, err := parseString("export name", data)
	if err != nil {
		return false, fmt.Errorf("NBD_OPT_EXPORT_NAME: %w", err)
	}
	e := n.s.lookup(name)
	if e == nil {
		return false, fmt.Errorf("NBD_OPT_EXPORT_NAME: no export %q", name)
	}
	if e, err = n.s.openExport(e); err != nil { // no error reply exists: close
		return false, fmt.Errorf("NBD_OPT_EXPORT_NAME: %w", err)
	}
	n.enter(e, name, false)
	var b [10 + 124]byte
	binary.BigEndian.PutUint64(b[0:], uint64(e.Dev.Size()))
	binary.BigEndian.PutUint16(b[8:], e.transmissionFlags(n.sess.sr))
	if n.sess.noZeroes {
		n.w.Write(b[:10])
	} else {
		n.w.Write(b[:])
	}
	if err := n.w.Flush(); err != nil { // the session is lost: close its handle
		n.s.closeHandle(e)
		return false, fmt.Errorf("sending NBD_OPT_EXPORT_NAME reply: %w", err)
	}
	return true, nil
}

// enter fixes the session's export; meta contexts survive only if they were
// set for the same export name.
func (n *negotiation) enter(e *Export, name string, blockSizes bool) {
	n.sess.exp = e
	n.sess.name = name
	n.sess.blockSizes = blockSizes
	n.sess.meta = n.sess.sr && n.metaSet && n.metaExport == name
}

func (n *negotiation) infoGo(opt uint32, data []byte) (bool, error) {
	name, infos, err := parseInfoRequest(data)
	if err != nil {
		n.errReply(opt, repErrInvalid, "%v", err)
		return false, nil
	}
	e := n.s.lookup(name)
	if e == nil {
		n.errReply(opt, repErrUnknown, "no export %q (exports: %q)", name, n.s.Exports())
		return false, nil
	}
	if opt == optGo { // entering transmission: a counted device is opened now
		if e, err = n.s.openExport(e); err != nil {
			n.errReply(opt, repErrUnknown, "%v", err)
			return false, nil
		}
	}
	ex := binary.BigEndian.AppendUint16(nil, infoExport)
	ex = binary.BigEndian.AppendUint64(ex, uint64(e.Dev.Size()))
	ex = binary.BigEndian.AppendUint16(ex, e.transmissionFlags(n.sess.sr))
	n.reply(opt, repInfo, ex)
	if slices.Contains(infos, infoName) {
		n.reply(opt, repInfo, append(binary.BigEndian.AppendUint16(nil, infoName), e.Name...))
	}
	if slices.Contains(infos, infoDescription) {
		n.reply(opt, repInfo, append(binary.BigEndian.AppendUint16(nil, infoDescription), e.Description...))
	}
	bs := binary.BigEndian.AppendUint16(nil, infoBlockSize)
	bs = binary.BigEndian.AppendUint32(bs, MinBlock)
	bs = binary.BigEndian.AppendUint32(bs, e.PreferredBlock)
	bs = binary.BigEndian.AppendUint32(bs, MaxPayload)
	n.reply(opt, repInfo, bs)
	n.reply(opt, repAck, nil)
	if opt == optInfo {
		return false, nil
	}
	if err := n.w.Flush(); err != nil { // the session is lost: close its handle
		n.s.closeHandle(e)
		return false, fmt.Errorf("sending NBD_OPT_GO reply: %w", err)
	}
	n.enter(e, name, slices.Contains(infos, infoBlockSize))
	return true, nil
}

func (n *negotiation) metaContext(opt uint32, data []byte) {
	if !n.sess.sr {
		n.errReply(opt, repErrInvalid, "metadata contexts need structured replies first")
		return
	}
	name, queries, err := parseMetaRequest(data)
	if err != nil {
		n.errReply(opt, repErrInvalid, "%v", err)
		return
	}
	if n.s.lookup(name) == nil {
		n.errReply(opt, repErrUnknown, "no export %q", name)
		return
	}
	list := opt == optListMetaContext
	if list && len(queries) == 0 {
		queries = []string{""}
	}
	var selected []string
	for _, q := range queries {
		for _, m := range matchMeta(q, list) {
			if !slices.Contains(selected, m) {
				selected = append(selected, m)
			}
		}
	}
	if !list {
		n.metaSet = len(selected) > 0
		n.metaExport = name
	}
	for _, m := range selected {
		id := uint32(0)
		if !list {
			id = metaAllocationID
		}
		n.reply(opt, repMetaContext, append(binary.BigEndian.AppendUint32(nil, id), m...))
	}
	n.reply(opt, repAck, nil)
}
