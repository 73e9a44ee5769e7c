package record

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"slices"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/xxh3"
)

// The blob sidecar holds the data that outside clients wrote, beside the
// JSON Lines file (NAME.jsonl → NAME.blobs), so that a recording of
// gigabytes of writes keeps small, readable lines. Each distinct content is
// stored once, compressed with zstd where that pays, and named by its
// content hash: an arrival line says "blob":"xxh3:<32 hex digits>" (XXH3,
// 128 bits, of the bytes written), and the trace hash covers that name.
//
// The file is a magic line followed by frames, in the order they were
// first written:
//
//	"snaplab-blobs 1\n"
//	frame: 'B' | hash (16 bytes, big-endian XXH3-128) | raw length (u32 LE)
//	       | stored length (u32 LE) | method (1 byte: 0 raw, 1 zstd) | stored bytes
//
// A reader indexes the frames by scanning their headers, so a sidecar cut
// short by a crash still serves every complete frame.
const (
	// BlobMagic is the first line of a sidecar file.
	BlobMagic = "snaplab-blobs 1\n"
	// BlobHeaderLen is the length of a frame's header.
	BlobHeaderLen = 1 + 16 + 4 + 4 + 1
	blobRaw       = 0
	blobZstd      = 1
	// BlobPrefix starts a blob name.
	BlobPrefix = "xxh3:"
	// maxBlob bounds one blob (the longest write an arrival may carry).
	maxBlob = MaxArrivalIO
)

// BlobID names content: its XXH3-128 hash.
type BlobID [16]byte

// IDOf returns the name of data.
func IDOf(data []byte) BlobID {
	return BlobID(xxh3.Hash128(data).Bytes())
}

// String is the name as arrival lines write it.
func (id BlobID) String() string { return BlobPrefix + hex.EncodeToString(id[:]) }

// ParseBlobID parses "xxh3:" and 32 hex digits.
func ParseBlobID(s string) (BlobID, error) {
	var id BlobID
	h, ok := cutPrefix(s, BlobPrefix)
	if !ok || len(h) != 32 || !isHex(h) {
		return id, fmt.Errorf("blob %q: want %q and 32 hex digits", s, BlobPrefix)
	}
	hex.Decode(id[:], []byte(h))
	return id, nil
}

func cutPrefix(s, p string) (string, bool) {
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):], true
	}
	return s, false
}

// SidecarPath is the sidecar of the recording at path: NAME.jsonl →
// NAME.blobs (any other name gets ".blobs" appended).
func SidecarPath(path string) string {
	if n := len(path) - len(".jsonl"); n > 0 && path[n:] == ".jsonl" {
		return path[:n] + ".blobs"
	}
	return path + ".blobs"
}

// BlobSink stores the data of outside writes for a Writer (SetBlobs): a
// sidecar writer (vmtest/sidecar writes one, compressing on a goroutine of
// its own, outside the simulated world).
type BlobSink interface {
	// Put stores data unless its content is stored already, and returns
	// its name; the caller may reuse data afterwards.
	Put(data []byte) BlobID
	// Err is the first error storing data.
	Err() error
	// Path is the sidecar's file name.
	Path() string
}

// AppendFrame appends the frame of a blob: its header and stored bytes,
// zstd-compressed (with enc) when that saves at least an eighth, else raw.
func AppendFrame(dst []byte, id BlobID, data []byte, enc *zstd.Encoder) []byte {
	at := len(dst)
	dst = append(dst, make([]byte, BlobHeaderLen)...)
	method := byte(blobZstd)
	if looksRandom(data) || !trialPays(data, enc, dst[len(dst):]) {
		dst = append(dst, data...)
		method = blobRaw
	} else if dst = enc.EncodeAll(data, dst); len(dst)-at-BlobHeaderLen >= len(data)*7/8 {
		dst = append(dst[:at+BlobHeaderLen], data...)
		method = blobRaw
	}
	h := dst[at : at+BlobHeaderLen]
	h[0] = 'B'
	copy(h[1:17], id[:])
	binary.LittleEndian.PutUint32(h[17:], uint32(len(data)))
	binary.LittleEndian.PutUint32(h[21:], uint32(len(dst)-at-BlobHeaderLen))
	h[25] = method
	return dst
}

// looksRandom reports whether data is not worth compressing: 512 bytes
// sampled across it take more than 190 distinct values, as random bytes do
// (221 expected; fio's buffers, random words with some zero words, 204 to
// 218), while text, sparse data and half-random data (160) do not.
// Compressing random data costs about a core second per GB for nothing;
// the sample costs about 0.1% of that. Only the sidecar's size depends on
// the answer, never a recording's lines.
func looksRandom(data []byte) bool {
	const sample = 512
	if len(data) < 4*sample {
		return false // small: just try
	}
	var seen [4]uint64
	// Vary the phase within the stride too: data built of words (fio's
	// buffers, sector headers) must not be sampled at one word offset.
	step := len(data) / sample
	mask := 7 // phases 0..7 (5 is odd: i*5 walks all of them)
	if step < 8 {
		mask = 3
	}
	for i := 0; i < sample; i++ {
		b := data[i*step+(i*5)&mask]
		seen[b>>6] |= 1 << (b & 63)
	}
	distinct := bits.OnesCount64(seen[0]) + bits.OnesCount64(seen[1]) + bits.OnesCount64(seen[2]) + bits.OnesCount64(seen[3])
	return distinct > 190
}

// trialPays reports whether compressing data is likely to save at least an
// eighth: data up to 16 KiB is simply tried, larger data by compressing a
// 4 KiB slice from its middle (fio's 1 MiB buffers saved 4% for a core
// second per GB). scratch is spare capacity to compress into.
func trialPays(data []byte, enc *zstd.Encoder, scratch []byte) bool {
	const slice = 4 << 10
	if len(data) <= 4*slice {
		return true
	}
	mid := len(data) / 2
	out := enc.EncodeAll(data[mid:mid+slice], scratch[:0])
	return len(out) < slice*7/8
}

// NewFrameEncoder returns the zstd encoder sidecars compress with.
func NewFrameEncoder() (*zstd.Encoder, error) {
	return zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
}

// BlobReader serves the blobs of a sidecar by name, reading each on demand.
type BlobReader struct {
	path  string
	f     *os.File
	index map[BlobID]blobLoc
	dec   *zstd.Decoder
}

type blobLoc struct {
	off         int64
	raw, stored uint32
	method      byte
}

// OpenBlobs indexes the sidecar at path. A frame cut short at the end (a
// crash while writing) is ignored; a damaged frame header is an error that
// names its offset.
func OpenBlobs(path string) (*BlobReader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("blob sidecar: %w", err)
	}
	r := &BlobReader{path: path, f: f, index: map[BlobID]blobLoc{}}
	if err := r.scan(); err != nil {
		f.Close()
		return nil, err
	}
	return r, nil
}

func (r *BlobReader) scan() error {
	fi, err := r.f.Stat()
	if err != nil {
		return fmt.Errorf("blob sidecar %s: %w", r.path, err)
	}
	size := fi.Size()
	magic := make([]byte, len(BlobMagic))
	if _, err := r.f.ReadAt(magic, 0); err != nil || string(magic) != BlobMagic {
		return fmt.Errorf("blob sidecar %s: not a snaplab blob file (want the line %q first)", r.path, BlobMagic[:len(BlobMagic)-1])
	}
	var h [BlobHeaderLen]byte
	for off := int64(len(BlobMagic)); off < size; {
		if size-off < BlobHeaderLen {
			break // cut short
		}
		if _, err := r.f.ReadAt(h[:], off); err != nil {
			return fmt.Errorf("blob sidecar %s: offset %d: %w", r.path, off, err)
		}
		l := blobLoc{off: off + BlobHeaderLen, raw: binary.LittleEndian.Uint32(h[17:]), stored: binary.LittleEndian.Uint32(h[21:]), method: h[25]}
		switch {
		case h[0] != 'B':
			return fmt.Errorf("blob sidecar %s: offset %d: frame type %#02x, want 'B'", r.path, off, h[0])
		case l.method != blobRaw && l.method != blobZstd:
			return fmt.Errorf("blob sidecar %s: offset %d: method %d, want 0 (raw) or 1 (zstd)", r.path, off, l.method)
		case l.raw > maxBlob || l.stored > maxBlob:
			return fmt.Errorf("blob sidecar %s: offset %d: lengths %d/%d, more than %d", r.path, off, l.raw, l.stored, maxBlob)
		case l.method == blobRaw && l.stored != l.raw:
			return fmt.Errorf("blob sidecar %s: offset %d: a raw frame of %d bytes says %d stored", r.path, off, l.raw, l.stored)
		}
		if l.off+int64(l.stored) > size {
			break // cut short
		}
		var id BlobID
		copy(id[:], h[1:17])
		if _, dup := r.index[id]; !dup {
			r.index[id] = l
		}
		off = l.off + int64(l.stored)
	}
	return nil
}

// IDs lists the names of the blobs, in increasing order.
func (r *BlobReader) IDs() []BlobID {
	ids := make([]BlobID, 0, len(r.index))
	for id := range r.index {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b BlobID) int { return bytes.Compare(a[:], b[:]) })
	return ids
}

// Len is the number of distinct blobs.
func (r *BlobReader) Len() int { return len(r.index) }

// Get returns the content named id; the content is checked against its
// name.
func (r *BlobReader) Get(id BlobID) ([]byte, error) {
	l, ok := r.index[id]
	if !ok {
		return nil, fmt.Errorf("blob %s: not in sidecar %s", id, r.path)
	}
	stored := make([]byte, l.stored)
	if _, err := r.f.ReadAt(stored, l.off); err != nil {
		return nil, fmt.Errorf("blob %s: sidecar %s offset %d: %w", id, r.path, l.off, err)
	}
	data := stored
	if l.method == blobZstd {
		if r.dec == nil {
			d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxBlob))
			if err != nil {
				return nil, err
			}
			r.dec = d
		}
		var err error
		data, err = r.dec.DecodeAll(stored, make([]byte, 0, l.raw))
		if err != nil {
			return nil, fmt.Errorf("blob %s: sidecar %s offset %d: %w", id, r.path, l.off, err)
		}
	}
	if uint32(len(data)) != l.raw || IDOf(data) != id {
		return nil, fmt.Errorf("blob %s: sidecar %s offset %d: the content does not match its name (damaged sidecar)", id, r.path, l.off)
	}
	return data, nil
}

// Close closes the file.
func (r *BlobReader) Close() error {
	if r.dec != nil {
		r.dec.Close()
	}
	return r.f.Close()
}

// ErrNoSidecar is returned for a blob reference in a recording read
// without its sidecar.
var ErrNoSidecar = errors.New("the recording's blob sidecar is not open")
