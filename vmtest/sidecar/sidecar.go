// Package sidecar writes the blob sidecar of a live session's recording:
// the data that outside clients (NBD clients, guests) wrote, stored once
// per distinct content, zstd-compressed where that pays, beside the JSON
// Lines file (the format is sim/record's, see record.BlobSink and
// record.OpenBlobs, which reads it back).
//
// A Writer is a record.BlobSink. Put hashes the data and checks for a
// duplicate on the caller's goroutine (the session's); compressing and
// writing happen on a goroutine of the writer's own, so a session waits for
// the disk only when the writer is more than QueueBytes behind. Memory is
// bounded: the queue by QueueBytes, the duplicate index by IndexMax
// entries (it starts over when full, so a long session may store some
// content twice; readers do not mind). What the recording's lines say
// depends only on the content hashes, never on this goroutine's timing.
package sidecar

import (
	"bufio"
	"fmt"
	"os"
	"sync"

	"github.com/klauspost/compress/zstd"

	"snaplab/sim/record"
)

// Limits.
const (
	QueueBytes = 64 << 20
	IndexMax   = 1 << 18
)

// Writer appends blobs to a sidecar file.
type Writer struct {
	path  string
	index map[record.BlobID]struct{}

	mu     sync.Mutex
	cond   *sync.Cond
	queue  []pending
	queued int64
	closed bool
	err    error
	done   chan struct{}
	stored int64

	f     *os.File
	bw    *bufio.Writer
	enc   *zstd.Encoder
	frame []byte
}

type pending struct {
	id   record.BlobID
	data []byte
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
	w := &Writer{path: path, index: map[record.BlobID]struct{}{}, f: f, bw: bufio.NewWriterSize(f, 1<<20), enc: enc, done: make(chan struct{})}
	w.cond = sync.NewCond(&w.mu)
	if _, err := w.bw.WriteString(record.BlobMagic); err != nil {
		f.Close()
		return nil, err
	}
	go w.loop()
	return w, nil
}

// Path implements record.BlobSink.
func (w *Writer) Path() string { return w.path }

// Put implements record.BlobSink.
func (w *Writer) Put(data []byte) record.BlobID {
	id := record.IDOf(data)
	if _, ok := w.index[id]; ok {
		return id
	}
	if len(w.index) >= IndexMax {
		clear(w.index)
	}
	w.index[id] = struct{}{}
	cp := append([]byte(nil), data...)
	w.mu.Lock()
	for w.queued > QueueBytes && w.err == nil && !w.closed {
		w.cond.Wait()
	}
	if w.err == nil && !w.closed {
		w.queue = append(w.queue, pending{id: id, data: cp})
		w.queued += int64(len(cp))
		w.cond.Broadcast()
	}
	w.mu.Unlock()
	return id
}

func (w *Writer) loop() {
	defer close(w.done)
	for {
		w.mu.Lock()
		for len(w.queue) == 0 && !w.closed {
			w.cond.Wait()
		}
		if len(w.queue) == 0 {
			w.mu.Unlock()
			return
		}
		p := w.queue[0]
		w.queue[0] = pending{}
		w.queue = w.queue[1:]
		failed := w.err != nil
		w.mu.Unlock()
		var err error
		n := 0
		if !failed {
			w.frame = record.AppendFrame(w.frame[:0], p.id, p.data, w.enc)
			n = len(w.frame)
			_, err = w.bw.Write(w.frame)
			if cap(w.frame) > 4<<20 {
				w.frame = nil // do not keep a large write's buffer
			}
		}
		w.mu.Lock()
		w.queued -= int64(len(p.data))
		w.stored += int64(n)
		if err != nil && w.err == nil {
			w.err = fmt.Errorf("blob sidecar %s: %w", w.path, err)
		}
		w.cond.Broadcast()
		w.mu.Unlock()
	}
}

// Err implements record.BlobSink.
func (w *Writer) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Stored is the bytes of frames written so far (after compression).
func (w *Writer) Stored() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stored
}

// Close writes what is queued and closes the file. Put after Close stores
// nothing.
func (w *Writer) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return w.err
	}
	w.closed = true
	w.cond.Broadcast()
	w.mu.Unlock()
	<-w.done
	err := w.err
	if ferr := w.bw.Flush(); err == nil && ferr != nil {
		err = fmt.Errorf("blob sidecar %s: %w", w.path, ferr)
	}
	if cerr := w.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("blob sidecar %s: %w", w.path, cerr)
	}
	w.enc.Close()
	w.mu.Lock()
	w.err = err
	w.mu.Unlock()
	return err
}
