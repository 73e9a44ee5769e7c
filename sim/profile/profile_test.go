package profile

import "testing"

func TestLookupAndForVersion(t *testing.T) {
	for _, tc := range []struct{ name, want string }{{"", "6.1"}, {"6.1", "6.1"}, {"6.12", "6.12"}, {"6.1-rt", "6.1"}, {"6.12-rt", "6.12"}} {
		p, err := Lookup(tc.name)
		if err != nil || p.Name != tc.want {
			t.Errorf("Lookup(%q) = %v %v, want %s", tc.name, p.Name, err, tc.want)
		}
	}
	for _, tc := range [][2]string{{"", "6.1"}, {"6.12-rt", "6.12"}, {"5.10", "5.10"}} {
		if got := NameOf(tc[0]); got != tc[1] {
			t.Errorf("NameOf(%q) = %q, want %q", tc[0], got, tc[1])
		}
	}
	if _, err := Lookup("5.10"); err == nil {
		t.Error("Lookup(5.10) succeeded")
	}
	for _, tc := range []struct{ release, want string }{
		{"6.1.0-57-amd64", "6.1"}, {"6.12.117+deb12-rt-amd64", "6.12"}, {"6.9.0-mine", "6.1"},
		{"6.13.0", "6.12"}, {"7.0.1", "6.12"}, {"5.10.0", "6.1"}, {"garbage", "6.1"}, {"6.", "6.1"},
	} {
		if got := ForVersion(tc.release).Name; got != tc.want {
			t.Errorf("ForVersion(%q) = %s, want %s", tc.release, got, tc.want)
		}
	}
}
