package libvirt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"snaplab/vmtest/guest/proto"
	"snaplab/vmtest/machine"
	"snaplab/vmtest/qemu"
)

// Guest is a running libvirt domain (a machine.Machine).
type Guest struct {
	o        *Options
	name     string
	c        *conn
	dom      golibvirt.Domain
	accel    qemu.Accel
	why      string
	slowdown float64
	xml      string
	dir      string // the agent socket's directory ("" with TCP)

	agent         *proto.Client
	kernelRelease atomic.Pointer[string]

	console     *machine.Ring
	consoleFile *machine.FileSink
	consoleName string

	hp machine.Hotplug

	events machine.EventLog

	exitOnce sync.Once
	exited   chan struct{}
	exitWhy  atomic.Pointer[string]
	ending   atomic.Bool
	killOnce sync.Once
	killErr  error
}

var _ machine.Machine = (*Guest)(nil)

var seq atomic.Int64

// Start defines and starts a domain from opts on the daemon at the URI
// (see the package doc) and returns once its agent channel is connected;
// Ready waits for the agent. A failed start leaves no domain behind.
func Start(ctx context.Context, opts ...Option) (_ *Guest, err error) {
	o := defaultOptions()
	for _, f := range opts {
		if err := f(o); err != nil {
			return nil, err
		}
	}
	if o.URI == "" {
		return nil, errors.New("libvirt: no daemon URI (WithURI)")
	}
	if o.Kernel == "" || o.Initramfs == "" {
		return nil, errors.New("libvirt: no kernel or initramfs (WithImage)")
	}
	local, err := IsLocal(o.URI)
	if err != nil {
		return nil, err
	}
	if !local && o.Listen == "" {
		return nil, fmt.Errorf("libvirt %s: a remote host: give the address it reaches this machine on (WithListen, snaplab's -listen) for the agent channel and the NBD server", o.URI)
	}
	g := &Guest{o: o, console: machine.NewRing(4 << 20), consoleFile: machine.NewFileSink(nil), exited: make(chan struct{})}
	g.name = fmt.Sprintf("%s%s-%d-%d", namePrefix, hostName(), os.Getpid(), seq.Add(1))
	if o.Name != "" {
		g.name = o.Name
	}
	g.accel, g.why, err = chooseAccel(ctx, o, local)
	if err != nil {
		return nil, fmt.Errorf("libvirt: %w", err)
	}
	g.slowdown = 1
	if g.accel == qemu.AccelTCG {
		g.slowdown = qemu.TCGSlowdown
	}
	if o.Slowdown != 0 {
		g.slowdown = o.Slowdown
	}
	o.Logf("libvirt %s: domain %s, accelerator %s", o.URI, g.name, g.why)
	g.hp.QMP, g.hp.Scale, g.hp.Mark = g.QMP, g.Scale, g.events.Len
	g.hp.WaitEvent = func(ctx context.Context, from int, name string, match func(map[string]any) bool) error {
		_, _, err := g.WaitEvent(ctx, from, name, func(e machine.Event) bool { return match(e.Data) })
		return err
	}
	buses := make([]string, o.HotplugSlots)
	for i := range buses {
		buses[i] = hotplugBus(i)
	}
	g.hp.SetBuses(buses)

	dial := o.dial
	if dial == nil {
		dial = dialURI(o.URI)
	}
	g.c, err = openConn(ctx, o.URI, dial, o.CallTimeout, o.Logf)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = g.startError(err)
			g.Kill()
		}
	}()
	if n, err := RemoveLeftovers(ctx, g.c); err != nil {
		fmt.Fprintf(o.Notices, "snaplab: libvirt %s: %v\n", o.URI, err)
	} else if n > 0 {
		fmt.Fprintf(o.Notices, "snaplab: libvirt %s: removed %d domain(s) left by snaplab processes of this host that are gone\n", o.URI, n)
	}
	if err := g.openConsoleFile(); err != nil {
		return nil, err
	}

	// The agent channel: QEMU connects to us.
	spec := domainSpec{Name: g.name, Description: fmt.Sprintf("snaplab guest of process %d on %s; removed when it ends, or by the next snaplab run on that host if it was killed", os.Getpid(), hostName()),
		Type: "qemu", MemoryMB: o.MemoryMB, Kernel: o.Kernel, Initramfs: o.Initramfs, Cmdline: kernelCmdline(o.Append),
		Slots: o.HotplugSlots, BootDisks: o.BootDisks}
	if g.accel == qemu.AccelKVM {
		spec.Type = "kvm"
	}
	var ln net.Listener
	if o.Listen == "" {
		if g.dir, err = os.MkdirTemp("", "snaplab-lv-"); err != nil {
			return nil, err
		}
		spec.AgentSocket = filepath.Join(g.dir, "agent.sock")
		ln, err = net.Listen("unix", spec.AgentSocket)
	} else {
		ln, err = net.Listen("tcp", net.JoinHostPort(o.Listen, "0"))
		if err == nil {
			spec.AgentHost, spec.AgentPort = o.Listen, ln.Addr().(*net.TCPAddr).Port
		}
	}
	if err != nil {
		return nil, fmt.Errorf("agent channel: %w", err)
	}
	defer ln.Close()
	if g.xml, err = domainXML(spec); err != nil {
		return nil, err
	}
	o.Logf("libvirt %s: domain XML:\n%s", o.URI, g.xml)
	if err := g.c.do(ctx, "define "+g.name, func(l *golibvirt.Libvirt) (err error) {
		g.dom, err = l.DomainDefineXMLFlags(g.xml, 0)
		return err
	}); err != nil {
		return nil, err
	}
	if err := g.c.subscribe(ctx, "subscribe to "+g.name+"'s events", g.subscribeEvents); err != nil {
		return nil, err
	}
	// Start paused: the console stream is open before the first byte.
	if err := g.c.do(ctx, "start "+g.name, func(l *golibvirt.Libvirt) error {
		_, err := l.DomainCreateWithFlags(g.dom, uint32(golibvirt.DomainStartPaused))
		return err
	}); err != nil {
		return nil, err
	}
	if err := g.c.subscribe(ctx, "open "+g.name+"'s console", g.streamConsole); err != nil {
		return nil, err
	}
	if err := g.c.do(ctx, "resume "+g.name, func(l *golibvirt.Libvirt) error { return l.DomainResume(g.dom) }); err != nil {
		return nil, err
	}
	cn, err := g.accept(ctx, ln)
	if err != nil {
		return nil, fmt.Errorf("agent channel: %w", err)
	}
	g.agent = proto.NewClient(cn)
	g.agent.MapErr = g.mapAgentErr
	if g.dir != "" {
		os.RemoveAll(g.dir) // connected: nothing to leave behind
	}
	return g, nil
}

// StartT starts a guest for a test: it fails the test on error and kills
// the guest (destroy and undefine) on cleanup, logging the console when the
// test failed.
func StartT(t interface {
	Helper()
	Fatal(...any)
	Logf(string, ...any)
	Cleanup(func())
	Failed() bool
}, opts ...Option) *Guest {
	t.Helper()
	g, err := Start(context.Background(), append([]Option{WithLogf(t.Logf)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("console:\n%s", g.Console())
		}
		g.Kill()
	})
	return g
}

// subscribeEvents drains the domain's QMP events (through libvirt) and its
// lifecycle events into the event log, on connection l.
func (g *Guest) subscribeEvents(l *golibvirt.Libvirt) error {
	qevs, err := l.SubscribeQEMUEvents(context.Background(), g.name)
	if err != nil {
		return err
	}
	levs, err := l.LifecycleEvents(context.Background())
	if err != nil {
		return err
	}
	go func() {
		for e := range qevs {
			var data map[string]any
			if len(e.Details) > 0 {
				if err := json.Unmarshal(e.Details, &data); err != nil {
					data = map[string]any{"undecoded": string(e.Details)}
				}
			}
			g.addEvent(machine.Event{Name: e.Event, Data: data, Time: time.Now()})
		}
	}()
	go func() {
		for e := range levs {
			if e.Dom.Name != g.name {
				continue
			}
			ev := lifecycleName(e.Event)
			g.addEvent(machine.Event{Name: "libvirt:" + ev, Data: map[string]any{"detail": e.Detail}, Time: time.Now()})
			if e.Event == int32(golibvirt.DomainEventStopped) || e.Event == int32(golibvirt.DomainEventCrashed) {
				g.markExited(fmt.Sprintf("domain %s %s (detail %d)", g.name, ev, e.Detail))
			}
		}
	}()
	return nil
}

func lifecycleName(ev int32) string {
	switch golibvirt.DomainEventType(ev) {
	case golibvirt.DomainEventDefined:
		return "defined"
	case golibvirt.DomainEventUndefined:
		return "undefined"
	case golibvirt.DomainEventStarted:
		return "started"
	case golibvirt.DomainEventSuspended:
		return "suspended"
	case golibvirt.DomainEventResumed:
		return "resumed"
	case golibvirt.DomainEventStopped:
		return "stopped"
	case golibvirt.DomainEventShutdown:
		return "shutdown"
	case golibvirt.DomainEventPmsuspended:
		return "pmsuspended"
	case golibvirt.DomainEventCrashed:
		return "crashed"
	}
	return fmt.Sprintf("event-%d", ev)
}

// streamConsole copies the serial console, through the daemon, into the
// console ring and file until the domain ends or the connection drops.
func (g *Guest) streamConsole(l *golibvirt.Libvirt) error {
	w := io.MultiWriter(g.console, g.consoleFile)
	go func() {
		err := l.DomainOpenConsole(g.dom, golibvirt.OptString{}, w, uint32(golibvirt.DomainConsoleForce))
		if err != nil && !g.ending.Load() {
			g.o.Logf("libvirt %s: console of %s: %v", g.o.URI, g.name, err)
		}
	}()
	return nil
}

func (g *Guest) addEvent(e machine.Event) {
	g.events.Add(e)
	g.o.Logf("libvirt event: %s %v", e.Name, e.Data)
}

func (g *Guest) markExited(why string) {
	g.exitOnce.Do(func() {
		g.exitWhy.Store(&why)
		close(g.exited)
	})
}

// Events are the QMP events (BLOCK_IO_ERROR, DEVICE_DELETED, ...) and the
// domain's libvirt lifecycle events ("libvirt:started", "libvirt:stopped",
// ...), in arrival order.
func (g *Guest) Events() []machine.Event { return g.events.Events() }

// BlockIOErrors are the BLOCK_IO_ERROR events so far.
func (g *Guest) BlockIOErrors() []machine.BlockIOError { return g.events.BlockIOErrors() }

// NodeName is the block node of a plugged disk, as BLOCK_IO_ERROR names it.
func (g *Guest) NodeName(serial string) string { return machine.NodeName(serial) }

// WaitEvent waits for an event at index >= from named name for which
// match (may be nil) holds.
func (g *Guest) WaitEvent(ctx context.Context, from int, name string, match func(machine.Event) bool) (machine.Event, int, error) {
	return g.events.Wait(ctx, from, name, match, g.exited, func() error { return errors.New(g.exitReason()) })
}

func (g *Guest) exitReason() string {
	if p := g.exitWhy.Load(); p != nil {
		return *p
	}
	return "running"
}

// Exited is closed once libvirt reported the domain stopped or crashed.
func (g *Guest) Exited() <-chan struct{} { return g.exited }

// QMP runs a QMP command through libvirt (QEMUDomainMonitorCommand) and
// returns its "return" value; a QMP error is an error naming the command.
func (g *Guest) QMP(ctx context.Context, execute string, args any) (json.RawMessage, error) {
	cmd := map[string]any{"execute": execute}
	if args != nil {
		cmd["arguments"] = args
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("QMP %s: encoding arguments: %w", execute, err)
	}
	var out string
	if err := g.c.do(ctx, "QMP "+execute, func(l *golibvirt.Libvirt) (err error) {
		out, err = l.QEMUDomainMonitorCommand(g.dom, string(b), 0)
		return err
	}); err != nil {
		return nil, err
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class, Desc string
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		return nil, fmt.Errorf("QMP %s: reply %.200s: %w", execute, out, err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("QMP %s: %s: %s", execute, resp.Error.Class, resp.Error.Desc)
	}
	return resp.Return, nil
}

// Plug hot-plugs an NBD disk (machine.Hotplug: the QEMU backend's device
// properties, through libvirt's QMP passthrough).
func (g *Guest) Plug(ctx context.Context, serial string, src machine.NBD, o machine.DiskOptions) error {
	return g.hp.Plug(ctx, serial, src, o)
}

// Unplug removes a disk Plug attached.
func (g *Guest) Unplug(ctx context.Context, serial string) error { return g.hp.Unplug(ctx, serial) }

// State is the domain's state as libvirt reports it.
func (g *Guest) State(ctx context.Context) (golibvirt.DomainState, error) {
	var st int32
	err := g.c.do(ctx, "state of "+g.name, func(l *golibvirt.Libvirt) (err error) {
		st, _, err = l.DomainGetState(g.dom, 0)
		return err
	})
	return golibvirt.DomainState(st), err
}

// Agent is the guest agent's client.
func (g *Guest) Agent() *proto.Client { return g.agent }

// Ready waits for the agent's ready message, at most 60 s (scaled).
func (g *Guest) Ready(ctx context.Context) (proto.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, g.Scale(60*time.Second))
	defer cancel()
	r, err := g.agent.Ready(ctx)
	if err != nil {
		return r, g.startError(fmt.Errorf("waiting for the agent: %w", err))
	}
	g.kernelRelease.Store(&r.Kernel)
	return r, nil
}

// KernelRelease is the guest kernel's release once Ready returned.
func (g *Guest) KernelRelease() string {
	if p := g.kernelRelease.Load(); p != nil {
		return *p
	}
	return ""
}

// Scale multiplies d by the slowdown (10 under TCG).
func (g *Guest) Scale(d time.Duration) time.Duration { return time.Duration(float64(d) * g.slowdown) }

// Name is the domain's name.
func (g *Guest) Name() string { return g.name }

// URI is the daemon's.
func (g *Guest) URI() string { return g.o.URI }

// XML is the domain XML the guest was defined with.
func (g *Guest) XML() string { return g.xml }

// Accel is the accelerator (domain type kvm or qemu), AccelReason why.
func (g *Guest) Accel() qemu.Accel   { return g.accel }
func (g *Guest) AccelReason() string { return g.why }

// Console is the tail of the serial console.
func (g *Guest) Console() string { return g.console.String() }

// ConsoleFile is the file holding the whole console ("" if none).
func (g *Guest) ConsoleFile() string { return g.consoleName }

// Redials is how many times the connection to the daemon was made again.
func (g *Guest) Redials() int { return g.c.Redials() }

// Close powers the guest off through its agent, waits for libvirt to
// report it stopped, and then destroys (if need be) and undefines it.
func (g *Guest) Close(ctx context.Context) error {
	g.ending.Store(true)
	select {
	case <-g.exited:
		return g.kill()
	default:
	}
	if g.agent != nil && g.agent.IsReady() {
		pctx, cancel := context.WithTimeout(ctx, g.Scale(2*time.Second))
		g.agent.Poweroff(pctx)
		cancel()
		select {
		case <-g.exited:
		case <-time.After(g.Scale(3 * time.Second)):
		case <-ctx.Done():
		}
	}
	return g.kill()
}

// Kill destroys and undefines the domain at once and releases everything
// (agent, console, connection). Safe to call more than once.
func (g *Guest) Kill() { g.kill() }

func (g *Guest) kill() error {
	g.ending.Store(true)
	g.killOnce.Do(func() {
		if g.c != nil && g.dom.Name != "" {
			ctx := context.Background()
			if err := g.c.do(ctx, "destroy "+g.name, func(l *golibvirt.Libvirt) error {
				return l.DomainDestroyFlags(g.dom, golibvirt.DomainDestroyDefault)
			}); err != nil && !isNotRunning(err) {
				g.killErr = err
			}
			if err := g.c.do(ctx, "undefine "+g.name, func(l *golibvirt.Libvirt) error {
				return l.DomainUndefineFlags(g.dom, 0)
			}); err != nil && !golibvirt.IsNotFound(err) && g.killErr == nil {
				g.killErr = err
			}
		}
		g.markExited("killed")
		if g.agent != nil {
			g.agent.Close()
		}
		if g.c != nil {
			g.c.close()
		}
		if g.dir != "" {
			os.RemoveAll(g.dir)
		}
		if g.consoleFile != nil {
			g.consoleFile.Close()
		}
	})
	return g.killErr
}

// isNotRunning is libvirt's "domain is not running" (Destroy of a domain
// that stopped already).
func isNotRunning(err error) bool {
	var le golibvirt.Error
	return errors.As(err, &le) && golibvirt.ErrorNumber(le.Code) == golibvirt.ErrOperationInvalid
}

// mapAgentErr names the domain's end when the agent channel breaks.
func (g *Guest) mapAgentErr(err error) error {
	select {
	case <-g.exited:
		return fmt.Errorf("%w (%s)", err, g.exitReason())
	default:
		return err
	}
}

// startError adds the console tail to a failed start.
func (g *Guest) startError(err error) error {
	var b strings.Builder
	fmt.Fprintf(&b, "libvirt guest %s on %s: %v\naccelerator: %s\n", g.name, g.o.URI, err, g.why)
	if g.consoleName != "" {
		fmt.Fprintf(&b, "whole console: %s\n", g.consoleName)
	}
	c := machine.Tail(g.console.String(), 40)
	if strings.TrimSpace(c) == "" {
		c = "(empty)"
	}
	fmt.Fprintf(&b, "console tail:\n%s", c)
	return errors.New(b.String())
}

func (g *Guest) accept(ctx context.Context, ln net.Listener) (net.Conn, error) {
	type res struct {
		c   net.Conn
		err error
	}
	done := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		done <- res{c, err}
	}()
	select {
	case r := <-done:
		return r.c, r.err
	case <-g.exited:
		ln.Close()
		return nil, fmt.Errorf("the domain ended before QEMU connected it: %s", g.exitReason())
	case <-ctx.Done():
		ln.Close()
		return nil, ctx.Err()
	case <-time.After(g.Scale(5 * time.Second)):
		ln.Close()
		return nil, fmt.Errorf("QEMU did not connect it within %v", g.Scale(5*time.Second))
	}
}

func (g *Guest) openConsoleFile() error {
	path := g.o.ConsoleLog
	if path == "" {
		dir := os.Getenv("SNAPLAB_ARTIFACTS")
		if dir == "" {
			return nil
		}
		path = filepath.Join(dir, "console-"+g.name+".log")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("console file: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("console file: %w", err)
	}
	g.consoleFile, g.consoleName = machine.NewFileSink(f), path
	return nil
}
