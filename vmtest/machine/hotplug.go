package machine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"sync"
	"time"
)

// NodePrefix starts the QEMU block node name of every plugged disk: the
// node of disk SERIAL is NodePrefix+SERIAL, as BLOCK_IO_ERROR names it.
const NodePrefix = "nbd-"

// NodeName is the QEMU block node of disk serial.
func NodeName(serial string) string { return NodePrefix + serial }

// Hotplug plugs NBD disks into a q35 guest through its QMP monitor, the
// same way for every backend, so a disk has the same properties whichever
// backend runs the guest: blockdev-add (driver nbd, discard=unmap) then
// device_add virtio-blk-pci on a free pcie-root-port, with serial= and id=
// set to the serial and rerror/werror=report; Unplug is device_del, the
// guest's DEVICE_DELETED, then blockdev-del, which closes the NBD
// connection. A backend supplies the monitor and its event log.
type Hotplug struct {
	// QMP runs a command with JSON arguments and returns "return".
	QMP func(ctx context.Context, execute string, args any) (json.RawMessage, error)
	// Mark is the event log's length (where WaitEvent starts).
	Mark func() int
	// WaitEvent waits for an event named name at index >= from for whose
	// data match holds.
	WaitEvent func(ctx context.Context, from int, name string, match func(data map[string]any) bool) error
	// Scale scales a timeout by the backend's slowdown.
	Scale func(time.Duration) time.Duration

	mu    sync.Mutex
	buses []string          // pcie-root-port ids, in order
	slots []string          // bus index → serial ("" free)
	nodes map[string]string // serial → block node
}

// SetBuses gives the pcie-root-port ids disks may be plugged into.
func (h *Hotplug) SetBuses(buses []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buses = buses
	h.slots = make([]string, len(buses))
}

// Booted records a disk present at boot (node NodeName(serial)), so that
// it counts as attached.
func (h *Hotplug) Booted(serial string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.nodes == nil {
		h.nodes = map[string]string{}
	}
	h.nodes[serial] = NodeName(serial)
}

var serialRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.-]{0,19}$`)

// CheckSerial enforces what both QEMU (device ids) and virtio-blk (20-byte
// serials) accept.
func CheckSerial(s string) error {
	if !serialRE.MatchString(s) {
		return fmt.Errorf("disk serial %q: want 1-20 characters [A-Za-z0-9_.-] starting with a letter", s)
	}
	return nil
}

// Plug hot-plugs disk serial served at src.
func (h *Hotplug) Plug(ctx context.Context, serial string, src NBD, o DiskOptions) error {
	if err := src.Check(); err != nil {
		return fmt.Errorf("attach %s: %w", serial, err)
	}
	if err := CheckSerial(serial); err != nil {
		return err
	}
	h.mu.Lock()
	if h.nodes == nil {
		h.nodes = map[string]string{}
	}
	if _, ok := h.nodes[serial]; ok {
		h.mu.Unlock()
		return fmt.Errorf("attach %s: a disk with this serial is already attached", serial)
	}
	slot := -1
	for i, s := range h.slots {
		if s == "" {
			slot = i
			break
		}
	}
	if slot < 0 {
		h.mu.Unlock()
		return fmt.Errorf("attach %s: all %d hot-plug slots are in use", serial, len(h.slots))
	}
	node := NodeName(serial)
	h.slots[slot] = serial
	h.nodes[serial] = node
	bus := h.buses[slot]
	h.mu.Unlock()
	release := func() {
		h.mu.Lock()
		h.slots[slot] = ""
		delete(h.nodes, serial)
		h.mu.Unlock()
	}

	server := map[string]any{"type": "unix", "path": src.Socket}
	if src.Socket == "" {
		server = map[string]any{"type": "inet", "host": src.Host, "port": strconv.Itoa(src.Port)}
	}
	bd := map[string]any{"driver": "nbd", "node-name": node, "discard": "unmap", "server": server}
	if src.Export != "" {
		bd["export"] = src.Export
	}
	if _, err := h.QMP(ctx, "blockdev-add", bd); err != nil {
		release()
		return fmt.Errorf("attach %s (%v): %w", serial, src, err)
	}
	dev := map[string]any{"driver": "virtio-blk-pci", "id": serial, "drive": node, "serial": serial,
		"bus": bus, "rerror": "report", "werror": "report"}
	if o.BlockSize != 0 {
		dev["logical_block_size"] = o.BlockSize
		dev["physical_block_size"] = o.BlockSize
	}
	if o.NoDiscard {
		dev["discard"] = false
	}
	if _, err := h.QMP(ctx, "device_add", dev); err != nil {
		h.QMP(ctx, "blockdev-del", map[string]any{"node-name": node})
		release()
		return fmt.Errorf("attach %s: %w", serial, err)
	}
	return nil
}

// Unplug removes a disk Plug attached: device_del, wait for the guest to
// release it (DEVICE_DELETED, 5 s scaled), then blockdev-del.
func (h *Hotplug) Unplug(ctx context.Context, serial string) error {
	h.mu.Lock()
	node, ok := h.nodes[serial]
	h.mu.Unlock()
	if !ok {
		return fmt.Errorf("detach %s: no such disk attached", serial)
	}
	from := h.Mark()
	if _, err := h.QMP(ctx, "device_del", map[string]any{"id": serial}); err != nil {
		return fmt.Errorf("detach %s: %w", serial, err)
	}
	wctx, cancel := context.WithTimeout(ctx, h.Scale(5*time.Second))
	defer cancel()
	if err := h.WaitEvent(wctx, from, "DEVICE_DELETED", func(d map[string]any) bool { return d["device"] == serial }); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("detach %s: the guest did not release the device: %w", serial, err)
		}
		return fmt.Errorf("detach %s: %w", serial, err)
	}
	if _, err := h.QMP(ctx, "blockdev-del", map[string]any{"node-name": node}); err != nil {
		return fmt.Errorf("detach %s: %w", serial, err)
	}
	h.mu.Lock()
	for i, s := range h.slots {
		if s == serial {
			h.slots[i] = ""
		}
	}
	delete(h.nodes, serial)
	h.mu.Unlock()
	return nil
}

// BlockIOErrorOf decodes a BLOCK_IO_ERROR event's data.
func BlockIOErrorOf(data map[string]any) BlockIOError {
	str := func(k string) string { s, _ := data[k].(string); return s }
	node := str("node-name")
	serial := ""
	if len(node) > len(NodePrefix) && node[:len(NodePrefix)] == NodePrefix {
		serial = node[len(NodePrefix):]
	}
	return BlockIOError{Serial: serial, Node: node, Operation: str("operation"), Action: str("action"), Reason: str("reason")}
}
