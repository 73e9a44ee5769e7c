package nbd

import (
	"fmt"
	"math/bits"

	"snaplab/sim/block"
)

// Export is a named device offered to clients.
type Export struct {
	// Name is what clients ask for; "" is the default export.
	Name string
	// Description is shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION.
	Description string
	// Dev serves the data. It must be safe for concurrent use; its calls may
	// block (a suspended device-mapper device waits), which stalls only the
	// requests waiting on it. Every call the server makes is whole 512-byte
	// sectors. If Dev is a block.Opener, each connection opens its own
	// handle when it enters transmission and uses that instead, closing it
	// when the connection ends.
	Dev block.Device
	// ReadOnly makes every write, trim and write-zeroes fail with EPERM and
	// sets NBD_FLAG_READ_ONLY.
	ReadOnly bool
	// PreferredBlock is the advertised preferred block size: a power of two
	// from 512 to MaxPayload; 0 means 4096. Snapshot devices use their chunk
	// size.
	PreferredBlock uint32
	// Serial serves each connection's requests one at a time, in order, on
	// the goroutine that reads them, and writes their replies in batches
	// (when no further request is buffered, or 16 replies or 1 MiB are
	// waiting): no hand-off between goroutines per request, and one read
	// and one write system call per batch. For a device that runs one
	// request at a time anyway (a simulator session). A call that blocks
	// (a suspended device) stalls the connection's later requests, which
	// go to the same device and would wait too.
	Serial bool

	// Set by the Server: the range lock shared by the exports of one device
	// name (AddExport), and a connection's opened handle (openExport).
	locks  *rangeLock
	handle block.OpenDevice
}

func (e *Export) validate() error {
	if _, err := parseString("export name", []byte(e.Name)); err != nil {
		return fmt.Errorf("nbd: export %q: %w", e.Name, err)
	}
	if _, err := parseString("description", []byte(e.Description)); err != nil {
		return fmt.Errorf("nbd: export %q: %w", e.Name, err)
	}
	if e.Dev == nil {
		return fmt.Errorf("nbd: export %q: no device", e.Name)
	}
	if sz := e.Dev.Size(); sz < 0 || sz%MinBlock != 0 {
		return fmt.Errorf("nbd: export %q: device %s size %d is not a multiple of %d",
			e.Name, e.Dev.Name(), sz, MinBlock)
	}
	if e.PreferredBlock == 0 {
		e.PreferredBlock = 4096
	}
	if p := e.PreferredBlock; bits.OnesCount32(p) != 1 || p < MinBlock || p > MaxPayload {
		return fmt.Errorf("nbd: export %q: preferred block size %d is not a power of two in [%d, %d]",
			e.Name, p, MinBlock, MaxPayload)
	}
	return nil
}

// transmissionFlags are the flags sent for e; sr tells whether structured
// replies were negotiated (NBD_FLAG_SEND_DF depends on it).
func (e *Export) transmissionFlags(sr bool) uint16 {
	// One device shared by every connection, Flush covers all completed
	// writes: multi-conn is safe.
	f := uint16(flagHasFlags | flagSendFlush | flagCanMultiConn)
	if e.ReadOnly {
		f |= flagReadOnly
	} else {
		f |= flagSendFUA | flagSendTrim | flagSendWriteZeroes
	}
	if sr {
		f |= flagSendDF
	}
	return f
}
