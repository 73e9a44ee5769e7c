package exstore

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestInspect(t *testing.T) {
	// Fresh (all zero) image.
	dev := newMem("cow", 8192)
	im, err := Inspect(dev)
	if err != nil || !im.Fresh || len(dev.ops) != 1 {
		t.Fatalf("Inspect(zero) = %+v, %v; ops %v", im, err, dev.ops)
	}
	// A hand-built image with defects the kernel would load anyway.
	dev = newMem("cow", 40*512)
	dev.load(image(40*512, 1, Header{Magic, 1, 1, 1}, map[uint64][]pair{
		0: {{1, 2}, {2, 34}, {3, 2}, {1, 99}, {4, 5}},
	}))
	im, err = Inspect(dev)
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Exceptions) != 5 || im.CurrentArea != 0 || im.CurrentCommitted != 5 || im.NextFree != 101 {
		t.Errorf("Inspect = %d exceptions, area %d committed %d next_free %d", len(im.Exceptions), im.CurrentArea, im.CurrentCommitted, im.NextFree)
	}
	if x := im.Exceptions[3]; x.Off != 512+48 || x.Area != 0 || x.Index != 3 {
		t.Errorf("exception 3 = %+v, want offset 560 index 3", x)
	}
	want := []string{
		"area 0 entry 1 (byte offset 528): new_chunk 34 is metadata area 1",
		"area 0 entry 2 (byte offset 544): new_chunk 2 already used by the entry at byte offset 512",
		"area 0 entry 3 (byte offset 560): new_chunk 99 is beyond the device end (40 chunks)",
		"area 0 entry 3 (byte offset 560): old_chunk 1 already mapped by the entry at byte offset 512",
	}
	if got := im.Problems(); !slices.Equal(got, want) {
		t.Errorf("Problems\n got %q\nwant %q", got, want)
	}
	if u := usage(im); u != "101/40 2" {
		t.Errorf("Usage %s, want 101/40 2 (max new_chunk 99, +1, then skip_metadata: 100 %% 33 == 1)", u)
	}
	if len(dev.ops) != 2 || !strings.HasPrefix(dev.ops[0], "read") || !strings.HasPrefix(dev.ops[1], "read") {
		t.Errorf("Inspect did other I/O than reads: %v", dev.ops)
	}
	// Errors name the offset; the header is still returned.
	dev.load(image(40*512, 1, Header{Magic, 1, 7, 1}, nil))
	im, err = Inspect(dev)
	if err == nil || im == nil || im.Header.Version != 7 || !strings.Contains(err.Error(), "header at byte offset 8") {
		t.Errorf("Inspect(version 7) = %+v, %v", im, err)
	}
	if _, err := Inspect(newMem("tiny", 0)); err == nil {
		t.Errorf("Inspect of an empty device succeeded")
	}
}

// fuzzDev makes a COW from fuzz bytes: at least one sector, at most 64 KiB.
func fuzzDev(data []byte) *memDev {
	size := int64(len(data)+511) / 512 * 512
	size = min(max(size, 512), 64<<10)
	d := newMem("cow", size)
	d.load(data[:min(int64(len(data)), size)])
	return d
}

func FuzzReadMetadata(f *testing.F) {
	// Seeds: each golden-test image, a fresh one, garbage.
	for _, build := range []func() []byte{
		func() []byte {
			return image(64<<10, 8, Header{Magic, 1, 1, 8}, map[uint64][]pair{0: {{5, 2}, {17, 3}}})
		},
		func() []byte { return image(20*512, 1, Header{Magic, 1, 1, 1}, map[uint64][]pair{0: {{1, 2}}}) },
		func() []byte { return image(6*512, 1, Header{Magic, 0, 1, 1}, nil) },
		func() []byte { return make([]byte, 1024) },
		func() []byte { return []byte("SnAp\x01\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00") },
	} {
		f.Add(build(), uint8(3), uint8(0))
	}
	f.Add([]byte("\xff\xff\xff\xff"), uint8(0), uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, chunkSel, lbsSel uint8) {
		dev := fuzzDev(data)
		chunk := []string{"0", "1", "2", "8", "16", "32"}[int(chunkSel)%6]
		lbs := uint32(512) << (lbsSel % 4)
		s, err := New([]string{"P", chunk}, dev, lbs, func(level, prefix, msg string) {
			if msg == "" || prefix != PrefixPersistent {
				t.Errorf("bad log line %q %q %q", level, prefix, msg)
			}
		})
		if err != nil {
			var ce *CtrError
			if !errors.As(err, &ce) {
				t.Fatalf("New: %v is not a CtrError", err)
			}
			return
		}
		var got []pair
		inv, err := s.ReadMetadata(func(o, n uint64) error { got = append(got, pair{o, n}); return nil })
		if err != nil {
			var me *MetadataError
			if !errors.As(err, &me) || me.Off < 0 || me.Msg == "" || me.Errno == 0 || !strings.Contains(err.Error(), "byte offset") {
				t.Fatalf("ReadMetadata error %v: want a MetadataError naming the offset", err)
			}
			return
		}
		// A successful load agrees with Inspect. (Inspect also decodes the
		// table of an invalidated image, which the kernel skips, so it may
		// fail there on an area.)
		im, ierr := Inspect(dev)
		if ierr != nil && (!inv || im == nil) {
			t.Fatalf("ReadMetadata succeeded but Inspect fails: %v", ierr)
		}
		if inv != (im.Header.Valid == 0) {
			t.Fatalf("invalid=%v but header valid=%d", inv, im.Header.Valid)
		}
		if !inv {
			var fromImage []pair
			for _, x := range im.Exceptions {
				fromImage = append(fromImage, pair{x.Old, x.New})
			}
			if !slices.Equal(got, fromImage) || usage(s) != usage(im) {
				t.Fatalf("ReadMetadata %v usage %s; Inspect %v usage %s", got, usage(s), fromImage, usage(im))
			}
		}
		// Keep going: a few prepares and commits never panic.
		for i := range 3 {
			c, err := s.Prepare()
			if err != nil {
				break
			}
			s.Commit(uint64(i), c, true, func(bool) {})
		}
		// And merging back never panics either.
		if m, ok := s.(Merger); ok {
			for range 3 {
				_, _, k, err := m.PrepareMerge()
				if err != nil || k == 0 {
					break
				}
				if m.CommitMerge(k) != nil {
					break
				}
			}
		}
		s.Drop()
		im.Problems()
	})
}

func FuzzNew(f *testing.F) {
	for _, s := range []string{"P 8", "PO 16", "N 0", "p 65", "Px 8", "N 4194304", "P +8", "Q 8", "P", ""} {
		f.Add(s, uint16(512))
	}
	known := []string{ErrInsufficientArgs, ErrTypeNotPN, ErrInvalidChunk, ErrNotPowerOf2, ErrNotBlockMultiple, ErrTooHigh, ErrTypeCtrFailed}
	f.Fuzz(func(t *testing.T, line string, lbs uint16) {
		args := strings.Split(line, " ")
		if line == "" {
			args = nil
		}
		s, err := New(args, newMem("cow", 1<<20), uint32(lbs), nil)
		if err != nil {
			var ce *CtrError
			if !errors.As(err, &ce) || !slices.Contains(known, ce.Reason) {
				t.Fatalf("New(%q): %v is not a kernel store error", args, err)
			}
			return
		}
		if want := string(upper(args[0][0])); s.Type() != want {
			t.Fatalf("New(%q): type %q, want %q", args, s.Type(), want)
		}
		// The table echo parses back to the same store.
		s2, err := New(strings.Fields(s.TableArgs()), newMem("cow", 1<<20), uint32(lbs), nil)
		if err != nil || s2.TableArgs() != s.TableArgs() {
			t.Fatalf("TableArgs %q does not round-trip: %v", s.TableArgs(), err)
		}
	})
}
