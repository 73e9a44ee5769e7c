// Package profile holds the simulator's kernel profiles: the behaviours in
// which the Linux releases snaplab checks against (Debian's 6.1 and 6.12,
// each also as a PREEMPT_RT build) differ, as seen on the real kernels
// (fixtures/kernel/RELEASE). A profile is chosen per run (run.Options.Kernel,
// a recording's header, the booted guest's kernel) and read by the
// device-mapper model; everything not listed here is the same on every
// release. docs/kernels.md lists each difference with the kernel commit.
package profile

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
)

// Profile is one release's behaviour where releases differ.
type Profile struct {
	// Name is the release: "6.1" or "6.12".
	Name string
	// NoDeviceErrno is what dm_get_device returns for a path that names
	// no device (a table's origin or COW): ENODEV on 6.1, ENOENT on 6.12,
	// where the path goes through lookup_bdev's error unchanged.
	NoDeviceErrno syscall.Errno
	// LinearRemapsEmptyFlush: 6.1's linear target moves the empty flush
	// dm core sends it to the target's start, so a failed flush is logged
	// at that sector; 6.12 leaves an empty bio's sector alone (0).
	LinearRemapsEmptyFlush bool
	// SameDevicePutTwice: 6.12's snapshot constructor, refusing a COW that
	// is the origin device, releases that one table device twice: the
	// second dm_put_device finds it gone ("device ... not in table devices
	// list", naming freed memory) and the table's destruction then reports
	// the reference it still holds ("dm_put_device call missing").
	SameDevicePutTwice bool
}

// Profiles are the releases' profiles, oldest first.
var Profiles = []Profile{
	{Name: "6.1", NoDeviceErrno: syscall.ENODEV, LinearRemapsEmptyFlush: true},
	{Name: "6.12", NoDeviceErrno: syscall.ENOENT, SameDevicePutTwice: true},
}

// Default is the profile of a run that names none: 6.1, the kernel the
// library's expectations were first written against.
var Default = Profiles[0]

// Names lists the profiles' names.
func Names() []string {
	var out []string
	for _, p := range Profiles {
		out = append(out, p.Name)
	}
	return out
}

// Lookup returns the profile named name: a profile's name, or a release of
// the kernel matrix ("6.12-rt" is 6.12: PREEMPT_RT changes timing, not
// these behaviours). "" is Default.
func Lookup(name string) (Profile, error) {
	if name == "" {
		return Default, nil
	}
	base := strings.TrimSuffix(name, "-rt")
	for _, p := range Profiles {
		if p.Name == base {
			return p, nil
		}
	}
	return Profile{}, fmt.Errorf("kernel profile %q: want one of %s", name, strings.Join(Names(), ", "))
}

// NameOf is the profile name of a kernel option ("6.12-rt" is 6.12, ""
// is Default's); an unknown name is returned as it is, for Lookup's error.
func NameOf(kernel string) string {
	if p, err := Lookup(kernel); err == nil {
		return p.Name
	}
	return kernel
}

// ForVersion picks the profile of a kernel by its release string (uname
// -r, e.g. 6.12.117+deb12-amd64 or a user's 6.9.0-mine): the newest
// profile not newer than it, else the oldest.
func ForVersion(release string) Profile {
	maj, min, ok := majorMinor(release)
	best := Profiles[0]
	if !ok {
		return best
	}
	for _, p := range Profiles {
		pm, pn, _ := majorMinor(p.Name)
		if pm < maj || pm == maj && pn <= min {
			best = p
		}
	}
	return best
}

func majorMinor(s string) (int, int, bool) {
	a, rest, ok := strings.Cut(s, ".")
	if !ok {
		return 0, 0, false
	}
	end := 0
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	maj, err1 := strconv.Atoi(a)
	min, err2 := strconv.Atoi(rest[:end])
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return maj, min, true
}
