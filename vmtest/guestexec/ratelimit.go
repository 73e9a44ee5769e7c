package guestexec

import (
	"context"
	"fmt"
	"strings"
	"time"

	"snaplab/sim/dm"
	"snaplab/vmtest/guest/proto"
)

// The guest kernel rate-limits the log lines a scenario may check that come
// from the block layer and the page cache (printk_ratelimited: at most
// rlBurst lines per rlInterval per call site, the rest dropped). The guest
// is shared by many scenarios, and harness noise counts too: a device that
// fails reads when it is plugged in logs "Buffer I/O error ... async page
// read" for each read of the guest's partition scan. So a scenario's own
// line could be dropped because of what happened before it, a flake no
// scenario could prevent. The executor follows each call site's window in
// the kernel log it reads and, before a step that may log such a line,
// waits for a nearly spent window to end, as the kernel would have started
// a new one by then.
const (
	rlInterval = 5 * time.Second // DEFAULT_RATELIMIT_INTERVAL
	rlBurst    = 10              // DEFAULT_RATELIMIT_BURST
	rlHeadroom = 4               // lines one step may log without a wait
)

// rlSites are the rate-limited call sites, by the start of their lines.
var rlSites = [...]string{
	dm.BufferErrorPrefix, // fs/buffer.c buffer_io_error
	dm.BlockErrorPrefix,  // block/blk-core.c blk_print_req_error
}

// rlWindow is the kernel's ratelimit state of one call site, as far as
// the lines it printed show: the window began at begin (the kernel log's
// clock, µs) and printed lines since.
type rlWindow struct {
	begin   uint64
	printed int
}

// observe follows the windows through records just read from the kernel
// log, in order: a line after its window's end begins a new window.
func (e *Executor) observe(recs []proto.KmsgRecord) {
	for _, r := range recs {
		for i, site := range rlSites {
			if !strings.HasPrefix(r.Msg, site) {
				continue
			}
			w := &e.rl[i]
			if w.printed == 0 || r.USec > w.begin+uint64(rlInterval/time.Microsecond) {
				w.begin, w.printed = r.USec, 0
			}
			w.printed++
		}
	}
}

// gate waits, before a step that may log rate-limited lines, until no
// window it knows of is nearly spent.
func (e *Executor) gate(ctx context.Context) error {
	var end uint64 // the latest end of a nearly spent window, µs
	for _, w := range e.rl {
		if w.printed > rlBurst-rlHeadroom {
			end = max(end, w.begin+uint64(rlInterval/time.Microsecond))
		}
	}
	if end == 0 {
		return nil
	}
	for {
		hello, err := e.vm.Agent().Hello(ctx)
		if err != nil {
			return fmt.Errorf("the guest's uptime: %w", err)
		}
		now := uint64(hello.Uptime * 1e6)
		if now > end {
			e.rl = [len(rlSites)]rlWindow{}
			return nil
		}
		// The guest's clock runs with the host's; a little over, so the
		// kernel's jiffies are past the window too.
		wait := time.Duration(end-now)*time.Microsecond + 50*time.Millisecond
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// readKmsg returns the guest kernel's log records since the last read (by
// either plane), following the rate-limit windows through them.
func (e *Executor) readKmsg(ctx context.Context) ([]proto.KmsgRecord, error) {
	recs, next, err := e.vm.Agent().Kmsg(ctx, e.cursor)
	if err != nil {
		return nil, fmt.Errorf("reading the guest's kernel log: %w", err)
	}
	e.cursor = next
	e.observe(recs)
	return recs, nil
}
