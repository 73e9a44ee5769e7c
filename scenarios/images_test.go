// COW images moving between runs, through the snaplab command as a user
// runs it: a scenario builds a persistent snapshot and `run -dump`s its
// disks; a second scenario starts its disks from those images (image=) and
// must find the same exceptions, status, data and on-disk table.
package scenarios_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"snaplab/scenarios/cmdtest"
)

// persistentStatus is what `dmsetup status` prints for a valid persistent
// snapshot holding n exceptions at chunk size chunk (sectors) on a COW of
// cowSectors, per docs/cow-format.md §2.3 and §2.10: exception i is
// entry i%E of area i/E, E = chunk*512/16; area k is chunk 1+(E+1)k and
// its data chunks follow it, so next_free = 1+(E+1)(n/E)+1+n%E and
// current_area = n/E (a full area's commit moves on to the next).
func persistentStatus(length, n, chunk, cowSectors uint64) string {
	e := chunk * 512 / 16
	nextFree := 1 + (e+1)*(n/e) + 1 + n%e
	return fmt.Sprintf("0 %d snapshot %d/%d %d", length, nextFree*chunk, cowSectors, (n/e+2)*chunk)
}

var _ = Describe("COW images between runs (snaplab run -dump, image=)", Label("sim"), Ordered, ContinueOnFailure, func() {
	var dir, bin string

	BeforeAll(func() {
		dir = GinkgoT().TempDir()
		var err error
		bin, err = cmdtest.Build(dir)
		Expect(err).NotTo(HaveOccurred())
	})

	// snaplabIn runs the command in directory wd and returns stdout,
	// stderr and the exit status; snaplab runs it in dir.
	snaplabIn := func(wd string, args ...string) (string, string, int) {
		r, err := cmdtest.Run(context.Background(), bin, wd, nil, args...)
		Expect(err).NotTo(HaveOccurred())
		return r.Stdout, r.Stderr, r.Code
	}
	snaplab := func(args ...string) (string, string, int) { return snaplabIn(dir, args...) }
	scenario := func(rel, text string) string {
		p := filepath.Join(dir, rel)
		Expect(os.MkdirAll(filepath.Dir(p), 0o755)).To(Succeed())
		Expect(os.WriteFile(p, []byte(text), 0o644)).To(Succeed())
		return rel
	}
	mustRun := func(args ...string) string {
		out, errs, code := snaplab(args...)
		Expect(code).To(Equal(0), "snaplab %s:\n%s\n%s", strings.Join(args, " "), out, errs)
		return out
	}
	// cowTable is `snaplab cow IMAGE` without the file name.
	cowTable := func(img string) string {
		out := mustRun("cow", img)
		Expect(out).To(HavePrefix(img + ": "))
		return strings.TrimPrefix(out, img+": ")
	}
	read := func(rel string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, rel))
		Expect(err).NotTo(HaveOccurred())
		return b
	}

	It("a persistent snapshot's exceptions, status, data and table come back from its images; replay checks the files", func() {
		// 5 exceptions at chunk 8 (E=256): next_free 7, area 0.
		status := persistentStatus(16384, 5, 8, 4096)
		Expect(status).To(Equal("0 16384 snapshot 56/4096 16"))
		mustRun("run", "-q", "-record", "recs", "-dump", "img", scenario("make/rt.scn", `disk origin 8MiB
disk cow 2MiB
write origin 0 1MiB pattern=O
dmsetup create snap --table "0 16384 snapshot origin cow P 8"
dmsetup create base --table "0 16384 snapshot-origin origin"
write snap 0 4KiB pattern=S
write base 40KiB 8KiB pattern=B
write snap 512KiB 4KiB pattern=T
write base 2MiB 4KiB pattern=C
dmsetup status snap expect="`+status+`"
`))
		// Relative image paths are relative to the scenario's directory;
		// these are outside its tree (../), which takes -images-anywhere.
		load := scenario("load/rt-load.scn", `disk origin 8MiB image=../img/rt/origin.img
disk cow 2MiB image=../img/rt/cow.img
dmsetup create snap --table "0 16384 snapshot origin cow P 8"
log none
dmsetup status snap expect="`+status+`"
dmsetup create base --table "0 16384 snapshot-origin origin"
read snap 0 4KiB expect=S
read snap 4KiB 36KiB expect=O
read snap 40KiB 8KiB expect=O
read snap 48KiB 464KiB expect=O
read snap 512KiB 4KiB expect=T
read snap 516KiB 508KiB expect=O
read snap 2MiB 4KiB expect=zero
read origin 0 40KiB expect=O
read origin 40KiB 8KiB expect=B
read origin 48KiB 976KiB expect=O
read origin 2MiB 4KiB expect=C
read origin 4MiB 4KiB expect=zero
`)
		_, errs, code := snaplab("run", "-record", "recs", load)
		Expect(code).To(Equal(1))
		Expect(errs).To(ContainSubstring("disk origin: image img/rt/origin.img is outside the scenario's directory"))
		Expect(errs).To(ContainSubstring("-images-anywhere"))
		mustRun("run", "-q", "-images-anywhere", "-record", "recs", "-dump", "img2", load)
		// The loading run recorded the scenario's directory and each
		// image's path as written, with its digest ...
		rec := string(read("recs/rt-load.jsonl"))
		Expect(rec).To(ContainSubstring(fmt.Sprintf(`,"dir":%q}`, filepath.Join(dir, "load"))))
		for _, d := range []string{"origin", "cow"} {
			img := filepath.Join("img", "rt", d+".img")
			Expect(rec).To(ContainSubstring(fmt.Sprintf(`"stdout":%q,"data":"sparse-sha256:%x"`, "../"+img, imageDigest(read(img)))))
		}
		// ... its disks are byte for byte the images it loaded (the ctr
		// of a valid store writes nothing) ...
		Expect(read("img2/rt-load/cow.img")).To(Equal(read("img/rt/cow.img")))
		Expect(read("img2/rt-load/origin.img")).To(Equal(read("img/rt/origin.img")))
		// ... and `snaplab cow` shows the same table.
		table := cowTable("img/rt/cow.img")
		Expect(table).To(ContainSubstring("usage 56/4096 16, next_free 7, current area 0 (5 committed)\n5 exceptions"))
		Expect(cowTable("img2/rt-load/cow.img")).To(Equal(table))

		// Replay reads the same files, from any working directory:
		// identical while they are unchanged, a clear error when one
		// changed or is gone.
		recPath := filepath.Join(dir, "recs/rt-load.jsonl")
		_, errs, code = snaplab("replay", recPath)
		Expect(code).To(Equal(1))
		Expect(errs).To(ContainSubstring("is outside the scenario's directory"))
		Expect(errs).To(ContainSubstring("-images-anywhere"))
		for _, wd := range []string{dir, filepath.Join(dir, "load"), "/"} {
			out, errs, code := snaplabIn(wd, "replay", "-images-anywhere", recPath)
			Expect(code).To(Equal(0), "replay in %s: %s", wd, errs)
			Expect(out).To(HavePrefix("IDENTICAL"))
		}
		cow := filepath.Join(dir, "img/rt/cow.img")
		orig := read("img/rt/cow.img")
		changed := bytes.Clone(orig)
		changed[4096+16] ^= 1 // entry 1's old_chunk
		Expect(os.WriteFile(cow, changed, 0o644)).To(Succeed())
		_, errs, code = snaplab("replay", "-images-anywhere", "recs/rt-load.jsonl")
		Expect(code).To(Equal(1))
		Expect(errs).To(MatchRegexp(`recording line \d+: disk cow: image %s changed since the recording: its content is sparse-sha256:[0-9a-f]{64}, the recording has sparse-sha256:%x`, regexp.QuoteMeta(cow), imageDigest(orig)))
		Expect(os.Remove(cow)).To(Succeed())
		_, errs, code = snaplab("replay", "-images-anywhere", "recs/rt-load.jsonl")
		Expect(code).To(Equal(1))
		Expect(errs).To(ContainSubstring("disk cow: image " + cow + ": no such file or directory"))
	})

	It("an invalidated (full) COW reloads as Invalid with the kernel's message", func() {
		mustRun("run", "-q", "-record", "recs", "-dump", "img", scenario("make/full.scn", `disk origin 64MiB
disk cow 12KiB
dmsetup create snap --table "0 131072 snapshot origin cow P 8"
dmsetup create base --table "0 131072 snapshot-origin origin"
write base 0 4KiB pattern=A
write base 40KiB 4KiB pattern=B
log expect="device-mapper: snapshots: Invalidating snapshot: Unable to allocate exception."
dmsetup status snap expect="0 131072 snapshot Invalid"
`))
		Expect(cowTable("img/full/cow.img")).To(HavePrefix("magic 0x70416e53 valid 0 version 1 chunk_size 8 sectors"))
		mustRun("run", "-q", "-images-anywhere", "-record", "recs", scenario("load/full-load.scn", `disk origin 64MiB image=../img/full/origin.img
disk cow 12KiB image=../img/full/cow.img
dmsetup create snap --table "0 131072 snapshot origin cow P 8" log="device-mapper: snapshots: Snapshot is marked invalid."
dmsetup status snap expect="0 131072 snapshot Invalid"
read snap 0 4KiB expect=EIO
dmsetup create base --table "0 131072 snapshot-origin origin"
read base 0 4KiB expect=A
read base 40KiB 4KiB expect=B
`))
		Expect(mustRun("replay", "-images-anywhere", "recs/full-load.jsonl")).To(HavePrefix("IDENTICAL"))
	})

	for _, chunk := range []uint64{1, 2} {
		chunk := chunk
		It(fmt.Sprintf("a COW with thousands of exceptions over many metadata areas (chunk %d) reloads with its status and data", chunk), func() {
			// 2000 origin chunks copied, 600 snapshot chunks written.
			n := uint64(2600)
			e := chunk * 512 / 16
			cs := int64(chunk * 512)
			baseLen, snapLen := 2000*cs, 600*cs
			status := persistentStatus(16384, n, chunk, 8192)
			name := fmt.Sprintf("areas%d", chunk)
			mustRun("run", "-q", "-record", "recs", "-dump", "img", scenario("make/"+name+".scn", fmt.Sprintf(`disk origin 8MiB
disk cow 4MiB
write origin 0 4MiB pattern=O
dmsetup create snap --table "0 16384 snapshot origin cow P %d"
dmsetup create base --table "0 16384 snapshot-origin origin"
write base 0 %d pattern=B
write snap 2MiB %d pattern=S
dmsetup status snap expect="%s"
`, chunk, baseLen, snapLen, status)))
			table := cowTable("img/" + name + "/cow.img")
			m := regexp.MustCompile(`current area (\d+) \((\d+) committed\)\n(\d+) exceptions`).FindStringSubmatch(table)
			Expect(m).NotTo(BeNil(), table)
			Expect(m[1:]).To(Equal([]string{strconv.FormatUint(n/e, 10), strconv.FormatUint(n%e, 10), strconv.FormatUint(n, 10)}))
			Expect(n / e).To(BeNumerically(">", 3))

			// One more origin chunk after the load continues the
			// partly full area.
			more := persistentStatus(16384, n+1, chunk, 8192)
			mustRun("run", "-q", "-images-anywhere", "-record", "recs", "-dump", "img2", scenario("load/"+name+"-load.scn", fmt.Sprintf(`disk origin 8MiB image=../img/%[1]s/origin.img
disk cow 4MiB image=../img/%[1]s/cow.img
dmsetup create snap --table "0 16384 snapshot origin cow P %[2]d"
log none
dmsetup status snap expect="%[3]s"
dmsetup create base --table "0 16384 snapshot-origin origin"
read snap 0 %[4]d expect=O
read snap %[4]d %[5]d expect=O
read snap 2MiB %[6]d expect=S
read snap %[7]d %[8]d expect=O
read origin 0 %[4]d expect=B
read origin %[4]d %[5]d expect=O
write base 3MiB %[9]d pattern=C
dmsetup status snap expect="%[10]s"
read snap 3MiB %[9]d expect=O
read origin 3MiB %[9]d expect=C
`, name, chunk, status, baseLen, 2<<20-baseLen, snapLen, 2<<20+snapLen, 2<<20-snapLen, cs, more)))
			after := cowTable("img2/" + name + "-load/cow.img")
			Expect(after).To(ContainSubstring(fmt.Sprintf("%d exceptions", n+1)))
			// The loaded entries are unchanged; the new one is appended.
			Expect(entries(after)[:n]).To(Equal(entries(table)))
			Expect(mustRun("replay", "-images-anywhere", "recs/"+name+"-load.jsonl")).To(HavePrefix("IDENTICAL"))
		})
	}

	It("a bad image is a clear error naming the line, the file and the sizes", func() {
		Expect(os.WriteFile(filepath.Join(dir, "big.img"), make([]byte, 2<<20), 0o644)).To(Succeed())
		_, errs, code := snaplab("run", "-record", "", scenario("bad-large.scn", "disk origin 8MiB\ndisk cow 1MiB image=big.img\n"))
		Expect(code).To(Equal(1))
		Expect(errs).To(ContainSubstring("line 2: disk cow 1MiB image=big.img\n    disk cow: image big.img is 2097152 bytes, larger than the disk (1048576 bytes)"))
		_, errs, code = snaplab("run", "-record", "", scenario("sub/bad-missing.scn", "disk cow 1MiB image=gone.img\n"))
		Expect(code).To(Equal(1))
		Expect(errs).To(ContainSubstring("line 1: disk cow 1MiB image=gone.img\n    disk cow: image sub/gone.img: no such file or directory"))
		out, errs, code := snaplab("run", "-record", "", scenario("bad-parse.scn", "disk cow 1MiB image=\n"))
		Expect(code).To(Equal(1))
		Expect(errs + out).To(ContainSubstring(`bad-parse.scn:1: disk cow: invalid image="" (want the path of a raw image file)`))
	})
})

// entries are the exception lines of `snaplab cow` output.
func entries(table string) []string {
	var out []string
	for _, l := range strings.Split(table, "\n") {
		if strings.HasPrefix(l, "  area ") {
			out = append(out, l)
		}
	}
	return out
}

// imageDigest is the digest a recording holds of an image (without its
// "sparse-sha256:"), from its definition in scenarios/README.md: SHA-256 of
// the size, then each sector holding a non-zero byte, as its index and its
// bytes.
func imageDigest(b []byte) []byte {
	h := sha256.New()
	h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(b))))
	zero := make([]byte, 512)
	for i := 0; i < len(b); i += 512 {
		sec := make([]byte, 512)
		copy(sec, b[i:])
		if !bytes.Equal(sec, zero) {
			h.Write(binary.BigEndian.AppendUint64(nil, uint64(i/512)))
			h.Write(sec)
		}
	}
	return h.Sum(nil)
}
