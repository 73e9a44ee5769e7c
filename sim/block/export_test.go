package block

// NewMemPageShift is NewMem with a page of 1<<shift bytes, for tests and the
// page-size benchmark.
func NewMemPageShift(name string, size int64, shift uint) (*Mem, error) {
	return newMem(name, size, shift)
}
