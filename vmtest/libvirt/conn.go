package libvirt

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket"
)

// LostError is a call made after the connection to the daemon was lost
// and could not be made again: the guest may still run, but libvirt can
// no longer control it.
type LostError struct {
	URI   string
	Retry time.Duration // how long reconnecting was tried
	Err   error         // why it failed
}

func (e *LostError) Error() string {
	return fmt.Sprintf("libvirt %s: connection to the daemon lost (did libvirtd die?); reconnecting for %v failed: %v", e.URI, e.Retry, e.Err)
}

func (e *LostError) Unwrap() error { return e.Err }

// conn is a connection to one daemon with what go-libvirt leaves out: a
// deadline on every call, and a reconnect (with the caller's
// subscriptions made again) when the connection drops.
type conn struct {
	uri     string
	dial    func() (*golibvirt.Libvirt, error)
	timeout time.Duration // per call
	retry   time.Duration // how long a dropped connection is retried
	logf    func(string, ...any)

	mu       sync.Mutex
	l        *golibvirt.Libvirt
	lost     error // set once reconnecting failed for good
	closing  bool
	onRedial []func(*golibvirt.Libvirt) error // run after each reconnect (re-subscribe)
	redials  int
	changed  chan struct{} // closed and replaced when l or lost changes
}

// dialURI connects to uri (qemu:///system?socket=..., qemu+tcp://HOST/system,
// qemu+ssh://..., qemu+tls://...): go-libvirt picks the transport.
func dialURI(uri string) func() (*golibvirt.Libvirt, error) {
	return func() (*golibvirt.Libvirt, error) {
		u, err := url.Parse(uri)
		if err != nil {
			return nil, fmt.Errorf("libvirt URI %q: %w", uri, err)
		}
		return golibvirt.ConnectToURI(u)
	}
}

// dialWith connects through a go-libvirt dialer (tests: libvirttest).
func dialWith(d socket.Dialer) func() (*golibvirt.Libvirt, error) {
	return func() (*golibvirt.Libvirt, error) {
		l := golibvirt.NewWithDialer(d)
		if err := l.Connect(); err != nil {
			return nil, err
		}
		return l, nil
	}
}

// openConn connects, bounded by ctx and timeout.
func openConn(ctx context.Context, uri string, dial func() (*golibvirt.Libvirt, error), timeout time.Duration, logf func(string, ...any)) (*conn, error) {
	c := &conn{uri: uri, dial: dial, timeout: timeout, retry: reconnectFor, logf: logf, changed: make(chan struct{})}
	l, err := c.dialBounded(ctx)
	if err != nil {
		return nil, err
	}
	c.l = l
	go c.watch(l)
	return c, nil
}

func (c *conn) dialBounded(ctx context.Context) (*golibvirt.Libvirt, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	type res struct {
		l   *golibvirt.Libvirt
		err error
	}
	done := make(chan res, 1)
	go func() {
		l, err := c.dial()
		done <- res{l, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("libvirt %s: connect: %w", c.uri, r.err)
		}
		return r.l, nil
	case <-ctx.Done():
		go func() { // the dial may still succeed: close it then
			if r := <-done; r.err == nil {
				r.l.Disconnect()
			}
		}()
		return nil, fmt.Errorf("libvirt %s: connect: no answer within %v: %w", c.uri, c.timeout, ctx.Err())
	}
}

// reconnectFor is how long a dropped connection is retried.
const reconnectFor = 5 * time.Second

// watch waits for l to drop and reconnects, unless the connection is
// being closed.
func (c *conn) watch(l *golibvirt.Libvirt) {
	<-l.Disconnected()
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	c.logf("libvirt %s: connection lost; reconnecting", c.uri)
	deadline := time.Now().Add(c.retry)
	var err error
	for {
		var nl *golibvirt.Libvirt
		nl, err = c.dialBounded(context.Background())
		if err != nil {
			c.logf("libvirt %s: reconnect: %v", c.uri, err)
		}
		if err == nil {
			err = c.resubscribe(nl)
			if err == nil {
				c.mu.Lock()
				c.l = nl
				c.redials++
				close(c.changed)
				c.changed = make(chan struct{})
				c.mu.Unlock()
				c.logf("libvirt %s: reconnected; subscriptions made again (events in the gap are lost)", c.uri)
				go c.watch(nl)
				return
			}
			nl.Disconnect()
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.mu.Lock()
	if inner := errors.Unwrap(err); inner != nil {
		err = inner // dialBounded's names the URI, as LostError does
	}
	c.lost = &LostError{URI: c.uri, Retry: c.retry, Err: err}
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	c.logf("%v", c.lost)
}

func (c *conn) resubscribe(l *golibvirt.Libvirt) error {
	c.mu.Lock()
	fs := append([]func(*golibvirt.Libvirt) error(nil), c.onRedial...)
	c.mu.Unlock()
	for _, f := range fs {
		if err := f(l); err != nil {
			return err
		}
	}
	return nil
}

// subscribe runs f now and after every reconnect.
func (c *conn) subscribe(ctx context.Context, what string, f func(*golibvirt.Libvirt) error) error {
	if err := c.do(ctx, what, f); err != nil {
		return err
	}
	c.mu.Lock()
	c.onRedial = append(c.onRedial, f)
	c.mu.Unlock()
	return nil
}

// current is the live connection, or the error that ended it.
func (c *conn) current() (*golibvirt.Libvirt, <-chan struct{}, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lost != nil {
		return nil, c.changed, c.lost
	}
	if c.closing {
		return nil, c.changed, fmt.Errorf("libvirt %s: connection closed", c.uri)
	}
	return c.l, c.changed, nil
}

// do runs one call on the connection with a deadline (the connection's
// per-call timeout, or ctx's if sooner). A call in flight when the
// connection drops fails at once; a call made while reconnecting waits
// for the outcome.
func (c *conn) do(ctx context.Context, what string, f func(*golibvirt.Libvirt) error) error {
	// Waiting for a reconnect's outcome may take its whole retry window;
	// the call itself has the per-call timeout.
	wctx, wcancel := context.WithTimeout(ctx, c.retry+c.timeout+time.Second)
	defer wcancel()
	for {
		l, changed, err := c.current()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if !l.IsConnected() { // dropped: wait for watch to reconnect or give up
			select {
			case <-changed:
				continue
			case <-wctx.Done():
				return fmt.Errorf("libvirt %s: %s: %w; not reconnected within %v", c.uri, what, errDropped, c.retry+c.timeout)
			}
		}
		ctx, cancel := context.WithTimeout(ctx, c.timeout)
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- f(l) }()
		select {
		case err := <-done:
			if err == nil {
				return nil
			}
			// A call failing as the connection drops failed because of the drop.
			select {
			case <-l.Disconnected():
			case <-time.After(50 * time.Millisecond):
				return fmt.Errorf("libvirt %s: %s: %w", c.uri, what, err)
			}
		case <-l.Disconnected():
		case <-ctx.Done():
			return fmt.Errorf("libvirt %s: %s: no reply within %v: %w", c.uri, what, c.timeout, ctx.Err())
		}
		return c.dropped(wctx, what, changed)
	}
}

// dropped is the error of a call cut off by a dropped connection: once
// the reconnect is decided, the LostError if it failed, else errDropped
// (the call is not repeated: it may have taken effect).
func (c *conn) dropped(ctx context.Context, what string, changed <-chan struct{}) error {
	select {
	case <-changed:
	case <-ctx.Done():
		return fmt.Errorf("libvirt %s: %s: %w; not reconnected within %v", c.uri, what, errDropped, c.retry+c.timeout)
	}
	if _, _, err := c.current(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("libvirt %s: %s: %w (it was made again)", c.uri, what, errDropped)
}

var errDropped = errors.New("the connection to the daemon dropped during the call")

// Redials is how many times the connection was made again.
func (c *conn) Redials() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.redials
}

// close disconnects (bounded); no reconnect follows.
func (c *conn) close() {
	c.mu.Lock()
	c.closing = true
	l := c.l
	c.mu.Unlock()
	if l == nil || !l.IsConnected() {
		return
	}
	done := make(chan struct{})
	go func() { l.Disconnect(); close(done) }()
	select {
	case <-done:
	case <-time.After(c.timeout):
	}
}
