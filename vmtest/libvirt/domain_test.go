package libvirt

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"snaplab/vmtest/machine"
)

var update = flag.Bool("update", false, "rewrite testdata/*.xml from the code")

func TestDomainXML(t *testing.T) {
	base := domainSpec{Name: "snaplab-host-42-1", Description: "test", Type: "qemu", MemoryMB: 256,
		Kernel: "/cache/vmlinux", Initramfs: "/cache/initramfs.cpio", Cmdline: kernelCmdline([]string{"snaplab.x=1"}), Slots: 2}
	local := base
	local.AgentSocket = "/tmp/snaplab-lv-1/agent.sock"
	remote := base
	remote.Type = "kvm"
	remote.AgentHost, remote.AgentPort = "10.0.0.5", 40123
	remote.BootDisks = []bootDisk{
		{"origin", machine.NBD{Host: "10.0.0.5", Port: 40124, Export: "origin"}},
		{"cow", machine.NBD{Socket: "/tmp/nbd.sock", Export: "cow"}},
	}
	for name, spec := range map[string]domainSpec{"local-tcg": local, "remote-kvm-bootdisks": remote} {
		t.Run(name, func(t *testing.T) {
			got, err := domainXML(spec)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", name+".xml")
			if *update {
				if err := os.WriteFile(path, []byte(got+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if got+"\n" != string(want) {
				t.Errorf("domain XML differs from %s (go test -run TestDomainXML -update, then review):\n%s", path, got)
			}
		})
	}
}

func TestDomainXMLRefuses(t *testing.T) {
	for _, c := range []struct {
		spec domainSpec
		want string
	}{
		{domainSpec{Name: "d", Type: "xen", AgentSocket: "/s"}, `domain type "xen": want kvm or qemu`},
		{domainSpec{Name: "d", Type: "qemu"}, "domain d: no agent channel"},
		{domainSpec{Name: "d", Type: "qemu", AgentSocket: "/s", BootDisks: []bootDisk{{"9bad", machine.NBD{Socket: "/n"}}}}, `disk serial "9bad"`},
		{domainSpec{Name: "d", Type: "qemu", AgentSocket: "/s", BootDisks: []bootDisk{{"d0", machine.NBD{Host: "h"}}}}, "boot disk d0: NBD source"},
	} {
		if _, err := domainXML(c.spec); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want %q", c.spec, err, c.want)
		}
	}
}

func TestIsLocal(t *testing.T) {
	for uri, want := range map[string]bool{
		"qemu:///system": true, "qemu:///system?socket=/tmp/x/libvirt-sock": true,
		"qemu+tcp://127.0.0.1:16509/system": true, "qemu+ssh://root@localhost/system": true,
		"qemu+tcp://10.1.2.3/system": false, "qemu+ssh://user@build-7/system": false, "qemu+tls://[::1]/system": true,
	} {
		got, err := IsLocal(uri)
		if err != nil || got != want {
			t.Errorf("IsLocal(%q) = %v, %v; want %v", uri, got, err, want)
		}
	}
	for uri, want := range map[string]string{
		"xen:///system":        "want a qemu driver URI",
		"qemu+tcp:///system":   "tcp needs a host",
		"qemu+ext://h/system":  `transport "ext"`,
		"qemu+tcp://h\x7f/sys": "libvirt URI",
	} {
		if _, err := IsLocal(uri); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("IsLocal(%q): %v, want %q", uri, err, want)
		}
	}
}

func TestOwnerPid(t *testing.T) {
	h := hostName()
	for name, want := range map[string]int{
		"snaplab-" + h + "-1234-7": 1234,
		"snaplab-" + h + "-1234":   0,
		"snaplab-other-1234-7":     0,
		"snaplab-" + h + "-x-7":    0,
		"mydomain":                 0,
	} {
		pid, ok := ownerPid(name)
		if (want != 0) != ok || pid != want && ok {
			t.Errorf("ownerPid(%q) = %d, %v; want %d", name, pid, ok, want)
		}
	}
}
