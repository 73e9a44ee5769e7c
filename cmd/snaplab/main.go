// Command snaplab runs, replays and compares dm-snapshot scenarios.
//
//	snaplab run [flags] FILE...      run scenarios (executors sim, vm, kernel), print a results table
//	snaplab replay [flags] REC...    re-run recordings, report the first divergence
//	snaplab diff A B                 compare two recordings (step results across executors)
//	snaplab cow IMAGE                decode a persistent COW image
//	snaplab serve SCENARIO           serve the devices over NBD
//	snaplab gen, snaplab shrink      random scenarios, minimal failing scenarios
//	snaplab import lvm LOG           a scenario from an LVM debug log
//	snaplab show REC...              a timeline of recordings (HTML, SVG)
//	snaplab image                    fetch the kernel, build the guest images
//	snaplab help COMMAND             a command's flags
//	snaplab completion bash|zsh      shell completion
//
// Every command takes --help; flags may come before or after operands.
// Exit status: 0 success, 1 a check failed or the work could not be done,
// 2 usage, 130 interrupted (see exitCodes).
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"context"
	"syscall"

	"snaplab/sim/block"
	"snaplab/sim/exstore"
	"snaplab/sim/profile"
	"snaplab/sim/record"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/guest"
	"snaplab/vmtest/guestexec"
	"snaplab/vmtest/qemu"
)

// command is a subcommand: its synopsis for the usage text and its entry.
type command struct {
	name, synopsis, summary string
	run                     func(args []string, stdout, stderr io.Writer) int
}

// commands lists the subcommands in the order the usage text shows them.
var commands []command

func init() {
	commands = []command{
		{"run", "run [flags] FILE...", "run scenarios (.scn) and print a results table", cmdRun},
		{"replay", "replay [flags] REC...", "re-run recordings (.jsonl) in process, report the first divergence", cmdReplay},
		{"diff", "diff A B", "compare two recordings line by line", cmdDiff},
		{"cow", "cow IMAGE", "decode a persistent COW image file (the kernel's on-disk format)", cmdCow},
		{"serve", "serve [flags] SCENARIO", "serve the scenario's devices over NBD, control lines on stdin", cmdServe},
		{"gen", "gen [flags]", "write a random scenario (.scn) for --seed S, --ops M", cmdGen},
		{"shrink", "shrink [flags] SCENARIO", "minimise a scenario that fails on the sim executor, print it", cmdShrink},
		{"explore", "explore [flags]", "a campaign of generated scenarios with faults, every check on", cmdExplore},
		{"export", "export --format F ...", "a scenario as a bash script (sh), a recording as a dm-log-writes log", cmdExport},
		{"crash", "crash [flags] SCENARIO", "cut the power at every flush/FUA and at seeded points, reload, check", cmdCrash},
		{"import", "import lvm|log-writes LOG", "a scenario from an LVM debug log or a dm-log-writes log", cmdImport},
		{"show", "show [flags] REC...", "a timeline of one recording, or two with their first divergence, as HTML or SVG", cmdShow},
		{"image", "image", "fetch Debian's kernel and build the guest images (make deps does)", cmdImage},
		{"help", "help [COMMAND]", "this text, or a command's flags", cmdHelp},
		{"completion", "completion bash|zsh", "a shell completion script (see snaplab help completion)", cmdCompletion},
	}
}

func usageText() string {
	var b strings.Builder
	b.WriteString("snaplab: a deterministic simulator of the Linux dm-snapshot target.\n\nUsage:\n")
	for _, c := range commands {
		fmt.Fprintf(&b, "  snaplab %-30s %s\n", c.synopsis, c.summary)
	}
	b.WriteString("\nFlags may come before or after operands; \"--\" ends the flags.\n")
	b.WriteString("Run \"snaplab help COMMAND\" (or \"snaplab COMMAND --help\") for a command's flags.\n")
	b.WriteString(exitCodes)
	return b.String()
}

// exitCodes is the contract every command keeps, in the usage text and
// the README.
const exitCodes = `
Exit status:
  0    success: every scenario passed, a replay was identical, diff found no difference
  1    a check failed (a scenario failed, a replay diverged, recordings differ), or
       the command could not do its work (an unreadable file, a guest that failed);
       the message on stderr says which
  2    usage: an unknown command or flag, missing or extra operands, a bad flag value
       (diff also uses 2 for an unreadable recording, as diff(1) does)
  130  interrupted (SIGINT or SIGTERM); guests and servers were stopped
`

func main() {
	os.Exit(Main(os.Args[1:], os.Stdout, os.Stderr))
}

// Main is the command without process exit, for tests.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText())
		return 2
	}
	switch args[0] {
	case "-h", "--help", "-help":
		fmt.Fprint(stdout, usageText())
		return 0
	case completeCommand:
		return cmdComplete(args[1:], stdout)
	}
	if c := lookup(args[0]); c != nil {
		return c.run(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "snaplab: unknown command %q\n\n%s", args[0], usageText())
	return 2
}

func lookup(name string) *command {
	for i := range commands {
		if commands[i].name == name {
			return &commands[i]
		}
	}
	return nil
}

// cmdHelp prints the usage text, or a command's synopsis and flags, on
// stdout.
func cmdHelp(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stdout, usageText())
		return 0
	}
	if len(args) > 1 {
		fmt.Fprintln(stderr, "snaplab help: want at most one command")
		return 2
	}
	c := lookup(args[0])
	if c == nil {
		fmt.Fprintf(stderr, "snaplab help: unknown command %q; the commands: %s\n", args[0], strings.Join(commandNames(), ", "))
		return 2
	}
	if c.name == "help" {
		fmt.Fprint(stdout, usageText())
		return 0
	}
	return c.run([]string{"-help"}, stdout, stdout)
}

func commandNames() []string {
	var ns []string
	for _, c := range commands {
		ns = append(ns, c.name)
	}
	return ns
}

func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	if captureFlags != nil {
		captureFlags(fs)
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: snaplab %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("run", "run [flags] FILE...", stderr)
	executor := fs.String("executor", "sim", "executor: sim (in-process simulator), vm (a QEMU guest does the I/O over NBD) or kernel (the real dm-snapshot in a guest)")
	compare := fs.String("compare", "", "with -executor kernel or vm: also run on this executor (sim) and report every difference")
	sem := fs.String("semantics", "", "override the scenarios' handover semantics: mainline or seed")
	seed := fs.Uint64("seed", 0, "override the scenarios' seed (0 = plain FIFO order, else seeded interleavings)")
	seedSet := false
	recDir := fs.String("record", "out/recordings", "directory for recordings, one NAME.jsonl per scenario (and NAME.blobs for data a guest wrote); \"off\" (or \"\") records nothing, and the runs cannot be replayed")
	quiet := fs.Bool("q", false, "print only the results table (and, on stderr, each failure's message)")
	progressMode := fs.String("progress", "auto", "progress on stdout as files finish: auto (a bar on a terminal, else a line per file), bar, lines or off (-q: off)")
	dump := fs.String("dump", "", "write every disk's final content to DIR/SCENARIO/NAME.img (sparse)")
	accel := fs.String("accel", "", "with -executor vm or kernel: the guest's accelerator, auto (KVM once proven on this host, else TCG), kvm or tcg (default $SNAPLAB_ACCEL, else auto)")
	kernel := kernelFlag(fs)
	against := fs.String("against", "", "with -executor kernel: also compare each scenario's results with a stock kernel's golden results (fixtures/kernel/RELEASE/NAME.json: "+strings.Join(guest.ReleaseNames(), ", ")+"), e.g. a patched kernel's against 6.1")
	anywhere := imagesAnywhereFlag(fs)
	prof := profileFlags(fs)
	gf := addGuestFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := prof.start(); err != nil {
		fmt.Fprintf(stderr, "snaplab run: %v\n", err)
		return 2
	}
	defer prof.stop(stderr)
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "seed" {
			seedSet = true
		}
	})
	if *executor != "sim" && *executor != "vm" && *executor != "kernel" {
		fmt.Fprintf(stderr, "snaplab run: executor %q: want sim, vm or kernel\n", *executor)
		return 2
	}
	if err := checkKernel(*kernel, *executor); err != nil {
		fmt.Fprintf(stderr, "snaplab run: %v\n", err)
		return 2
	}
	goldens := ""
	if *against != "" {
		if *executor != "kernel" {
			fmt.Fprintf(stderr, "snaplab run: -against %s: only with -executor kernel\n", *against)
			return 2
		}
		k, err := guest.ParseKernel(*against)
		if err != nil || k.Own() {
			fmt.Fprintf(stderr, "snaplab run: -against %q: want one of %s (the kernels with golden results)\n", *against, strings.Join(guest.ReleaseNames(), ", "))
			return 2
		}
		repo, err := guest.FindRepo()
		if err != nil {
			fmt.Fprintf(stderr, "snaplab run: -against: %v\n", err)
			return 1
		}
		goldens = filepath.Join(repo, "fixtures", "kernel", k.Release)
	}
	if *compare != "" && (*compare != "sim" || *executor == "sim") {
		fmt.Fprintf(stderr, "snaplab run: -compare %q: want -compare sim with -executor vm or kernel\n", *compare)
		return 2
	}
	if *accel != "" {
		if _, err := qemu.ParseAccel(*accel); err != nil {
			fmt.Fprintf(stderr, "snaplab run: -accel: %v\n", err)
			return 2
		}
	}
	if err := gf.check(*executor); err != nil {
		fmt.Fprintf(stderr, "snaplab run: %v\n", err)
		return 2
	}
	if *recDir == recordOff {
		*recDir = ""
	}
	if *sem != "" && *sem != "mainline" && *sem != "seed" {
		fmt.Fprintf(stderr, "snaplab run: -semantics %q: want mainline or seed\n", *sem)
		return 2
	}
	if m := *progressMode; m != "auto" && m != "bar" && m != "lines" && m != "off" {
		fmt.Fprintf(stderr, "snaplab run: -progress %q: want auto, bar, lines or off\n", m)
		return 2
	}
	files := fs.Args()
	if len(files) == 0 {
		fmt.Fprintln(stderr, "snaplab run: no scenario files given")
		return 2
	}
	if *recDir != "" {
		if err := os.MkdirAll(*recDir, 0o755); err != nil {
			fmt.Fprintf(stderr, "snaplab run: %v\n", err)
			return 1
		}
	}
	execs := []run.Executor{simExecutor{}}
	if *executor != "sim" {
		mode, err := guestexec.ParseMode(*executor)
		if err != nil {
			fmt.Fprintf(stderr, "snaplab run: %v\n", err)
			return 2
		}
		p, err := gf.start(stderr, mode, *kernel, *accel, consoleLogs(*recDir, *executor, *gf.guests))
		if err != nil {
			fmt.Fprintf(stderr, "snaplab run: %v\n", err)
			return 1
		}
		defer p.stop()
		execs = execs[:0]
		for _, ex := range p.execs {
			execs = append(execs, ex)
		}
	}
	runOne := func(ex run.Executor, sc *script.Scenario, opts run.Options) (*run.Report, error) {
		if *compare == "" {
			if err := ex.Supported(sc); err != nil {
				return nil, err
			}
			return ex.Run(context.Background(), sc, opts)
		}
		c, err := run.Compare(context.Background(), ex, simExecutor{}, sc, opts)
		if err != nil {
			return nil, err
		}
		return c.Report(), nil
	}
	type row struct {
		name, sem, result, detail string
		checks                    int
		dur                       time.Duration
	}
	// outcome is one file's: its row, and what is printed for it.
	type outcome struct {
		r      row
		failed bool
		repro  string
		report string // stderr: an ERROR's cause, or every failure's message
		fatal  string // ends the run (exit 1): a recording or dump that cannot be written
	}
	runFile := func(ex run.Executor, file string) (o outcome) {
		name := strings.TrimSuffix(filepath.Base(file), ".scn")
		if _, err := os.Stat(file); err != nil {
			return outcome{fatal: fmt.Sprintf("snaplab run: %v\n", err)}
		}
		sc, err := script.ParseFile(file)
		if err != nil {
			return outcome{r: row{name: name, result: "ERROR", detail: err.Error()}, failed: true, report: fmt.Sprintf("snaplab run: %v\n", err)}
		}
		opts := run.Options{Semantics: *sem, AllowImagesOutside: *anywhere}
		if *executor == "sim" {
			opts.Kernel = *kernel // the profile; a guest's comes from its kernel
		}
		if seedSet {
			opts.Seed = seed
		}
		recPath := ""
		if *recDir != "" {
			recPath = filepath.Join(*recDir, name+".jsonl")
		}
		rf, err := createRecording(recPath, *executor != "sim", &opts)
		if err != nil {
			return outcome{fatal: fmt.Sprintf("snaplab run: -record: %v\n", err)}
		}
		if *dump != "" {
			opts.DumpDir = filepath.Join(*dump, name)
			if err := os.MkdirAll(opts.DumpDir, 0o755); err != nil {
				rf.close()
				return outcome{fatal: fmt.Sprintf("snaplab run: %v\n", err)}
			}
		}
		var kernelRec bytes.Buffer
		if goldens != "" {
			if opts.Record != nil {
				opts.Record = io.MultiWriter(opts.Record, &kernelRec)
			} else {
				opts.Record = &kernelRec
			}
		}
		start := time.Now()
		rep, err := recovered(func() (*run.Report, error) { return runOne(ex, sc, opts) })
		dur := time.Since(start)
		if cerr := rf.close(); cerr != nil {
			return outcome{fatal: fmt.Sprintf("snaplab run: recording %v\n", cerr)}
		}
		if err != nil {
			detail, _, _ := strings.Cut(err.Error(), "\n")
			return outcome{r: row{name: name, result: "ERROR", detail: detail}, failed: true, report: fmt.Sprintf("snaplab run: %s: %v\n", file, err)}
		}
		if goldens != "" {
			if f := againstGolden(goldens, name, kernelRec.Bytes()); f != nil {
				rep.Failures = append(rep.Failures, *f)
			}
		}
		o.r = row{name: name, sem: rep.Semantics, result: "PASS", checks: rep.Checks, dur: dur}
		if !rep.Pass() {
			o.failed = true
			o.r.result = "FAIL"
			o.r.detail = failureLines(rep.Failures)
			// Every failure, with its message, -q or not.
			var b strings.Builder
			fmt.Fprintf(&b, "FAIL %s (%s)\n", name, file)
			for _, f := range rep.Failures {
				fmt.Fprintf(&b, "  %s\n", f.String())
			}
			o.report = b.String()
			o.repro = fmt.Sprintf("snaplab run -executor %s -semantics %s -seed %d %s", *executor, rep.Semantics, rep.Seed, file)
			if recPath != "" {
				o.repro = fmt.Sprintf("snaplab replay %s", recPath)
			}
		}
		return o
	}
	// The files are spread over the executors (one per guest), each taking
	// the next when it is free; progress lines come as files finish, the
	// table in the files' order.
	outcomes := make([]outcome, len(files))
	if *quiet {
		*progressMode = "off"
	}
	prog := newRunProgress(stdout, *progressMode, len(files))
	var mu sync.Mutex
	next, fatal := 0, ""
	var wg sync.WaitGroup
	for _, ex := range execs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if next == len(files) || fatal != "" {
					mu.Unlock()
					return
				}
				i := next
				next++
				mu.Unlock()
				o := runFile(ex, files[i])
				mu.Lock()
				outcomes[i] = o
				if o.fatal != "" {
					if fatal == "" {
						fatal = o.fatal
					}
				} else {
					if o.report != "" {
						prog.clear()
						fmt.Fprint(stderr, o.report)
					}
					prog.finished(o.r.name, o.r.result)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	prog.clear()
	if fatal != "" {
		fmt.Fprint(stderr, fatal)
		return 1
	}
	var rows []row
	failed := 0
	var repro []string
	for _, o := range outcomes {
		rows = append(rows, o.r)
		if o.failed {
			failed++
		}
		if o.repro != "" {
			repro = append(repro, o.repro)
		}
	}
	fmt.Fprintf(stdout, "\n%-40s %-9s %-6s %8s %9s  %s\n", "SCENARIO", "SEMANTICS", "RESULT", "CHECKS", "TIME", "DETAIL")
	for _, r := range rows {
		fmt.Fprintf(stdout, "%-40s %-9s %-6s %8d %9s  %s\n", r.name, r.sem, r.result, r.checks, r.dur.Round(10*time.Microsecond), r.detail)
	}
	fmt.Fprintf(stdout, "\n%d passed, %d failed\n", len(rows)-failed, failed)
	if *recDir == "" {
		fmt.Fprintln(stdout, "recordings: off (these runs cannot be replayed; -record DIR keeps them)")
	}
	for _, c := range repro {
		fmt.Fprintf(stdout, "reproduce: %s\n", c)
	}
	if failed > 0 {
		return 1
	}
	return 0
}

// againstGolden compares a kernel run's recording with a stock kernel's
// golden results for the scenario; a difference (or a missing golden) is
// a failure listing every differing field.
func againstGolden(dir, name string, rec []byte) *run.Failure {
	path := filepath.Join(dir, name+".json")
	b, err := os.ReadFile(path)
	if err != nil {
		return &run.Failure{Msg: fmt.Sprintf("-against %s: no golden results for %s (%v)", filepath.Base(dir), name, err)}
	}
	var want []record.StepResult
	if err := json.Unmarshal(b, &want); err != nil {
		return &run.Failure{Msg: fmt.Sprintf("-against: %s: %v", path, err)}
	}
	r, err := record.Read(bytes.NewReader(rec))
	if err != nil {
		return &run.Failure{Msg: fmt.Sprintf("-against: this run's recording: %v", err)}
	}
	got, err := record.Results(r)
	if err != nil {
		return &run.Failure{Msg: fmt.Sprintf("-against: this run's recording: %v", err)}
	}
	diffs := record.CompareResults(want, got)
	if len(diffs) == 0 {
		return nil
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "differs from kernel %s (%s; first the stock kernel, then this one) in %d fields:", filepath.Base(dir), path, len(diffs))
	line := 0
	for i, d := range diffs {
		fmt.Fprintf(&sb, "\n    %s", d)
		if i == 0 {
			line = d.Line
		}
	}
	return &run.Failure{Line: line, Msg: sb.String()}
}

// simRun is the sim executor (a variable so that a test can plant a panic).
var simRun = run.Run

// simExecutor is run.Sim through simRun.
type simExecutor struct{ run.Sim }

func (simExecutor) Run(ctx context.Context, sc *script.Scenario, opts run.Options) (*run.Report, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return simRun(sc, opts), nil
}

// failureLines is the results table's detail of a failed run: the lines
// of its failures, in order, each once ("line 7", "lines 7, 9").
func failureLines(fs []run.Failure) string {
	var lines []string
	seen := map[int]bool{}
	for _, f := range fs {
		if !seen[f.Line] {
			seen[f.Line] = true
			lines = append(lines, strconv.Itoa(f.Line))
		}
	}
	if len(lines) == 1 {
		return "line " + lines[0]
	}
	return "lines " + strings.Join(lines, ", ")
}

// recovered runs f; a panic becomes an error holding the panic and its
// stack, so that one scenario's crash is that scenario's ERROR.
func recovered(f func() (*run.Report, error)) (rep *run.Report, err error) {
	defer func() {
		if p := recover(); p != nil {
			rep, err = nil, fmt.Errorf("panic: %v\n%s", p, debug.Stack())
		}
	}()
	return f()
}

// imagesAnywhereFlag adds -images-anywhere (run.AllowImagesFlag) to fs.
func imagesAnywhereFlag(fs *flag.FlagSet) *bool {
	return fs.Bool(strings.TrimPrefix(run.AllowImagesFlag, "-"), false,
		"read disk images (image=) outside the scenario file's directory tree (../x, absolute paths elsewhere, symbolic links out of it), and a replay's images when its scenario file is gone")
}

// replayRecovered is run.Replay, a panic (a bug) becoming an error with its
// stack rather than a crash.
func replayRecovered(rec *record.Recording, opts run.Options) (rep *run.Report, diff string, err error) {
	defer func() {
		if p := recover(); p != nil {
			rep, diff, err = nil, "", fmt.Errorf("replay panicked (a bug in snaplab): %v\n%s", p, debug.Stack())
		}
	}()
	return replayRun(rec, opts)
}

// replayRun is run.Replay (a variable so that a test can plant a panic).
var replayRun = run.Replay

func readRecording(path string) (*record.Recording, error) {
	return record.ReadFile(path)
}

func cmdReplay(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("replay", "replay [-images-anywhere] REC...", stderr)
	anywhere := imagesAnywhereFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "snaplab replay: no recordings given")
		return 2
	}
	bad := 0
	for _, path := range fs.Args() {
		rec, err := readRecording(path)
		if err != nil {
			fmt.Fprintf(stderr, "snaplab replay: %v\n", err)
			return 1
		}
		rep, diff, err := replayRecovered(rec, run.Options{AllowImagesOutside: *anywhere})
		rec.Close()
		if err != nil {
			fmt.Fprintf(stderr, "snaplab replay: %s: %v\n", path, err)
			return 1
		}
		switch {
		case diff != "":
			bad++
			fmt.Fprintf(stdout, "DIVERGED %s\n%s", path, diff)
		case !rep.Pass():
			bad++
			fmt.Fprintf(stdout, "REPRODUCED FAILURE %s (identical to the recording)\n  %s\n", path, rep.Failures[0])
		default:
			fmt.Fprintf(stdout, "IDENTICAL %s (%d events, %s)\n", path, rep.Events, rep.TraceHash)
		}
	}
	if bad > 0 {
		return 1
	}
	return 0
}

func cmdDiff(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("diff", "diff A B", stderr)
	ctx := fs.Int("context", 3, "lines of context before the first difference")
	results := fs.Bool("results", false, "compare step results only (automatic when the executors differ)")
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 2 {
		fmt.Fprintln(stderr, "snaplab diff: want two recordings")
		return 2
	}
	var lines [2][]string
	var recs [2]*record.Recording
	for i, p := range fs.Args() {
		rec, err := readRecording(p)
		if err != nil {
			fmt.Fprintf(stderr, "snaplab diff: %v\n", err)
			return 2
		}
		lines[i], recs[i] = rec.Lines, rec
	}
	if recs[0].Header.Executor != recs[1].Header.Executor || *results {
		// Different executors: compare what each step produced.
		var sr [2][]record.StepResult
		for i := range recs {
			var err error
			if sr[i], err = record.Results(recs[i]); err != nil {
				fmt.Fprintf(stderr, "snaplab diff: %v\n", err)
				return 2
			}
		}
		diffs := record.CompareResults(sr[0], sr[1])
		if len(diffs) == 0 {
			fmt.Fprintf(stdout, "identical results (%s vs %s, %d steps)\n", recs[0].Header.Executor, recs[1].Header.Executor, len(sr[0]))
			return 0
		}
		for _, d := range diffs {
			fmt.Fprintln(stdout, d)
		}
		return 1
	}
	d := record.Diff(lines[0], lines[1], fs.Arg(0), fs.Arg(1), *ctx)
	if d == "" {
		fmt.Fprintln(stdout, "identical")
		return 0
	}
	fmt.Fprint(stdout, d)
	return 1
}

// fileDev is a read-only block.Device over a file.
type fileDev struct {
	f    *os.File
	name string
	size int64
}

func (d *fileDev) Name() string { return d.name }
func (d *fileDev) Size() int64  { return d.size }
func (d *fileDev) ReadAt(p []byte, off int64) (int, error) {
	if err := block.CheckRange(d.name, "read", d.size, off, int64(len(p))); err != nil {
		return 0, err
	}
	return d.f.ReadAt(p, off)
}
func (d *fileDev) WriteAt(p []byte, off int64) (int, error) {
	return 0, &block.Error{Dev: d.name, Op: "write", Off: off, Len: int64(len(p)), Errno: syscall.EROFS}
}
func (d *fileDev) Flush() error { return nil }

func cmdCow(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("cow", "cow IMAGE", stderr)
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "snaplab cow: want one image file")
		return 2
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(stderr, "snaplab cow: %v\n", err)
		return 1
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		fmt.Fprintf(stderr, "snaplab cow: %v\n", err)
		return 1
	}
	dev := &fileDev{f: f, name: fs.Arg(0), size: fi.Size() &^ (block.SectorSize - 1)}
	im, err := exstore.Inspect(dev)
	if err != nil {
		fmt.Fprintf(stderr, "snaplab cow: %v\n", err)
		return 1
	}
	if im.Fresh {
		fmt.Fprintf(stdout, "%s: no header (magic 0): a fresh COW the kernel would initialise\n", dev.name)
		return 0
	}
	h := im.Header
	fmt.Fprintf(stdout, "%s: magic %#x valid %d version %d chunk_size %d sectors, %d exceptions per area\n",
		dev.name, h.Magic, h.Valid, h.Version, h.ChunkSize, im.ExceptionsPerArea)
	a, t, m := im.Usage()
	fmt.Fprintf(stdout, "usage %d/%d %d, next_free %d, current area %d (%d committed)\n", a, t, m, im.NextFree, im.CurrentArea, im.CurrentCommitted)
	fmt.Fprintf(stdout, "%d exceptions (old chunk -> new chunk):\n", len(im.Exceptions))
	for _, e := range im.Exceptions {
		fmt.Fprintf(stdout, "  area %d entry %d @%d: %d -> %d\n", e.Area, e.Index, e.Off, e.Old, e.New)
	}
	if p := im.Problems(); len(p) > 0 {
		for _, x := range p {
			fmt.Fprintf(stdout, "problem: %s\n", x)
		}
		return 1
	}
	return 0
}

// kernelFlag is -kernel: the guest's kernel.
func kernelFlag(fs *flag.FlagSet) *string {
	return fs.String("kernel", "", "with a guest executor: the guest's kernel: "+strings.Join(guest.ReleaseNames(), ", ")+
		" (Debian's builds), a .deb (make bindeb-pkg), or IMAGE,MODDIR (a bzImage or vmlinux and the INSTALL_MOD_PATH of make modules_install) (default $SNAPLAB_KERNEL, else "+guest.DefaultKernel+
		"); with -executor sim: the release whose behaviour the simulator models where releases differ (default "+guest.DefaultKernel+")")
}

// checkKernel validates -kernel before any guest boots. With the sim
// executor it names the kernel profile the simulator models (a release of
// the matrix, not a path).
func checkKernel(spec, executor string) error {
	if spec == "" {
		if executor != "sim" {
			_, err := guest.KernelFromEnv()
			return err
		}
		return nil
	}
	if executor == "sim" {
		if _, err := profile.Lookup(spec); err != nil {
			return fmt.Errorf("-kernel %s: the simulator models a release (%s), not a kernel file: %w", spec, strings.Join(guest.ReleaseNames(), ", "), err)
		}
		return nil
	}
	_, err := guest.ParseKernel(spec)
	if err != nil {
		return fmt.Errorf("-kernel: %w", err)
	}
	return nil
}
