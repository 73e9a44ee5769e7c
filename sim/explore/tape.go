package explore

// ByteTape is a world.Tape that takes every seeded choice of a run from a
// byte string: a pick among n is the next byte (two bytes, little endian,
// when n > 256) modulo n. When the bytes run out the world chooses itself.
// A fuzzer drives the simulator's interleavings with it (FuzzExplore).
type ByteTape struct {
	b []byte
}

// NewByteTape returns a tape reading b.
func NewByteTape(b []byte) *ByteTape { return &ByteTape{b: b} }

// Next implements world.Tape.
func (t *ByteTape) Next(site string, n int) (int, bool, error) {
	need := 1
	if n > 256 {
		need = 2
	}
	if len(t.b) < need || n <= 0 {
		return 0, false, nil
	}
	v := int(t.b[0])
	if need == 2 {
		v |= int(t.b[1]) << 8
	}
	t.b = t.b[need:]
	return v % n, true, nil
}
