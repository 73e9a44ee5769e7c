package main

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"snaplab/scenarios/cmdtest"
)

// TestSoakShort is the soak in miniature: the same clients, floods, resets
// and churn against the built command for a few seconds. `make soak` runs
// it for 10 minutes.
func TestSoakShort(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	bin, err := cmdtest.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), Config{Bin: bin, Duration: 15 * time.Second, Clients: 24, Floods: 3,
		Seed: 7, RSSLimit: 2 << 30})
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	Print(&out, 15*time.Second, res)
	t.Log("\n" + out.String())
	if len(res.Problems) > 0 {
		t.Fatalf("soak found problems:\n%s", out.String())
	}
	if res.Ops < 100 || res.BytesVerified == 0 || res.Floods == 0 || res.Suspends == 0 || res.Aborts == 0 {
		t.Fatalf("the load did not happen: %+v", res)
	}
}

// TestEndedDialDeadline: a dial cut short by the load's deadline is the
// load's end even when the context has not yet reported it (CI saw
// "dial unix ...: i/o timeout" counted as a problem).
func TestEndedDialDeadline(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", dir+"/s")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	_, derr := (&net.Dialer{}).DialContext(ctx, "unix", dir+"/s")
	if derr == nil {
		t.Fatal("a dial with an expired deadline succeeded")
	}
	if !ended(context.Background(), derr) {
		t.Fatalf("ended(%v) = false for a dial that ran into its deadline", derr)
	}
	if ended(context.Background(), errors.New("dial unix x: connection refused")) {
		t.Fatal("a refused dial counted as the load's end")
	}
}
