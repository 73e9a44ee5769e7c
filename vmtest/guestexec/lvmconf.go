package guestexec

// LVMConf is /etc/lvm/lvm.conf in kernel-mode guests: Debian's lvm2 with
// no udev (libdm makes the /dev/mapper nodes and LVM the /dev/VG links),
// no daemons (no lvmpolld, no dmeventd monitoring, no event activation),
// metadata backups in /run, only the guest's virtio disks and loop devices
// scanned, and every command's full debug log (level 7, libdm's ioctls
// with their tables) written to LVMLog, overwritten by the next command.
const LVMConf = `config { checks = 1 }
devices {
	dir = "/dev"
	scan = [ "/dev" ]
	obtain_device_list_from_udev = 0
	external_device_info_source = "none"
	use_devicesfile = 0
	multipath_component_detection = 0
	md_component_detection = 0
	fw_raid_component_detection = 0
	filter = [ "a|^/dev/vd|", "a|^/dev/loop|", "r|.*|" ]
}
global {
	use_lvmpolld = 0
	event_activation = 0
	notify_dbus = 0
	locking_dir = "/run/lock/lvm"
	etc = "/etc"
}
activation {
	udev_sync = 0
	udev_rules = 0
	verify_udev_operations = 0
	monitoring = 0
	polling_interval = 1
}
backup {
	backup = 1
	backup_dir = "/run/lvm/backup"
	archive = 1
	archive_dir = "/run/lvm/archive"
}
log {
	file = "/run/lvm-command.log"
	level = 7
	overwrite = 1
	indent = 0
	command_names = 0
	prefix = ""
	activation = 1
}
`

// LVMLog is where the guest's lvm writes each command's debug log.
const LVMLog = "/run/lvm-command.log"
