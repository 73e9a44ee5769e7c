#!/usr/bin/env bash
# Installs everything snaplab's suites need on a fresh Debian 12 machine:
# Debian packages (as root through apt-get, skipped when already present)
# and the Go modules in go.mod. Idempotent; called by `make deps`.
set -euo pipefail

APT_PACKAGES=(
  qemu-system-x86   # guests for the vm and kernel executors
  qemu-utils        # qemu-io, qemu-img, qemu-nbd: NBD conformance clients
  nbdkit            # reference NBD server for benchmarks
  libnbd-bin        # nbdinfo, nbdcopy
  python3-libnbd    # nbdsh
  fio               # NBD workloads (ioengine=nbd)
  busybox-static    # tools inside test guests
  dmsetup           # real dmsetup shipped into kernel-executor guests
  lvm2              # real LVM shipped into kernel-executor guests (scenarios/lvm)
  bash coreutils mount util-linux grep   # exported scripts' tools, shipped into kernel-executor guests
  xz-utils          # extracting vmlinux from Debian's vmlinuz
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients   # the libvirt backend's test daemon (vmtest/libvirtd), virsh
  zsh               # the completion script is tested in zsh as well as bash
  chromium          # headless browser: the timeline's browser check (scenarios/cli/show_test.go), make screenshot
  ca-certificates
)

# The guest images resolve the kernel with apt-cache: it needs package lists.
need_update=0
apt-cache show linux-image-amd64 >/dev/null 2>&1 || need_update=1

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})) || ((need_update)); then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -o DPkg::Lock::Timeout=600 -qq
  if ((${#missing[@]})); then
    echo "deps: apt-get install ${missing[*]}"
    apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "${missing[@]}" >/dev/null
  fi
fi

# libvirtd's QEMU driver looks its default user and group (both
# libvirt-qemu) up at start even when qemu.conf says root
# (libvirt-daemon-system, which would create them, brings systemd units and
# a system daemon the suites do not want).
if ! getent group libvirt-qemu >/dev/null || ! getent passwd libvirt-qemu >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: need root to create the libvirt-qemu user and group" >&2
    exit 1
  fi
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  getent passwd libvirt-qemu >/dev/null ||
    useradd --system --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin -g libvirt-qemu libvirt-qemu
fi

go mod download

# Debian's kernel and the guest images (cached; skipped when up to date).
go run ./cmd/snaplab image >/dev/null
