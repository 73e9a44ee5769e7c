package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
)

// profiling is the -cpuprofile and -memprofile flags of the commands that
// do the heavy work (run, serve), for `go tool pprof`.
type profiling struct {
	cpu, mem *string
	cpuFile  *os.File
}

func profileFlags(fs *flag.FlagSet) *profiling {
	return &profiling{
		cpu: fs.String("cpuprofile", "", "write a CPU profile of the command to this file"),
		mem: fs.String("memprofile", "", "write a heap profile (live objects at exit) to this file"),
	}
}

// start begins the CPU profile; an error names the flag and the file.
func (p *profiling) start() error {
	if *p.cpu == "" {
		return nil
	}
	f, err := os.Create(*p.cpu)
	if err != nil {
		return fmt.Errorf("-cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return fmt.Errorf("-cpuprofile %s: %w", *p.cpu, err)
	}
	p.cpuFile = f
	return nil
}

// stop ends the CPU profile and writes the heap profile; problems are
// reported on stderr (the command's own result stands).
func (p *profiling) stop(stderr io.Writer) {
	if p.cpuFile != nil {
		pprof.StopCPUProfile()
		if err := p.cpuFile.Close(); err != nil {
			fmt.Fprintf(stderr, "snaplab: -cpuprofile %s: %v\n", *p.cpu, err)
		}
		p.cpuFile = nil
	}
	if *p.mem == "" {
		return
	}
	f, err := os.Create(*p.mem)
	if err != nil {
		fmt.Fprintf(stderr, "snaplab: -memprofile: %v\n", err)
		return
	}
	runtime.GC()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		fmt.Fprintf(stderr, "snaplab: -memprofile %s: %v\n", *p.mem, err)
	}
	f.Close()
}
