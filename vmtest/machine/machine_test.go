package machine

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestNBDCheck(t *testing.T) {
	for _, c := range []struct {
		n    NBD
		want string // "" = valid
	}{
		{NBD{Socket: "/s", Export: "d"}, ""},
		{NBD{Host: "10.0.0.1", Port: 10809}, ""},
		{NBD{Socket: "/s", Host: "h", Port: 1}, "both a unix socket and a TCP host"},
		{NBD{Host: "h"}, "want a unix socket, or a TCP host and port"},
		{NBD{Port: 1}, "want a unix socket"},
		{NBD{Host: "h", Port: 70000}, "want a unix socket"},
	} {
		err := c.n.Check()
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%+v: got %v, want %q", c.n, err, c.want)
		}
	}
	if s := (NBD{Host: "::1", Port: 5, Export: "x"}).String(); s != `NBD [::1]:5 export "x"` {
		t.Errorf("String: %s", s)
	}
}

// fakeQMP records commands and answers them; fail names a command that
// fails.
type fakeQMP struct {
	cmds   []string
	fail   string
	events []map[string]any
}

func (f *fakeQMP) hotplug(buses ...string) *Hotplug {
	h := &Hotplug{
		QMP: func(_ context.Context, ex string, args any) (json.RawMessage, error) {
			b, _ := json.Marshal(args)
			f.cmds = append(f.cmds, ex+" "+string(b))
			if ex == f.fail {
				return nil, errors.New("refused")
			}
			if ex == "device_del" {
				f.events = append(f.events, map[string]any{"device": args.(map[string]any)["id"]})
			}
			return json.RawMessage("{}"), nil
		},
		Mark: func() int { return len(f.events) },
		WaitEvent: func(ctx context.Context, from int, name string, match func(map[string]any) bool) error {
			for _, e := range f.events[from:] {
				if match(e) {
					return nil
				}
			}
			<-ctx.Done()
			return ctx.Err()
		},
		Scale: func(d time.Duration) time.Duration { return d },
	}
	h.SetBuses(buses)
	return h
}

func TestHotplug(t *testing.T) {
	ctx := context.Background()
	f := &fakeQMP{}
	h := f.hotplug("hp0", "hp1")
	if err := h.Plug(ctx, "origin", NBD{Host: "10.0.0.5", Port: 4000, Export: "origin"}, DiskOptions{BlockSize: 4096, NoDiscard: true}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`blockdev-add {"discard":"unmap","driver":"nbd","export":"origin","node-name":"nbd-origin","server":{"host":"10.0.0.5","port":"4000","type":"inet"}}`,
		`device_add {"bus":"hp0","discard":false,"drive":"nbd-origin","driver":"virtio-blk-pci","id":"origin","logical_block_size":4096,"physical_block_size":4096,"rerror":"report","serial":"origin","werror":"report"}`,
	}
	if strings.Join(f.cmds, "\n") != strings.Join(want, "\n") {
		t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(f.cmds, "\n"), strings.Join(want, "\n"))
	}
	if err := h.Plug(ctx, "origin", NBD{Socket: "/s"}, DiskOptions{}); err == nil || !strings.Contains(err.Error(), "already attached") {
		t.Errorf("a second origin: %v", err)
	}
	if err := h.Plug(ctx, "cow", NBD{Socket: "/s", Export: "cow"}, DiskOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := h.Plug(ctx, "third", NBD{Socket: "/s"}, DiskOptions{}); err == nil || !strings.Contains(err.Error(), "all 2 hot-plug slots are in use") {
		t.Errorf("a third disk on 2 slots: %v", err)
	}
	f.cmds = nil
	if err := h.Unplug(ctx, "origin"); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.cmds, "\n"); got != "device_del {\"id\":\"origin\"}\nblockdev-del {\"node-name\":\"nbd-origin\"}" {
		t.Errorf("unplug commands:\n%s", got)
	}
	if err := h.Unplug(ctx, "origin"); err == nil || !strings.Contains(err.Error(), "no such disk attached") {
		t.Errorf("a second unplug: %v", err)
	}
	// The freed slot is taken again; a failed device_add frees it and
	// deletes the node it added.
	f.fail = "device_add"
	f.cmds = nil
	if err := h.Plug(ctx, "d2", NBD{Socket: "/s"}, DiskOptions{}); err == nil || !strings.Contains(err.Error(), "attach d2: refused") {
		t.Errorf("failing device_add: %v", err)
	}
	if !strings.HasPrefix(f.cmds[len(f.cmds)-1], "blockdev-del") {
		t.Errorf("no blockdev-del after the failed device_add: %v", f.cmds)
	}
	f.fail = ""
	if err := h.Plug(ctx, "d2", NBD{Socket: "/s"}, DiskOptions{}); err != nil {
		t.Errorf("the slot was not freed: %v", err)
	}
	if err := h.Plug(ctx, "9x", NBD{Socket: "/s"}, DiskOptions{}); err == nil || !strings.Contains(err.Error(), `disk serial "9x"`) {
		t.Errorf("a bad serial: %v", err)
	}
}

func TestBlockIOErrorOf(t *testing.T) {
	got := BlockIOErrorOf(map[string]any{"device": "", "node-name": "nbd-snap1", "operation": "write", "action": "report", "reason": "Input/output error"})
	want := BlockIOError{Serial: "snap1", Node: "nbd-snap1", Operation: "write", Action: "report", Reason: "Input/output error"}
	if got != want {
		t.Errorf("got %+v", got)
	}
	if b := BlockIOErrorOf(map[string]any{"node-name": "libvirt-1-format"}); b.Serial != "" {
		t.Errorf("a node that is not ours: %+v", b)
	}
}
