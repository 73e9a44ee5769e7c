package script

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "base.scn")
	if err := os.WriteFile(path, []byte("disk a 1MiB image=a.img\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sc, err := ParseFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if sc.Name != "base" || sc.Dir != dir {
		t.Fatalf("name %q dir %q, want base and %s", sc.Name, sc.Dir, dir)
	}
	if got := sc.ImagePath(&sc.Steps[0]); got != filepath.Join(dir, "a.img") {
		t.Fatalf("image path %s, want it next to the scenario file", got)
	}
	if _, err := ParseFile(filepath.Join(dir, "missing.scn")); err == nil || !strings.Contains(err.Error(), "missing.scn") {
		t.Fatalf("missing file: %v, want an error naming it", err)
	}
	bad := filepath.Join(dir, "bad.scn")
	if err := os.WriteFile(bad, []byte("disk a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseFile(bad); err == nil || !strings.Contains(err.Error(), "bad.scn:1") {
		t.Fatalf("bad file: %v, want an error naming file and line", err)
	}
}
