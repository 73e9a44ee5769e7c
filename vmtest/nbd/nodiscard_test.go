package nbd

import (
	"bytes"
	"syscall"
	"testing"

	"snaplab/sim/block"
)

// refuseDiscard is a device that has Discard but takes no discards, as a
// dm device whose table has no discard support (a snapshot without
// discard_zeroes_cow): every call fails with EOPNOTSUPP.
type refuseDiscard struct{ *memDev }

func (r refuseDiscard) Discard(off, length int64) error {
	return &block.Error{Dev: r.name, Op: "discard", Off: off, Len: length, Errno: syscall.EOPNOTSUPP}
}

// TestDiscardRefused: TRIM is advisory, so a device refusing discards
// answers it with success and keeps its data; WRITE_ZEROES falls back to
// writing zeros.
func TestDiscardRefused(t *testing.T) {
	d := newMemDev("nodiscard", 1<<20)
	s := startServer(t, []Export{{Name: "n", Dev: refuseDiscard{d}}})
	rc := dialRaw(t, s.addr)
	rc.open("n", goOpts{sr: true})
	for i, c := range []struct {
		cmd    Command
		off    uint64
		length uint32
		data   []byte
	}{
		{CmdWrite, 0, 8192, bytes.Repeat([]byte{7}, 8192)},
		{CmdTrim, 0, 4096, nil},           // refused by the device: nothing happens
		{CmdWriteZeroes, 4096, 4096, nil}, // may trim, the device refuses: zeros written
	} {
		rc.send(0, c.cmd, uint64(i), c.off, c.length, c.data)
		if errno, _, _, _ := rc.readReply(0, 0); errno != 0 {
			t.Fatalf("%v: errno %d", c.cmd, errno)
		}
	}
	rc.send(0, CmdRead, 9, 0, 8192, nil)
	_, _, got, _ := rc.readReply(0, 8192)
	if want := append(bytes.Repeat([]byte{7}, 4096), make([]byte, 4096)...); !bytes.Equal(got, want) {
		t.Errorf("after a refused trim and write-zeroes: % x ... % x, want 7s then zeros", got[:8], got[4096:4104])
	}
}
