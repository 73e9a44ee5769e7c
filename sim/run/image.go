package run

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"snaplab/sim/block"
	"snaplab/sim/record"
	"snaplab/sim/script"
)

// imagePiece is how much of an image file is read at a time; all-zero
// sectors are not written, so holes cost no memory.
const imagePiece = 1 << 20

// replayImage is what a recording says a disk step's image was.
type replayImage struct {
	path, sum string
}

// loadImage fills disk m (just attached as st.Dev) with the content of st's
// image file and records the file's path (Stdout) and, once it is read,
// its sha256 (Data) in res. Sectors that hold data become unknown to the
// oracle: the model cannot know what an image holds, so reads of them are
// checked by expect= only.
//
// When replaying, the file is the recorded one and must have the recorded
// sha256; a failure to read it is kept in r.imageErr for Replay to report
// (unless the recorded run failed to read it too).
func (r *Session) loadImage(st *script.Step, m *block.Mem, res *record.Result) string {
	path := r.sc.ImagePath(st)
	want := r.replayImages[st]
	if want != nil {
		path = want.path
	}
	res.Stdout = path
	sum, err := r.readImage(path, m)
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

// readImage copies the image at path into m (durably, skipping all-zero
// sectors), tells the oracle which sectors now hold data, and returns the
// file's "sha256:HEX" (what sha256sum prints).
func (r *Session) readImage(path string, m *block.Mem) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("image: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return "", fmt.Errorf("image: %w", err)
	} else if fi.Mode().IsRegular() && fi.Size() > m.Size() {
		return "", fmt.Errorf("image %s is %d bytes, larger than the disk (%d bytes)", path, fi.Size(), m.Size())
	} else if fi.IsDir() {
		return "", fmt.Errorf("image %s is a directory, not a raw image file", path)
	}
	node := r.ctl.Node(m.Name())
	h := sha256.New()
	buf := make([]byte, imagePiece)
	var off int64
	for off < m.Size() {
		want := int(min(int64(len(buf)), m.Size()-off))
		n, err := io.ReadFull(f, buf[:want])
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			return "", fmt.Errorf("image %s at byte %d: %w", path, off, err)
		}
		h.Write(buf[:n])
		// A partial last sector reads as zero-padded.
		piece := buf[:(n+block.SectorSize-1)/block.SectorSize*block.SectorSize]
		clear(piece[n:])
		for s := 0; s < len(piece); {
			if allZero(piece[s : s+block.SectorSize]) {
				s += block.SectorSize
				continue
			}
			e := s + block.SectorSize
			for e < len(piece) && !allZero(piece[e:e+block.SectorSize]) {
				e += block.SectorSize
			}
			if _, err := m.WriteAtFUA(piece[s:e], off+int64(s)); err != nil {
				return "", fmt.Errorf("image %s at byte %d: %w", path, off+int64(s), err)
			}
			if node != nil {
				r.orc.EndWrite(r.orc.BeginWrite(node, off+int64(s), int64(e-s), ""), syscall.EIO)
			}
			s = e
		}
		off += int64(n)
		if n < want {
			break
		}
	}
	if off == m.Size() {
		// Not a regular file (no size to compare): anything more is too much.
		var one [1]byte
		if n, _ := f.Read(one[:]); n > 0 {
			return "", fmt.Errorf("image %s is larger than the disk (%d bytes)", path, m.Size())
		}
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
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

// expectImage tells the session, before it replays step st (op i), which
// image file and content the recording's result for that step names.
// lines are the recording's lines from the op on.
func (r *Session) expectImage(st *script.Step, i int, lines []string) error {
	if st.Kind != script.KDisk || st.Image == "" {
		return nil
	}
	for _, l := range lines {
		if !strings.Contains(l, `"kind":"result"`) {
			continue
		}
		var res record.Result
		if err := json.Unmarshal([]byte(l), &res); err != nil || res.Kind != "result" || res.I != i {
			continue
		}
		// A recorded run that could not read the image has no sha256:
		// replay makes the same attempt at the same path.
		if res.Stdout == "" || (res.Data == "" && res.Check == "ok") {
			return fmt.Errorf("disk %s: the recording names no image file and sha256 for image=%s", st.Dev, st.Image)
		}
		if r.replayImages == nil {
			r.replayImages = map[*script.Step]*replayImage{}
		}
		r.replayImages[st] = &replayImage{path: res.Stdout, sum: res.Data}
		return nil
	}
	return errors.New("disk " + st.Dev + ": the recording has no result for its image")
}
