package shexport

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"snaplab/sim/pattern"
	"snaplab/sim/script"
)

var update = flag.Bool("update", false, "rewrite the golden scripts in testdata/")

// goldens are library scenarios whose scripts are kept in testdata/: a
// handover with EIO, a fault on a range, buffered I/O with a failed
// write-back, async I/O across a suspend, listings and held opens.
var goldens = []string{"h1-handover-basic", "cow-read-error-no-invalidate", "buffered-fsync-eio",
	"suspend-drains-and-queues-io", "dmsetup-remove-held-open", "ctr-missing-device"}

// squeezeBlobs replaces each embedded base64 blob's body by its SHA-256.
func squeezeBlobs(b []byte) []byte {
	var out bytes.Buffer
	lines := strings.SplitAfter(string(b), "\n")
	for i := 0; i < len(lines); i++ {
		out.WriteString(lines[i])
		if !strings.HasPrefix(lines[i], "base64 -d >") {
			continue
		}
		h := sha256.New()
		for i+1 < len(lines) && lines[i+1] != "SL_BLOB\n" {
			i++
			h.Write([]byte(lines[i]))
		}
		fmt.Fprintf(&out, "(base64 with sha256 %x)\n", h.Sum(nil))
	}
	return out.Bytes()
}

func library(t testing.TB, name string) *script.Scenario {
	t.Helper()
	sc, err := script.ParseFile(filepath.Join("..", "..", "scenarios", "library", name+".scn"))
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

func TestGolden(t *testing.T) {
	for _, name := range goldens {
		t.Run(name, func(t *testing.T) {
			got, err := Export(library(t, name), Options{})
			if err != nil {
				t.Fatal(err)
			}
			again, err := Export(library(t, name), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, again) {
				t.Fatal("two exports of the same scenario differ")
			}
			// The embedded pattern data is kept out of the golden file as
			// its hash: it is sim/pattern's, checked by TestBlobsExact.
			got = squeezeBlobs(got)
			golden := filepath.Join("testdata", name+".sh")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("export of %s differs from %s (go test ./sim/shexport -update rewrites it)", name, golden)
			}
		})
	}
}

// TestLibrarySyntax exports every library scenario the script can express
// and checks it with bash -n; the others must fail with an *Error.
func TestLibrarySyntax(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	lib, _ := filepath.Glob(filepath.Join("..", "..", "scenarios", "library", "*.scn"))
	if len(lib) == 0 {
		t.Fatal("no library scenarios")
	}
	exported := 0
	for _, path := range lib {
		sc, err := script.ParseFile(path)
		if err != nil {
			t.Fatal(err)
		}
		b, err := Export(sc, Options{})
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Errorf("%s: %v (not an *Error)", sc.Name, err)
			}
			continue
		}
		exported++
		f := filepath.Join(t.TempDir(), sc.Name+".sh")
		if err := os.WriteFile(f, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bash, "-n", f).CombinedOutput(); err != nil {
			t.Errorf("%s: bash -n: %v\n%s", sc.Name, err, out)
		}
	}
	if exported < len(lib)/2 {
		t.Errorf("only %d of %d library scenarios exported", exported, len(lib))
	}
}

func TestRefused(t *testing.T) {
	cases := []struct{ name, text, want string }{
		{"count", "disk d 1MiB\nfault d write eio count=1\n", "count:2: fault d write eio count=1: count=1"},
		{"after", "disk d 1MiB\nfault d read eio after=2\n", "after=2"},
		{"ratio", "disk d 1MiB\nfault d any eio ratio=1/50\n", "ratio=1/50"},
		{"errno", "disk d 1MiB\nfault d write enospc\n", "ENOSPC"},
		{"flush", "disk d 1MiB\nfault d flush eio\n", "flush rule"},
		{"image", "disk d 1MiB image=x.img\n", "image="},
		{"major", "disk d 1MiB\ndmsetup info -j 253 -m 0\n", "device numbers"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sc, err := script.Parse(c.name, c.text)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Export(sc, Options{})
			var e *Error
			if !errors.As(err, &e) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an *Error containing %q", err, c.want)
			}
		})
	}
}

// TestBlobsExact decodes the data each write of an exported script sends
// and compares it with sim/pattern's bytes for that pattern and offset.
func TestBlobsExact(t *testing.T) {
	sc, err := script.Parse("blobs", `disk d 1MiB
write d 0 4KiB pattern=A
write d 3584 1536 pattern=B
write d 0 4KiB pattern=A
write d 8KiB 4KiB pattern=A buffered
`)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Export(sc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	blobs := map[string][]byte{}
	for _, chunk := range strings.Split(text, "base64 -d >\"$SL_TMP/")[1:] {
		name, rest, _ := strings.Cut(chunk, "\"")
		_, body, _ := strings.Cut(rest, "\n")
		body, _, _ = strings.Cut(body, "SL_BLOB\n")
		data, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(body, "\n", ""))
		if err != nil {
			t.Fatalf("blob %s: %v", name, err)
		}
		blobs[name] = data
	}
	if len(blobs) != 3 {
		t.Fatalf("%d blobs, want 3 (the repeated write shares one)", len(blobs))
	}
	writes := regexp.MustCompile(`sl_iostep write \S+ ([0-9]+) ([0-9]+) "\$SL_TMP/(b[0-9]+)"`).FindAllStringSubmatch(text, -1)
	if len(writes) != 4 {
		t.Fatalf("%d writes in the script, want 4", len(writes))
	}
	pats := []string{"A", "B", "A", "A"}
	for i, w := range writes {
		off, _ := strconv.ParseInt(w[1], 10, 64)
		n, _ := strconv.ParseInt(w[2], 10, 64)
		want := make([]byte, n)
		pattern.Fill(want, pats[i], off)
		if !bytes.Equal(blobs[w[3]], want) {
			t.Errorf("write %d (%s at %d, %d bytes): blob %s is not the pattern's data", i, pats[i], off, n, w[3])
		}
	}
}

// FuzzExport: any scenario that parses exports to a script or fails with
// an *Error naming a line, never panics, and exports the same twice.
func FuzzExport(f *testing.F) {
	for _, name := range goldens {
		sc := library(f, name)
		f.Add(sc.Text)
	}
	f.Add("disk d 1MiB\nfault d read eio off=1KiB len=1KiB\nfault d write eio\nfault d clear read.eio\nread d 0 4KiB\n")
	f.Add("disk d 1MiB\ndmsetup create x --table \"0 8 linear 254:0 0\\n8 8 linear 253:7 0\" -u U\ndmsetup ls --target linear\n")
	f.Fuzz(func(t *testing.T, text string) {
		sc, err := script.Parse("fuzz", text)
		if err != nil || len(sc.Steps) > 64 {
			return
		}
		for _, st := range sc.Steps {
			if st.Kind == script.KDisk && st.Size > 64<<20 || st.Len > 1<<20 {
				return // keep each input cheap
			}
		}
		a, err := Export(sc, Options{})
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Line <= 0 {
				t.Fatalf("error %v is not an *Error naming a line", err)
			}
			return
		}
		b, _ := Export(sc, Options{})
		if !bytes.Equal(a, b) {
			t.Fatal("two exports differ")
		}
	})
}
