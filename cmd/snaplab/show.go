package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"snaplab/sim/record"
	"snaplab/sim/timeline"
)

// cmdShow draws one recording, or two with their first divergence, as a
// timeline (sim/timeline): a self-contained HTML page or an SVG.
func cmdShow(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("show", "show [-o out.html|out.svg] [-format html|svg] REC [REC2]", stderr)
	out := fs.String("o", "", "write to this file (format from its extension, .html or .svg) instead of stdout")
	format := fs.String("format", "", "html or svg (default: from -o's extension, else html)")
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() < 1 || fs.NArg() > 2 {
		fmt.Fprintf(stderr, "snaplab show: want one or two recordings, got %d\n", fs.NArg())
		return 2
	}
	f, err := showFormat(*format, *out)
	if err != nil {
		fmt.Fprintf(stderr, "snaplab show: %v\n", err)
		return 2
	}
	var recs []*record.Recording
	var names []string
	for _, p := range fs.Args() {
		rec, err := timeline.Load(p)
		if err != nil {
			fmt.Fprintf(stderr, "snaplab show: %v\n", err)
			return 1
		}
		recs = append(recs, rec)
		names = append(names, filepath.Base(p))
	}
	tl, err := timeline.Build(names, recs)
	if err != nil {
		fmt.Fprintf(stderr, "snaplab show: %v\n", err)
		return 1
	}
	var b bytes.Buffer
	if f == "svg" {
		err = tl.SVG(&b)
	} else {
		err = tl.HTML(&b)
	}
	if err != nil {
		fmt.Fprintf(stderr, "snaplab show: %v\n", err)
		return 1
	}
	if err := writeOut(*out, b.Bytes(), 0o644, stdout); err != nil {
		fmt.Fprintf(stderr, "snaplab show: %v\n", err)
		return 1
	}
	if *out == "" {
		return 0
	}
	if d := tl.Divergence; d != nil {
		fmt.Fprintf(stderr, "snaplab show: %s\n", d.Label)
	}
	return 0
}

// showFormat is the output format from -format and -o.
func showFormat(format, out string) (string, error) {
	ext := strings.ToLower(strings.TrimPrefix(filepath.Ext(out), "."))
	if ext == "htm" {
		ext = "html"
	}
	switch format {
	case "":
		switch {
		case out == "":
			return "html", nil
		case ext == "html" || ext == "svg":
			return ext, nil
		}
		return "", fmt.Errorf("-o %s: cannot tell the format from the extension (want .html or .svg, or give -format)", out)
	case "html", "svg":
		if out != "" && (ext == "html" || ext == "svg") && ext != format {
			return "", fmt.Errorf("-format %s but -o %s says %s", format, out, ext)
		}
		return format, nil
	}
	return "", fmt.Errorf("-format %q: want html or svg", format)
}
