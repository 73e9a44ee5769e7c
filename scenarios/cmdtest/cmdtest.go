// Package cmdtest builds the snaplab command and runs it the way a user
// does, for the suites that test it from outside: a binary, arguments, a
// working directory, stdout, stderr and an exit status.
package cmdtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// Build compiles snaplab/cmd/snaplab into dir and returns the binary's path.
func Build(dir string) (string, error) { return BuildTags(dir) }

// BuildTags compiles snaplab/cmd/snaplab with the build tags given (none:
// as Build does) into dir and returns the binary's path, for instance
// BuildTags(dir, "snaplab_plant"): a binary whose explore command can
// plant bugs (sim/plant). A tag that is empty or holds a space or comma is
// an error.
func BuildTags(dir string, tags ...string) (string, error) {
	for _, t := range tags {
		if t == "" || strings.ContainsAny(t, " ,") {
			return "", fmt.Errorf("building snaplab: build tag %q: want one word", t)
		}
	}
	// go test puts its own GOROOT/bin first in the PATH it gives tests
	// (since Go 1.19), so this is the go that runs the test.
	gobin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("building snaplab: %w", err)
	}
	bin := filepath.Join(dir, "snaplab")
	args := []string{"build", "-o", bin}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	args = append(args, "snaplab/cmd/snaplab")
	if out, err := exec.Command(gobin, args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin, nil
}

// Result is how one run of the command ended.
type Result struct {
	Stdout, Stderr string
	Code           int
}

// Run runs bin with args in dir (stdin empty, env as the test's plus env)
// and waits for it; ctx's end kills it. An error means the command could
// not run at all, or was killed.
func Run(ctx context.Context, bin, dir string, env []string, args ...string) (Result, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := Result{Stdout: out.String(), Stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return r, fmt.Errorf("snaplab %v: %w", args, ctx.Err())
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	case err != nil:
		return r, err
	}
	return r, nil
}

// SyncBuffer is a bytes.Buffer safe for a process writing while a test
// reads.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

var _ io.Writer = (*SyncBuffer)(nil)

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
