package qemu

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"snaplab/vmtest/guest"
	"snaplab/vmtest/guest/proto"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestStartTMicrovm boots the microvm machine through StartT with a disk
// present at boot (microvm cannot hot-plug) and a console copy.
func TestStartTMicrovm(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	img, err := guest.Prepare(ctx, guest.WithLogf(t.Logf))
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "boot0.sock")
	nbd := exec.Command("nbdkit", "-f", "-U", sock, "memory", "16M")
	nbd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := nbd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nbd.Process.Kill(); nbd.Wait() })
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i > 1000 {
			t.Fatal("nbdkit socket never appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}

	var console syncBuffer
	vm := StartT(t, WithImage(img), WithMachine("microvm"), WithBootDisk("boot0", sock, ""), WithSerialOutput(&console))
	if !strings.Contains(strings.Join(vm.Cmdline(), " "), "tsc_early_khz=") {
		t.Errorf("microvm without tsc_early_khz: %v", vm.Cmdline())
	}
	if _, err := vm.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	a := vm.Agent()
	if _, err := a.Write(ctx, proto.WriteReq{Serial: "boot0", Off: 8192, Len: 4096, Pattern: "M", Direct: true}); err != nil {
		t.Fatal(err)
	}
	r, err := a.Read(ctx, proto.ReadReq{Serial: "boot0", Off: 8192, Len: 4096, Pattern: "M", Direct: true})
	if err != nil || !r.Verify.OK {
		t.Fatalf("read back: %+v %v", r.Verify, err)
	}
	if err := vm.AttachNBD(ctx, "late", sock, ""); err == nil || !strings.Contains(err.Error(), "microvm has no hot-plug") {
		t.Errorf("AttachNBD on microvm: %v", err)
	}
	if err := vm.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(console.String(), "snaplab-guest: agent on /dev/vport") {
		t.Errorf("console copy lacks the agent's banner:\n%s", console.String())
	}
}

func TestOptionErrors(t *testing.T) {
	for _, tc := range []struct {
		opt  Option
		want string
	}{
		{WithMachine("pc"), `machine "pc"`},
		{WithMemory(8), "memory 8 MiB"},
		{WithHotplugSlots(99), "hot-plug slots 99"},
		{WithBootDisk("1bad", "/s", ""), `disk serial "1bad"`},
		{WithBootDisk("this-serial-is-far-too-long", "/s", ""), "1-20 characters"},
		{WithSlowdown(0.5), "slowdown 0.5"},
		{WithImage(nil), "nil image"},
	} {
		err := tc.opt(defaultOptions())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err = %v, want %q", err, tc.want)
		}
	}
	if _, err := Start(context.Background()); err == nil || !strings.Contains(err.Error(), "no kernel or initramfs") {
		t.Errorf("Start without image: %v", err)
	}
}
