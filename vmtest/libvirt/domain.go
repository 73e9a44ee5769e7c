package libvirt

import (
	"fmt"
	"strconv"
	"strings"

	"libvirt.org/go/libvirtxml"

	"snaplab/vmtest/guest/proto"
	"snaplab/vmtest/machine"
	"snaplab/vmtest/qemu"
)

// domainSpec is everything the domain XML is made from.
type domainSpec struct {
	Name        string
	Description string
	Type        string // "kvm" or "qemu" (TCG)
	MemoryMB    int
	Kernel      string
	Initramfs   string
	Cmdline     string
	Slots       int // pcie-root-ports for hot-plug: pci.1 .. pci.Slots
	// The agent's virtio-serial port: QEMU connects to a unix socket on
	// the daemon's host, or to TCP host:port.
	AgentSocket string
	AgentHost   string
	AgentPort   int
	BootDisks   []bootDisk
}

type bootDisk struct {
	Serial string
	Src    machine.NBD
}

// hotplugBus is the QEMU id of the i-th (0-based) pcie-root-port the
// domain XML defines: libvirt names a controller of index N "pci.N".
func hotplugBus(i int) string { return "pci." + strconv.Itoa(i+1) }

// domainXML is the domain of spec: q35, direct kernel boot, one vCPU (the
// CPU model "maximum", as QEMU's -cpu max), ACPI (for the agent's
// poweroff), no USB, no balloon, no network; the serial console on a pty
// (the harness streams it through the daemon), the agent's virtio-serial
// channel, Slots empty pcie-root-ports, and each boot disk an NBD network
// disk with rerror/werror=report and discard=unmap. Every exit of the
// guest (poweroff, reboot on panic=-1, crash) destroys it.
func domainXML(s domainSpec) (string, error) {
	if s.Type != "kvm" && s.Type != "qemu" {
		return "", fmt.Errorf("domain type %q: want kvm or qemu", s.Type)
	}
	d := &libvirtxml.Domain{
		Type:        s.Type,
		Name:        s.Name,
		Description: s.Description,
		Memory:      &libvirtxml.DomainMemory{Value: uint(s.MemoryMB), Unit: "MiB"},
		VCPU:        &libvirtxml.DomainVCPU{Value: 1},
		OS: &libvirtxml.DomainOS{
			Type:    &libvirtxml.DomainOSType{Arch: "x86_64", Machine: "q35", Type: "hvm"},
			Kernel:  s.Kernel,
			Initrd:  s.Initramfs,
			Cmdline: s.Cmdline,
		},
		Features:   &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}},
		CPU:        &libvirtxml.DomainCPU{Mode: "maximum"},
		OnPoweroff: "destroy",
		OnReboot:   "destroy",
		OnCrash:    "destroy",
		Devices:    &libvirtxml.DomainDeviceList{},
	}
	if s.Type == "kvm" {
		d.CPU.Mode = "host-passthrough"
	}
	dev := d.Devices
	zero, slot := uint(0), uint(2)
	// The virtio-serial controller sits on pcie.0 as the QEMU backend's
	// does: left to libvirt it would take the first pcie-root-port, and
	// the hot-plug slots would be one short.
	dev.Controllers = append(dev.Controllers,
		libvirtxml.DomainController{Type: "usb", Model: "none"},
		libvirtxml.DomainController{Type: "virtio-serial", Index: &zero, Address: &libvirtxml.DomainAddress{
			PCI: &libvirtxml.DomainAddressPCI{Domain: &zero, Bus: &zero, Slot: &slot, Function: &zero}}})
	for i := 0; i < s.Slots; i++ {
		idx := uint(i + 1)
		dev.Controllers = append(dev.Controllers, libvirtxml.DomainController{Type: "pci", Model: "pcie-root-port", Index: &idx})
	}
	port := uint(0)
	dev.Serials = []libvirtxml.DomainSerial{{
		Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainSerialTarget{Port: &port},
	}}
	dev.Consoles = []libvirtxml.DomainConsole{{
		Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &port},
	}}
	ch := libvirtxml.DomainChannel{
		Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: proto.PortName}},
	}
	switch {
	case s.AgentSocket != "":
		ch.Source = &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Mode: "connect", Path: s.AgentSocket}}
	case s.AgentHost != "" && s.AgentPort > 0:
		ch.Source = &libvirtxml.DomainChardevSource{TCP: &libvirtxml.DomainChardevSourceTCP{Mode: "connect", Host: s.AgentHost, Service: strconv.Itoa(s.AgentPort)}}
		ch.Protocol = &libvirtxml.DomainChardevProtocol{Type: "raw"}
	default:
		return "", fmt.Errorf("domain %s: no agent channel (a unix socket or a TCP host and port)", s.Name)
	}
	dev.Channels = []libvirtxml.DomainChannel{ch}
	for i, b := range s.BootDisks {
		if err := machine.CheckSerial(b.Serial); err != nil {
			return "", err
		}
		if err := b.Src.Check(); err != nil {
			return "", fmt.Errorf("boot disk %s: %w", b.Serial, err)
		}
		host := libvirtxml.DomainDiskSourceHost{Transport: "unix", Socket: b.Src.Socket}
		if b.Src.Socket == "" {
			host = libvirtxml.DomainDiskSourceHost{Name: b.Src.Host, Port: strconv.Itoa(b.Src.Port)}
		}
		dev.Disks = append(dev.Disks, libvirtxml.DomainDisk{
			Device: "disk",
			Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw", ErrorPolicy: "report", RErrorPolicy: "report", Discard: "unmap"},
			Source: &libvirtxml.DomainDiskSource{Network: &libvirtxml.DomainDiskSourceNetwork{
				Protocol: "nbd", Name: b.Src.Export, Hosts: []libvirtxml.DomainDiskSourceHost{host}}},
			Target: &libvirtxml.DomainDiskTarget{Dev: "vd" + string(rune('a'+i)), Bus: "virtio"},
			Serial: b.Serial,
			Alias:  &libvirtxml.DomainAlias{Name: "ua-" + b.Serial},
		})
	}
	dev.MemBalloon = &libvirtxml.DomainMemBalloon{Model: "none"}
	out, err := d.Marshal()
	if err != nil {
		return "", fmt.Errorf("domain %s: XML: %w", s.Name, err)
	}
	return out, nil
}

// kernelCmdline is the guest's kernel command line: the same as the QEMU
// backend's on q35.
func kernelCmdline(extra []string) string {
	return strings.Join(append(qemu.KernelArgs(), extra...), " ")
}
