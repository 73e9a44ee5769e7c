package exstore

import (
	"fmt"
	"syscall"

	"snaplab/sim/block"
)

// Image is a decoded persistent COW image.
type Image struct {
	Dev    string
	Size   int64 // COW size in bytes
	Header Header
	// Fresh is true when the magic is 0: the kernel would initialise the
	// COW on load. Nothing else is decoded then.
	Fresh bool
	// ExceptionsPerArea is E = chunk_size*512/16.
	ExceptionsPerArea uint32
	// Exceptions in on-disk order, up to the terminating entry.
	Exceptions []Exception
	// CurrentArea and CurrentCommitted locate the terminator: the area the
	// kernel keeps in memory and the index of its first free entry.
	CurrentArea      uint64
	CurrentCommitted uint32
	// NextFree is the kernel's next_free after loading this image.
	NextFree uint64
}

// Exception is one on-disk entry.
type Exception struct {
	Area     uint64 // metadata area number
	Index    uint32 // entry index in the area
	Old, New uint64 // origin chunk, COW chunk
	Off      int64  // byte offset of the entry on the COW device
}

// Inspect decodes the persistent exception store on cow without writing to
// it, following the kernel's read_header and read_exceptions. Unlike the
// kernel it also decodes the table of an invalidated (valid=0) image. It
// returns an error for what the kernel would refuse to load (bad magic,
// version other than 1, chunk size that is not a power of 2 or above the
// limit) and for areas beyond the device end; on such errors the returned
// Image holds what was decoded so far (at least the header when it could be
// read). Errors are *MetadataError values naming the byte offset.
func Inspect(cow block.Device) (*Image, error) {
	im := &Image{Dev: cow.Name(), Size: cow.Size()}
	if cow.Size() < block.SectorSize {
		return nil, &MetadataError{Dev: cow.Name(), What: "header", Off: 0, Errno: syscall.EIO,
			Msg: fmt.Sprintf("device of %d bytes has no room for a header", cow.Size())}
	}
	hb := make([]byte, block.SectorSize)
	if _, err := cow.ReadAt(hb, 0); err != nil {
		return nil, &MetadataError{Dev: cow.Name(), What: "header", Off: 0, Errno: block.Errno(err), Msg: "read failed", Err: err}
	}
	im.Header = decodeHeader(hb)
	h := im.Header
	switch {
	case h.Magic == 0:
		im.Fresh = true
		return im, nil
	case h.Magic != Magic:
		return im, &MetadataError{Dev: cow.Name(), What: "header", Off: 0, Errno: syscall.ENXIO,
			Msg: fmt.Sprintf("Invalid or corrupt snapshot: magic %#08x, want %#08x (\"SnAp\")", h.Magic, Magic)}
	case h.Version != diskVersion:
		return im, &MetadataError{Dev: cow.Name(), What: "header", Off: 8, Errno: syscall.EINVAL,
			Msg: fmt.Sprintf("unable to handle snapshot disk version %d", int32(h.Version))}
	}
	if reason := checkChunkSize(h.ChunkSize, 1); reason != "" {
		return im, &MetadataError{Dev: cow.Name(), What: "header", Off: 12, Errno: syscall.EINVAL,
			Msg: fmt.Sprintf("invalid on-disk chunk size %d: %s", h.ChunkSize, reason)}
	}
	e := uint32(uint64(h.ChunkSize) * block.SectorSize / diskExceptionSize)
	im.ExceptionsPerArea = e
	nextFree := uint64(numHeaderChunks + 1)
	var buf []byte
	for k := uint64(0); ; k++ {
		c := areaLocation(e, k)
		what := fmt.Sprintf("area %d", k)
		off, _, ok := chunkRange(cow, h.ChunkSize, c)
		if !ok {
			return im, chunkIO(cow, "read", nil, h.ChunkSize, c, what)
		}
		if buf == nil {
			buf = make([]byte, int(h.ChunkSize)*block.SectorSize)
		}
		if err := chunkIO(cow, "read", buf, h.ChunkSize, c, what); err != nil {
			return im, err
		}
		for i := uint32(0); i < e; i++ {
			old, nw := getException(buf, i)
			if nw == 0 {
				im.CurrentArea, im.CurrentCommitted = k, i
				im.NextFree = skipMetadata(e, nextFree)
				return im, nil
			}
			nextFree = max(nextFree, nw+1)
			im.Exceptions = append(im.Exceptions, Exception{Area: k, Index: i, Old: old, New: nw,
				Off: off + int64(i)*diskExceptionSize})
		}
	}
}

// Usage is what the kernel's status would report right after loading the
// image: allocated, total and metadata sectors.
func (im *Image) Usage() (allocated, total, metadata uint64) {
	c := uint64(im.Header.ChunkSize)
	return im.NextFree * c, uint64(im.Size) / block.SectorSize, (im.CurrentArea + 1 + numHeaderChunks) * c
}

// Problems lists structural defects the kernel would load without noticing
// but that a correct store never writes: a new_chunk on a metadata area,
// beyond the device end, or used twice; an old_chunk mapped twice. (A
// new_chunk of 0 cannot appear: it ends the table.) Each problem names the
// entry's byte offset.
func (im *Image) Problems() []string {
	var out []string
	if im.Fresh || im.ExceptionsPerArea == 0 {
		return nil
	}
	e := uint64(im.ExceptionsPerArea)
	chunks := uint64(im.Size) / (uint64(im.Header.ChunkSize) * block.SectorSize)
	seenNew := make(map[uint64]int64, len(im.Exceptions))
	seenOld := make(map[uint64]int64, len(im.Exceptions))
	for _, x := range im.Exceptions {
		at := fmt.Sprintf("area %d entry %d (byte offset %d)", x.Area, x.Index, x.Off)
		switch {
		case (x.New-numHeaderChunks)%(e+1) == 0:
			out = append(out, fmt.Sprintf("%s: new_chunk %d is metadata area %d", at, x.New, (x.New-numHeaderChunks)/(e+1)))
		case x.New >= chunks:
			out = append(out, fmt.Sprintf("%s: new_chunk %d is beyond the device end (%d chunks)", at, x.New, chunks))
		}
		if prev, dup := seenNew[x.New]; dup {
			out = append(out, fmt.Sprintf("%s: new_chunk %d already used by the entry at byte offset %d", at, x.New, prev))
		} else {
			seenNew[x.New] = x.Off
		}
		if prev, dup := seenOld[x.Old]; dup {
			out = append(out, fmt.Sprintf("%s: old_chunk %d already mapped by the entry at byte offset %d", at, x.Old, prev))
		} else {
			seenOld[x.Old] = x.Off
		}
	}
	return out
}
