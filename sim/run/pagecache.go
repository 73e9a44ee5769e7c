package run

import (
	"fmt"
	"slices"
	"syscall"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/oracle"
	"snaplab/sim/pattern"
	"snaplab/sim/record"
	"snaplab/sim/script"
)

// The page cache of the devices a scenario writes with `write ...
// buffered`, modelled on Linux 6.1's block device page cache (the bdev
// inode's mapping, buffer heads): deterministic, with no background
// write-back.
//
//   - The first buffered write to a device (or fsync of it) opens the
//     device as the guest's agent does, and the file stays open until the
//     scenario ends: it counts in the device's open count. The cache lives
//     while the device is open, so it is empty when the file opens.
//   - The device's block size is set at that open (set_init_blocksize):
//     the logical block size, doubled while it is below the page size
//     (4096) and divides the device's size.
//   - A buffered write copies its data into the device's blocks and marks
//     them dirty; a block it covers only in part, and that is not cached,
//     is read from the device first (__block_write_begin). A failed read
//     fails the write with EIO.
//   - Write-back (fsync, sync, a direct I/O's range, the scenario's end)
//     writes the dirty blocks in offset order, one request per block
//     (block_write_full_page: each buffer head is its own bio); all are
//     submitted, then waited for. A failed block logs "Buffer I/O error on
//     dev DEV, logical block N, lost async page write", is no longer dirty
//     nor cached, and records the error in the mapping (mapping_set_error:
//     the errseq counter and AS_EIO).
//   - fsync DEV writes DEV's dirty blocks back, then reports EIO if the
//     mapping recorded an error since the file last saw one (errseq), and
//     clears AS_EIO; with no error it flushes the device (blkdev_fsync).
//   - sync writes back every device's dirty blocks, devices in the order
//     they were dirtied; it reports nothing (sync(2) returns 0) and keeps
//     the errors for the next fsync.
//   - A direct (O_DIRECT) read or write first writes back the dirty
//     blocks of its range (filemap_write_and_wait_range); if that fails,
//     or AS_EIO is set from an earlier write-back, it fails with EIO and
//     clears AS_EIO. A direct write then drops the cached blocks of its
//     range. A flush (flush DEV: the agent's fsync of a new file) writes
//     back every dirty block of the device first, and fails with EIO if
//     the mapping holds an error no fsync has seen.
type pageCache struct {
	files []*bdevFile // open buffered files, in order of opening
	dirty uint64      // counts devices becoming dirty (sync's order)
}

// bdevFile is a device's page cache and the scenario's open file on it.
type bdevFile struct {
	dev    string
	h      *dm.Handle
	bsize  int64
	blocks map[int64]*cblock // by block index
	// dirtied orders devices for sync: when the device last went from
	// clean to dirty (0: clean).
	dirtied uint64
	wbErr   uint64 // errseq: write-back errors recorded
	seen    bool   // ... and whether an fsync reported the last one
	sample  uint64 // the file's errseq sample
	asEIO   bool
}

// cblock is one cached block: its data, and per sector the pattern it
// holds ("" for data read from the device, which the oracle cannot name).
type cblock struct {
	data  []byte
	pats  []string
	dirty bool
}

// bufFile is the scenario's buffered file on dev, opened on first use.
func (r *Session) bufFile(dev string) (*bdevFile, error) {
	for _, f := range r.pc.files {
		if f.dev == dev {
			return f, nil
		}
	}
	node := r.ctl.Node(dev)
	if md, ok := node.(*dm.MappedDevice); ok && !md.HasNode() {
		return nil, &block.Error{Dev: dev, Op: "open", Errno: syscall.ENOENT, Err: fmt.Errorf("no /dev/mapper/%s", dev)}
	}
	if node == nil {
		return nil, &block.Error{Dev: dev, Op: "open", Errno: syscall.ENOENT, Err: fmt.Errorf("no disk or dm device named %s", dev)}
	}
	h, err := r.ctl.Open(dev, true)
	if err != nil {
		return nil, err
	}
	bsize := int64(h.Node().LogicalBlockSize())
	for size := h.Node().Size(); bsize < pageSize && size&bsize == 0; {
		bsize <<= 1
	}
	f := &bdevFile{dev: dev, h: h, bsize: bsize, blocks: map[int64]*cblock{}}
	r.pc.files = append(r.pc.files, f)
	return f, nil
}

const pageSize = 4096

// submitWait submits b through f's open file and runs the world until it
// completes.
func (r *Session) submitWait(f *bdevFile, b *dm.Bio, done *bool) error {
	f.h.Submit(b)
	return r.w.RunUntil(fmt.Sprintf("page cache I/O on %s", f.dev), func() bool { return *done })
}

// bufferedWrite is `write DEV OFF LEN pattern=P buffered`.
func (r *Session) bufferedWrite(st *script.Step, res *record.Result) string {
	f, err := r.bufFile(st.Dev)
	if err == nil {
		err = r.cacheWrite(f, st)
	}
	res.Errno = block.ErrnoName(block.Errno(err))
	return checkErrno(st, err)
}

func (r *Session) cacheWrite(f *bdevFile, st *script.Step) error {
	if st.Off+st.Len > f.h.Node().Size() {
		// blkdev_write_iter: a write past the end is cut to the size; one
		// that starts at the end gets ENOSPC.
		if st.Off >= f.h.Node().Size() {
			return &block.Error{Dev: st.Dev, Op: "write", Off: st.Off, Len: st.Len, Errno: syscall.ENOSPC}
		}
		return &block.Error{Dev: st.Dev, Op: "write", Off: st.Off, Len: st.Len, Errno: syscall.EINVAL, Err: fmt.Errorf("a buffered write past the device's end is not modelled")}
	}
	data := make([]byte, st.Len)
	pattern.Fill(data, st.Pattern, st.Off)
	for off := st.Off; off < st.Off+st.Len; {
		idx := off / f.bsize
		bstart := idx * f.bsize
		n := min(bstart+f.bsize, st.Off+st.Len) - off
		cb := f.blocks[idx]
		if cb == nil {
			cb = &cblock{data: make([]byte, f.bsize), pats: make([]string, f.bsize/block.SectorSize)}
			if n < f.bsize {
				// Read the block before changing part of it.
				done := false
				var rerr error
				b := dm.NewBio(dm.OpRead, uint64(bstart/block.SectorSize), cb.data, false, func(err error) { done, rerr = true, err })
				if err := r.submitWait(f, b, &done); err != nil {
					return err
				}
				if rerr != nil {
					return &block.Error{Dev: st.Dev, Op: "write", Off: off, Len: n, Errno: syscall.EIO, Err: fmt.Errorf("reading block %d before writing part of it: %w", idx, rerr)}
				}
				for i := range cb.pats {
					cb.pats[i] = sectorPattern(cb.data[i*block.SectorSize:(i+1)*block.SectorSize], bstart+int64(i)*block.SectorSize)
				}
			}
			f.blocks[idx] = cb
		}
		copy(cb.data[off-bstart:], data[off-st.Off:off-st.Off+n])
		for s := (off - bstart) / block.SectorSize; s < (off-bstart+n)/block.SectorSize; s++ {
			cb.pats[s] = st.Pattern
		}
		if !cb.dirty {
			cb.dirty = true
			if f.dirtied == 0 {
				r.pc.dirty++
				f.dirtied = r.pc.dirty
			}
		}
		off += n
	}
	return nil
}

// sectorPattern names the pattern a sector read from the device holds at
// off ("" when it is none the oracle could check).
func sectorPattern(sec []byte, off int64) string {
	if allZero(sec) {
		return pattern.Zero
	}
	return ""
}

// writeBack writes f's dirty blocks in [lo, hi) back to the device, in
// offset order, one request per block, and waits for them. It reports
// whether any failed.
func (r *Session) writeBack(f *bdevFile, lo, hi int64) (failed bool, err error) {
	var idxs []int64
	for idx, cb := range f.blocks { // order-free: the indices are sorted below
		if cb.dirty && idx*f.bsize < hi && (idx+1)*f.bsize > lo {
			idxs = append(idxs, idx)
		}
	}
	if len(idxs) == 0 {
		return false, nil
	}
	slices.Sort(idxs)
	pending := len(idxs)
	node := f.h.Node()
	for _, idx := range idxs {
		cb := f.blocks[idx]
		cb.dirty = false
		off := idx * f.bsize
		// The oracle follows each run of sectors holding one pattern.
		type ow struct {
			w       oracle.Write
			unknown bool
		}
		var ws []ow
		for s := 0; s < len(cb.pats); {
			e := s + 1
			for e < len(cb.pats) && cb.pats[e] == cb.pats[s] {
				e++
			}
			soff := off + int64(s)*block.SectorSize
			ws = append(ws, ow{r.orc.BeginWrite(node, soff, int64(e-s)*block.SectorSize, cb.pats[s]), cb.pats[s] == ""})
			s = e
		}
		idx := idx
		b := dm.NewBio(dm.OpWrite, uint64(off/block.SectorSize), cb.data, false, func(err error) {
			pending--
			for _, w := range ws {
				if w.unknown {
					r.orc.EndWrite(w.w, syscall.EIO)
				} else {
					r.orc.EndWrite(w.w, err)
				}
			}
			if err != nil {
				failed = true
				r.ctl.Log.Print(dm.BufferWriteErrorLine(f.dev, idx))
				delete(f.blocks, idx) // the buffer is no longer up to date
				f.wbErr++
				f.seen = false
				f.asEIO = true
			}
		})
		f.h.Submit(b)
	}
	if err := r.w.RunUntil(fmt.Sprintf("write-back of %s", f.dev), func() bool { return pending == 0 }); err != nil {
		return failed, err
	}
	return failed, nil
}

// fsyncStep is `fsync DEV`.
func (r *Session) fsyncStep(st *script.Step, res *record.Result) string {
	f, err := r.bufFile(st.Dev)
	if err == nil {
		err = r.fsync(f, &f.sample)
	}
	res.Errno = block.ErrnoName(block.Errno(err))
	return checkErrno(st, err)
}

// fsync is blkdev_fsync on a file of f's device whose errseq sample is
// *sample.
func (r *Session) fsync(f *bdevFile, sample *uint64) error {
	if _, err := r.writeBack(f, 0, f.h.Node().Size()); err != nil {
		return err
	}
	f.asEIO = false
	if *sample != f.wbErr {
		*sample, f.seen = f.wbErr, true
		return &block.Error{Dev: f.dev, Op: "fsync", Errno: syscall.EIO, Err: fmt.Errorf("write-back failed")}
	}
	done := false
	var ferr error
	b := dm.NewBio(dm.OpFlush, 0, nil, false, func(err error) { done, ferr = true, err })
	if err := r.submitWait(f, b, &done); err != nil {
		return err
	}
	return ferr
}

// syncStep is `sync`: every device's dirty blocks, devices in the order
// they were dirtied.
func (r *Session) syncStep(res *record.Result) string {
	files := slices.Clone(r.pc.files)
	slices.SortStableFunc(files, func(a, b *bdevFile) int {
		switch {
		case a.dirtied == b.dirtied:
			return 0
		case a.dirtied == 0:
			return 1
		case b.dirtied == 0, a.dirtied < b.dirtied:
			return -1
		}
		return 1
	})
	for _, f := range files {
		f.dirtied = 0
		if _, err := r.writeBack(f, 0, f.h.Node().Size()); err != nil {
			return err.Error()
		}
	}
	res.Errno = "OK"
	return ""
}

// beforeDirect is what the page cache does before a direct I/O step
// (read, write, flush) on st.Dev: "" and false to go on with the I/O, or
// the step's outcome.
func (r *Session) beforeDirect(st *script.Step, res *record.Result) (string, bool) {
	var f *bdevFile
	for _, x := range r.pc.files {
		if x.dev == st.Dev {
			f = x
		}
	}
	if f == nil || st.Async != "" {
		return "", false
	}
	var err error
	switch st.Kind {
	case script.KFlush:
		// A new file: its errseq sample sees an error no fsync reported.
		sample := f.wbErr
		if !f.seen {
			sample--
		}
		if f.wbErr == 0 {
			sample = 0
		}
		if _, err = r.writeBack(f, 0, f.h.Node().Size()); err == nil {
			f.asEIO = false
			if sample != f.wbErr {
				f.seen = true
				err = &block.Error{Dev: f.dev, Op: "flush", Errno: syscall.EIO, Err: fmt.Errorf("write-back failed")}
			}
		}
	case script.KRead, script.KWrite:
		lo, hi := st.Off&^(pageSize-1), (st.Off+st.Len+pageSize-1)&^(pageSize-1)
		if _, err = r.writeBack(f, lo, hi); err == nil && f.asEIO {
			f.asEIO = false
			err = &block.Error{Dev: f.dev, Op: st.Kind, Off: st.Off, Len: st.Len, Errno: syscall.EIO, Err: fmt.Errorf("write-back of the range failed (filemap_write_and_wait_range)")}
		}
		if err == nil && st.Kind == script.KWrite {
			for idx := range f.blocks { // order-free: deletes only
				if idx*f.bsize < hi && (idx+1)*f.bsize > lo {
					delete(f.blocks, idx)
				}
			}
		}
	default:
		return "", false
	}
	if err == nil {
		return "", false
	}
	res.Errno = block.ErrnoName(block.Errno(err))
	return checkErrno(st, err), true
}

// closePageCache writes back and closes the scenario's buffered files,
// as the guest's agent closes them when the scenario ends (the last close
// of a block device writes its pages back).
func (r *Session) closePageCache() {
	for _, f := range r.pc.files {
		if !f.h.Closed() && !f.h.Gone() {
			if _, err := r.writeBack(f, 0, f.h.Node().Size()); err != nil {
				r.report.Failures = append(r.report.Failures, Failure{Msg: fmt.Sprintf("closing the buffered file of %s at the scenario's end: %v", f.dev, err)})
			}
			f.h.Close()
		}
	}
	r.pc.files = nil
}

// checkErrno checks an I/O-like step's expect=ERRNO against err.
func checkErrno(st *script.Step, err error) string {
	e := st.Expect
	if e.Errno != nil && block.Errno(err) != *e.Errno {
		return fmt.Sprintf("%s: got %s, want %s (%v)", st.Kind, block.ErrnoName(block.Errno(err)), block.ErrnoName(*e.Errno), err)
	}
	if e.Errno == nil && err != nil {
		return fmt.Sprintf("%s failed: %v", st.Kind, err)
	}
	return ""
}
