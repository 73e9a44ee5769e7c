package live

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"snaplab/vmtest/nbd"
	"snaplab/vmtest/nbdclient"
)

// TestSerialExportQueuesOnSuspend: on an export served one request at a
// time (nbd.Export.Serial), requests pipelined to a suspended device all
// reach it and queue there, as on a suspended dm device, instead of
// waiting on the wire behind the first one (the vm executor waits for a
// guest's queued I/O to arrive); after the resume they all complete, and
// the connection goes on serving.
func TestSerialExportQueuesOnSuspend(t *testing.T) {
	d := startDriver(t, nil)
	defer d.Close()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := nbd.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := nbd.NewServer()
	if err := srv.AddExport(nbd.Export{Name: "base", Dev: d.Device("base"), Serial: true}); err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := nbdclient.Dial(ctx, "unix:"+sock, "base", nbdclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a := bytes.Repeat([]byte{0xa5}, 4096)
	if err := c.WriteAt(a, 0, false); err != nil { // served one at a time so far
		t.Fatal(err)
	}
	exec1(t, d, "dmsetup suspend base")
	before := d.Arrivals("base")
	w := make(chan error, 1)
	go func() { w <- c.WriteAt(bytes.Repeat([]byte{0x5a}, 4096), 64<<10, false) }()
	time.Sleep(50 * time.Millisecond) // the write first
	r, err := c.SendRead(0, 4096)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for d.Arrivals("base") < before+2 {
		if time.Now().After(deadline) {
			d.Exec("dmsetup resume base") // let the client close
			t.Fatalf("%d of 2 requests reached the suspended device: the read waits on the wire behind the queued write", d.Arrivals("base")-before)
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-w:
		t.Fatalf("the write completed on a suspended device: %v", err)
	case err := <-r:
		t.Fatalf("the read completed on a suspended device: %v", err)
	default:
	}
	exec1(t, d, "dmsetup resume base")
	for _, ch := range []<-chan error{w, r} {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a queued request did not complete after the resume")
		}
	}
	got := make([]byte, 4096)
	if err := c.ReadAt(got, 64<<10); err != nil || got[0] != 0x5a {
		t.Fatalf("after the resume: %v, byte %#x", err, got[0])
	}
}
