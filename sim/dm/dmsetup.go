package dm

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"snaplab/sim/world"
)

// Result is what a dmsetup invocation prints and returns.
type Result struct {
	Stdout string
	Stderr string
	Exit   int
	// Stuck is set when the command failed because the simulated world
	// went quiet while it waited (a hang in the kernel): a simulator
	// failure that no scenario may expect, also printed on Stderr.
	Stuck *world.ErrStuck `json:"-"`
}

func (r *Result) out(format string, a ...any) { r.Stdout += fmt.Sprintf(format, a...) }
func (r *Result) err(format string, a ...any) { r.Stderr += fmt.Sprintf(format, a...) }

func (r *Result) fail(err error) {
	if st := (*world.ErrStuck)(nil); errors.As(err, &st) && r.Stuck == nil {
		r.Stuck = st
	}
	var nf *NotFoundError
	switch {
	case errors.As(err, &nf):
		r.err("%s\n", nf.Error())
	default:
		r.err("%s\n", err.Error())
	}
	r.err("Command failed.\n")
	r.Exit = 1
}

func usage(r *Result, msg string) *Result {
	r.err("%s\n", msg)
	r.err("Command failed.\n")
	r.Exit = 1
	return r
}

// Args is a dmsetup command line taken apart as dmsetup's option parser
// does: the command, its operands, and the options snaplab models.
type Args struct {
	Cmd      string   // create, load, suspend, status, ...
	Operands []string // after the command: the device name, a message's sector and text, ...
	// Table is --table's text; HaveTable says --table was given.
	Table     string
	HaveTable bool
	NoTable   bool // --notable
	UUID      string
	Inactive  bool // --inactive
	Force     bool // -f, --force
	ReadOnly  bool // -r, --readonly
	NoFlush   bool // --noflush
	Target    string
}

// ParseArgs takes a dmsetup command line (argv without the leading
// "dmsetup") apart. Its error is what dmsetup prints for the line.
func ParseArgs(argv []string) (*Args, error) {
	a := &Args{}
	var pos []string
	for i := 0; i < len(argv); i++ {
		w := argv[i]
		val := func() (string, bool) {
			if k, v, ok := strings.Cut(w, "="); ok && strings.HasPrefix(k, "--") {
				return v, true
			}
			if i+1 < len(argv) {
				i++
				return argv[i], true
			}
			return "", false
		}
		name, _, _ := strings.Cut(w, "=")
		switch name {
		case "--table":
			v, ok := val()
			if !ok {
				return nil, errors.New("dmsetup: option '--table' requires an argument")
			}
			a.Table, a.HaveTable = v, true
		case "--notable":
			a.NoTable = true
		case "-u", "--uuid":
			v, ok := val()
			if !ok {
				return nil, errors.New("dmsetup: option '--uuid' requires an argument")
			}
			a.UUID = v
		case "--inactive":
			a.Inactive = true
		case "-f", "--force":
			a.Force = true
		case "-r", "--readonly":
			a.ReadOnly = true
		case "--nolockfs", "--noudevsync", "--noudevrules", "--verifyudev", "--noflush", "-v", "--verbose", "--nameprefixes":
			if name == "--noflush" {
				a.NoFlush = true
			}
		case "--target":
			v, ok := val()
			if !ok {
				return nil, errors.New("dmsetup: option '--target' requires an argument")
			}
			a.Target = v
		default:
			if strings.HasPrefix(w, "-") && len(w) > 1 {
				return nil, fmt.Errorf("dmsetup: unrecognized option '%s'", w)
			}
			pos = append(pos, w)
		}
	}
	if len(pos) == 0 {
		//lint:ignore ST1005 dmsetup's own words, printed as they are
		return nil, errors.New("Usage: dmsetup [--version] [-h|--help [-c|-C|--columns]] [...] <command> [args]")
	}
	a.Cmd, a.Operands = pos[0], pos[1:]
	return a, nil
}

// Dmsetup runs a dmsetup command line (argv without the leading "dmsetup")
// against the control plane and returns what dmsetup prints, as Debian 12's
// dmsetup 1.02.185 does (udev disabled).
func (c *Control) Dmsetup(argv []string) *Result {
	r := &Result{}
	opts, err := ParseArgs(argv)
	if err != nil {
		return usage(r, err.Error())
	}
	cmd, args := opts.Cmd, opts.Operands
	switch cmd {
	case "create":
		if len(args) != 1 {
			return usage(r, "Please provide a name for the new device.")
		}
		if opts.NoTable && opts.HaveTable {
			r.err("--table and --notable are incompatible.\nCouldn't process command line.\n")
			r.Exit = 1
			return r
		}
		if opts.HaveTable {
			if _, err := ParseTable(opts.Table); err != nil {
				r.fail(err)
				return r
			}
		}
		md, err := c.Create(args[0], opts.UUID, opts.ReadOnly)
		if err != nil {
			r.fail(err)
			return r
		}
		if opts.NoTable || strings.TrimSpace(opts.Table) == "" {
			return r
		}
		// libdm's create-and-load addresses the reload and resume by the
		// new device's number too, so their errors name it.
		withNum := func(err error) error {
			var ie *IoctlError
			if errors.As(err, &ie) {
				n := md.dev
				ie.Num = &n
			}
			return err
		}
		if err := c.Load(md.name, opts.Table); err != nil {
			c.revert(md.name, r, withNum(err))
			return r
		}
		if err := c.Resume(md.name); err != nil {
			c.revert(md.name, r, withNum(err))
			return r
		}
	case "load", "reload":
		if len(args) != 1 {
			return usage(r, "Please specify device.")
		}
		if opts.NoTable {
			return usage(r, "--notable only available when creating new device.")
		}
		if !opts.HaveTable {
			return usage(r, "dmsetup load: give --table (snaplab scenarios have no stdin)")
		}
		if err := c.Load(args[0], opts.Table); err != nil {
			r.fail(err)
		}
	case "suspend", "resume", "clear", "remove":
		if len(args) == 0 {
			return usage(r, "Please specify device.")
		}
		for _, n := range args {
			var err error
			switch cmd {
			case "suspend":
				err = c.Suspend(n)
			case "resume":
				err = c.Resume(n)
			case "clear":
				err = c.Clear(n)
			case "remove":
				if opts.Force {
					err = c.RemoveForce(n, r)
				} else {
					err = c.Remove(n)
				}
			}
			if err != nil {
				r.fail(err)
				return r
			}
		}
	case "status", "table":
		return c.statusOrTable(r, cmd, args, opts.Inactive, opts.Target)
	case "info":
		return c.info(r, args)
	case "ls":
		if len(c.devs) == 0 {
			r.out("No devices found\n")
			return r
		}
		for _, md := range c.devs {
			if opts.Target == "" {
				r.out("%s\t(%d:%d)\n", md.name, md.dev.Major, md.dev.Minor)
				continue
			}
			// ls --target goes through _status and _display_dev.
			if md.live != nil {
				for _, ti := range md.live.Targets {
					if ti.Type.Name == opts.Target {
						r.out("%s\t(%d, %d)\n", md.name, md.dev.Major, md.dev.Minor)
						break
					}
				}
			}
		}
	case "message":
		if len(args) < 3 {
			return usage(r, "Please specify device, sector and message.")
		}
		sector, err := strconv.ParseUint(args[1], 10, 64)
		if err != nil {
			return usage(r, fmt.Sprintf("Invalid sector %q.", args[1]))
		}
		out, err := c.Message(args[0], sector, args[2:])
		if err != nil {
			r.fail(err)
			return r
		}
		if out != "" {
			r.out("%s\n", out)
		}
	case "targets":
		for _, tt := range c.TargetTypes() {
			r.out("%-16s v%d.%d.%d\n", tt.Name, tt.Version[0], tt.Version[1], tt.Version[2])
		}
	case "version":
		r.out("Library version:   1.02.185 (2022-05-18)\nDriver version:    4.47.0\n")
	default:
		return usage(r, fmt.Sprintf("Unknown command: %s", cmd))
	}
	return r
}

// revert undoes a failed create, as libdm's _create_and_load_v4 does, and
// reports cause on r, with the removal's failure if it failed too.
func (c *Control) revert(name string, r *Result, cause error) {
	if md := c.Device(name); md != nil {
		if err := c.Remove(name); err != nil {
			cause = join(cause, err)
		}
	}
	r.fail(cause)
}

// RemoveForce is `dmsetup remove --force`: the live table is replaced by an
// error target of the same size and resumed (errors are printed to r but do
// not stop it), then the device is removed. An open device stays, with the
// error table live.
func (c *Control) RemoveForce(name string, r *Result) error {
	md, err := c.get(name, "remove")
	if err != nil {
		return err
	}
	size := uint64(0)
	if md.live != nil {
		size = md.live.Size()
	}
	report := func(err error) {
		if err != nil && r != nil {
			r.err("%s\n", err.Error())
		}
	}
	if err := c.Load(name, fmt.Sprintf("0 %d error", size)); err != nil {
		report(err)
	} else if err := c.Resume(name); err != nil {
		report(err)
		report(c.Clear(name))
	}
	return c.Remove(name)
}

func (c *Control) selected(args []string, ioctl string) ([]*MappedDevice, error) {
	if len(args) == 0 {
		return c.devs, nil
	}
	var out []*MappedDevice
	for _, n := range args {
		md := c.Device(n)
		if md == nil {
			if ioctl == "table" {
				return out, &IoctlError{Ioctl: "table", Dev: n, Errno: syscall.ENXIO}
			}
			return out, &NotFoundError{Name: n}
		}
		out = append(out, md)
	}
	return out, nil
}

func (c *Control) statusOrTable(r *Result, cmd string, args []string, inactive bool, target string) *Result {
	devs, err := c.selected(args, cmd)
	if len(args) == 0 && len(c.devs) == 0 {
		r.out("No devices found\n")
		return r
	}
	prefix := len(args) != 1
	for _, md := range devs {
		var lines []string
		if cmd == "status" {
			lines = md.StatusLines(inactive)
		} else {
			lines = md.TableLines(inactive)
		}
		if target != "" {
			var keep []string
			for _, l := range lines {
				if f := strings.Fields(l); len(f) > 2 && f[2] == target {
					keep = append(keep, l)
				}
			}
			if len(keep) == 0 {
				continue
			}
			lines = keep
		}
		if len(lines) == 0 {
			lines = []string{""}
		}
		for _, l := range lines {
			if prefix {
				r.out("%s: ", md.name)
			}
			r.out("%s\n", l)
		}
	}
	if err != nil {
		r.fail(err)
	}
	return r
}

func (c *Control) info(r *Result, args []string) *Result {
	devs, err := c.selected(args, "info")
	if len(args) == 0 && len(c.devs) == 0 {
		r.out("No devices found\n")
	}
	for _, md := range devs {
		state := "ACTIVE"
		if md.suspended {
			state = "SUSPENDED"
		}
		if md.readOnly {
			state += " (READ-ONLY)"
		}
		if !md.everLoaded {
			// No gendisk yet: libdm cannot read the read-ahead.
			r.err("/dev/mapper/%s: open failed: No such file or directory\n", md.name)
		}
		r.out("Name:              %s\n", md.name)
		r.out("State:             %s\n", state)
		if md.everLoaded {
			r.out("Read Ahead:        256\n")
		}
		tables := "None"
		switch {
		case md.live != nil && md.inactive != nil:
			tables = "LIVE & INACTIVE"
		case md.live != nil:
			tables = "LIVE"
		case md.inactive != nil:
			tables = "INACTIVE"
		}
		r.out("Tables present:    %s\n", tables)
		r.out("Open count:        %d\n", c.openCount(md))
		r.out("Event number:      %d\n", md.eventNr)
		r.out("Major, minor:      %d, %d\n", md.dev.Major, md.dev.Minor)
		n := 0
		if md.live != nil {
			n = len(md.live.Targets)
		}
		r.out("Number of targets: %d\n", n)
		if md.uuid != "" {
			r.out("UUID: %s\n", md.uuid)
		}
		r.out("\n")
	}
	if err != nil {
		r.fail(err)
	}
	return r
}
