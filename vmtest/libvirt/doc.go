// Package libvirt runs snaplab's test guests as domains of a libvirt
// daemon, local or remote, through github.com/digitalocean/go-libvirt (a
// pure-Go client of libvirt's RPC protocol; libvirt's cgo bindings are not
// needed). A Guest is a machine.Machine like vmtest/qemu's VM: the guest
// executors run on either without knowing which.
//
// # What a guest is
//
// A persistent domain named snaplab-HOST-PID-N, defined from the same
// settings as the QEMU backend's guest (domain.go; libvirtxml writes the
// XML): q35, one vCPU (CPU model "maximum" under TCG, host-passthrough
// under KVM), direct kernel boot of the guest image (vmtest/guest) with the
// QEMU backend's kernel command line, ACPI, no USB, balloon or network,
// every exit (poweroff, the reboot of panic=-1, a crash) ending it. Its
// channels:
//
//   - the serial console on a pty, streamed through the daemon
//     (virDomainOpenConsole) into memory (Console) and a file
//     (ConsoleFile); the domain starts paused so the stream misses nothing;
//   - QMP through libvirt: QEMUDomainMonitorCommand for commands (QMP) and
//     the QEMU monitor events (SubscribeQEMUEvents: BLOCK_IO_ERROR,
//     DEVICE_DELETED, ...) plus the domain's lifecycle events
//     ("libvirt:started", "libvirt:stopped", ...) in one event log (Events,
//     WaitEvent, BlockIOErrors);
//   - the agent's virtio-serial port (proto.PortName): QEMU connects to a
//     unix socket this process listens on when the daemon is on this host,
//     or to TCP on the WithListen address when it is not.
//
// Disks are hot-plugged through QMP (machine.Hotplug), with the QEMU
// backend's device properties to the letter (serial, rerror/werror=report,
// discard, block sizes), on the domain's pcie-root-ports pci.1..pci.N;
// so a scenario's results and recording are the same on either backend.
// libvirt 9.0's disk XML cannot turn a hot-plugged virtio-blk disk's
// discard feature off, which NoDiscard needs. Disks present at boot
// (WithBootDisk) are libvirt's own NBD network disks in the domain XML.
//
// # Accelerator
//
// The domain type is kvm or qemu (TCG). For a daemon on this host it is
// the QEMU backend's choice (qemu.ChooseAccel: auto uses KVM only once a
// probe proved it boots the guest, the verdict cached). A remote host's
// KVM is not probed: auto means TCG there; WithAccel(kvm) asks for it.
//
// # Options (defaults)
//
//	WithURI(uri)            the daemon (required): qemu:///system[?socket=PATH],
//	                        qemu+tcp://HOST[:PORT]/system, qemu+ssh://USER@HOST/system,
//	                        qemu+tls://HOST/system
//	WithImage(img)          kernel + initramfs (required); on a remote host they
//	                        must be at the same paths
//	WithAccel(a, source)    auto, kvm or tcg (auto)
//	WithListen(host)        the address the daemon's host reaches this one on
//	                        (required for a remote daemon): the agent channel
//	                        listens there, and NBD servers should too
//	WithMemory(256)         MiB
//	WithHotplugSlots(8)     pcie-root-ports for Plug
//	WithBootDisk(serial, src)  an NBD disk present at boot
//	WithAppend(args...)     kernel command line additions
//	WithConsoleLog(path)    the whole console (default $SNAPLAB_ARTIFACTS/console-NAME.log,
//	                        none without SNAPLAB_ARTIFACTS)
//	WithName(name)          the domain's name (snaplab-HOST-PID-N)
//	WithCallTimeout(15s)    the deadline of every call to the daemon
//	WithSlowdown(f)         override the timeout factor (1 under KVM, 10 under TCG)
//	WithNoticeOutput(w)     where the leftover-removal line goes (os.Stderr)
//	WithLogf(f)             harness messages
//
// # The connection
//
// go-libvirt's calls wait forever if the daemon stops answering, so every
// call has a deadline (WithCallTimeout) and fails at once when the
// connection drops. A dropped connection is made again for 5 s, with the
// event subscriptions and the console stream made again on the new one
// (events in the gap are lost; a call cut off by the drop is not
// repeated). If that fails, every later call fails at once with a
// *LostError naming the URI; the guest's agent channel, which does not go
// through the daemon, keeps working.
//
// # Cleanup
//
// Close powers the guest off through its agent, waits for libvirt to say
// it stopped, and destroys (if need be) and undefines it; Kill destroys and
// undefines at once. Both run on every exit path of Start. A process
// killed before it could clean up leaves its domains defined; the next
// Start on that daemon from this host removes every snaplab-HOST-PID-N
// domain whose process is gone (RemoveLeftovers). Domains lists a daemon's
// domains, for checks.
package libvirt
