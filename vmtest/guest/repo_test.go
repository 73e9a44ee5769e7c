package guest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFindRepo(t *testing.T) {
	here, err := RepoRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SNAPLAB_REPO", "")
	if r, err := FindRepo(); err != nil || r != here {
		t.Fatalf("inside the tree: %q %v, want %q", r, err, here)
	}
	// Outside the tree: the tree the test binary was built from.
	t.Chdir(t.TempDir())
	if r, err := FindRepo(); err != nil || r != here {
		t.Fatalf("outside the tree: %q %v, want %q", r, err, here)
	}
	// SNAPLAB_REPO names the tree; a wrong one is an error that says so.
	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, "go.mod"), []byte("module snaplab\n\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SNAPLAB_REPO", filepath.Join(other))
	if r, err := FindRepo(); err != nil || r != other {
		t.Fatalf("SNAPLAB_REPO: %q %v, want %q", r, err, other)
	}
	t.Setenv("SNAPLAB_REPO", "/nonexistent")
	if _, err := FindRepo(); err == nil || !strings.Contains(err.Error(), "SNAPLAB_REPO=/nonexistent: no snaplab go.mod above") {
		t.Fatalf("bad SNAPLAB_REPO: %v", err)
	}
}
