package guestexec

import (
	"context"
	"fmt"
	"strings"
	"time"

	"snaplab/sim/dm"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/guest/proto"
	"snaplab/vmtest/live"
	"snaplab/vmtest/machine"
	"snaplab/vmtest/nbd"
)

// simPlane is GuestIO's: control lines run in the simulator, and the
// devices the scenario does I/O on are plugged into the guest.
type simPlane struct {
	x        *scenarioRun
	attached map[string]bool // plugged into the guest; true if with discard support
	order    []string        // plugged in, in order
	ioDevs   map[string]bool // devices the scenario does I/O on
	logAt    int             // the simulator's log lines already given to a step
}

func newSimPlane(ctx context.Context, x *scenarioRun) (*simPlane, error) {
	p := &simPlane{x: x, attached: map[string]bool{}, ioDevs: map[string]bool{}}
	for _, st := range x.sc.Steps {
		switch st.Kind {
		case script.KRead, script.KWrite, script.KFlush, script.KDiscard, script.KFsync:
			p.ioDevs[st.Dev] = true
		}
	}
	// The guest's page cache logs its own lines (guestLog): start from a
	// clean kernel log.
	if _, err := p.guestLog(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *simPlane) control(ctx context.Context, st *script.Step) (string, error) {
	msg, err := p.x.exec(st)
	if err != nil {
		return "", err
	}
	if err := p.x.session(func(s *run.Session) { p.logAt = s.Control().Log.Len() }); err != nil {
		return "", err
	}
	if st.Kind == script.KDmsetup || st.Kind == script.KDisk {
		if err := p.sync(ctx); err != nil {
			return "", err
		}
		if err := p.preattach(ctx); err != nil {
			return "", err
		}
		if err := p.rediscard(ctx); err != nil {
			return "", err
		}
	}
	return msg, nil
}

// export is how a device of the session is exported: every device, by
// name; its opens are uncounted (an export stands in for the guest's
// per-I/O opens, and scenarios remove a device while its QEMU disk is
// still plugged).
func (p *simPlane) export(dev live.DeviceInfo) (nbd.Export, bool) {
	return nbd.Export{Name: dev.Name, Dev: p.x.lx.Device(dev.Name, live.Uncounted()), PreferredBlock: dev.PreferredBlock}, true
}

// sync exports every device of the session and unplugs devices that are
// gone.
func (p *simPlane) sync(ctx context.Context) error {
	gone, err := p.x.lx.Sync(p.export)
	if err != nil {
		return err
	}
	for _, name := range gone {
		if _, ok := p.attached[name]; ok {
			if err := p.detach(ctx, name); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *simPlane) detach(ctx context.Context, name string) error {
	delete(p.attached, name)
	for i, n := range p.order {
		if n == name {
			p.order = append(p.order[:i], p.order[i+1:]...)
			break
		}
	}
	return p.x.e.vm.Unplug(ctx, name)
}

// preattach plugs in, as soon as they are live, the devices the scenario
// will do I/O on, and waits for the guest to see them: the guest reads a
// new disk's partition table, which must not meet a device suspended by a
// later step.
func (p *simPlane) preattach(ctx context.Context) error {
	devs, err := p.x.lx.Devices()
	if err != nil {
		return err
	}
	for _, dev := range devs {
		if _, ok := p.attached[dev.Name]; p.ioDevs[dev.Name] && !ok && dev.Live && !dev.Suspended {
			if err := p.attach(ctx, dev.Name); err != nil {
				return err
			}
		}
	}
	return nil
}

// rediscard plugs in again a device whose discard support changed since
// it was plugged in (a table reload gave it or took away a target that
// takes discards): the guest's virtio disk advertises it or not
// (qemu.DiskOptions.NoDiscard), as a dm device's queue limits follow its
// live table. A suspended device waits for a later control step.
func (p *simPlane) rediscard(ctx context.Context) error {
	devs, err := p.x.lx.Devices()
	if err != nil {
		return err
	}
	for _, dev := range devs {
		if had, ok := p.attached[dev.Name]; ok && had != dev.Discard && dev.Live && !dev.Suspended {
			if err := p.detach(ctx, dev.Name); err != nil {
				return err
			}
			if err := p.attach(ctx, dev.Name); err != nil {
				return err
			}
		}
	}
	return nil
}

// attach plugs dev into the guest as a virtio disk that takes discards if
// the device does (live.DeviceInfo.Discard).
func (p *simPlane) attach(ctx context.Context, dev string) error {
	if _, ok := p.attached[dev]; ok {
		return nil
	}
	if err := p.sync(ctx); err != nil {
		return err
	}
	devs, err := p.x.lx.Devices()
	if err != nil {
		return err
	}
	discard := false
	for _, d := range devs {
		if d.Name == dev {
			discard = d.Discard
		}
	}
	if err := p.x.e.vm.Plug(ctx, dev, p.x.lx.Source(dev), machine.DiskOptions{NoDiscard: !discard}); err != nil {
		return err
	}
	p.attached[dev] = discard
	p.order = append(p.order, dev)
	// Wait for the guest to have probed it.
	if _, err := machine.WaitDisk(ctx, p.x.e.vm, dev); err != nil {
		return err
	}
	// What the guest logged plugging it in (its partition scan of a device
	// that fails reads logs "Buffer I/O error ... async page read") is the
	// harness's, not the next step's: read past it.
	_, err = p.guestLog(ctx)
	return err
}

func (p *simPlane) target(ctx context.Context, dev string) (serial, path string, err error) {
	return dev, "", p.attach(ctx, dev)
}

func (p *simPlane) arrivals(io *script.Step) int { return p.x.lx.Arrivals(io.Dev) }

// submitted waits until the whole of the step's request arrived for its
// device after the first before arrivals (or the guest's I/O finished):
// other requests, such as the guest kernel's partition scan of a disk just
// plugged in, do not count.
func (p *simPlane) submitted(g *guestIO, before int) string {
	x := p.x
	deadline := time.Now().Add(x.e.vm.Scale(x.e.IOTimeout))
	for time.Now().Before(deadline) {
		if arrived(g.st, x.lx.ArrivalsSince(g.st.Dev, before)) {
			return ""
		}
		select {
		case <-g.done:
			return ""
		case <-time.After(5 * time.Millisecond):
		}
	}
	return fmt.Sprintf("%s on %s: the guest's request did not reach the simulator within %v", g.st.Kind, g.st.Dev, x.e.vm.Scale(x.e.IOTimeout))
}

// ioLog is what was logged while a guest I/O ran: the simulator's lines
// (its devices and disks: the block layer's I/O errors, device-mapper's),
// then the guest kernel's page cache lines ("Buffer I/O error on dev vdX",
// the device's export named by its serial, the device's name): the page
// cache is the guest's. The guest's own block layer lines are not taken:
// its virtio disks are the simulator's devices, whose kernel model logs
// them (a dm device logs none).
func (p *simPlane) ioLog(ctx context.Context) ([]string, error) {
	var lines []string
	if err := p.x.session(func(s *run.Session) {
		lines = append(lines, s.Control().Log.Since(p.logAt)...)
		p.logAt = s.Control().Log.Len()
	}); err != nil {
		return nil, err
	}
	more, err := p.guestLog(ctx)
	return append(lines, more...), err
}

// guestLog returns the guest kernel's page cache lines logged since the
// last call, normalised.
func (p *simPlane) guestLog(ctx context.Context) ([]string, error) {
	e := p.x.e
	recs, err := e.readKmsg(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	var disks []proto.Disk
	for _, r := range recs {
		if !strings.HasPrefix(r.Msg, dm.BufferErrorPrefix) {
			continue
		}
		if disks == nil {
			if disks, err = e.vm.Agent().Disks(ctx); err != nil {
				return nil, fmt.Errorf("listing the guest's disks: %w", err)
			}
		}
		line, _ := normalizeKmsg(r.Msg, func(kd string) string {
			for _, d := range disks {
				if d.Name == kd {
					return d.Serial
				}
			}
			return kd
		})
		out = append(out, line)
	}
	return out, nil
}

// teardown unplugs every device the scenario plugged in, once the session
// is closed.
func (p *simPlane) teardown(ctx context.Context, closed bool) error {
	if !closed {
		return nil
	}
	var first error
	for len(p.order) > 0 {
		if err := p.detach(ctx, p.order[0]); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// arrived reports whether the requests in arrived carry all of I/O step
// st: a flush, or reads (writes, discards) covering its whole range.
func arrived(st *script.Step, arrived []live.Arrival) bool {
	op := map[string]dm.Op{script.KRead: dm.OpRead, script.KWrite: dm.OpWrite, script.KFlush: dm.OpFlush, script.KDiscard: dm.OpDiscard}[st.Kind]
	if op == dm.OpFlush {
		for _, a := range arrived {
			if a.Op == dm.OpFlush {
				return true
			}
		}
		return false
	}
	// The smallest offset not yet covered, from st.Off on; requests may
	// arrive in any order, so repeat until nothing moves it.
	next, end := st.Off, st.Off+st.Len
	for moved := true; moved && next < end; {
		moved = false
		for _, a := range arrived {
			if a.Op == op && a.Off <= next && a.Off+a.Len > next {
				next, moved = a.Off+a.Len, true
			}
		}
	}
	return next >= end
}
