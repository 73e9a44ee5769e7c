package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"unicode/utf8"

	"snaplab/sim/block"
)

// Wire constants from NetworkBlockDevice/nbd doc/proto.md.
const (
	magicNBD        = 0x4e42444d41474943 // "NBDMAGIC"
	magicIHaveOpt   = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply   = 0x3e889045565a9
	magicRequest    = 0x25609513
	magicSimple     = 0x67446698
	magicStructured = 0x668e33ef

	// Handshake flags (server) and client flags.
	flagFixedNewstyle  = 1 << 0
	flagNoZeroes       = 1 << 1
	flagCFixedNewstyle = 1 << 0
	flagCNoZeroes      = 1 << 1

	// Transmission flags.
	flagHasFlags        = 1 << 0
	flagReadOnly        = 1 << 1
	flagSendFlush       = 1 << 2
	flagSendFUA         = 1 << 3
	flagSendTrim        = 1 << 5
	flagSendWriteZeroes = 1 << 6
	flagSendDF          = 1 << 7
	flagCanMultiConn    = 1 << 8
)

// Option types.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10
)

// Option reply types.
const (
	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4
	repErrBit      = 1 << 31
	repErrUnsup    = repErrBit + 1
	repErrPolicy   = repErrBit + 2
	repErrInvalid  = repErrBit + 3
	repErrUnknown  = repErrBit + 6
	repErrShutdown = repErrBit + 7
	repErrTooBig   = repErrBit + 9
)

// Info types in NBD_OPT_INFO / NBD_OPT_GO.
const (
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3
)

// Command is an NBD request type.
type Command uint16

// Request types.
const (
	CmdRead        Command = 0
	CmdWrite       Command = 1
	CmdDisc        Command = 2
	CmdFlush       Command = 3
	CmdTrim        Command = 4
	CmdCache       Command = 5
	CmdWriteZeroes Command = 6
	CmdBlockStatus Command = 7
)

func (c Command) String() string {
	switch c {
	case CmdRead:
		return "READ"
	case CmdWrite:
		return "WRITE"
	case CmdDisc:
		return "DISC"
	case CmdFlush:
		return "FLUSH"
	case CmdTrim:
		return "TRIM"
	case CmdCache:
		return "CACHE"
	case CmdWriteZeroes:
		return "WRITE_ZEROES"
	case CmdBlockStatus:
		return "BLOCK_STATUS"
	}
	return fmt.Sprintf("CMD%d", uint16(c))
}

// Command flags.
const (
	FlagFUA      uint16 = 1 << 0
	FlagNoHole   uint16 = 1 << 1
	FlagDF       uint16 = 1 << 2
	FlagReqOne   uint16 = 1 << 3
	FlagFastZero uint16 = 1 << 4
)

// Structured reply chunk types and flags.
const (
	replyFlagDone    = 1
	chunkNone        = 0
	chunkOffsetData  = 1
	chunkOffsetHole  = 2
	chunkBlockStatus = 5
	chunkError       = 1<<15 + 1
)

// base:allocation flags.
const (
	stateHole = 1 << 0
	stateZero = 1 << 1
)

// NBD error values. They equal Linux errnos, so they are syscall.Errno.
const (
	errPerm     = syscall.EPERM
	errIO       = syscall.EIO
	errInval    = syscall.EINVAL
	errNoSpc    = syscall.ENOSPC
	errOverflow = syscall.EOVERFLOW
)

// Limits.
const (
	// MinBlock is the minimum block size advertised for every export: the
	// dm sector.
	MinBlock = block.SectorSize
	// MaxPayload is the largest READ or WRITE accepted and the maximum block
	// size advertised.
	MaxPayload = 32 << 20
	// maxOptionLen bounds option data kept in memory; longer options are
	// skipped and answered with NBD_REP_ERR_TOO_BIG.
	maxOptionLen = 64 << 10
	// maxString is the protocol's limit on names and messages.
	maxString = 4096
	// MetaContextAllocation is the context ID given to base:allocation.
	metaAllocationID = 1
	metaAllocation   = "base:allocation"
	requestSize      = 28
)

// nbdErrno maps a device error to the errno an NBD reply carries.
func nbdErrno(err error) syscall.Errno {
	switch e := block.Errno(err); e {
	case 0:
		return 0
	case syscall.EPERM, syscall.EROFS:
		return errPerm
	case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
		return errNoSpc
	case syscall.EINVAL:
		return errInval
	default:
		return errIO
	}
}

// request is a decoded transmission-phase request header.
type request struct {
	flags  uint16
	cmd    Command
	handle uint64
	offset uint64
	length uint32
}

var errBadMagic = errors.New("bad request magic")

// parseRequest decodes a 28-byte request header.
func parseRequest(b []byte) (request, error) {
	if len(b) != requestSize {
		return request{}, fmt.Errorf("request header is %d bytes, want %d", len(b), requestSize)
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != magicRequest {
		return request{}, fmt.Errorf("%w 0x%08x (want 0x%08x)", errBadMagic, m, magicRequest)
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:6]),
		cmd:    Command(binary.BigEndian.Uint16(b[6:8])),
		handle: binary.BigEndian.Uint64(b[8:16]),
		offset: binary.BigEndian.Uint64(b[16:24]),
		length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// parseString checks a protocol string: valid UTF-8, no NUL, at most 4096 bytes.
func parseString(what string, b []byte) (string, error) {
	if len(b) > maxString {
		return "", fmt.Errorf("%s is %d bytes, limit %d", what, len(b), maxString)
	}
	if !utf8.Valid(b) {
		return "", fmt.Errorf("%s is not valid UTF-8", what)
	}
	for i, c := range b {
		if c == 0 {
			return "", fmt.Errorf("%s has a NUL byte at %d", what, i)
		}
	}
	return string(b), nil
}

// parseInfoRequest decodes the data of NBD_OPT_INFO / NBD_OPT_GO: u32 name
// length, name, u16 count, count × u16 info types.
func parseInfoRequest(d []byte) (name string, infos []uint16, err error) {
	if len(d) < 6 {
		return "", nil, fmt.Errorf("option data is %d bytes, need at least 6", len(d))
	}
	nl := binary.BigEndian.Uint32(d)
	if uint64(nl) > uint64(len(d)-6) {
		return "", nil, fmt.Errorf("export name length %d exceeds option data (%d bytes)", nl, len(d))
	}
	if name, err = parseString("export name", d[4:4+nl]); err != nil {
		return "", nil, err
	}
	rest := d[4+nl:]
	n := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*n {
		return "", nil, fmt.Errorf("%d info requests need %d bytes, have %d", n, 2*n, len(rest))
	}
	infos = make([]uint16, n)
	for i := range infos {
		infos[i] = binary.BigEndian.Uint16(rest[2*i:])
	}
	return name, infos, nil
}

// parseMetaRequest decodes the data of NBD_OPT_{LIST,SET}_META_CONTEXT: u32
// name length, name, u32 query count, then count × (u32 length, query).
func parseMetaRequest(d []byte) (name string, queries []string, err error) {
	if len(d) < 8 {
		return "", nil, fmt.Errorf("option data is %d bytes, need at least 8", len(d))
	}
	nl := binary.BigEndian.Uint32(d)
	if uint64(nl) > uint64(len(d)-8) {
		return "", nil, fmt.Errorf("export name length %d exceeds option data (%d bytes)", nl, len(d))
	}
	if name, err = parseString("export name", d[4:4+nl]); err != nil {
		return "", nil, err
	}
	rest := d[4+nl:]
	n := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	if uint64(n) > uint64(len(rest)/4) {
		return "", nil, fmt.Errorf("%d queries cannot fit in %d bytes", n, len(rest))
	}
	for i := uint32(0); i < n; i++ {
		if len(rest) < 4 {
			return "", nil, fmt.Errorf("query %d: truncated length", i)
		}
		ql := binary.BigEndian.Uint32(rest)
		rest = rest[4:]
		if uint64(ql) > uint64(len(rest)) {
			return "", nil, fmt.Errorf("query %d: length %d exceeds remaining %d bytes", i, ql, len(rest))
		}
		q, err := parseString(fmt.Sprintf("query %d", i), rest[:ql])
		if err != nil {
			return "", nil, err
		}
		queries = append(queries, q)
		rest = rest[ql:]
	}
	if len(rest) != 0 {
		return "", nil, fmt.Errorf("%d trailing bytes after %d queries", len(rest), n)
	}
	return name, queries, nil
}

// matchMeta returns the contexts a query selects. An empty query in LIST
// means every context; "base:" lists every base context.
func matchMeta(query string, list bool) []string {
	switch {
	case query == metaAllocation:
		return []string{metaAllocation}
	case list && (query == "" || query == "base:"):
		return []string{metaAllocation}
	}
	return nil
}

// Encoders. Each returns a freshly appended slice.

func appendOptReply(b []byte, opt, typ uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, magicOptReply)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// simpleReplySize is the length of a simple reply header.
const simpleReplySize = 16

func appendSimpleReply(b []byte, errno syscall.Errno, handle uint64) []byte {
	b = binary.BigEndian.AppendUint32(b, magicSimple)
	b = binary.BigEndian.AppendUint32(b, uint32(errno))
	return binary.BigEndian.AppendUint64(b, handle)
}

func appendChunkHeader(b []byte, flags, typ uint16, handle uint64, length uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, magicStructured)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	return binary.BigEndian.AppendUint32(b, length)
}

// appendErrorChunk appends a final NBD_REPLY_TYPE_ERROR chunk.
func appendErrorChunk(b []byte, handle uint64, errno syscall.Errno, msg string) []byte {
	if len(msg) > maxString {
		msg = msg[:maxString]
	}
	for !utf8.ValidString(msg) { // a cut in a rune: drop the partial rune
		msg = msg[:len(msg)-1]
	}
	b = appendChunkHeader(b, replyFlagDone, chunkError, handle, uint32(6+len(msg)))
	b = binary.BigEndian.AppendUint32(b, uint32(errno))
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}
