package exstore

import (
	"errors"
	"syscall"
	"testing"
)

func TestMergeReferenceNumbers(t *testing.T) {
	// snapshot.rst: "281688/2097152 1104" during a merge, chunk 8 (E=256):
	// areas 0..136 full and area 137 empty, so current_area = 137 and
	// next_free = area_location(137) + 1 = 35211. prepare_merge steps back
	// to area 136 (metadata (136+2)*8 = 1104) before commit_merge updates
	// next_free.
	dev := newMem("cow", 2097152*512)
	s, _, _ := open(t, dev, "P 8", nil)
	const n = 137 * 256
	for done := 0; done < n; {
		var cs []uint64
		for range min(256, n-done) {
			c, err := s.Prepare()
			if err != nil {
				t.Fatal(err)
			}
			cs = append(cs, c)
		}
		for i, c := range cs {
			s.Commit(uint64(done+i), c, true, func(bool) {})
		}
		done += len(cs)
	}
	if u := usage(s); u != "281688/2097152 1112" {
		t.Fatalf("before merge: Usage %s, want 281688/2097152 1112", u)
	}
	m := s.(Merger)
	lastOld, lastNew, k, err := m.PrepareMerge()
	if err != nil {
		t.Fatal(err)
	}
	if u := usage(s); u != "281688/2097152 1104" {
		t.Errorf("after prepare_merge: Usage %s, want 281688/2097152 1104", u)
	}
	// Area 136's entries are old n-256..n-1 -> chunks 34954..35209: all
	// consecutive.
	if lastOld != n-1 || lastNew != areaLocation(256, 136)+256 || k != 256 {
		t.Errorf("PrepareMerge = %d, %d, %d; want %d, %d, 256", lastOld, lastNew, k, n-1, areaLocation(256, 136)+256)
	}
	if err := m.CommitMerge(100); err != nil {
		t.Fatal(err)
	}
	// next_free = area_location(136) + 156 + 1 = 34953 + 157 = 35110
	if u := usage(s); u != "280880/2097152 1104" {
		t.Errorf("after commit_merge(100): Usage %s, want 280880/2097152 1104", u)
	}
	// The merged entries are gone from disk.
	_, got, _ := open(t, dev, "P 8", nil)
	if len(got) != n-100 || got[len(got)-1].old != n-101 {
		t.Errorf("reload after merge: %d exceptions, want %d", len(got), n-100)
	}
}

func TestMergeConsecutiveAndEnd(t *testing.T) {
	dev := newMem("cow", 1<<20)
	s, _, _ := open(t, dev, "P 1", nil)
	// old chunks 10, 11, 12, 40, 41: new chunks 2..6.
	for _, old := range []uint64{10, 11, 12, 40, 41} {
		addOne(t, s, old)
	}
	m := s.(Merger)
	steps := []struct {
		old, new uint64
		n        int
	}{{41, 6, 2}, {12, 4, 3}}
	for _, st := range steps {
		o, nw, k, err := m.PrepareMerge()
		if err != nil || o != st.old || nw != st.new || k != st.n {
			t.Fatalf("PrepareMerge = %d %d %d %v, want %d %d %d", o, nw, k, err, st.old, st.new, st.n)
		}
		if err := m.CommitMerge(k); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, k, err := m.PrepareMerge(); k != 0 || err != nil {
		t.Errorf("PrepareMerge on an empty store = %d, %v; want 0, nil", k, err)
	}
	if u := usage(s); u != "2/2048 2" {
		t.Errorf("Usage after full merge %s, want 2/2048 2 (allocated == metadata: merge finished)", u)
	}
	if err := m.CommitMerge(1); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("CommitMerge(1) with nothing committed: %v, want EINVAL", err)
	}
	if _, ok := Store(&transient{}).(Merger); ok {
		t.Errorf("transient store implements Merger")
	}
}
