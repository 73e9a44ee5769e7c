package main

import (
	"io"
	"os"
)

// writeOut writes a command's product to the file named by its -o flag
// (with mode perm), or to stdout when -o is empty.
func writeOut(path string, b []byte, perm os.FileMode, stdout io.Writer) error {
	if path == "" {
		_, err := stdout.Write(b)
		return err
	}
	return os.WriteFile(path, b, perm)
}
