package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"snaplab/vmtest/nbd"
)

// nbdDefaultMaxConns is serve's default -max-connections.
const nbdDefaultMaxConns = nbd.DefaultMaxConns

// maxControlLine bounds one control line; a longer one is refused with a
// reply and the connection carries on.
const maxControlLine = 64 << 10

// dirExists checks that the directory a socket goes in exists (serve never
// creates it: a typo should not leave a tree behind).
func dirExists(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("directory %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	return nil
}

// listenControl listens on the control socket at path, mode 0600 (only
// its owner may connect). A stale socket left by a crashed server is
// replaced; a live one, or a file that is not a socket, is an error.
func listenControl(path string) (net.Listener, error) {
	l, err := nbd.ListenUnix(path)
	if err != nil {
		return nil, err
	}
	// Created with the umask's mode (0755 at most: nobody else may connect,
	// which takes write permission), then narrowed.
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

var errLineTooLong = errors.New("line too long")

// lineReader reads lines of at most max bytes; a longer line is consumed to
// its end and reported as errLineTooLong, without being held in memory.
type lineReader struct {
	br  *bufio.Reader
	max int
}

func newLineReader(r io.Reader, max int) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, max+1), max: max}
}

func (l *lineReader) next() (string, error) {
	line, err := l.br.ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull) || (err == nil && len(line) > l.max+1):
		for errors.Is(err, bufio.ErrBufferFull) {
			_, err = l.br.ReadSlice('\n')
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return "", err
		}
		return "", errLineTooLong
	case errors.Is(err, io.EOF) && len(line) > 0:
		return string(line), nil
	case err != nil:
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}
