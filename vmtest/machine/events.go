package machine

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Event is a QMP event (or a backend's own, such as libvirt's lifecycle
// events), as a guest's event log holds it.
type Event struct {
	Name string
	Data map[string]any
	Time time.Time // host time of receipt
}

// Str returns a string field of the event's data, or "".
func (e Event) Str(key string) string {
	s, _ := e.Data[key].(string)
	return s
}

// BlockIOError decodes a BLOCK_IO_ERROR event.
func (e Event) BlockIOError() (BlockIOError, bool) {
	if e.Name != "BLOCK_IO_ERROR" {
		return BlockIOError{}, false
	}
	return BlockIOErrorOf(e.Data), true
}

// EventLog is a guest's events in arrival order, which callers wait on.
type EventLog struct {
	mu     sync.Mutex
	events []Event
	change chan struct{} // closed and replaced on every Add
}

// Add appends e and wakes the waiters.
func (l *EventLog) Add(e Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
	if l.change != nil {
		close(l.change)
	}
	l.change = make(chan struct{})
}

// Events are the events so far.
func (l *EventLog) Events() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Event(nil), l.events...)
}

// Len is how many events arrived.
func (l *EventLog) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.events)
}

// BlockIOErrors are the BLOCK_IO_ERROR events so far.
func (l *EventLog) BlockIOErrors() []BlockIOError {
	var out []BlockIOError
	for _, e := range l.Events() {
		if b, ok := e.BlockIOError(); ok {
			out = append(out, b)
		}
	}
	return out
}

// Wait waits for an event at index >= from named name for which match
// (may be nil) holds, and returns it with its index. It ends with ctx, or
// when ended is closed (the guest is gone: the error is ended()'s).
func (l *EventLog) Wait(ctx context.Context, from int, name string, match func(Event) bool, ended <-chan struct{}, why func() error) (Event, int, error) {
	for {
		l.mu.Lock()
		for i := from; i < len(l.events); i++ {
			if e := l.events[i]; e.Name == name && (match == nil || match(e)) {
				l.mu.Unlock()
				return e, i, nil
			}
		}
		from = max(from, len(l.events))
		if l.change == nil {
			l.change = make(chan struct{})
		}
		ch := l.change
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return Event{}, 0, fmt.Errorf("waiting for event %s: %w", name, ctx.Err())
		case <-ended:
			return Event{}, 0, fmt.Errorf("waiting for event %s: %w", name, why())
		}
	}
}
