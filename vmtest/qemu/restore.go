package qemu

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// restoreFormat names how guests are saved and restored. It is part of
// every key: a change to the procedure below changes every key, so no
// state saved the old way is restored the new way.
const restoreFormat = "snaplab restore 1: live migration of the agent-ready guest; -incoming fd:3; agent resume"

// restoreTimeout bounds a restore from QEMU's start to the agent's answer
// (KVM-sized, so 30 s under TCG); a restore takes well under a second.
const restoreTimeout = 3 * time.Second

// maxSavedStates is how many saved states the cache keeps (about 70 MiB
// each); the least recently restored go first.
const maxSavedStates = 6

// maxFailures is how many restores or saves of one key may fail in a row
// before restores of that key are no longer tried.
const maxFailures = 2

// savedState describes a saved guest, as CACHE/restore/KEY.json holds it.
// The fields up to Args are the key's facts: KEY hashes them with
// restoreFormat.
type savedState struct {
	Key         string   `json:"key"`
	QEMU        string   `json:"qemu"` // the resolved binary: path, size, mtime
	QEMUVersion string   `json:"qemu_version"`
	Accel       Accel    `json:"accel"`
	Host        string   `json:"host,omitempty"`  // under KVM: host kernel, KVM device, CPU
	Kernel      string   `json:"guest_kernel"`    // path, size, mtime
	Initramfs   string   `json:"guest_initramfs"` // path (named by its content hash), size, mtime
	Args        []string `json:"qemu_args"`       // the boot's arguments, sockets named AGENT.sock and QMP.sock

	Saved       time.Time `json:"saved,omitzero"`
	BootSeconds float64   `json:"boot_seconds,omitempty"` // the saved boot, QEMU start to agent-ready
	SaveSeconds float64   `json:"save_seconds,omitempty"`
	Bytes       int64     `json:"bytes,omitempty"`
	// Failures are the failed restores and saves since the last
	// successful restore, oldest first; Disabled is set once there are
	// maxFailures of them.
	Failures []string `json:"failures,omitempty"`
	Disabled string   `json:"disabled,omitempty"`
}

// restorePlan is where one guest's saved state lives.
type restorePlan struct {
	dir, state, meta string
	facts            savedState
}

var errNoState = errors.New("no saved state")

// planRestore computes the key of the guest o describes under choice.
func planRestore(ctx context.Context, o *Options, choice accelChoice) (*restorePlan, error) {
	bin, version, err := qemuIdentity(ctx, o.QEMU)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	shape := &VM{opts: o, choice: choice}
	args := shape.buildArgs("AGENT.sock", "QMP.sock")
	f := savedState{QEMU: fileIdentity(bin), QEMUVersion: version, Accel: choice.accel,
		Kernel: fileIdentity(o.Kernel), Initramfs: fileIdentity(o.Initramfs), Args: args[1:]}
	if choice.accel == AccelKVM {
		// -cpu max is the host's CPU under KVM.
		dev, err := kvmDevice(o.KVMDevice)
		if err != nil {
			dev = err.Error()
		}
		f.Host = hostKernel() + "; " + dev + "; " + hostCPU()
	}
	b, err := json.Marshal(f)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(append([]byte(restoreFormat+"\n"), b...))
	f.Key = hex.EncodeToString(sum[:])[:16]
	dir := o.restoreDir
	if dir == "" {
		dir = filepath.Join(o.AccelCache, "restore")
	}
	return &restorePlan{dir: dir, state: filepath.Join(dir, f.Key+".state"), meta: filepath.Join(dir, f.Key+".json"), facts: f}, nil
}

// hostCPU is the host CPU's model and a hash of its flags.
func hostCPU() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown cpu"
	}
	defer f.Close()
	var model, flags string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() && (model == "" || flags == "") {
		k, v, _ := strings.Cut(sc.Text(), ":")
		switch strings.TrimSpace(k) {
		case "model name":
			model = strings.TrimSpace(v)
		case "flags":
			sum := sha256.Sum256([]byte(strings.TrimSpace(v)))
			flags = hex.EncodeToString(sum[:8])
		}
	}
	return model + " flags " + flags
}

// startRestore starts the guest from its saved state, or, when there is
// none or it fails, boots it, waits for the agent and saves it. Restores
// that keep failing are given up (see maxFailures), with one line on
// stderr.
func startRestore(ctx context.Context, o *Options, choice accelChoice) (*VM, error) {
	p, err := planRestore(ctx, o, choice)
	if err != nil {
		return nil, err
	}
	meta := p.readMeta()
	if meta != nil && meta.Disabled != "" {
		p.noticeDisabled(o, meta)
		return bootReady(ctx, o, choice, launch{})
	}
	vm, err := p.restore(ctx, o, choice, meta)
	switch {
	case err == nil:
		return vm, nil
	case ctx.Err() != nil:
		return nil, err
	case errors.Is(err, errNoState):
		o.Logf("qemu: no saved guest %s yet: booting, then saving it", p.state)
	default:
		o.Logf("qemu: restoring %s failed, so it was removed: %v; booting, then saving it again", p.state, oneLine(err))
		meta = p.fail(o, meta, "restore: "+oneLine(err))
		if meta.Disabled != "" {
			p.noticeDisabled(o, meta)
			return bootReady(ctx, o, choice, launch{})
		}
	}
	return p.bootAndSave(ctx, o, choice, meta)
}

// bootReady boots and waits for the agent.
func bootReady(ctx context.Context, o *Options, choice accelChoice, l launch) (*VM, error) {
	vm, err := start1(ctx, o, choice, l)
	if err != nil {
		return nil, err
	}
	if _, err := vm.Ready(ctx); err != nil {
		vm.Kill()
		return nil, err
	}
	return vm, nil
}

// restore starts QEMU on the saved state and does the agent's resume
// handshake. A state that fails is removed, unless the caller's context
// ended.
func (p *restorePlan) restore(ctx context.Context, o *Options, choice accelChoice, meta *savedState) (*VM, error) {
	f, err := os.Open(p.state)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNoState
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := checkStream(f); err != nil {
		p.drop(f)
		return nil, fmt.Errorf("%s: %w", p.state, err)
	}
	rctx, cancel := context.WithTimeout(ctx, time.Duration(float64(restoreTimeout)*slowdownFor(o, choice)))
	defer cancel()
	vm, err := start1(rctx, o, choice, launch{incoming: f})
	if err == nil {
		if _, err = vm.Agent().Resume(rctx); err != nil {
			err = vm.bootError("restore", err)
			vm.Kill()
		}
	}
	if err != nil {
		if ctx.Err() == nil {
			p.drop(f)
		}
		return nil, err
	}
	vm.restored = p.state
	now := time.Now()
	os.Chtimes(p.state, now, now) // the prune keeps the recently restored
	if meta != nil && len(meta.Failures) > 0 {
		meta.Failures = nil
		p.writeMeta(o, meta)
	}
	o.Logf("qemu: restored from %s: agent ready %.2fs after qemu started", p.state, time.Since(vm.started).Seconds())
	return vm, nil
}

// bootAndSave boots, waits for the agent, saves the guest and lets it run
// on. A save that fails is logged, never the caller's error.
func (p *restorePlan) bootAndSave(ctx context.Context, o *Options, choice accelChoice, meta *savedState) (*VM, error) {
	vm, err := bootReady(ctx, o, choice, launch{})
	if err != nil {
		return nil, err
	}
	if err := vm.save(ctx, p, meta); err != nil {
		o.Logf("qemu: saving the booted guest to %s failed: %v; the next start boots again", p.state, err)
		p.fail(o, meta, "save: "+oneLine(err))
	}
	if err := vm.running(ctx); err != nil {
		err = vm.bootError("resuming after the save", err)
		vm.Kill()
		return nil, err
	}
	return vm, nil
}

// save migrates the running, agent-ready guest to a unix socket whose
// stream goes to a temporary file, lets the guest run on, checks the
// stream and renames the file into place. (QEMU 7.2 has no file: URI; its
// exec: URI kills the command 10 ms after the stream ends, which may cut
// the file short; its fd: URI takes only descriptors passed over QMP.)
// The guest is migrated live, so the saved run state is "running": a
// restore starts the guest as soon as it is loaded.
func (vm *VM) save(ctx context.Context, p *restorePlan, meta *savedState) error {
	boot := time.Since(vm.started)
	start := time.Now()
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(p.dir, p.facts.Key+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name()) // renamed away on success
	}()
	sockDir, err := os.MkdirTemp("", "snaplab-save-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "migrate.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return err
	}
	defer ln.Close()
	copied := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			copied <- fmt.Errorf("QEMU did not connect to %s: %w", sock, err)
			return
		}
		defer c.Close()
		_, err = io.Copy(tmp, c)
		copied <- err
	}()
	// QEMU 7.2 throttles migration to 128 MiB/s by default.
	if _, err := vm.QMP(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}); err != nil {
		return err
	}
	if _, err := vm.QMP(ctx, "migrate", map[string]any{"uri": "unix:" + sock}); err != nil {
		return err
	}
	merr := vm.waitMigration(ctx)
	if err := vm.running(ctx); err != nil {
		return err
	}
	if merr != nil {
		return merr
	}
	ln.Close() // an Accept that never happened ends now
	select {
	case err = <-copied:
	case <-time.After(vm.Scale(5 * time.Second)):
		err = errors.New("the migration completed, but its stream did not end")
	}
	if err != nil {
		return fmt.Errorf("copying the stream to %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil { // as the other cache files
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := checkStream(tmp); err != nil {
		return fmt.Errorf("the saved stream: %w", err)
	}
	st, err := tmp.Stat()
	if err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), p.state); err != nil {
		return err
	}
	m := p.facts
	m.Saved = time.Now().UTC().Truncate(time.Second)
	m.BootSeconds, m.SaveSeconds, m.Bytes = roundSeconds(boot), roundSeconds(time.Since(start)), st.Size()
	if meta != nil {
		m.Failures = meta.Failures
	}
	p.writeMeta(vm.opts, &m)
	vm.opts.Logf("qemu: saved the booted guest in %s (%d MiB, %.2fs)", p.state, st.Size()>>20, time.Since(start).Seconds())
	p.prune(vm.opts)
	return nil
}

// waitMigration polls query-migrate until the migration has ended.
func (vm *VM) waitMigration(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, vm.Scale(20*time.Second))
	defer cancel()
	for {
		out, err := vm.QMP(ctx, "query-migrate", nil)
		if err != nil {
			return err
		}
		var m struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(out, &m); err != nil {
			return fmt.Errorf("query-migrate reply %.200s: %w", out, err)
		}
		switch m.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", m.Status, m.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration still %s: %w", m.Status, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// running makes sure the guest runs (after a migration it is stopped in
// "postmigrate").
func (vm *VM) running(ctx context.Context) error {
	out, err := vm.QMP(ctx, "query-status", nil)
	if err != nil {
		return err
	}
	var st struct{ Status string }
	if err := json.Unmarshal(out, &st); err != nil {
		return fmt.Errorf("query-status reply %.200s: %w", out, err)
	}
	if st.Status == "running" {
		return nil
	}
	if _, err := vm.QMP(ctx, "cont", nil); err != nil {
		return fmt.Errorf("guest %s: %w", st.Status, err)
	}
	return nil
}

// checkStream checks that f holds a whole QEMU migration stream: the
// header (magic "QEVM", version 3) and, at its very end, the JSON device
// description QEMU writes last. It catches a truncated or overwritten
// file before QEMU is started on it.
func checkStream(f *os.File) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	var hdr [8]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil {
		return fmt.Errorf("not a QEMU migration stream: %d bytes", size)
	}
	if string(hdr[:4]) != "QEVM" || binary.BigEndian.Uint32(hdr[4:]) != 3 {
		return fmt.Errorf("not a QEMU migration stream (version 3): starts % x", hdr)
	}
	n := min(size, 4<<20)
	tail := make([]byte, n)
	if _, err := f.ReadAt(tail, size-n); err != nil {
		return fmt.Errorf("reading its end: %w", err)
	}
	// QEMU_VM_VMDESCRIPTION (0x06), a big-endian length, then the JSON.
	for i := len(tail) - 6; i >= 0; i-- {
		if tail[i] == 0x06 && tail[i+5] == '{' && int(binary.BigEndian.Uint32(tail[i+1:])) == len(tail)-i-5 &&
			json.Valid(tail[i+5:]) {
			return nil
		}
	}
	return fmt.Errorf("incomplete QEMU migration stream (%d bytes): no device description at its end", size)
}

// drop removes the saved state f was opened from, unless another process
// has replaced it since.
func (p *restorePlan) drop(f *os.File) {
	a, err1 := f.Stat()
	b, err2 := os.Stat(p.state)
	if err1 == nil && err2 == nil && os.SameFile(a, b) {
		os.Remove(p.state)
	}
}

func (p *restorePlan) readMeta() *savedState {
	b, err := os.ReadFile(p.meta)
	if err != nil {
		return nil
	}
	var m savedState
	if json.Unmarshal(b, &m) != nil || m.Key != p.facts.Key {
		return nil
	}
	return &m
}

func (p *restorePlan) writeMeta(o *Options, m *savedState) {
	b, _ := json.MarshalIndent(m, "", "  ")
	tmp, err := os.CreateTemp(p.dir, m.Key+".*.json.tmp")
	if err == nil {
		err = tmp.Chmod(0o644)
		if err == nil {
			_, err = tmp.Write(append(b, '\n'))
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), p.meta)
		}
		if err != nil {
			os.Remove(tmp.Name())
		}
	}
	if err != nil {
		o.Logf("qemu: writing %s: %v", p.meta, err)
	}
}

// fail records a failed restore or save; after maxFailures in a row it
// disables restores of this key.
func (p *restorePlan) fail(o *Options, meta *savedState, reason string) *savedState {
	m := p.facts
	if meta != nil {
		m = *meta
	}
	m.Failures = append(m.Failures, time.Now().UTC().Format(time.RFC3339)+" "+reason)
	if len(m.Failures) >= maxFailures {
		m.Disabled = fmt.Sprintf("%d restores or saves failed in a row, the last: %s", len(m.Failures), reason)
	}
	if err := os.MkdirAll(p.dir, 0o755); err == nil {
		p.writeMeta(o, &m)
	}
	return &m
}

func (p *restorePlan) noticeDisabled(o *Options, m *savedState) {
	notify(o, fmt.Sprintf("snaplab: guests boot instead of being restored from a saved state: %s. Delete %s to try again.", m.Disabled, p.meta))
}

// prune keeps the maxSavedStates most recently restored or saved states
// and removes temporary files a killed process left behind.
func (p *restorePlan) prune(o *Options) {
	ents, err := os.ReadDir(p.dir)
	if err != nil {
		return
	}
	type state struct {
		key string
		t   time.Time
	}
	var states []state
	for _, e := range ents {
		info, err := e.Info()
		if err != nil {
			continue
		}
		name := e.Name()
		switch {
		case strings.HasSuffix(name, ".tmp") && time.Since(info.ModTime()) > time.Hour:
			os.Remove(filepath.Join(p.dir, name))
		case strings.HasSuffix(name, ".state"):
			states = append(states, state{strings.TrimSuffix(name, ".state"), info.ModTime()})
		}
	}
	sort.Slice(states, func(i, j int) bool { return states[i].t.After(states[j].t) })
	for _, s := range states[min(len(states), maxSavedStates):] {
		if s.key == p.facts.Key {
			continue
		}
		o.Logf("qemu: removing the saved guest %s (the least recently used of %d)", s.key, len(states))
		os.Remove(filepath.Join(p.dir, s.key+".state"))
		os.Remove(filepath.Join(p.dir, s.key+".json"))
	}
}
