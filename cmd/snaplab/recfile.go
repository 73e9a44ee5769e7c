package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"snaplab/sim/record"
	"snaplab/sim/run"
	"snaplab/vmtest/sidecar"
)

// recordingFile is a recording streaming to its file as a session runs,
// with the sidecar for the data outside clients write beside it.
type recordingFile struct {
	path string
	f    *os.File
	bw   *bufio.Writer
	blob *sidecar.Writer
}

// recordOff is the -record value that records nothing.
const recordOff = "off"

// createRecording creates the recording at path and, for a session that
// outside clients write to (withBlobs), its sidecar (record.SidecarPath),
// and points opts at them; it returns nil, and records nothing, for "off"
// or "". A session on the sim executor has no outside clients.
func createRecording(path string, withBlobs bool, opts *run.Options) (*recordingFile, error) {
	if path == "" || path == recordOff {
		return nil, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	rf := &recordingFile{path: path, f: f, bw: bufio.NewWriterSize(f, 1<<20)}
	opts.Record = rf.bw
	if withBlobs {
		if rf.blob, err = sidecar.Create(record.SidecarPath(path)); err != nil {
			f.Close()
			return nil, err
		}
		opts.Blobs = rf.blob
	}
	return rf, nil
}

// close flushes and closes the recording and its sidecar; nil is closed.
func (rf *recordingFile) close() error {
	if rf == nil {
		return nil
	}
	var err error
	if rf.blob != nil {
		err = rf.blob.Close()
	}
	if ferr := rf.bw.Flush(); ferr != nil {
		err = errors.Join(err, ferr)
	}
	if cerr := rf.f.Close(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", rf.path, err)
	}
	return nil
}
