// Package sidecar writes the blob sidecar of a live session's recording:
// the data that outside clients (NBD clients, guests) wrote, stored once
// per distinct content, zstd-compressed where that pays, beside the JSON
// Lines file (the format is sim/record's, see record.BlobSink and
// record.OpenBlobs, which reads it back).
//
// A Writer is a record.BlobSink, called by the session: Put hashes the
// data, checks for a duplicate and appends a frame to a buffered file, on
// the caller's goroutine. Random-looking data is copied as is (a memory
// copy into the file buffer); only data worth compressing costs zstd's
// time. A goroutine of its own would cost a wake-up per write (measured: a
// futex and a scheduler pass per 4 KiB request) for less than it saves.
//
// Memory is bounded: the file buffer, one frame, and the duplicate index of
// at most IndexMax entries (it starts over when full, so a long session may
// store some content twice; readers do not mind).
package sidecar

import (
	"bufio"
	"fmt"
	"os"

	"github.com/klauspost/compress/zstd"

	"snaplab/sim/record"
)

// IndexMax bounds the duplicate index (about 40 bytes per entry).
const IndexMax = 1 << 18

// Writer appends blobs to a sidecar file. It is not safe for concurrent
// use: the session that owns it calls it.
type Writer struct {
	path  string
	index map[record.BlobID]struct{}
	f     *os.File
	bw    *bufio.Writer
	enc   *zstd.Encoder
	frame []byte
	err   error
}

var _ record.BlobSink = (*Writer)(nil)

// Create creates (truncates) the sidecar at path.
func Create(path string) (*Writer, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	enc, err := record.NewFrameEncoder()
	if err != nil {
		f.Close()
		return nil, err
	}
	w := &Writer{path: path, index: map[record.BlobID]struct{}{}, f: f, bw: bufio.NewWriterSize(f, 1<<20), enc: enc}
	if _, err := w.bw.WriteString(record.BlobMagic); err != nil {
		f.Close()
		return nil, err
	}
	return w, nil
}

// Path implements record.BlobSink.
func (w *Writer) Path() string { return w.path }

// Put implements record.BlobSink.
func (w *Writer) Put(data []byte) record.BlobID {
	id := record.IDOf(data)
	if _, ok := w.index[id]; ok || w.err != nil {
		return id
	}
	if len(w.index) >= IndexMax {
		clear(w.index)
	}
	w.index[id] = struct{}{}
	w.frame = record.AppendFrame(w.frame[:0], id, data, w.enc)
	if _, err := w.bw.Write(w.frame); err != nil {
		w.err = fmt.Errorf("blob sidecar %s: %w", w.path, err)
	}
	if cap(w.frame) > 4<<20 {
		w.frame = nil // do not keep a large write's buffer
	}
	return id
}

// Err implements record.BlobSink.
func (w *Writer) Err() error { return w.err }

// Close flushes and closes the file.
func (w *Writer) Close() error {
	if w.f == nil {
		return w.err
	}
	err := w.err
	if ferr := w.bw.Flush(); err == nil && ferr != nil {
		err = fmt.Errorf("blob sidecar %s: %w", w.path, ferr)
	}
	if cerr := w.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("blob sidecar %s: %w", w.path, cerr)
	}
	w.enc.Close()
	w.f, w.err = nil, err
	return err
}
