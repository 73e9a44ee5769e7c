package exstore

import (
	"errors"
	"fmt"
	"syscall"

	"snaplab/sim/block"
)

// Kernel log levels passed to a Logger.
const (
	LevelErr  = "err"  // DMERR
	LevelWarn = "warn" // DMWARN
)

// DM_MSG_PREFIX of the kernel files this package models.
const (
	PrefixPersistent = "persistent snapshot"
	PrefixTransient  = "transient snapshot"
	PrefixStores     = "snapshot exception stores"
)

// Logger receives kernel log lines, e.g.
// Logger("warn", "persistent snapshot", "Invalid or corrupt snapshot").
// The kernel prints them as "device-mapper: <prefix>: <msg>".
type Logger func(level, prefix, msg string)

// Kernel limits and defaults.
const (
	// MaxChunkSize is the largest legal chunk size in sectors
	// (INT_MAX >> SECTOR_SHIFT rounded down to a power of two).
	MaxChunkSize = 1 << 21
	// DefaultChunkSize is DM_CHUNK_SIZE_DEFAULT_SECTORS, used by a
	// persistent store given chunk size 0 on a fresh COW.
	DefaultChunkSize = 32
	maxChunkArg      = (1<<31 - 1) >> 9 // INT_MAX >> SECTOR_SHIFT
)

// The kernel's inner ti->error strings of dm_exception_store_create.
const (
	ErrInsufficientArgs = "Insufficient exception store arguments"
	ErrTypeNotPN        = "Exception store type is not P or N"
	ErrInvalidChunk     = "Invalid chunk size"
	ErrNotPowerOf2      = "Chunk size is not a power of 2"
	ErrNotBlockMultiple = "Chunk size is not a multiple of device blocksize"
	ErrTooHigh          = "Chunk size is too high"
	ErrTypeCtrFailed    = "Exception store type constructor failed"
)

// CtrError is a store construction failure. Error() is the kernel's inner
// ti->error text (the snapshot ctr replaces it with "Couldn't create
// exception store"); errors.Is(err, Errno) holds.
type CtrError struct {
	Reason string        // kernel string, one of the Err* constants
	Errno  syscall.Errno // EINVAL
}

func (e *CtrError) Error() string { return e.Reason }

// Unwrap lets errors.Is match the errno.
func (e *CtrError) Unwrap() error { return e.Errno }

func ctrErr(reason string) error { return &CtrError{Reason: reason, Errno: syscall.EINVAL} }

// Store is an exception store, as dm-snap.c sees a struct dm_exception_store.
type Store interface {
	// Type is "P" (persistent) or "N" (transient).
	Type() string
	// Overflow reports the PO flag (userspace_supports_overflow).
	Overflow() bool
	// SetOverflow sets the PO flag; handover keeps the destination's own.
	SetOverflow(bool)
	// ChunkSize is in sectors; 0 until known (a persistent store given
	// chunk size 0 learns it in ReadMetadata).
	ChunkSize() uint32
	// ClearChunkSize sets the chunk size to 0, as a mainline handover
	// destination's ctr does (store->chunk_size = 0).
	ClearChunkSize()
	// TableArgs is the status-table part after the COW name: "P 8",
	// "PO 8", "N 16", "P 0".
	TableArgs() string
	// ReadMetadata loads the exceptions already on the COW, calling add for
	// each in on-disk order (persistent), or does nothing (transient).
	// invalid is true when the header says the snapshot was invalidated.
	// A fresh persistent COW (magic 0) gets a header and a zeroed area 0.
	// Errors are *MetadataError values (errno ENXIO, EINVAL, EIO, ...),
	// or add's error wrapped.
	ReadMetadata(add func(old, new uint64) error) (invalid bool, err error)
	// Prepare allocates the COW chunk for a new exception; an error with
	// errno ENOSPC when the COW is full.
	Prepare() (newChunk uint64, err error)
	// Commit records a prepared exception. valid=false marks the store
	// invalid (a failed copy). done runs synchronously, possibly during a
	// later Commit (persistent batching), in commit order, with ok=false
	// when the store is invalid.
	Commit(old, new uint64, valid bool, done func(ok bool))
	// Drop invalidates the store (persistent: writes valid=0 to the header).
	Drop()
	// Usage is the status triple "allocated/total metadata" in sectors.
	Usage() (allocated, total, metadata uint64)
	// Pending is the number of prepared exceptions not yet committed.
	Pending() int
}

// New parses the store part of a snapshot table, as the kernel's
// dm_exception_store_create does: args[0] is the type ("P", "PO", "p", "N",
// ...; only its first character decides the type, the rest are options) and
// args[1] the chunk size in sectors, base 10, "0" meaning not given. Extra
// args are ignored (the caller consumes two).
//
// logicalBlockSize is the COW device's logical block size in bytes (0 means
// 512). Kernels since 5.x also check the origin's; pass the larger of the
// two to model that (both are powers of two).
//
// Checks run in the kernel's order: argument count, type letter, chunk size
// (number, power of 2, block size multiple, limit), then the type's options.
// An unsupported persistent option is logged as DMERR "Unsupported
// persistent store option: %s" and fails with "Exception store type
// constructor failed". All failures are *CtrError with errno EINVAL.
func New(args []string, cow block.Device, logicalBlockSize uint32, log Logger) (Store, error) {
	if cow == nil {
		return nil, errors.New("exstore: no COW device")
	}
	if log == nil {
		log = func(string, string, string) {}
	}
	if len(args) < 2 {
		return nil, ctrErr(ErrInsufficientArgs)
	}
	var kind byte
	if len(args[0]) > 0 {
		kind = upper(args[0][0])
	}
	if kind != 'P' && kind != 'N' {
		return nil, ctrErr(ErrTypeNotPN)
	}
	lbs := logicalBlockSize >> 9
	if lbs == 0 {
		lbs = 1
	}
	chunk, ok := parseUint32(args[1])
	if !ok {
		return nil, ctrErr(ErrInvalidChunk)
	}
	if chunk != 0 {
		if reason := checkChunkSize(chunk, lbs); reason != "" {
			return nil, ctrErr(reason)
		}
	}
	options := ""
	if len(args[0]) > 1 {
		options = args[0][1:]
	}
	if kind == 'N' {
		// transient_ctr ignores its options.
		return &transient{cow: cow, chunk: chunk}, nil
	}
	p := &persistent{cow: cow, lbs: lbs, log: log, chunk: chunk, valid: 1, version: diskVersion, nextFree: numHeaderChunks + 1}
	if options != "" {
		if upper(options[0]) != 'O' {
			log(LevelErr, PrefixPersistent, "Unsupported persistent store option: "+options)
			return nil, ctrErr(ErrTypeCtrFailed)
		}
		p.overflow = true
	}
	return p, nil
}

// checkChunkSize is dm_exception_store_set_chunk_size's validation; it
// returns the kernel's error string or "".
func checkChunkSize(chunk, lbsSectors uint32) string {
	switch {
	case chunk == 0 || chunk&(chunk-1) != 0:
		return ErrNotPowerOf2
	case chunk%lbsSectors != 0:
		return ErrNotBlockMultiple
	case chunk > maxChunkArg:
		return ErrTooHigh
	}
	return ""
}

func upper(c byte) byte {
	if c >= 'a' && c <= 'z' {
		return c - 'a' + 'A'
	}
	return c
}

// parseUint32 is the kernel's kstrtouint(s, 10): an optional '+', decimal
// digits (at least one), an optional single trailing newline, no overflow.
func parseUint32(s string) (uint32, bool) {
	if len(s) > 0 && s[0] == '+' {
		s = s[1:]
	}
	var v uint64
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		v = v*10 + uint64(s[n]-'0')
		if v > 1<<32-1 {
			return 0, false
		}
		n++
	}
	if n == 0 {
		return 0, false
	}
	rest := s[n:]
	if rest != "" && rest != "\n" {
		return 0, false
	}
	return uint32(v), true
}

// SizeFor is the smallest COW size in sectors that holds n exceptions of
// chunk sectors without running out of space or metadata room: the
// device-mapper-test-suite formula (snapshot_utils.rb max_snapshot_size).
// Persistent: nr_areas = ceil((n+1)/E) (the +1 keeps room for the zeroed
// area that terminates a full one), size = chunk*(1 + nr_areas + n).
// Transient: n*chunk.
func SizeFor(persistent bool, chunk uint32, n uint64) uint64 {
	c := uint64(chunk)
	if !persistent {
		return n * c
	}
	e := c * 512 / diskExceptionSize
	if e == 0 {
		return 0
	}
	areas := (n + 1 + e - 1) / e
	return c * (numHeaderChunks + areas + n)
}

// enospc is Prepare's error: the chunk at byte offset off, len bytes long,
// does not fit; need is the COW size in sectors the kernel's test asked for.
func enospc(dev string, off, length int64, need, size uint64) error {
	return &block.Error{Dev: dev, Op: "prepare", Off: off, Len: length, Errno: syscall.ENOSPC,
		Err: fmt.Errorf("exception store full: need %d sectors, COW has %d", need, size)}
}
