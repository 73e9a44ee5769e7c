package crash

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"snaplab/sim/block"
	"snaplab/sim/exstore"
	"snaplab/sim/pattern"
)

// maxDumpRead bounds one read line of a dumped scenario.
const maxDumpRead = 4 << 20

// dump writes the state to dir/cut-N/: each disk's crash image as a sparse
// raw file NAME.img, and SCENARIO-cut-N.scn, which loads them (disk NAME
// SIZE image=NAME.img), creates the reloaded devices with their tables,
// checks their status and table as the simulator prints them, and reads
// every chunk of each reloaded device and origin disk, with expect= where
// the simulator read a whole pattern, zeros or an error. It returns the
// scenario's path.
func (st *state) dump(dir string) (string, error) {
	c := st.c
	sub := filepath.Join(dir, fmt.Sprintf("cut-%d", st.cut.Index))
	if err := os.MkdirAll(sub, 0o755); err != nil {
		return "", fmt.Errorf("dump of %s: %w", st.cut, err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Crash state of %s, written by snaplab crash.\n# %s\n", c.sc.Name, strings.ReplaceAll(st.cut.String(), "\n", " "))
	fmt.Fprintf(&b, "# The disks are the crash images; the devices that were live are created again and read.\n")
	sem := c.sc.Semantics
	if c.opts.Semantics != "" {
		sem = c.opts.Semantics
	}
	if sem == "seed" {
		fmt.Fprintf(&b, "semantics %s\n", sem)
	}
	for i, d := range c.disks {
		if err := writeImage(st.images[i], filepath.Join(sub, d.name+".img")); err != nil {
			return "", fmt.Errorf("dump of %s: image of %s: %w", st.cut, d.name, err)
		}
		lbs := ""
		if d.lbs != 0 && d.lbs != block.SectorSize {
			lbs = fmt.Sprintf(" lbs=%d", d.lbs)
		}
		fmt.Fprintf(&b, "disk %s %d%s image=%s.img\n", d.name, d.mem.Size(), lbs, d.name)
	}
	r, err := st.load(st.devs)
	if err != nil {
		return "", err
	}
	for _, rd := range st.devs {
		line := fmt.Sprintf("dmsetup create %s --table %s", rd.name, quote(rd.table))
		if msg, failed := r.failed[rd.name]; failed {
			fmt.Fprintf(&b, "%s exit=1   # %s\n", line, msg)
			continue
		}
		fmt.Fprintln(&b, line)
	}
	var reads []string
	for _, rd := range st.devs {
		if _, failed := r.failed[rd.name]; failed {
			continue
		}
		fmt.Fprintf(&b, "dmsetup status %s expect=%s\n", rd.name, quote(r.status(rd.name)))
		tbl := strings.TrimSuffix(r.ctl.Dmsetup([]string{"table", rd.name}).Stdout, "\n")
		fmt.Fprintf(&b, "dmsetup table %s expect=%s\n", rd.name, quote(tbl))
		if rd.snap != nil || rd.originOf != "" {
			reads = append(reads, rd.name)
		}
	}
	for _, rd := range st.devs {
		if rd.snap == nil {
			continue
		}
		if o := rd.snap.OriginDev().Name(); c.diskNamed(o) != nil && !slices.Contains(reads, o) {
			reads = append(reads, o)
		}
	}
	var want func(off, n int64) bool
	if c.opts.DumpSparse {
		want = st.interesting()
	}
	for _, name := range reads {
		chunk := int64(8)
		for _, rd := range st.devs {
			if rd.name == name && rd.chunk > 0 {
				chunk = rd.chunk
			}
		}
		if err := st.dumpReads(&b, r, name, chunk*block.SectorSize, want); err != nil {
			return "", err
		}
	}
	path := filepath.Join(sub, fmt.Sprintf("%s-cut-%d.scn", c.sc.Name, st.cut.Index))
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return "", fmt.Errorf("dump of %s: %w", st.cut, err)
	}
	return path, nil
}

// dumpReads writes read lines covering device name, a chunk at a time,
// adjacent chunks that read the same kind of data merged.
func (st *state) dumpReads(b *strings.Builder, r *reload, name string, chunk int64, want func(off, n int64) bool) error {
	n := r.ctl.Node(name)
	if n == nil {
		return nil
	}
	size := n.Size()
	buf := make([]byte, chunk)
	runOff, runLen, runKind := int64(0), int64(0), "-"
	flush := func() {
		if runLen == 0 {
			return
		}
		expect := ""
		if runKind != "" {
			expect = " expect=" + runKind
		}
		fmt.Fprintf(b, "read %s %d %d%s\n", name, runOff, runLen, expect)
		runLen = 0
	}
	for off := int64(0); off < size; off += chunk {
		p := buf[:min(chunk, size-off)]
		if want != nil && !want(off, int64(len(p))) {
			flush()
			continue
		}
		kind := ""
		if err := r.read(name, p, off); err != nil {
			kind = block.ErrnoName(block.Errno(err))
		} else {
			kind = st.c.kindOf(p, off)
		}
		if runLen > 0 && (kind != runKind || runLen+int64(len(p)) > maxDumpRead) {
			flush()
		}
		if runLen == 0 {
			runOff, runKind = off, kind
		}
		runLen += int64(len(p))
	}
	flush()
	return nil
}

// interesting reports the byte ranges (in origin coordinates) where an
// origin disk's crash image holds data or a reloaded snapshot's COW image
// has an exception.
func (st *state) interesting() func(off, n int64) bool {
	c := st.c
	var ranges [][2]int64
	for _, rd := range st.devs {
		if rd.snap == nil {
			continue
		}
		if d := c.diskNamed(rd.snap.OriginDev().Name()); d != nil {
			if ext, err := st.images[d.idx].Map(0, d.mem.Size()); err == nil {
				for _, e := range ext {
					if !e.Hole {
						ranges = append(ranges, [2]int64{e.Off, e.Off + e.Len})
					}
				}
			}
		}
		if d := c.diskNamed(rd.snap.COW().Name()); d != nil {
			if im, err := exstore.Inspect(st.images[d.idx]); err == nil {
				cs := rd.chunk * block.SectorSize
				for _, x := range im.Exceptions {
					ranges = append(ranges, [2]int64{int64(x.Old) * cs, int64(x.Old+1) * cs})
				}
			}
		}
	}
	return func(off, n int64) bool {
		for _, r := range ranges {
			if off < r[1] && r[0] < off+n {
				return true
			}
		}
		return false
	}
}

// kindOf is "zero" or the pattern p holds whole at off, or "".
func (c *checker) kindOf(p []byte, off int64) string {
	if len(bytes.TrimLeft(p, "\x00")) == 0 {
		return "zero"
	}
	name := c.patternAt(p[:min(len(p), block.SectorSize)], off/block.SectorSize)
	if name != "" && pattern.Is(p, name, off) {
		return name
	}
	return ""
}

// quote writes s as a scenario's double-quoted word.
func quote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}

// writeImage writes m to path as a sparse file of m's size.
func writeImage(m *image, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(m.Size()); err != nil {
		return err
	}
	ext, err := m.Map(0, m.Size())
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for _, e := range ext {
		if e.Hole {
			continue
		}
		for off := e.Off; off < e.Off+e.Len; {
			k := min(int64(len(buf)), e.Off+e.Len-off)
			if _, err := m.ReadAt(buf[:k], off); err != nil {
				return err
			}
			if len(bytes.TrimLeft(buf[:k], "\x00")) > 0 {
				if _, err := f.WriteAt(buf[:k], off); err != nil {
					return err
				}
			}
			off += k
		}
	}
	return f.Close()
}
