package explore

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"snaplab/sim/run"
)

func TestParseShard(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Shard
		err  string
	}{
		{"0/1", Shard{0, 1}, ""},
		{"3/8", Shard{3, 8}, ""},
		{"8/8", Shard{}, "0 <= I < N"},
		{"1/0", Shard{}, "0 <= I < N"},
		{"-1/4", Shard{}, "0 <= I < N"},
		{"2", Shard{}, "want I/N"},
		{"a/b", Shard{}, "0 <= I < N"},
		{"", Shard{}, "want I/N"},
	} {
		got, err := ParseShard(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseShard(%q) = %v, %v; want an error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseShard(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestShardsPartitionCases(t *testing.T) {
	const n = 5
	for i := range uint64(100) {
		owners := 0
		for s := range uint64(n) {
			if (Shard{I: s, N: n}).Has(i) {
				owners++
			}
		}
		if owners != 1 {
			t.Fatalf("case %d belongs to %d of %d shards", i, owners, n)
		}
	}
}

func TestSignatureIgnoresNumbers(t *testing.T) {
	a := Signature(run.Failure{Text: "write base 4096 8KiB pattern=w17", Msg: "invariant copy-before-write: chunk 3 of snap2"})
	b := Signature(run.Failure{Text: "write base 0 4KiB pattern=w2", Msg: "invariant copy-before-write: chunk 12 of snap1"})
	if a != b {
		t.Errorf("signatures differ: %q, %q", a, b)
	}
	c := Signature(run.Failure{Text: "dmsetup resume snap1", Msg: "exit 1, want 0"})
	d := Signature(run.Failure{Text: "dmsetup suspend snap1", Msg: "exit 1, want 0"})
	if c == d || !strings.HasPrefix(c, "dmsetup resume: ") {
		t.Errorf("dmsetup verbs: %q, %q", c, d)
	}
}

// fake results of a campaign of n cases: every 7th fails one way, every
// 11th another.
func fakeResults(cfg Config, n uint64) []Result {
	var out []Result
	for i := range n {
		k := cfg.Case(i)
		r := Result{Case: k, Pass: true, Steps: int(i % 13), Checks: int(i % 5),
			Coverage: map[string]int{"handover-copies-in-flight": int(i % 2)}, Kinds: map[string]int{"write-origin": 1}}
		switch {
		case i%7 == 3:
			r.Pass, r.Failure = false, run.Failure{Line: int(i), Text: "write base 0 4KiB pattern=w1", Msg: "EIO, want OK"}
		case i%11 == 5:
			r.Pass, r.Failure = false, run.Failure{Line: 2, Text: "dmsetup resume snap1", Msg: "exit 1"}
		}
		if !r.Pass {
			r.Signature = Signature(r.Failure)
		}
		out = append(out, r)
	}
	return out
}

// TestMergeOfShardsIsTheWholeCampaign: the summaries of 3 shards, merged
// in any order, equal the unsharded campaign's summary, JSON byte for byte.
func TestMergeOfShardsIsTheWholeCampaign(t *testing.T) {
	cfg := Config{Seed: 10, Ops: 5, Semantics: []string{"mainline", "seed"}}
	const n = 100
	rs := fakeResults(cfg, n)
	whole := NewSummary(cfg, "sim", n, Shard{})
	for _, r := range rs {
		whole.Add(r)
	}
	var shards []*Summary
	for s := range uint64(3) {
		sh := Shard{I: s, N: 3}
		sum := NewSummary(cfg, "sim", n, sh)
		// Results arrive out of order, as from parallel jobs.
		for i := len(rs) - 1; i >= 0; i-- {
			if sh.Has(rs[i].Index) {
				sum.Add(rs[i])
			}
		}
		shards = append(shards, roundTrip(t, sum))
	}
	for _, order := range [][]int{{0, 1, 2}, {2, 0, 1}} {
		var in []*Summary
		for _, i := range order {
			in = append(in, shards[i])
		}
		m, err := Merge(in, false)
		if err != nil {
			t.Fatal(err)
		}
		var a, b bytes.Buffer
		whole.WriteJSON(&a)
		m.WriteJSON(&b)
		if a.String() != b.String() {
			t.Fatalf("merged %v != whole:\n%s\nvs\n%s", order, b.String(), a.String())
		}
	}
	if len(whole.Failures) != 2 || whole.Failures[0].Count+whole.Failures[1].Count != whole.Failed {
		t.Fatalf("failures not deduplicated by signature: %+v", whole.Failures)
	}
	if _, err := Merge(shards[:2], false); err == nil || !strings.Contains(err.Error(), "shards missing: 2/3") {
		t.Errorf("merge of 2 of 3 shards: %v", err)
	}
	if m, err := Merge(shards[:2], true); err != nil || !reflect.DeepEqual(m.Shards, []string{"0/3", "1/3"}) {
		t.Errorf("partial merge: %v, %v", m, err)
	}
	// A shard stopped by a signal marks the merge interrupted.
	stopped := *shards[1]
	stopped.Interrupted = true
	if m, err := Merge([]*Summary{shards[0], roundTrip(t, &stopped), shards[2]}, false); err != nil || !m.Interrupted {
		t.Errorf("merge with an interrupted shard: interrupted %v, %v", m != nil && m.Interrupted, err)
	}
	if _, err := Merge([]*Summary{shards[0], shards[0]}, true); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("a shard twice: %v", err)
	}
	other := NewSummary(Config{Seed: 11, Ops: 5, Semantics: []string{"mainline"}}, "sim", n, Shard{I: 1, N: 3})
	if _, err := Merge([]*Summary{shards[0], other}, true); err == nil || !strings.Contains(err.Error(), "another campaign") {
		t.Errorf("two campaigns: %v", err)
	}
}

func roundTrip(t *testing.T, s *Summary) *Summary {
	t.Helper()
	var b bytes.Buffer
	if err := s.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	r, err := ReadSummary(&b)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestReadSummaryRejects(t *testing.T) {
	for _, tc := range []struct{ in, err string }{
		{`{}`, "format"},
		{`{"format":"snaplab-explore-summary/1","config":{"semantics":["x"]}}`, "semantics"},
		{`{"format":"snaplab-explore-summary/1","config":{"semantics":["mainline"]},"ran":2,"passed":1}`, "ran 2"},
		{`{"format":"snaplab-explore-summary/1","bogus":1}`, "unknown field"},
		{`not json`, "not a summary"},
	} {
		if _, err := ReadSummary(strings.NewReader(tc.in)); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("ReadSummary(%s) = %v; want an error with %q", tc.in, err, tc.err)
		}
	}
}

func FuzzReadSummary(f *testing.F) {
	var b bytes.Buffer
	s := NewSummary(Config{Seed: 1, Ops: 3, Semantics: []string{"mainline"}}, "sim", 4, Shard{I: 1, N: 2})
	for _, r := range fakeResults(s.Config, 4) {
		s.Add(r)
	}
	s.WriteJSON(&b)
	f.Add(b.Bytes())
	f.Add([]byte(`{"format":"snaplab-explore-summary/1"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ReadSummary(bytes.NewReader(data))
		if err != nil {
			return
		}
		// A summary that reads merges with itself alone without panicking.
		Merge([]*Summary{s}, true)
	})
}

// A campaign fails only on properties its config can reach: the kernel's
// campaigns (no interleavings, no power cuts) and mainline-only ones do
// not need the states only those reach.
func TestUnreachedCountsReachableProperties(t *testing.T) {
	sim := Config{Ops: 60, Semantics: []string{"mainline", "seed"}, Interleave: true, PowerCutEvery: 10}
	kernel := Config{Ops: 60, Semantics: []string{"mainline"}}
	mainline := sim
	mainline.Semantics = []string{"mainline"}
	for _, tc := range []struct {
		name string
		cfg  Config
		want []string
	}{
		{"sim, both semantics", sim, Properties()},
		{"kernel", kernel, []string{"cow-full-at-area-boundary", "invalid-source-handover", "overflow-during-merge", "refused-third-table"}},
		{"sim, mainline", mainline, []string{"cow-full-at-area-boundary", "invalid-source-handover", "overflow-during-merge", "refused-third-table", "reload-after-power-cut", "suspend-pending-exceptions"}},
	} {
		if got := tc.cfg.Reachable(); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: Reachable %v, want %v", tc.name, got, tc.want)
		}
		s := NewSummary(tc.cfg, "sim", 0, Shard{})
		if got := s.Unreached(); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s, nothing reached: Unreached %v, want %v", tc.name, got, tc.want)
		}
		for _, p := range Properties() {
			s.Coverage[p] = 1
		}
		if got := s.Unreached(); len(got) != 0 {
			t.Errorf("%s, all reached: Unreached %v", tc.name, got)
		}
	}
}
