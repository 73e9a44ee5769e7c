package nbd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Request describes one transmission-phase request as an Observer sees it.
type Request struct {
	Export  string  // export name the connection negotiated
	Conn    uint64  // connection number, unique within the Server, from 1
	Handle  uint64  // client's handle (cookie)
	Command Command // READ, WRITE, ...
	Flags   uint16  // command flags as sent
	Offset  uint64
	Length  uint32
}

// Observer sees every request as it arrives and when it completes. The
// Server never calls an Observer's methods concurrently: Arrived calls are
// in the order the requests were read, across all connections. Arrived runs
// on the connection's reader before the request is dispatched, so a slow
// Arrived delays that connection. Completed carries the errno of the reply
// (0 on success); NBD_CMD_DISC completes when the connection has drained.
type Observer interface {
	Arrived(r Request)
	Completed(r Request, errno syscall.Errno)
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger; the default discards.
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithMaxConns limits simultaneous connections (default DefaultMaxConns,
// 128); 0 or less means no limit. A connection over the limit is refused
// with a message naming the limit: its options are answered with
// NBD_REP_ERR_POLICY (NBD_OPT_EXPORT_NAME, which has no error reply, is
// closed) for at most a few seconds, then it is closed.
func WithMaxConns(n int) Option { return func(s *Server) { s.maxConns = n } }

// WithMaxInFlight limits the requests a connection has admitted and not
// yet answered (default DefaultMaxInFlight, 64); the connection stops
// reading while the limit is reached.
func WithMaxInFlight(n int) Option {
	return func(s *Server) {
		if n > 0 {
			s.maxInFlight = n
		}
	}
}

// WithMaxConnBytes limits the bytes a connection holds (default
// DefaultMaxConnBytes, 64 MiB): write payloads read and read replies not
// yet written to the socket. The connection stops reading requests while
// the limit is reached, so the client's socket pushes back. A connection
// with nothing in flight may always have one request admitted, up to
// MaxPayload.
func WithMaxConnBytes(n int64) Option {
	return func(s *Server) {
		if n > 0 {
			s.maxConnBytes = n
		}
	}
}

// WithMaxServerBytes limits the bytes all connections hold together
// (default DefaultMaxServerBytes, 256 MiB), granted fairly by bytes among
// the connections waiting for it. Beyond it, a connection with nothing in
// flight may always have one request of up to 256 KiB admitted, so clients
// that hold the budget with replies they do not read cannot stop another
// client's small requests; and a single request of any size is admitted
// when nothing at all is in flight.
func WithMaxServerBytes(n int64) Option {
	return func(s *Server) {
		if n > 0 {
			s.maxServerBytes = n
		}
	}
}

// WithObserver installs an Observer.
func WithObserver(o Observer) Option { return func(s *Server) { s.obs = o } }

// WithDefaultExport names the export an empty export name selects, when no
// export is named "".
func WithDefaultExport(name string) Option { return func(s *Server) { s.defaultExport = name } }

// WithHandshakeTimeout bounds the option-haggling phase (default 30s).
func WithHandshakeTimeout(d time.Duration) Option { return func(s *Server) { s.handshakeTimeout = d } }

// Server serves exports over the NBD protocol.
type Server struct {
	log              *slog.Logger
	maxConns         int
	maxInFlight      int
	obs              Observer
	obsMu            sync.Mutex
	defaultExport    string
	handshakeTimeout time.Duration
	tls              *tlsState // WithTLS (tls.go); nil: no TLS

	maxConnBytes   int64
	maxServerBytes int64

	mu        sync.Mutex
	exports   map[string]*Export
	devLocks  map[string]*rangeLock // by device name
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	refusals  map[net.Conn]struct{} // over-limit connections being refused
	refusing  int
	nextConn  uint64
	closing   bool
	wg        sync.WaitGroup // Serve loops and connections

	// Budgets (budget.go).
	bmu   sync.Mutex
	bUsed int64           // bytes admitted, server-wide
	bReqs int             // requests admitted, server-wide
	vtime uint64          // virtual time of fair granting (budget.go)
	seq   uint64          // arrival order of waiters
	bq    []*transmission // connections waiting for the server budget
}

// NewServer returns a Server with no exports.
func NewServer(opts ...Option) *Server {
	s := &Server{
		log:              slog.New(slog.DiscardHandler),
		maxConns:         DefaultMaxConns,
		maxInFlight:      DefaultMaxInFlight,
		maxConnBytes:     DefaultMaxConnBytes,
		maxServerBytes:   DefaultMaxServerBytes,
		handshakeTimeout: 30 * time.Second,
		exports:          map[string]*Export{},
		devLocks:         map[string]*rangeLock{},
		listeners:        map[net.Listener]struct{}{},
		conns:            map[*conn]struct{}{},
		refusals:         map[net.Conn]struct{}{},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// AddExport offers e to new connections. Names are unique.
func (s *Server) AddExport(e Export) error {
	if err := e.validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.exports[e.Name]; ok {
		return fmt.Errorf("nbd: export %q already exists", e.Name)
	}
	// Exports of one device share its range lock, so a read-modify-write
	// through one is safe against writes through another.
	lk := s.devLocks[e.Dev.Name()]
	if lk == nil {
		lk = newRangeLock()
		s.devLocks[e.Dev.Name()] = lk
	}
	e.locks, e.handle = lk, nil
	s.exports[e.Name] = &e
	return nil
}

// RemoveExport withdraws an export from new negotiations. Connections that
// already use it keep serving until they disconnect.
func (s *Server) RemoveExport(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.exports[name]; !ok {
		return fmt.Errorf("nbd: no export %q", name)
	}
	delete(s.exports, name)
	return nil
}

// Exports lists the export names in order.
func (s *Server) Exports() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.exports))
	for n := range s.exports {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// lookup resolves an export name, applying the default-export rule.
func (s *Server) lookup(name string) *Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.exports[name]; ok {
		return e
	}
	if name == "" && s.defaultExport != "" {
		return s.exports[s.defaultExport]
	}
	return nil
}

func (s *Server) exportList() []*Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := make([]*Export, 0, len(s.exports))
	for _, e := range s.exports {
		l = append(l, e)
	}
	sort.Slice(l, func(i, j int) bool { return l[i].Name < l[j].Name })
	return l
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("nbd: server closed")

// Serve accepts connections on l until l is closed or Shutdown is called.
// It returns ErrServerClosed after Shutdown, else the accept error.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ECONNABORTED) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd: accept", "addr", l.Addr().String(), "err", err, "retry", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("nbd: accept on %s: %w", l.Addr(), err)
		}
		backoff = 0
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			nc.Close()
			return ErrServerClosed
		}
		if s.maxConns > 0 && len(s.conns) >= s.maxConns {
			s.refuseLocked(nc)
			s.mu.Unlock()
			continue
		}
		s.nextConn++
		c := newConn(s, nc, s.nextConn)
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			c.serve()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Shutdown closes the listeners, stops reading new requests, lets in-flight
// requests finish and their replies go out, then closes the connections and
// waits for every goroutine the Server started. If ctx ends first, the
// connections are closed at once and ctx's error is returned; goroutines
// blocked inside a device call finish when that call returns.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.stop()
	}
	for nc := range s.refusals {
		nc.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.nc.Close()
		}
		s.mu.Unlock()
		return ctx.Err()
	}
}

func (s *Server) arrived(r Request) {
	if s.obs == nil {
		return
	}
	s.obsMu.Lock()
	defer s.obsMu.Unlock()
	s.obs.Arrived(r)
}

func (s *Server) completed(r Request, errno syscall.Errno) {
	if s.obs == nil {
		return
	}
	s.obsMu.Lock()
	defer s.obsMu.Unlock()
	s.obs.Completed(r, errno)
}

// ListenUnix listens on a unix socket at path, removing a stale socket
// left there by an earlier run (a live one, or a file that is not a
// socket, is an error). The directory must exist: it is not created. The
// socket file is removed when the listener closes.
func ListenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("nbd: listen unix %s: exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("nbd: listen unix %s: a server is already listening", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("nbd: listen unix %s: removing stale socket: %w", path, err)
		}
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || !fi.IsDir() {
		if err == nil {
			err = errors.New("not a directory")
		}
		return nil, fmt.Errorf("nbd: listen unix %s: directory %s: %w", path, filepath.Dir(path), err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("nbd: listen unix %s: %w", path, err)
	}
	return l, nil
}

// Listen listens on addr:
//
//	"/path/nbd.sock", "unix:/path"  unix socket (see ListenUnix)
//	"10809", ":10809"               TCP on 127.0.0.1
//	"host:port"                     TCP on that explicit address ("0.0.0.0:10809" for all)
func Listen(addr string) (net.Listener, error) {
	network, where, err := listenAddr(addr)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		return ListenUnix(where)
	}
	l, err := net.Listen("tcp", where)
	if err != nil {
		return nil, fmt.Errorf("nbd: listen %q: %w", addr, err)
	}
	return l, nil
}

// listenAddr is where Listen listens for addr: a unix socket path, or a
// TCP host:port.
func listenAddr(addr string) (network, where string, err error) {
	switch {
	case strings.HasPrefix(addr, "unix:"):
		return "unix", strings.TrimPrefix(addr, "unix:"), nil
	case strings.Contains(addr, "/"):
		return "unix", addr, nil
	case addr == "":
		return "", "", errors.New("nbd: listen: empty address")
	}
	if _, err := strconv.ParseUint(addr, 10, 16); err == nil {
		addr = ":" + addr
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", "", fmt.Errorf("nbd: listen %q: %w", addr, err)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return "tcp", net.JoinHostPort(host, port), nil
}

// Exposed reports whether Listen(addr) would accept connections from
// other hosts: TCP on an unspecified address (all interfaces) or one that
// is not loopback; a host name counts if any address it resolves to is
// not loopback. Unix sockets and loopback are not exposed.
func Exposed(addr string) (bool, error) {
	network, where, err := listenAddr(addr)
	if err != nil || network == "unix" {
		return false, err
	}
	host, _, _ := net.SplitHostPort(where)
	if ip := net.ParseIP(host); ip != nil {
		return !ip.IsLoopback(), nil
	}
	ips, err := net.LookupIP(host)
	if err != nil {
		return false, fmt.Errorf("nbd: listen %q: resolving %q: %w", addr, host, err)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return true, nil
		}
	}
	return false, nil
}

// URI is the NBD URI (doc/uri.md) of export on the listener's address:
// nbd+unix:///NAME?socket=PATH or nbd://HOST:PORT/NAME.
func URI(addr net.Addr, export string) string {
	switch a := addr.(type) {
	case *net.UnixAddr:
		return "nbd+unix:///" + url.PathEscape(export) + "?socket=" +
			strings.ReplaceAll(url.QueryEscape(a.Name), "%2F", "/")
	default:
		return "nbd://" + addr.String() + "/" + url.PathEscape(export)
	}
}
