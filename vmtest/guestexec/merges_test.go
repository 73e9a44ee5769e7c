package guestexec

import (
	"reflect"
	"testing"
)

func TestMergesRunning(t *testing.T) {
	for _, tc := range []struct {
		status string
		want   []string
	}{
		{"", nil},
		{"No devices found\n", nil},
		{"base: 0 16384 snapshot-merge 40/8192 16\nsnap: 0 16384 snapshot Invalid\n", []string{"base: 0 16384 snapshot-merge 40/8192 16"}},
		{"base: 0 16384 snapshot-merge 16/8192 16\n", nil},
		{"base: 0 16384 snapshot-merge Invalid\nm: 0 16384 snapshot-merge Merge failed\n", nil},
		{"s: 0 16384 snapshot 40/8192 16\no: 0 16384 snapshot-origin \n", nil},
	} {
		if got := mergesRunning(tc.status); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("mergesRunning(%q) = %q, want %q", tc.status, got, tc.want)
		}
	}
}
