// Command snaplab-soak loads `snaplab serve` the way a busy site would and
// checks that it holds: many verifying NBD clients (aligned I/O on an
// origin and its snapshot, byte-granular I/O without negotiated block
// sizes), clients that flood it with pipelined 32 MiB reads and never read
// the replies, connections reset with writes outstanding, and suspend and
// resume churn on the control socket, while the server's RSS is sampled.
//
// It fails (exit 1) when a read returns a byte that was never written
// there, the snapshot loses an origin pre-image, memory keeps growing or
// passes -rss-limit, or after the load connections, requests, goroutines or
// descriptors are left over. `make soak` runs it for 10 minutes.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"snaplab/scenarios/cmdtest"
)

func main() {
	duration := flag.Duration("duration", 10*time.Minute, "how long the load runs")
	clients := flag.Int("clients", 64, "verifying clients")
	floods := flag.Int("floods", 8, "flooding clients")
	seed := flag.Uint64("seed", 1, "seed of the clients' choices")
	rssLimit := flag.Int64("rss-limit", 2048, "the server's peak RSS limit, MiB")
	progress := flag.Duration("progress", 30*time.Second, "how often to print a progress line")
	bin := flag.String("bin", "", "the snaplab binary (default: build it)")
	flag.Parse()
	if *bin == "" {
		dir, err := os.MkdirTemp("", "snaplab-soak-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "snaplab-soak:", err)
			os.Exit(1)
		}
		defer os.RemoveAll(dir)
		if *bin, err = cmdtest.Build(dir); err != nil {
			fmt.Fprintln(os.Stderr, "snaplab-soak:", err)
			os.Exit(1)
		}
	}
	abs, _ := filepath.Abs(*bin)
	res, err := Run(context.Background(), Config{Bin: abs, Duration: *duration, Clients: *clients, Floods: *floods,
		Seed: *seed, RSSLimit: *rssLimit << 20, Log: os.Stdout, Progress: *progress})
	if err != nil {
		fmt.Fprintln(os.Stderr, "snaplab-soak:", err)
		os.Exit(1)
	}
	Print(os.Stdout, *duration, res)
	if len(res.Problems) > 0 {
		os.Exit(1)
	}
}
