package explore

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Collector gathers a campaign's results into its Summary and keeps, per
// failure signature, the failing case with the lowest index, whose files
// Finish writes.
type Collector struct {
	Sum   *Summary
	first map[string]Result
}

// NewCollector starts collecting for sum.
func NewCollector(sum *Summary) *Collector {
	return &Collector{Sum: sum, first: map[string]Result{}}
}

// Add counts r.
func (c *Collector) Add(r Result) {
	c.Sum.Add(r)
	if r.Pass {
		return
	}
	if f, ok := c.first[r.Signature]; !ok || r.Index < f.Index {
		c.first[r.Signature] = r
	}
}

// Shrinker minimises a failing case's scenario, keeping its failure; it
// returns the shrunk text.
type Shrinker func(r Result) (string, error)

// Finish writes, for each signature's first failing case, its scenario
// (NAME.scn), its recording (NAME.jsonl) and, when shrink is not nil, its
// shrunk scenario (NAME.min.scn) into dir, and fills in the summary's file
// names (relative to dir). Signatures are handled in sorted order.
func (c *Collector) Finish(dir string, shrink Shrinker) error {
	if len(c.first) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("explore: output directory: %w", err)
	}
	for i := range c.Sum.Failures {
		f := &c.Sum.Failures[i]
		r, ok := c.first[f.Signature]
		if !ok || r.Index != f.First.Index {
			continue // a merged-in shard's failure: its files are that shard's
		}
		name := r.Name()
		f.Scenario = name + ".scn"
		if err := os.WriteFile(filepath.Join(dir, f.Scenario), []byte(r.Text), 0o644); err != nil {
			return fmt.Errorf("explore: %w", err)
		}
		if len(r.Recording) > 0 {
			f.Recording = name + ".jsonl"
			if err := os.WriteFile(filepath.Join(dir, f.Recording), r.Recording, 0o644); err != nil {
				return fmt.Errorf("explore: %w", err)
			}
		}
		if shrink == nil {
			continue
		}
		small, err := shrink(r)
		if err != nil {
			return fmt.Errorf("explore: shrinking %s: %w", name, err)
		}
		f.Shrunk, f.ShrunkLines = name+".min.scn", StepLines(small)
		if err := os.WriteFile(filepath.Join(dir, f.Shrunk), []byte(small), 0o644); err != nil {
			return fmt.Errorf("explore: %w", err)
		}
	}
	return nil
}

// FirstFailures returns the first failing case of each signature, by
// signature.
func (c *Collector) FirstFailures() []Result {
	var out []Result
	for _, f := range c.Sum.Failures {
		if r, ok := c.first[f.Signature]; ok {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b Result) int { return strings.Compare(a.Signature, b.Signature) })
	return out
}

// StepLines counts a scenario's step lines (not blank, not a comment).
func StepLines(text string) int {
	n := 0
	for _, l := range strings.Split(text, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			n++
		}
	}
	return n
}
