package live

import (
	"bytes"
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/record"
	"snaplab/sim/run"
	"snaplab/vmtest/nbdclient"
)

func openOf(t *testing.T, dev block.Device) block.OpenDevice {
	t.Helper()
	op, ok := dev.(block.Opener)
	if !ok {
		t.Fatalf("Driver.Device(%s) does not implement block.Opener", dev.Name())
	}
	h, err := op.Open()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func openCount(t *testing.T, d *Driver, name string) string {
	t.Helper()
	out := exec1(t, d, "dmsetup info "+name)
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "Open count:") {
			return strings.TrimSpace(strings.TrimPrefix(l, "Open count:"))
		}
	}
	t.Fatalf("no open count in %q", out)
	return ""
}

// TestOpenCounts: a handle opened through Driver.Device(name) counts as an
// open of the device, as the kernel counts an NBD client's open:
// `dmsetup remove` is refused with EBUSY until it is closed. The session's
// recording (opens, closes, the open each request came through) replays to
// the same EBUSY.
func TestOpenCounts(t *testing.T) {
	var rec bytes.Buffer
	d := startDriver(t, &rec)
	h := openOf(t, d.Device("base"))
	if got := openCount(t, d, "base"); got != "1" {
		t.Fatalf("open count %s with a handle open, want 1", got)
	}
	if _, err := h.WriteAt(bytes.Repeat([]byte{0x41}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	out, failure, err := d.Exec("dmsetup remove base")
	if err != nil || !strings.Contains(out, busyBase) || failure == "" {
		t.Fatalf("remove of a device open over the driver: out %q failure %q err %v, want EBUSY", out, failure, err)
	}
	out, _, _ = d.Exec("dmsetup remove --force base")
	if !strings.Contains(out, "Device or resource busy") {
		t.Fatalf("remove --force of an open device: %q, want EBUSY", out)
	}
	if _, err := h.ReadAt(make([]byte, 4096), 0); block.Errno(err) != syscall.EIO {
		t.Fatalf("read through the handle after remove --force (error table): %v, want EIO", err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if got := openCount(t, d, "base"); got != "0" {
		t.Fatalf("open count %s after Close, want 0", got)
	}
	exec1(t, d, "dmsetup remove base")
	if _, err := d.Device("base").(block.Opener).Open(); block.Errno(err) != syscall.ENXIO {
		t.Fatalf("open of a removed device: %v, want ENXIO", err)
	}
	rep := d.Close()
	if len(rep.Failures) != 2 {
		t.Fatalf("want exactly the refused remove and remove --force as failures: %v", rep.Failures)
	}
	for _, want := range []string{`"kind":"open"`, `"kind":"close"`, `"open":1}`} {
		if !strings.Contains(rec.String(), want) {
			t.Fatalf("recording lacks %s", want)
		}
	}
	r, err := record.Read(bytes.NewReader(rec.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	rrep, diff, err := run.Replay(r, run.Options{})
	if err != nil || diff != "" {
		t.Fatalf("replay: %v\n%s", err, diff)
	}
	if len(rrep.Failures) != 2 || !strings.Contains(rrep.Failures[0].Msg, "Device or resource busy") {
		t.Fatalf("replay must refuse the remove too: %v", rrep.Failures)
	}
}

// TestUncountedOpen: the vm executor's variant counts nothing, so a
// scenario can remove a device whose QEMU disk is still plugged; its I/O
// then fails with ENXIO and never reaches a new device of the same name.
func TestUncountedOpen(t *testing.T) {
	d := startDriver(t, nil)
	h := openOf(t, d.Device("base", Uncounted()))
	if got := openCount(t, d, "base"); got != "0" {
		t.Fatalf("open count %s with an uncounted handle, want 0", got)
	}
	exec1(t, d, "dmsetup remove base")
	exec1(t, d, `dmsetup create base --table "0 131072 linear origin 0"`)
	if _, err := h.WriteAt(bytes.Repeat([]byte{0x58}, 4096), 0); block.Errno(err) != syscall.ENXIO || !strings.Contains(err.Error(), "base write at offset 0") {
		t.Fatalf("write through the handle of the removed device: %v, want ENXIO naming base and the offset", err)
	}
	if h.Size() != 0 {
		t.Fatalf("size of a removed device through its handle: %d", h.Size())
	}
	nw := openOf(t, d.Device("base"))
	got := make([]byte, 4096)
	if _, err := nw.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("the stale handle's write reached the new device named base")
	}
	if got := openCount(t, d, "base"); got != "1" {
		t.Fatalf("open count %s of the new device, want 1", got)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	rep := d.Close()
	if !rep.Pass() {
		t.Fatalf("%v", rep.Failures)
	}
	// Closing after the driver closed is harmless.
	if err := nw.Close(); err != nil {
		t.Fatalf("Close after the driver closed: %v", err)
	}
}

// awaitOpenCount polls dmsetup info until the device's open count is want
// (an NBD connection's close reaches the session after the client is gone).
func awaitOpenCount(t *testing.T, d *Driver, name, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := openCount(t, d, name)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("open count of %s: %s, want %s", name, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNBDConnectionIsAnOpen (issue 9): an NBD client connected to a
// device's export holds the device open, as `snaplab serve` exports it:
// dmsetup info counts it and dmsetup remove is refused until the client
// disconnects. The recording replays without the client.
func TestNBDConnectionIsAnOpen(t *testing.T) {
	var rec bytes.Buffer
	d := startDriver(t, &rec)
	sock, _ := serve(t, d)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := nbdclient.Dial(ctx, sock, "base", nbdclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteAt(bytes.Repeat([]byte{0x41}, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	awaitOpenCount(t, d, "base", "1")
	out, failure, err := d.Exec("dmsetup remove base")
	if err != nil || failure == "" || !strings.Contains(out, busyBase) {
		t.Fatalf("remove while a client is connected: out %q failure %q err %v, want EBUSY", out, failure, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	awaitOpenCount(t, d, "base", "0")
	exec1(t, d, "dmsetup remove base")
	rep := d.Close()
	if len(rep.Failures) != 1 {
		t.Fatalf("want only the refused remove as a failure: %v", rep.Failures)
	}
	r, err := record.Read(bytes.NewReader(rec.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if _, diff, err := run.Replay(r, run.Options{}); err != nil || diff != "" {
		t.Fatalf("replay without the client: %v\n%s", err, diff)
	}
}

// busyBase is the kernel's refusal to remove the open device base, as the
// simulator prints it (the library scenario dmsetup-remove-held-open pins
// it to the kernel's).
var busyBase = (&dm.IoctlError{Ioctl: "remove", Dev: "base", Errno: syscall.EBUSY}).Error()
