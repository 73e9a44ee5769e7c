package explore

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// SummaryFormat names the summary file's format and version.
const SummaryFormat = "snaplab-explore-summary/1"

// Shard is part I of N of a campaign's cases: the indices i with
// i mod N == I. The zero Shard (N 0) and 0/1 are the whole campaign.
type Shard struct{ I, N uint64 }

// ParseShard parses "I/N" (0 <= I < N).
func ParseShard(s string) (Shard, error) {
	a, b, ok := strings.Cut(s, "/")
	if !ok {
		return Shard{}, fmt.Errorf("shard %q: want I/N, e.g. 0/4", s)
	}
	i, err1 := strconv.ParseUint(a, 10, 32)
	n, err2 := strconv.ParseUint(b, 10, 32)
	if err1 != nil || err2 != nil || n == 0 || i >= n {
		return Shard{}, fmt.Errorf("shard %q: want I/N with 0 <= I < N, e.g. 0/4", s)
	}
	return Shard{I: i, N: n}, nil
}

// Whole reports whether s is the whole campaign.
func (s Shard) Whole() bool { return s.N <= 1 }

// Has reports whether case index i belongs to s.
func (s Shard) Has(i uint64) bool { return s.Whole() || i%s.N == s.I }

func (s Shard) String() string {
	if s.Whole() {
		return ""
	}
	return fmt.Sprintf("%d/%d", s.I, s.N)
}

// Summary is what a campaign (or a shard of one) found. It holds no
// timing, so the same campaign always writes the same summary, and Merge
// of every shard's summary equals the unsharded campaign's.
type Summary struct {
	Format string `json:"format"`
	Config Config `json:"config"`
	// Executor is "sim", or e.g. "kernel/sim" for a differential campaign.
	Executor string `json:"executor"`
	// Cases is how many case indices the campaign covered, [0, Cases):
	// its --seeds, or how far a --for campaign got (a shard runs its part).
	Cases uint64 `json:"cases"`
	// Interrupted is set when the campaign was stopped by a signal before
	// its end: Cases is then how far it got.
	Interrupted bool `json:"interrupted,omitempty"`
	// Shards merged into this summary ("" entries: none, the whole run).
	Shards []string `json:"shards,omitempty"`
	Ran    uint64   `json:"ran"` // cases run
	Passed uint64   `json:"passed"`
	Failed uint64   `json:"failed"`
	Steps  uint64   `json:"steps"`
	Checks uint64   `json:"checks"`
	// States counts the power-cut states the crash checks checked.
	States uint64 `json:"power_cut_states"`
	// Coverage counts each coverage property's hits (every listed property
	// is present, zero when never reached).
	Coverage map[string]int `json:"coverage"`
	// Kinds counts the generated step kinds.
	Kinds map[string]int `json:"kinds"`
	// Failures, one per signature, sorted by signature.
	Failures []Failure `json:"failures,omitempty"`
}

// Failure is every failing case of one signature.
type Failure struct {
	Signature string `json:"signature"`
	Count     uint64 `json:"count"`
	// First is the failing case with the lowest index: its files and
	// commands are the ones given.
	First     Case   `json:"first"`
	Line      int    `json:"line"`
	Text      string `json:"text"`
	Msg       string `json:"msg"`
	Scenario  string `json:"scenario,omitempty"`  // file, relative to the output directory
	Recording string `json:"recording,omitempty"` // file, relative to the output directory
	Shrunk    string `json:"shrunk,omitempty"`    // the shrunk scenario, relative to the output directory
	// CrashArgs, for a failed crash check, are the flags of the
	// `snaplab crash` command that reproduces it.
	CrashArgs string `json:"crash_args,omitempty"`
	// ShrunkLines is the shrunk scenario's number of step lines.
	ShrunkLines int `json:"shrunk_lines,omitempty"`
	// Seeds lists up to 10 failing cases' generator seeds, lowest first.
	Seeds []uint64 `json:"seeds"`
}

// NewSummary starts an empty summary of a campaign of cases [0, cases)
// (the shard's part of them).
func NewSummary(c Config, executor string, cases uint64, s Shard) *Summary {
	sum := &Summary{Format: SummaryFormat, Config: c, Executor: executor, Cases: cases,
		Coverage: map[string]int{}, Kinds: map[string]int{}}
	if !s.Whole() {
		sum.Shards = []string{s.String()}
	}
	for _, p := range Properties() {
		sum.Coverage[p] = 0
	}
	return sum
}

// Add counts one case's result. Results may come in any order; the
// summary does not depend on it.
func (s *Summary) Add(r Result) {
	s.Ran++
	s.Steps += uint64(r.Steps)
	s.Checks += uint64(r.Checks)
	s.States += uint64(r.States)
	// order-free: integer sums keyed by the range's key.
	for k, v := range r.Coverage {
		s.Coverage[k] += v
	}
	// order-free: integer sums keyed by the range's key.
	for k, v := range r.Kinds {
		s.Kinds[k] += v
	}
	if r.Pass {
		s.Passed++
		return
	}
	s.Failed++
	s.addFailure(Failure{Signature: r.Signature, Count: 1, First: r.Case, Line: r.Failure.Line,
		Text: r.Failure.Text, Msg: r.Failure.Msg, CrashArgs: r.CrashArgs, Seeds: []uint64{r.Seed}})
}

func (s *Summary) addFailure(f Failure) {
	i, found := slices.BinarySearchFunc(s.Failures, f.Signature, func(a Failure, sig string) int {
		return strings.Compare(a.Signature, sig)
	})
	if !found {
		s.Failures = slices.Insert(s.Failures, i, f)
		return
	}
	g := &s.Failures[i]
	count := g.Count + f.Count
	seeds := append(slices.Clone(g.Seeds), f.Seeds...)
	slices.Sort(seeds)
	seeds = slices.Compact(seeds)
	if len(seeds) > 10 {
		seeds = seeds[:10]
	}
	if f.First.Index < g.First.Index {
		*g = f
	}
	g.Count, g.Seeds = count, seeds
}

// Unreached lists the coverage properties the campaign's config can reach
// (Config.Reachable) that it never reached, sorted.
func (s *Summary) Unreached() []string {
	var out []string
	for _, p := range s.Config.Reachable() {
		if s.Coverage[p] == 0 {
			out = append(out, p)
		}
	}
	return out
}

// Merge combines the summaries of the shards of one campaign. Every shard
// must be of the same campaign (config, executor), and each shard
// appear once; the result of a complete set of shards is the unsharded
// campaign's summary. A set with shards missing is an error naming them
// unless partial is true.
func Merge(sums []*Summary, partial bool) (*Summary, error) {
	if len(sums) == 0 {
		return nil, fmt.Errorf("no summaries to merge")
	}
	first := sums[0]
	key := func(s *Summary) string {
		b, _ := json.Marshal(struct {
			C Config
			E string
		}{s.Config, s.Executor})
		return string(b)
	}
	out := NewSummary(first.Config, first.Executor, first.Cases, Shard{})
	seen := map[string]bool{}
	var n uint64
	for i, s := range sums {
		if s.Format != SummaryFormat {
			return nil, fmt.Errorf("summary %d: format %q: want %q", i+1, s.Format, SummaryFormat)
		}
		if key(s) != key(first) {
			return nil, fmt.Errorf("summary %d is of another campaign (its config or executor differs from summary 1's)", i+1)
		}
		out.Cases = max(out.Cases, s.Cases)
		shards := s.Shards
		if len(shards) == 0 {
			shards = []string{"0/1"}
		}
		for _, sh := range shards {
			p, err := ParseShard(sh)
			if err != nil {
				return nil, fmt.Errorf("summary %d: %w", i+1, err)
			}
			if n == 0 {
				n = p.N
			}
			if p.N != n {
				return nil, fmt.Errorf("summary %d: shard %s is of a split into %d, others of a split into %d", i+1, sh, p.N, n)
			}
			if seen[sh] {
				return nil, fmt.Errorf("summary %d: shard %s appears twice", i+1, sh)
			}
			seen[sh] = true
		}
		out.Interrupted = out.Interrupted || s.Interrupted
		out.Ran += s.Ran
		out.Passed += s.Passed
		out.Failed += s.Failed
		out.Steps += s.Steps
		out.Checks += s.Checks
		out.States += s.States
		// order-free: integer sums keyed by the range's key.
		for k, v := range s.Coverage {
			out.Coverage[k] += v
		}
		// order-free: integer sums keyed by the range's key.
		for k, v := range s.Kinds {
			out.Kinds[k] += v
		}
		for _, f := range s.Failures {
			out.addFailure(f)
		}
	}
	var missing []string
	for i := range n {
		if sh := (Shard{I: i, N: n}).String(); !seen[sh] && n > 1 {
			missing = append(missing, sh)
		}
	}
	if len(missing) > 0 {
		if !partial {
			return nil, fmt.Errorf("shards missing: %s (merge what there is with -partial)", strings.Join(missing, " "))
		}
		for i := range n {
			if sh := (Shard{I: i, N: n}).String(); seen[sh] {
				out.Shards = append(out.Shards, sh)
			}
		}
	}
	return out, nil
}

// WriteJSON writes s, indented, with a final newline.
func (s *Summary) WriteJSON(w io.Writer) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// ReadSummary reads a summary file's JSON, refusing unknown fields and
// other formats.
func ReadSummary(r io.Reader) (*Summary, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var s Summary
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("not a summary: %w", err)
	}
	if s.Format != SummaryFormat {
		return nil, fmt.Errorf("format %q: want %q", s.Format, SummaryFormat)
	}
	if err := s.Config.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if s.Coverage == nil {
		s.Coverage = map[string]int{}
	}
	if s.Kinds == nil {
		s.Kinds = map[string]int{}
	}
	if s.Passed+s.Failed != s.Ran {
		return nil, fmt.Errorf("passed %d + failed %d != ran %d", s.Passed, s.Failed, s.Ran)
	}
	return &s, nil
}
