package live

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"snaplab/sim/block"
	"snaplab/sim/record"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/nbd"
)

const setup = `disk origin 64MiB
disk cow 8MiB
dmsetup create snap1 --table "0 131072 snapshot origin cow P 8"
dmsetup create base --table "0 131072 snapshot-origin origin"
`

func startDriver(t *testing.T, rec *bytes.Buffer) *Driver {
	t.Helper()
	sc, err := script.Parse("live", setup)
	if err != nil {
		t.Fatal(err)
	}
	opts := run.Options{}
	if rec != nil {
		opts.Record = rec
	}
	d, err := Start(sc, opts)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func exec1(t *testing.T, d *Driver, line string) string {
	t.Helper()
	out, failure, err := d.Exec(line)
	if err != nil || failure != "" {
		t.Fatalf("%s: %v %s", line, err, failure)
	}
	return out
}

func serve(t *testing.T, d *Driver) (sock string, srv *nbd.Server) {
	t.Helper()
	sock = filepath.Join(t.TempDir(), "nbd.sock")
	l, err := nbd.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv = nbd.NewServer()
	devs, err := d.Devices()
	if err != nil {
		t.Fatal(err)
	}
	for _, dev := range devs {
		if err := srv.AddExport(nbd.Export{Name: dev.Name, Dev: d.Device(dev.Name), PreferredBlock: dev.PreferredBlock}); err != nil {
			t.Fatal(err)
		}
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return sock, srv
}

func qemuIO(t *testing.T, sock, export, cmd string) string {
	t.Helper()
	path, err := exec.LookPath("qemu-io")
	if err != nil {
		t.Fatalf("qemu-io not installed (make deps installs qemu-utils): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, path, "--image-opts",
		"driver=raw,file.driver=nbd,file.path="+sock+",file.export="+export, "-c", cmd).CombinedOutput()
	return string(out)
}

// TestHandoverOverNBD drives the seed call sequence with a real NBD client:
// qemu-io writes through the origin, the handover happens from control
// lines, and the old device answers EIO to qemu-io while the new one serves
// the old content. The live session's recording then replays in process.
func TestHandoverOverNBD(t *testing.T) {
	var rec bytes.Buffer
	d := startDriver(t, &rec)
	sock, srv := serve(t, d)

	if out := qemuIO(t, sock, "base", "write -P 0x41 0 64k"); !strings.Contains(out, "wrote 65536/65536") {
		t.Fatalf("write base: %s", out)
	}
	if out := qemuIO(t, sock, "snap1", "read -P 0 0 64k"); !strings.Contains(out, "read 65536/65536") {
		t.Fatalf("snap1 should still read zeros: %s", out)
	}
	if out := exec1(t, d, "dmsetup status snap1"); out != "0 131072 snapshot 144/16384 16\n" {
		t.Fatalf("status %q", out)
	}
	exec1(t, d, "dmsetup create snap2 --notable")
	exec1(t, d, `dmsetup load snap2 --table "0 131072 snapshot origin cow P 8"`)
	exec1(t, d, "dmsetup suspend snap1")
	exec1(t, d, "dmsetup resume snap2")
	exec1(t, d, "dmsetup resume snap1")
	if err := srv.AddExport(nbd.Export{Name: "snap2", Dev: d.Device("snap2"), PreferredBlock: 4096}); err != nil {
		t.Fatal(err)
	}
	if out := qemuIO(t, sock, "snap1", "read 0 4k"); !strings.Contains(out, "read failed: Input/output error") {
		t.Fatalf("read of the old table after handover: %s", out)
	}
	if out := qemuIO(t, sock, "snap1", "write -P 0x58 0 4k"); !strings.Contains(out, "write failed: Input/output error") {
		t.Fatalf("write to the old table after handover: %s", out)
	}
	if out := qemuIO(t, sock, "snap2", "read -P 0 0 64k"); !strings.Contains(out, "read 65536/65536") {
		t.Fatalf("snap2 must serve the old content: %s", out)
	}
	rep := d.Close()
	if !rep.Pass() {
		t.Fatalf("session failures: %v", rep.Failures)
	}
	r, err := record.Read(bytes.NewReader(rec.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rec.String(), `"kind":"arrival"`) {
		t.Fatal("no arrivals recorded")
	}
	rrep, diff, err := run.Replay(r, run.Options{})
	if err != nil || diff != "" || !rrep.Pass() {
		t.Fatalf("replay without the client: err %v pass %v\n%s", err, rrep.Pass(), diff)
	}
}

// TestSuspendedDeviceWaits: a request to a suspended device blocks until a
// control line resumes it, as in the kernel.
func TestSuspendedDeviceWaits(t *testing.T) {
	d := startDriver(t, nil)
	exec1(t, d, "dmsetup suspend snap1")
	dev := d.Device("snap1")
	done := make(chan error, 1)
	go func() {
		_, err := dev.ReadAt(make([]byte, 4096), 0)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("read of a suspended device completed: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	exec1(t, d, "dmsetup resume snap1")
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read did not complete after resume")
	}
	// A request still waiting when the driver closes fails, it does not leak.
	exec1(t, d, "dmsetup suspend snap1")
	go func() {
		_, err := dev.ReadAt(make([]byte, 4096), 0)
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	d.Close()
	select {
	case err := <-done:
		if block.Errno(err) != syscall.ESHUTDOWN {
			t.Fatalf("waiting read after close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("waiting read leaked past Close")
	}
}

func TestLiveRejectsIOLines(t *testing.T) {
	d := startDriver(t, nil)
	defer d.Close()
	if _, failure, _ := d.Exec("read snap1 0 4KiB"); !strings.Contains(failure, "not accepted in a live session") {
		t.Fatalf("failure %q", failure)
	}
	if _, failure, _ := d.Exec("# just a comment"); failure != "" {
		t.Fatalf("comment: %q", failure)
	}
	if out := exec1(t, d, "dmsetup ls"); out != "base\t(253:1)\nsnap1\t(253:0)\n" {
		t.Fatalf("ls %q", out)
	}
}
