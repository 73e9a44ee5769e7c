package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"snaplab/vmtest/guest"
)

// completeCommand is the hidden command the completion scripts call with
// the words typed so far (after "snaplab", the last one being completed,
// maybe empty); it prints one candidate per line. Candidates come from the
// commands' own flag sets, so completion never lags behind a new flag.
const completeCommand = "__complete"

const completionHelp = `completion bash|zsh

Prints a completion script for the shell: commands, each command's flags,
the values of flags that take a fixed set (-executor, -semantics, -format,
-backend, -accel, -kernel, -progress), and files for operands (.scn for
scenarios, .jsonl for recordings). To use it:

  bash:  source <(snaplab completion bash)          (or save it in
         /etc/bash_completion.d/snaplab)
  zsh:   autoload -U compinit && compinit; source <(snaplab completion zsh)
         (or save it as _snaplab in a directory of $fpath)`

const bashCompletion = `# bash completion for snaplab (snaplab completion bash)
_snaplab() {
	local IFS=$'\n'
	COMPREPLY=($("${COMP_WORDS[0]}" __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null))
	if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == */ ]]; then
		compopt -o nospace 2>/dev/null
	fi
}
complete -F _snaplab snaplab
`

const zshCompletion = `#compdef snaplab
# zsh completion for snaplab (snaplab completion zsh)
_snaplab() {
	local -a cands dirs rest
	cands=(${(f)"$(${words[1]} __complete "${(@)words[2,CURRENT]}" 2>/dev/null)"})
	dirs=(${(M)cands:#*/})
	rest=(${cands:#*/})
	(( ${#dirs} )) && compadd -S '' -- "${dirs[@]}"
	(( ${#rest} )) && compadd -- "${rest[@]}"
	return 0
}
if (( $+functions[compdef] )); then
	compdef _snaplab snaplab
fi
`

func cmdCompletion(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("completion", completionHelp, stderr)
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "snaplab completion: want one shell: bash or zsh")
		return 2
	}
	switch fs.Arg(0) {
	case "bash":
		fmt.Fprint(stdout, bashCompletion)
	case "zsh":
		fmt.Fprint(stdout, zshCompletion)
	default:
		fmt.Fprintf(stderr, "snaplab completion: shell %q: want bash or zsh\n", fs.Arg(0))
		return 2
	}
	return 0
}

// captureFlags, when set, receives every flag set newFlags makes.
var captureFlags func(*flag.FlagSet)

// flagsOf returns a command's flag set, as its -help sees it: the command
// runs with -help into nothing, and its flag set is kept.
func flagsOf(c *command, sub string) *flag.FlagSet {
	var fs *flag.FlagSet
	captureFlags = func(f *flag.FlagSet) { fs = f }
	defer func() { captureFlags = nil }()
	args := []string{"-help"}
	if sub != "" {
		args = []string{sub, "-help"}
	}
	c.run(args, io.Discard, io.Discard)
	return fs
}

// subforms are the commands whose first operand picks a form.
var subforms = map[string][]string{
	"import":     {"lvm", "log-writes"},
	"completion": {"bash", "zsh"},
}

// flagValues are the fixed values of flags, by command ("" for any).
func flagValues(cmd, name string) []string {
	switch name {
	case "executor":
		return []string{"sim", "vm", "kernel"}
	case "compare":
		return []string{"sim"}
	case "semantics":
		return []string{"mainline", "seed"}
	case "backend":
		return []string{"qemu", "libvirt"}
	case "accel":
		return []string{"auto", "kvm", "tcg"}
	case "progress":
		return []string{"auto", "bar", "lines", "off"}
	case "kernel", "against":
		return guest.ReleaseNames()
	case "format":
		switch cmd {
		case "export":
			return []string{"sh", "log-writes"}
		case "show":
			return []string{"html", "svg"}
		}
	}
	return nil
}

// operandExt is the file extension a command's operands have ("" any).
func operandExt(cmd string) string {
	switch cmd {
	case "run", "shrink", "serve", "crash":
		return ".scn"
	case "replay", "diff", "show":
		return ".jsonl"
	}
	return ""
}

func cmdComplete(words []string, stdout io.Writer) int {
	if len(words) == 0 {
		words = []string{""}
	}
	cur := words[len(words)-1]
	var out []string
	defer func() {
		for _, w := range out {
			fmt.Fprintln(stdout, w)
		}
	}()
	if len(words) == 1 {
		out = withPrefix(commandNames(), cur)
		return 0
	}
	c := lookup(words[0])
	if c == nil || c.name == "help" {
		if c != nil && len(words) == 2 {
			out = withPrefix(commandNames(), cur)
		}
		return 0
	}
	sub := ""
	if forms, ok := subforms[c.name]; ok {
		if len(words) == 2 {
			out = withPrefix(forms, cur)
			return 0
		}
		sub = words[1]
		if c.name == "completion" {
			return 0
		}
	}
	fs := flagsOf(c, sub)
	if fs == nil {
		return 0
	}
	// The value of the flag before, unless it is boolean or has "=".
	if prev := words[len(words)-2]; strings.HasPrefix(prev, "-") && !strings.Contains(prev, "=") {
		if f := fs.Lookup(strings.TrimLeft(prev, "-")); f != nil && !isBool(f) {
			if vs := flagValues(c.name, f.Name); vs != nil {
				out = withPrefix(vs, cur)
			} else {
				out = files(cur, "")
			}
			return 0
		}
	}
	if strings.HasPrefix(cur, "-") {
		dash := "-"
		if strings.HasPrefix(cur, "--") {
			dash = "--"
		}
		var names []string
		fs.VisitAll(func(f *flag.Flag) { names = append(names, dash+f.Name) })
		out = withPrefix(names, cur)
		return 0
	}
	out = files(cur, operandExt(c.name))
	return 0
}

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func withPrefix(ws []string, prefix string) []string {
	var out []string
	for _, w := range ws {
		if strings.HasPrefix(w, prefix) {
			out = append(out, w)
		}
	}
	return out
}

// files lists the directories (with a trailing /) and the files with
// extension ext (any when "") whose path starts with prefix; hidden ones
// only when the prefix's last element starts with a dot.
func files(prefix, ext string) []string {
	dir, base := filepath.Split(prefix)
	read := dir
	if read == "" {
		read = "."
	}
	ents, err := os.ReadDir(read)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, base) || (strings.HasPrefix(n, ".") && !strings.HasPrefix(base, ".")) {
			continue
		}
		isDir := e.IsDir()
		if e.Type()&os.ModeSymlink != 0 {
			if st, err := os.Stat(filepath.Join(read, n)); err == nil {
				isDir = st.IsDir()
			}
		}
		switch {
		case isDir:
			out = append(out, dir+n+"/")
		case ext == "" || strings.HasSuffix(n, ext):
			out = append(out, dir+n)
		}
	}
	sort.Strings(out)
	return out
}
