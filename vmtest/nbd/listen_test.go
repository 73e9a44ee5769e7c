package nbd

import "testing"

func TestExposed(t *testing.T) {
	for _, c := range []struct {
		addr string
		open bool
	}{
		{"10809", false},
		{":10809", false},
		{"127.0.0.1:10809", false},
		{"[::1]:10809", false},
		{"localhost:10809", false},
		{"/tmp/x.sock", false},
		{"unix:/tmp/x.sock", false},
		{"0.0.0.0:10809", true},
		{"[::]:10809", true},
		{"192.0.2.7:10809", true},
	} {
		got, err := Exposed(c.addr)
		if err != nil || got != c.open {
			t.Errorf("Exposed(%q) = %v, %v; want %v", c.addr, got, err, c.open)
		}
	}
	if _, err := Exposed("no-port"); err == nil {
		t.Error("an address without a port was accepted")
	}
}
