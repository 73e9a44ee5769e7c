package sidecar

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"snaplab/sim/record"
)

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// Blobs written to a sidecar read back by name; the same content is
// stored once; compressible content is compressed, random content is not
// inflated.
func TestBlobsRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.blobs")
	bw, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	var ids []record.BlobID
	var want [][]byte
	for i := 0; i < 200; i++ {
		var d []byte
		switch i % 3 {
		case 0:
			d = randomBytes(r, 4096)
		case 1:
			d = bytes.Repeat([]byte("snaplab "), 512+i)
		default:
			d = want[len(want)-2] // a duplicate of the random one
		}
		ids = append(ids, bw.Put(d))
		want = append(want, d)
	}
	big := randomBytes(r, 8<<20)
	ids = append(ids, bw.Put(big))
	want = append(want, big)
	if err := bw.Close(); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	// Random content once each, the text at most a twentieth of its size.
	var random, text int64
	seen := map[record.BlobID]bool{}
	for i, id := range ids {
		switch {
		case seen[id]:
		case i%3 == 1:
			text += int64(len(want[i]))
		default:
			random += int64(len(want[i]))
		}
		seen[id] = true
	}
	if limit := random + text/20 + int64(len(seen))*record.BlobHeaderLen + int64(len(record.BlobMagic)); fi.Size() > limit {
		t.Errorf("sidecar %d bytes, more than %d for %d bytes of random content and %d of text: duplicates stored, or text not compressed", fi.Size(), limit, random, text)
	}
	rd, err := record.OpenBlobs(path)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if rd.Len() != 1+67+67 {
		t.Errorf("%d distinct blobs, want %d", rd.Len(), 1+67+67)
	}
	for i, id := range ids {
		got, err := rd.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want[i]) {
			t.Fatalf("blob %d (%s): content differs", i, id)
		}
	}
	if _, err := rd.Get(record.IDOf([]byte("never written"))); err == nil || !strings.Contains(err.Error(), "not in sidecar") {
		t.Errorf("unknown blob: %v", err)
	}
}

// A sidecar cut short (a crash while it was written) serves its complete
// frames; a damaged one says where, and what.
func TestBlobsDamaged(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "r.blobs")
	bw, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	a, b := randomBytes(r, 1000), randomBytes(r, 1000)
	ia, ib := bw.Put(a), bw.Put(b)
	if err := bw.Close(); err != nil {
		t.Fatal(err)
	}
	full, _ := os.ReadFile(path)

	cut := filepath.Join(dir, "cut.blobs")
	os.WriteFile(cut, full[:len(full)-10], 0o644)
	rd, err := record.OpenBlobs(cut)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := rd.Get(ia); err != nil || !bytes.Equal(got, a) {
		t.Errorf("first blob of a cut sidecar: %v", err)
	}
	if _, err := rd.Get(ib); err == nil {
		t.Error("the cut blob was served")
	}
	rd.Close()

	for _, tc := range []struct {
		name string
		mod  func([]byte) []byte
		want string
	}{
		{"magic", func(p []byte) []byte { p[0] = 'X'; return p }, "not a snaplab blob file"},
		{"frame type", func(p []byte) []byte { p[len(record.BlobMagic)] = 'Q'; return p }, "offset 16: frame type 0x51"},
		{"method", func(p []byte) []byte { p[len(record.BlobMagic)+25] = 9; return p }, "offset 16: method 9"},
	} {
		p := filepath.Join(dir, tc.name+".blobs")
		os.WriteFile(p, tc.mod(append([]byte(nil), full...)), 0o644)
		_, err := record.OpenBlobs(p)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	// Content that does not match its name.
	bad := append([]byte(nil), full...)
	bad[len(bad)-1] ^= 1
	p := filepath.Join(dir, "flip.blobs")
	os.WriteFile(p, bad, 0o644)
	rd, err = record.OpenBlobs(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rd.Get(ib); err == nil || !strings.Contains(err.Error(), "does not match its name") {
		t.Errorf("flipped byte: %v", err)
	}
	rd.Close()
}

// FuzzOpenBlobs: any file is indexed or refused with an error, never a
// panic, and whatever is served matches its name.
func FuzzOpenBlobs(f *testing.F) {
	dir := f.TempDir()
	path := filepath.Join(dir, "seed.blobs")
	bw, _ := Create(path)
	bw.Put([]byte("hello"))
	bw.Put(bytes.Repeat([]byte{7}, 3000))
	bw.Close()
	seed, _ := os.ReadFile(path)
	f.Add(seed)
	f.Add([]byte(record.BlobMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "f.blobs")
		os.WriteFile(p, b, 0o644)
		rd, err := record.OpenBlobs(p)
		if err != nil {
			return
		}
		defer rd.Close()
		for _, id := range rd.IDs() {
			if d, err := rd.Get(id); err == nil && record.IDOf(d) != id {
				t.Fatalf("served content that does not match %s", id)
			}
		}
	})
}

func TestSidecarPathNames(t *testing.T) {
	for in, want := range map[string]string{"a/b.jsonl": "a/b.blobs", "x": "x.blobs", ".jsonl": ".jsonl.blobs"} {
		if got := record.SidecarPath(in); got != want {
			t.Errorf("SidecarPath(%q) = %q, want %q", in, got, want)
		}
	}
}
