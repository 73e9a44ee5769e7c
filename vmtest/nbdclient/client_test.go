package nbdclient

import (
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"snaplab/sim/block"
	"snaplab/vmtest/nbd"
)

func serve(t *testing.T) (string, *block.Mem) {
	t.Helper()
	disk, err := block.NewMem("d", 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	srv := nbd.NewServer()
	if err := srv.AddExport(nbd.Export{Name: "d", Dev: disk}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return "unix:" + sock, disk
}

func TestRoundTripConcurrent(t *testing.T) {
	addr, disk := serve(t)
	for _, o := range []Options{{}, {NoBlockSizes: true}, {ExportName: true}} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := Dial(ctx, addr, "d", o)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if c.Size != 8<<20 {
			t.Fatalf("%+v: size %d", o, c.Size)
		}
		if !o.NoBlockSizes && !o.ExportName && c.MinBlock != 512 {
			t.Fatalf("block sizes not negotiated: %d", c.MinBlock)
		}
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := bytes.Repeat([]byte{byte(i + 1)}, 4096)
				off := int64(i) * 4096
				if err := c.WriteAt(p, off, i%2 == 0); err != nil {
					t.Error(err)
					return
				}
				got := make([]byte, 4096)
				if err := c.ReadAt(got, off); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(got, p) {
					t.Errorf("%+v: read back differs at %d", o, off)
				}
			}()
		}
		wg.Wait()
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		// An error reply carries the errno; a read past the end is EINVAL.
		err = c.ReadAt(make([]byte, 512), 8<<20)
		if !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("read past the end: %v", err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if err := c.ReadAt(make([]byte, 512), 0); err == nil {
			t.Fatal("read after Close succeeded")
		}
	}
	got := make([]byte, 4096)
	disk.ReadAt(got, 3*4096)
	if got[0] != 4 {
		t.Fatalf("device holds %d at 12288, want 4", got[0])
	}
}

func TestAbortFailsWaiters(t *testing.T) {
	addr, _ := serve(t)
	c, err := Dial(context.Background(), addr, "d", Options{})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := c.SendRead(0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	c.Abort()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("reader did not stop after Abort")
	}
	<-ch // answered or failed, never left waiting
	if _, err := Dial(context.Background(), addr, "nosuch", Options{}); err == nil {
		t.Fatal("unknown export accepted")
	}
}
