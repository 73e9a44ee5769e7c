package main

import (
	"context"
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
