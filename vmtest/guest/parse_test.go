package guest

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseModinfo(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		mod      string
		deps     []string
		err      string
	}{
		{"snapshot", "license=GPL\x00depends=dm-mod,dm-bufio\x00name=dm_snapshot\x00", "dm_snapshot", []string{"dm_mod", "dm_bufio"}, ""},
		{"no deps", "depends=\x00name=virtio_ring\x00vermagic=6.1\x00", "virtio_ring", nil, ""},
		{"padding", "\x00\x00name=x\x00\x00", "x", nil, ""},
		{"broken", "name=x\x00garbage\x00", "", nil, "has no '='"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name, deps, err := ParseModinfo([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || name != tc.mod || !reflect.DeepEqual(deps, tc.deps) {
				t.Fatalf("got %q %q %v, want %q %q", name, deps, err, tc.mod, tc.deps)
			}
		})
	}
}

func FuzzParseModinfo(f *testing.F) {
	f.Add([]byte("depends=dm-mod,dm-bufio\x00name=dm_snapshot\x00"))
	f.Add([]byte("=\x00,\x00depends=,,\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		name, deps, err := ParseModinfo(b)
		if err != nil {
			return
		}
		if strings.Contains(name, "-") {
			t.Fatalf("name %q not canonical", name)
		}
		for _, d := range deps {
			if d == "" || strings.Contains(d, "-") {
				t.Fatalf("dependency %q not canonical", d)
			}
		}
	})
}

func TestLoadOrder(t *testing.T) {
	idx := map[string]Module{
		"virtio_ring":           {Name: "virtio_ring"},
		"virtio":                {Name: "virtio", Depends: []string{"virtio_ring"}},
		"virtio_blk":            {Name: "virtio_blk", Depends: []string{"virtio", "virtio_ring"}},
		"virtio_pci_modern_dev": {Name: "virtio_pci_modern_dev"},
		"virtio_pci":            {Name: "virtio_pci", Depends: []string{"virtio_ring", "virtio_pci_modern_dev", "virtio"}},
		"dm_mod":                {Name: "dm_mod"},
		"dm_bufio":              {Name: "dm_bufio", Depends: []string{"dm_mod"}},
		"dm_snapshot":           {Name: "dm_snapshot", Depends: []string{"dm_mod", "dm_bufio"}},
		"loop_a":                {Name: "loop_a", Depends: []string{"loop_b"}},
		"loop_b":                {Name: "loop_b", Depends: []string{"loop_a"}},
		"broken":                {Name: "broken", Depends: []string{"missing"}},
	}
	names := func(ms []Module) []string {
		var out []string
		for _, m := range ms {
			out = append(out, m.Name)
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		wanted []string
		want   []string
		err    string
	}{
		{"snapshot", []string{"dm-snapshot"}, []string{"dm_mod", "dm_bufio", "dm_snapshot"}, ""},
		{"virtio", []string{"virtio_blk", "virtio_pci"}, []string{"virtio_ring", "virtio", "virtio_blk", "virtio_pci_modern_dev", "virtio_pci"}, ""},
		{"shared deps once", []string{"dm_bufio", "dm_snapshot", "dm_mod"}, []string{"dm_mod", "dm_bufio", "dm_snapshot"}, ""},
		{"unknown", []string{"nbd"}, nil, `module "nbd" not found`},
		{"missing dep", []string{"broken"}, nil, `"missing" (needed by broken)`},
		{"cycle", []string{"loop_a"}, nil, "cycle: loop_a -> loop_b -> loop_a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := LoadOrder(idx, tc.wanted)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(names(got), tc.want) {
				t.Fatalf("got %v %v, want %v", names(got), err, tc.want)
			}
		})
	}
}

func TestParseAptDepends(t *testing.T) {
	for _, tc := range []struct{ name, in, want, err string }{
		{"debian", "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n", "linux-image-6.1.0-56-amd64", ""},
		{"alternatives first", "x\n |Depends: <linux-image-virtual>\n  Depends: linux-image-6.1.0-9-cloud-amd64\n", "linux-image-6.1.0-9-cloud-amd64", ""},
		{"virtual only", "x\n  Depends: <linux-image>\n", "", "no \"Depends"},
		{"empty", "", "", "no \"Depends"},
		{"other pkg", "x\n  Depends: firmware-linux\n", "", "no \"Depends"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseAptDepends([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q %v, want %q", got, err, tc.want)
			}
		})
	}
}

func FuzzParseAptDepends(f *testing.F) {
	f.Add([]byte("linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pkg, err := ParseAptDepends(b)
		if err == nil && (!strings.HasPrefix(pkg, "linux-image-") || strings.ContainsAny(pkg, "*<> \t")) {
			t.Fatalf("accepted %q", pkg)
		}
	})
}

func TestParseLdd(t *testing.T) {
	out := "\tlinux-vdso.so.1 (0x00007ffd)\n" +
		"\tlibdevmapper.so.1.02.1 => /lib/x86_64-linux-gnu/libdevmapper.so.1.02.1 (0x00007f)\n" +
		"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n" +
		"\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n"
	got, err := ParseLdd([]byte(out))
	want := []string{"/lib/x86_64-linux-gnu/libdevmapper.so.1.02.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v %v, want %v", got, err, want)
	}
	if _, err := ParseLdd([]byte("\tlibfoo.so.1 => not found\n")); err == nil || !strings.Contains(err.Error(), "libfoo.so.1 not found") {
		t.Fatalf("missing library: err = %v", err)
	}
	if _, err := ParseLdd([]byte("what is this\n")); err == nil || !strings.Contains(err.Error(), "unrecognised") {
		t.Fatalf("garbage: err = %v", err)
	}
}

func FuzzParseLdd(f *testing.F) {
	f.Add([]byte("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x1)\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		paths, err := ParseLdd(b)
		if err != nil {
			return
		}
		for _, p := range paths {
			if !strings.HasPrefix(p, "/") {
				t.Fatalf("relative path %q accepted", p)
			}
		}
	})
}
