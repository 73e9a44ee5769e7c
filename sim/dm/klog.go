package dm

import (
	"fmt"

	"snaplab/sim/block"
)

// The starts of the kernel log lines a scenario can check, as the kernel
// prints them and as snaplab's normal form keeps them: device-mapper's, and
// the two rate-limited call sites outside it.
const (
	// LogPrefix starts every device-mapper line (DMERR, DMWARN, DMINFO).
	LogPrefix = "device-mapper: "
	// BlockErrorPrefix starts the block layer's line for a failed request
	// (BlockErrorLine).
	BlockErrorPrefix = "I/O error, dev "
	// BufferErrorPrefix starts the page cache's line for a block whose
	// read or write-back failed (BufferWriteErrorLine).
	BufferErrorPrefix = "Buffer I/O error on dev "
)

// Print appends a line as it is, for the kernel's messages that are not
// device-mapper's (the block layer's, the page cache's).
func (l *KLog) Print(line string) { l.lines = append(l.lines, line) }

// BlockErrorLine is the block layer's line for a request to a disk that
// failed (block/blk-core.c blk_print_req_error, printed for every failed
// request to a request-based disk; dm devices are bio-based and print
// none), in snaplab's normal form: the disk by its scenario name, the
// request's first sector and its op, without the request's flags,
// phys_seg and prio class, which depend on how the guest's kernel built
// the request (the kernel executor strips them from the real line):
//
//	I/O error, dev cow, sector 80 op 0x1:(WRITE)
//
// Every errno a fault injects is "I/O error": virtio-blk reports any
// failed request as VIRTIO_BLK_S_IOERR (BLK_STS_IOERR). A flush that fails
// is the empty REQ_PREFLUSH write blkdev_issue_flush makes, at sector 0
// unless a linear target moved it to its start (off).
func BlockErrorLine(disk string, op block.Op, off int64) string {
	code, name := 0x1, "WRITE"
	switch op {
	case block.OpRead:
		code, name = 0x0, "READ"
	case block.OpFlush:
		// An empty write: PREFLUSH with no data, at the sector the
		// request was sent to (a linear target's start).
	case block.OpDiscard:
		code, name = 0x3, "DISCARD"
	}
	return fmt.Sprintf(BlockErrorPrefix+"%s, sector %d op 0x%x:(%s)", disk, off/block.SectorSize, code, name)
}

// BufferWriteErrorLine is the page cache's line for a block whose
// write-back failed (fs/buffer.c end_buffer_async_write, buffer_io_error):
// the device (a disk or dm device, by its scenario name) and the block's
// index in units of the device's block size.
//
//	Buffer I/O error on dev snap, logical block 2, lost async page write
func BufferWriteErrorLine(dev string, block int64) string {
	return fmt.Sprintf(BufferErrorPrefix+"%s, logical block %d, lost async page write", dev, block)
}
