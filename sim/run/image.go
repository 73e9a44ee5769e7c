package run

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"snaplab/sim/block"
	"snaplab/sim/record"
	"snaplab/sim/script"
)

// imagePiece is how much of an image file is read at a time; all-zero
// sectors are not written, so holes cost no memory.
const imagePiece = 1 << 20

// Digests of image files, in a disk step's result ("data").
const (
	// sparseDigest is the digest of a run today: SHA-256 of the file's
	// size (8 bytes, big-endian), then, for each 512-byte sector holding a
	// non-zero byte, in order, its index (8 bytes, big-endian) and its 512
	// bytes (a partial last sector padded with zeros). It costs time in
	// proportion to the file's data, not its size, and does not depend on
	// where the file has holes.
	sparseDigest = "sparse-sha256:"
	// fileDigest is the digest of recordings made before sparseDigest:
	// what sha256sum prints for the whole file.
	fileDigest = "sha256:"
)

// AllowImagesFlag is the snaplab flag that sets Options.AllowImagesOutside
// (errors name it).
const AllowImagesFlag = "-images-anywhere"

// replayImage is what a recording says a disk step's image was.
type replayImage struct {
	path string // as recorded (the result's stdout)
	sum  string // as recorded (the result's data)
}

// imageConfig is how a session finds and admits image files.
type imageConfig struct {
	// dir is what relative image paths are relative to (the scenario's
	// directory, or a replayed recording's; "" = the working directory),
	// and the tree images must lie in unless anywhere is set.
	dir      string
	anywhere bool
	// headerDir is the header's "dir": the absolute scenario directory when
	// a disk has an image (replay: the recording's).
	headerDir string
}

// newImageConfig is a session's image configuration.
func newImageConfig(sc *script.Scenario, opts Options) imageConfig {
	c := imageConfig{dir: sc.Dir, anywhere: opts.AllowImagesOutside}
	if opts.replay != nil {
		c.headerDir = opts.replay.headerDir
		c.dir = opts.replay.headerDir // "" for recordings without one: paths relative to the working directory
		return c
	}
	for i := range sc.Steps {
		if sc.Steps[i].Image != "" || sc.Steps[i].DataFile != "" {
			dir := sc.Dir
			if dir == "" {
				dir = "."
			}
			if abs, err := filepath.Abs(dir); err == nil {
				c.headerDir = abs
			}
			break
		}
	}
	return c
}

// loadImage fills disk m (just attached as st.Dev) with the content of st's
// image file and records in res the file's path relative to the scenario's
// directory, as written (Stdout), and, once it is read, its digest (Data).
// Sectors that hold data become unknown to the oracle: the model cannot
// know what an image holds, so reads of them are checked by expect= only.
//
// When replaying, the file is the recorded one and must have the recorded
// digest; a failure to read it is kept in r.imageErr for Replay to report
// (unless the recorded run failed to read it too).
func (r *Session) loadImage(st *script.Step, m *block.Mem, res *record.Result) string {
	rel := filepath.Clean(st.Image)
	legacy := false
	want := r.replayImages[st]
	if want != nil {
		rel = want.path
		legacy = strings.HasPrefix(want.sum, fileDigest)
	}
	path := rel
	if !filepath.IsAbs(rel) && r.images.dir != "" {
		path = filepath.Join(r.images.dir, rel)
	}
	res.Stdout = rel
	sum, err := r.readImage(path, m, legacy)
	if err == nil && want != nil && sum != want.sum {
		err = fmt.Errorf("image %s changed since the recording: its content is %s, the recording has %s", path, sum, want.sum)
	}
	if err != nil {
		err = fmt.Errorf("disk %s: %w", st.Dev, err)
		if want != nil && want.sum != "" {
			r.imageErr = err
		}
		return err.Error()
	}
	res.Data = sum
	return ""
}

// openImage opens the image file at path for reading, refusing what is not
// a raw image: a directory, FIFO, device or socket (checked before the
// open, which does not block: a FIFO swapped in after the check is
// refused too), a file of a synthetic file system (/proc, /sys, ...), a
// file outside the scenario's directory tree after symbolic links unless
// anywhere, a file larger than the disk.
func (r *Session) openImage(path string, size int64) (*os.File, os.FileInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("image %s: %w", path, unwrapPath(err))
	}
	if err := regular(path, fi); err != nil {
		return nil, nil, err
	}
	var root string
	if !r.images.anywhere {
		if root, err = r.imageRoot(); err != nil {
			return nil, nil, err
		}
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, nil, fmt.Errorf("image %s: %w", path, err)
		}
		real, err := filepath.EvalSymlinks(abs)
		if err != nil {
			return nil, nil, fmt.Errorf("image %s: %w", path, unwrapPath(err))
		}
		if err := inside(path, real, root); err != nil {
			return nil, nil, err
		}
	}
	if imageOpenHook != nil {
		imageOpenHook(path)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("image %s: %w", path, unwrapPath(err))
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	fi2, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("image %s: %w", path, err)
	}
	if err := regular(path, fi2); err != nil {
		return nil, nil, err
	}
	if !os.SameFile(fi, fi2) {
		return nil, nil, fmt.Errorf("image %s was replaced while it was opened", path)
	}
	if fsName := syntheticFS(f); fsName != "" {
		return nil, nil, fmt.Errorf("image %s is a file of %s, a synthetic file system, not a raw image file", path, fsName)
	}
	if root != "" {
		// What was opened, wherever the path's links pointed at the open.
		if real := openedPath(f); real != "" {
			if err := inside(path, real, root); err != nil {
				return nil, nil, err
			}
		}
	}
	if fi2.Size() > size {
		return nil, nil, fmt.Errorf("image %s is %d bytes, larger than the disk (%d bytes)", path, fi2.Size(), size)
	}
	ok = true
	return f, fi2, nil
}

// imageOpenHook, when set, runs between the checks of an image's path and
// its open (a test swaps the file there).
var imageOpenHook func(path string)

// imageRoot is the directory tree images must lie in, symbolic links
// resolved.
func (r *Session) imageRoot() (string, error) {
	dir := r.images.dir
	if dir == "" {
		dir = "."
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("image directory %s: %w", dir, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("image directory %s: %w", dir, unwrapPath(err))
	}
	return real, nil
}

// inside checks that real (path with its links resolved) lies in root.
func inside(path, real, root string) error {
	rel, err := filepath.Rel(root, real)
	if err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel) {
		return nil
	}
	where := ""
	if abs, err := filepath.Abs(path); err != nil || real != abs {
		where = fmt.Sprintf(" (it is %s)", real)
	}
	return fmt.Errorf("image %s%s is outside the scenario's directory %s: images elsewhere are read only with %s (run.Options.AllowImagesOutside)", path, where, root, AllowImagesFlag)
}

// regular refuses what is not a regular file, saying what it is.
func regular(path string, fi os.FileInfo) error {
	mode := fi.Mode()
	var what string
	switch {
	case mode.IsRegular():
		return nil
	case mode.IsDir():
		what = "a directory"
	case mode&fs.ModeNamedPipe != 0:
		what = "a FIFO (named pipe)"
	case mode&fs.ModeCharDevice != 0:
		what = "a character device"
	case mode&fs.ModeDevice != 0:
		what = "a block device"
	case mode&fs.ModeSocket != 0:
		what = "a socket"
	default:
		what = fmt.Sprintf("not a regular file (mode %v)", mode)
		return fmt.Errorf("image %s is %s: want a raw image file", path, what)
	}
	return fmt.Errorf("image %s is %s, not a raw image file", path, what)
}

// unwrapPath drops a *fs.PathError's operation and path (the message names
// the path already).
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// readImage copies the image at path into m (durably, skipping holes and
// all-zero sectors), tells the oracle which sectors now hold data, and
// returns the file's digest: sparseDigest, or fileDigest when legacy (a
// replay of a recording that has one). Holes are found with SEEK_DATA and
// SEEK_HOLE, so a sparse file costs time in proportion to its data.
func (r *Session) readImage(path string, m *block.Mem, legacy bool) (string, error) {
	f, fi, err := r.openImage(path, m.Size())
	if err != nil {
		return "", err
	}
	defer f.Close()
	size := fi.Size()
	h := sha256.New()
	var n8 [8]byte
	binary.BigEndian.PutUint64(n8[:], uint64(size))
	h.Write(n8[:])
	buf := make([]byte, imagePiece)
	done := int64(0) // bytes of the file processed (a multiple of 512, or size)
	err = dataExtents(f, size, func(start, end int64) error {
		start = max(start/block.SectorSize*block.SectorSize, done)
		end = min((end+block.SectorSize-1)/block.SectorSize*block.SectorSize, size)
		for off := start; off < end; {
			want := min(int64(len(buf)), (end-off+block.SectorSize-1)/block.SectorSize*block.SectorSize)
			n, err := f.ReadAt(buf[:want], off)
			if err != nil && err != io.EOF {
				return fmt.Errorf("image %s at byte %d: %w", path, off, unwrapPath(err))
			}
			if n == 0 {
				return fmt.Errorf("image %s changed while it was read (it ends at byte %d, not %d)", path, off, size)
			}
			// A partial last sector reads as zero-padded.
			piece := buf[:(n+block.SectorSize-1)/block.SectorSize*block.SectorSize]
			clear(piece[n:])
			if err := r.loadPiece(m, h, piece, off, path); err != nil {
				return err
			}
			off += int64(len(piece))
			done = off
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	if after, err := f.Stat(); err != nil || after.Size() != size || !after.ModTime().Equal(fi.ModTime()) {
		return "", fmt.Errorf("image %s changed while it was read", path)
	}
	if legacy {
		whole := sha256.New()
		if _, err := io.Copy(whole, io.NewSectionReader(f, 0, size)); err != nil {
			return "", fmt.Errorf("image %s: %w", path, unwrapPath(err))
		}
		return fileDigest + hex.EncodeToString(whole.Sum(nil)), nil
	}
	return sparseDigest + hex.EncodeToString(h.Sum(nil)), nil
}

// loadPiece writes the non-zero sectors of piece (file offset off) to m,
// durably, in runs, hashes each into h with its index, and makes them
// unknown to the oracle.
func (r *Session) loadPiece(m *block.Mem, h hash.Hash, piece []byte, off int64, path string) error {
	var idx [8]byte
	for s := 0; s < len(piece); {
		if allZero(piece[s : s+block.SectorSize]) {
			s += block.SectorSize
			continue
		}
		e := s
		for e < len(piece) && !allZero(piece[e:e+block.SectorSize]) {
			binary.BigEndian.PutUint64(idx[:], uint64(off+int64(e))/block.SectorSize)
			h.Write(idx[:])
			h.Write(piece[e : e+block.SectorSize])
			e += block.SectorSize
		}
		if _, err := m.WriteAtFUA(piece[s:e], off+int64(s)); err != nil {
			return fmt.Errorf("image %s at byte %d: %w", path, off+int64(s), err)
		}
		if n := r.ctl.Node(m.Name()); n != nil {
			r.orc.EndWrite(r.orc.BeginWrite(n, off+int64(s), int64(e-s), ""), syscall.EIO)
		}
		s = e
	}
	return nil
}

func allZero(b []byte) bool {
	var z [block.SectorSize]byte
	for len(b) > 0 {
		n := min(len(b), len(z))
		if !bytes.Equal(b[:n], z[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// imageResults reads, once, what the recording's results say of each disk
// step with an image: op index -> the first result line's path and digest.
func imageResults(lines []string) map[int]*record.Result {
	out := map[int]*record.Result{}
	for _, l := range lines {
		if !strings.Contains(l, `"kind":"result"`) || !strings.Contains(l, `"stdout"`) {
			continue
		}
		var res record.Result
		if err := json.Unmarshal([]byte(l), &res); err != nil || res.Kind != "result" {
			continue
		}
		if _, seen := out[res.I]; !seen {
			out[res.I] = &res
		}
	}
	return out
}

// expectImage tells the session, before it replays step st (op i), which
// image file and content the recording's result for that step names.
func (r *Session) expectImage(st *script.Step, i int, results map[int]*record.Result) error {
	if st.Kind != script.KDisk || st.Image == "" {
		return nil
	}
	res := results[i]
	if res == nil {
		return errors.New("disk " + st.Dev + ": the recording has no result for its image")
	}
	// A recorded run that could not read the image has no digest: replay
	// makes the same attempt at the same path.
	if res.Stdout == "" || (res.Data == "" && res.Check == "ok") {
		return fmt.Errorf("disk %s: the recording names no image file and digest for image=%s", st.Dev, st.Image)
	}
	if strings.ContainsRune(res.Stdout, 0) {
		return fmt.Errorf("disk %s: stdout %q: not an image path", st.Dev, res.Stdout)
	}
	if res.Data != "" && !strings.HasPrefix(res.Data, sparseDigest) && !strings.HasPrefix(res.Data, fileDigest) {
		return fmt.Errorf("disk %s: data %q: not an image digest", st.Dev, res.Data)
	}
	if r.replayImages == nil {
		r.replayImages = map[*script.Step]*replayImage{}
	}
	r.replayImages[st] = &replayImage{path: res.Stdout, sum: res.Data}
	return nil
}

// replayImageDir checks, before a replay reads any image, that the
// directory a recording names as its scenario's holds that scenario file
// (SCENARIO.scn, or SCENARIO when it ends in .scn): a recording is data,
// and must not make a replay read files from a directory it merely
// claims. Recordings without one read images relative to the working
// directory.
func replayImageDir(h *record.Header) error {
	if h.Dir == "" {
		return nil
	}
	name := h.Scenario
	if !strings.HasSuffix(name, ".scn") {
		name += ".scn"
	}
	if name != filepath.Base(name) || name == ".scn" {
		return fmt.Errorf("scenario %q: not the name of a scenario file in dir %s: images are read only with %s", h.Scenario, h.Dir, AllowImagesFlag)
	}
	if fi, err := os.Stat(filepath.Join(h.Dir, name)); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("dir %s: no scenario file %s there: a replay reads images only from the directory of the scenario that was recorded (or anywhere with %s)", h.Dir, name, AllowImagesFlag)
	}
	return nil
}

// readData fills p with the bytes of st's data= file from st.DataOff, as
// the scenario's directory and the image rules allow (openImage: a regular
// file inside the scenario's tree unless AllowImagesOutside). A replay
// reads the file again: its digest is in the step's result, so a changed
// file is a divergence.
func (r *Session) readData(st *script.Step, p []byte) error {
	path := filepath.Clean(st.DataFile)
	if !filepath.IsAbs(path) && r.images.dir != "" {
		path = filepath.Join(r.images.dir, path)
	}
	f, fi, err := r.openImage(path, math.MaxInt64)
	if err != nil {
		return fmt.Errorf("write data=: %w", err)
	}
	defer f.Close()
	if st.DataOff > fi.Size() || int64(len(p)) > fi.Size()-st.DataOff {
		return fmt.Errorf("write data=: %s is %d bytes: it has no %d bytes at offset %d", path, fi.Size(), len(p), st.DataOff)
	}
	if _, err := f.ReadAt(p, st.DataOff); err != nil {
		return fmt.Errorf("write data=: %s: %w", path, err)
	}
	return nil
}
