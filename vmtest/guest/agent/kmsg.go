package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"snaplab/vmtest/guest/proto"
)

// ParseKmsgRecord parses one /dev/kmsg record:
//
//	"<prio>,<seq>,<usec>,<flags>[,...];<message>\n"
//
// followed by optional continuation lines (" KEY=value") that are
// ignored. prio holds facility*8+level; Level is the level.
func ParseKmsgRecord(rec []byte) (proto.KmsgRecord, error) {
	line, _, _ := bytes.Cut(rec, []byte("\n"))
	hdr, msg, ok := bytes.Cut(line, []byte(";"))
	if !ok {
		return proto.KmsgRecord{}, fmt.Errorf("kmsg record %.60q: no ';' after the header", rec)
	}
	f := strings.Split(string(hdr), ",")
	if len(f) < 4 {
		return proto.KmsgRecord{}, fmt.Errorf("kmsg record %.60q: header has %d fields, want at least 4", rec, len(f))
	}
	prio, err := strconv.ParseUint(f[0], 10, 32)
	if err != nil {
		return proto.KmsgRecord{}, fmt.Errorf("kmsg record %.60q: priority %q: %v", rec, f[0], err)
	}
	seq, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return proto.KmsgRecord{}, fmt.Errorf("kmsg record %.60q: sequence %q: %v", rec, f[1], err)
	}
	usec, err := strconv.ParseUint(f[2], 10, 64)
	if err != nil {
		return proto.KmsgRecord{}, fmt.Errorf("kmsg record %.60q: timestamp %q: %v", rec, f[2], err)
	}
	return proto.KmsgRecord{Seq: seq, Level: int(prio & 7), USec: usec, Msg: unescapeKmsg(string(msg))}, nil
}

// unescapeKmsg undoes the kernel's \xNN escaping of non-printable bytes.
func unescapeKmsg(s string) string {
	if !strings.Contains(s, `\x`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && s[i+1] == 'x' {
			if v, err := strconv.ParseUint(s[i+2:i+4], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ReadKmsg returns the records of the kernel log at path with sequence
// numbers >= cursor, and the cursor that follows the last record read.
// On /dev/kmsg each read returns one record; a regular file holding
// records one per line is read the same way (for tests).
func ReadKmsg(path string, cursor uint64) ([]proto.KmsgRecord, uint64, error) {
	// Raw syscalls: an *os.File would park on the poller at the end of
	// /dev/kmsg instead of returning EAGAIN.
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, cursor, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	var out []proto.KmsgRecord
	next := cursor
	buf := make([]byte, 16<<10)
	var pending []byte
	for {
		n, err := syscall.Read(fd, buf)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if n < 0 {
			n = 0
		}
		if n > 0 {
			pending = append(pending, buf[:n]...)
			for {
				// A record ends at a newline not followed by a
				// continuation line (starting with a space).
				i := bytes.IndexByte(pending, '\n')
				if i < 0 {
					break
				}
				end := i + 1
				for end < len(pending) && pending[end] == ' ' {
					j := bytes.IndexByte(pending[end:], '\n')
					if j < 0 {
						end = len(pending)
						break
					}
					end += j + 1
				}
				rec, perr := ParseKmsgRecord(pending[:end])
				pending = pending[end:]
				if perr != nil {
					continue
				}
				if rec.Seq >= cursor {
					out = append(out, rec)
					next = rec.Seq + 1
				}
			}
		}
		switch {
		case err == nil:
			if n == 0 {
				return out, next, nil
			}
		case errors.Is(err, syscall.EAGAIN), errors.Is(err, io.EOF):
			return out, next, nil
		case errors.Is(err, syscall.EPIPE):
			// Records were overwritten before we read them; go on.
		default:
			return out, next, err
		}
	}
}
