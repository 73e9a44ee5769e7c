package report

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"

	"snaplab/sim/record"
	"snaplab/sim/timeline"
)

// renderTimeline draws the recordings (one, or two with their first
// divergence) as snaplab show does, into an HTML page beside the first,
// and returns the page's path.
func renderTimeline(paths []string) (string, error) {
	var names []string
	recs := make([]*record.Recording, 0, len(paths))
	for _, p := range paths {
		rec, err := timeline.Load(p)
		if err != nil {
			return "", err
		}
		recs = append(recs, rec)
		names = append(names, filepath.Base(p))
	}
	tl, err := timeline.Build(names, recs)
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	if err := tl.HTML(&b); err != nil {
		return "", err
	}
	page := strings.TrimSuffix(paths[0], ".jsonl") + ".html"
	return page, os.WriteFile(page, b.Bytes(), 0o644)
}
