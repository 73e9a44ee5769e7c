//go:build !linux

package run

import "os"

// dataExtents reports the whole file as data (no SEEK_DATA here).
func dataExtents(f *os.File, size int64, fn func(start, end int64) error) error {
	if size == 0 {
		return nil
	}
	return fn(0, size)
}

// syntheticFS knows no synthetic file systems here.
func syntheticFS(f *os.File) string { return "" }

// openedPath does not know here.
func openedPath(f *os.File) string { return "" }
