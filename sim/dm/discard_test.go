package dm

import (
	"errors"
	"syscall"
	"testing"
)

// TestSupportsDiscard: a device takes discards only when every target of
// its live table does (Linux 6.1's dm_table_supports_discards); a discard
// to any other fails with EOPNOTSUPP, one to a device that takes them
// reaches its disk.
func TestSupportsDiscard(t *testing.T) {
	c := newCtl(t)
	for _, tc := range []struct {
		name, table string // "" table: created with --notable
		want        bool
	}{
		{"lin", "0 1024 linear vda 0", true},
		{"two", "0 8 linear vda 0\n8 8 linear vda 64", true},
		{"stacked", "0 512 linear lin 8", true},
		{"err", "0 8 error", false},
		{"zero", "0 8 zero", false},
		{"mixed", "0 8 linear vda 0\n8 8 zero", false},
		{"over-zero", "0 8 linear zero 0", false},
		{"none", "", false},
	} {
		args := []string{"create", tc.name, "--table", tc.table}
		if tc.table == "" {
			args = []string{"create", tc.name, "--notable"}
		}
		if r := c.Dmsetup(args); r.Exit != 0 {
			t.Fatalf("%s: dmsetup %q: %s", tc.name, args, r.Stderr)
		}
		md := c.Device(tc.name)
		if got := SupportsDiscard(md); got != tc.want {
			t.Errorf("%s (%q): SupportsDiscard %v, want %v", tc.name, tc.table, got, tc.want)
		}
		var got error
		ended := false
		b := NewBio(OpDiscard, 0, nil, false, func(err error) { got, ended = err, true })
		b.Len = 4096
		md.Submit(b)
		c.W.Run()
		if !ended {
			t.Fatalf("%s: the discard never ended", tc.name)
		}
		if tc.want && got != nil {
			t.Errorf("%s: discard failed: %v", tc.name, got)
		}
		if !tc.want && !errors.Is(got, syscall.EOPNOTSUPP) {
			t.Errorf("%s: discard ended with %v, want EOPNOTSUPP", tc.name, got)
		}
	}
	if !SupportsDiscard(c.Disks()[0]) {
		t.Error("a disk does not take discards")
	}
}
