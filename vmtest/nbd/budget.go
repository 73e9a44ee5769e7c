package nbd

import (
	"fmt"
	"slices"
	"time"
)

// Defaults of the Server's limits (see the Option functions).
const (
	DefaultMaxConns       = 128
	DefaultMaxInFlight    = 64
	DefaultMaxConnBytes   = 64 << 20
	DefaultMaxServerBytes = 256 << 20
)

const (
	// reserveBytes is what a connection with nothing admitted may always
	// have admitted, beyond the server budget: clients that hold the whole
	// budget with replies they do not read cannot stop another client's
	// small requests.
	reserveBytes = 256 << 10
	// replyOverhead is the least a request is charged: reply headers, error
	// texts.
	replyOverhead = 256
)

// Stats is a snapshot of what a Server holds.
type Stats struct {
	// Conns counts connections being served (negotiating or transmitting).
	Conns int
	// Refusing counts connections over the WithMaxConns limit being told so.
	Refusing int
	// Requests counts requests admitted whose replies are not yet written
	// (or dropped).
	Requests int
	// Bytes counts what those requests were charged: write payloads read,
	// read replies not yet written, at least 256 bytes each.
	Bytes int64
	// Waiting counts connections whose reader waits for the server budget.
	Waiting int
}

// Stats reports the connections, requests and bytes in flight.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	st := Stats{Conns: len(s.conns), Refusing: s.refusing}
	s.mu.Unlock()
	s.bmu.Lock()
	st.Requests, st.Bytes, st.Waiting = s.bReqs, s.bUsed, len(s.bq)
	s.bmu.Unlock()
	return st
}

// cost is what admitting req charges against the budgets: the bytes it
// keeps in memory until its reply has been written, at least
// replyOverhead.
func (s *session) cost(req request) int64 {
	var c int64
	switch req.cmd {
	case CmdRead:
		if req.length <= MaxPayload {
			c = coverLen(req.offset, req.length)
		}
	case CmdWrite:
		if req.length <= MaxPayload {
			c = int64(req.length)
			if !aligned(req.offset, req.length) { // read-modify-write buffers
				c += min(coverLen(req.offset, req.length), rmwMerge+2*MinBlock)
			}
		}
	case CmdWriteZeroes:
		if !aligned(req.offset, req.length) {
			c = 2 * MinBlock
		}
	case CmdBlockStatus:
		c = 32 + 8*int64(descriptorCap(req))
	}
	return max(c, replyOverhead)
}

// descriptorCap bounds the descriptors of one BLOCK_STATUS reply, so that
// what its cost charged is what its reply can hold.
func descriptorCap(req request) int {
	if req.flags&FlagReqOne != 0 {
		return 1
	}
	return int(min(maxDescriptors, uint64(req.length)/MinBlock+2))
}

// Admission. A request is admitted in two stages, both under Server.bmu:
// the connection's own limits (WithMaxInFlight requests, WithMaxConnBytes
// bytes, a lone request always fits), then the server's byte budget
// (WithMaxServerBytes), granted fairly by bytes among the connections
// waiting for it. Everything charged is released when the reply has been
// written to the socket, or dropped.
//
// Fair granting is WF2Q+ (worst-case fair weighted fair queuing, equal
// weights) over bytes: the system virtual time V advances by cost/n for
// each grant of cost bytes among n waiting connections; a request gets the
// start tag S = max(V, F') where F' is the finish tag of its connection's
// previous grant, and the finish tag F = S + cost. Among the requests
// already eligible (S <= V) the smallest F is granted first, when it fits.
// A connection asking for 32 MiB at a time therefore gets its turn once in
// every round of the others, while one asking for 4 KiB or 1 MiB now and
// then is granted at the next release: service is fair by bytes and
// smooth, not in bursts of one request per connection per round.

// connFits reports whether the connection's own limits let cost in. The
// caller holds s.bmu.
func (t *transmission) connFits(cost int64) bool {
	s := t.c.s
	return t.reqs < s.maxInFlight && (t.bytes == 0 || t.bytes+cost <= s.maxConnBytes)
}

// srvFits reports whether the server budget lets t's request of cost in.
// The caller holds s.bmu.
func (s *Server) srvFits(t *transmission, cost int64) bool {
	return s.bUsed+cost <= s.maxServerBytes || s.bUsed == 0 || (t.srvBytes == 0 && cost <= reserveBytes)
}

// admit charges cost against the connection's and the server's budgets,
// waiting as long as they are spent. It returns false, charging nothing,
// when the connection broke or the server is shutting down.
func (t *transmission) admit(cost int64) bool {
	s := t.c.s
	s.bmu.Lock()
	defer s.bmu.Unlock()
	for !t.connFits(cost) {
		if !t.waitLocked() {
			return false
		}
	}
	t.reqs++
	t.bytes += cost
	start := max(s.vtime, t.ftag)
	if (len(s.bq) == 0 && s.srvFits(t, cost)) || (t.srvBytes == 0 && cost <= reserveBytes) {
		// Granted without contending (nobody waits) or beyond the budget
		// (the reserve): no share of the contended budget was used, so
		// the connection takes on no debt. Starting from its own finish
		// tag instead, a long-lived light connection, served this way
		// thousands of times, ran so far ahead of the virtual time that
		// once it had to queue it was never eligible again while fresh
		// connections kept arriving (and a dead one waiting there was
		// never noticed).
		s.grantLocked(t, cost, s.vtime)
		return true
	}
	t.wcost, t.wstart, t.wseq, t.granted = cost, start, s.seq, false
	s.seq++
	s.bq = append(s.bq, t)
	for !t.granted {
		if !t.waitLocked() {
			if t.granted {
				s.releaseLocked(t, cost, 1)
				return false
			}
			s.dequeueLocked(t)
			t.reqs--
			t.bytes -= cost
			s.grantWaitersLocked()
			return false
		}
	}
	return true
}

// waitLocked waits, with s.bmu released, for a release or grant, or for
// the connection to break or the server to stop. It reports whether the
// caller may go on waiting.
func (t *transmission) waitLocked() bool {
	if t.isGone() || t.c.stopping.Load() {
		return false
	}
	s := t.c.s
	s.bmu.Unlock()
	// Reading nothing while it waits, the reader would not see its client
	// go: look now and then, so a dead connection does not hold its place
	// (and a connection slot) for as long as others hold the budget.
	tick := time.NewTicker(hangupCheck)
	defer tick.Stop()
wait:
	for {
		select {
		case <-t.wake:
			break wait
		case <-t.gone:
			break wait
		case <-t.c.stopped:
			break wait
		case <-tick.C:
			if peerClosed(t.c.nc) {
				t.c.log.Debug("nbd: client closed while its request waited for budget")
				t.markGone()
				break wait
			}
		}
	}
	s.bmu.Lock()
	return !t.isGone() && !t.c.stopping.Load()
}

// hangupCheck is how often a reader waiting for budget checks that its
// client is still there.
const hangupCheck = 200 * time.Millisecond

// grantLocked charges cost to the server budget for t, whose request had
// the start tag start, and advances the virtual time. t is no longer in
// s.bq; the connections still there share the round with it.
func (s *Server) grantLocked(t *transmission, cost int64, start uint64) {
	s.bReqs++
	s.bUsed += cost
	t.srvBytes += cost
	t.ftag = start + uint64(cost)
	s.vtime += uint64(cost) / uint64(len(s.bq)+1)
}

func (s *Server) dequeueLocked(t *transmission) {
	if i := slices.Index(s.bq, t); i >= 0 {
		s.bq = slices.Delete(s.bq, i, i+1)
	}
}

// grantWaitersLocked grants the server budget to waiting connections: first
// to those the reserve lets in, then in start-tag order as long as the
// first in that order fits.
func (s *Server) grantWaitersLocked() {
	for i := 0; i < len(s.bq); {
		if w := s.bq[i]; w.srvBytes == 0 && w.wcost <= reserveBytes {
			s.bq = slices.Delete(s.bq, i, i+1)
			s.grantLocked(w, w.wcost, w.wstart)
			w.granted = true
			w.signal()
			continue
		}
		i++
	}
	for len(s.bq) > 0 {
		i := s.pickLocked()
		w := s.bq[i]
		if !s.srvFits(w, w.wcost) {
			return
		}
		s.bq = slices.Delete(s.bq, i, i+1)
		s.grantLocked(w, w.wcost, w.wstart)
		w.granted = true
		w.signal()
	}
}

// pickLocked returns the index in s.bq of the request to grant next: the
// smallest finish tag among the eligible ones (start tag <= V), first come
// first among equals. When none is eligible, V moves up to the smallest
// start tag.
func (s *Server) pickLocked() int {
	minStart := s.bq[0].wstart
	for _, w := range s.bq[1:] {
		minStart = min(minStart, w.wstart)
	}
	s.vtime = max(s.vtime, minStart)
	best := -1
	for i, w := range s.bq {
		if w.wstart > s.vtime {
			continue
		}
		if best < 0 {
			best = i
			continue
		}
		b := s.bq[best]
		if f, bf := w.wstart+uint64(w.wcost), b.wstart+uint64(b.wcost); f < bf || (f == bf && w.wseq < b.wseq) {
			best = i
		}
	}
	return best
}

// release gives back what n requests of t charged, cost bytes in all.
func (t *transmission) release(cost int64, n int) {
	if n == 0 {
		return
	}
	s := t.c.s
	s.bmu.Lock()
	s.releaseLocked(t, cost, n)
	s.bmu.Unlock()
}

func (s *Server) releaseLocked(t *transmission, cost int64, n int) {
	t.reqs -= n
	t.bytes -= cost
	t.srvBytes -= cost
	s.bReqs -= n
	s.bUsed -= cost
	if t.reqs < 0 || t.bytes < 0 || s.bUsed < 0 {
		panic(fmt.Sprintf("nbd: budget released twice: conn %d holds %d requests %d bytes, server %d bytes",
			t.c.id, t.reqs, t.bytes, s.bUsed))
	}
	t.signal()
	if len(s.bq) > 0 {
		s.grantWaitersLocked()
	}
}

// signal wakes t's reader if it waits.
func (t *transmission) signal() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// aligned reports whether a request's range is whole sectors.
func aligned(off uint64, n uint32) bool { return (off|uint64(n))%MinBlock == 0 }

// coverLen is the length of the smallest sector-aligned range covering
// [off, off+n).
func coverLen(off uint64, n uint32) int64 {
	head := int64(off % MinBlock)
	return (head + int64(n) + MinBlock - 1) / MinBlock * MinBlock
}
