package oracle

import "github.com/zeebo/xxh3"

// hashes holds a 64-bit content hash (xxh3) for each sector of a runs
// whose value is hashVal: data an outside write carried that is no
// scenario pattern, which the model keeps by hash so that later reads of
// it are checked too.
//
// Hashes live in blocks of hashBlock sectors aligned to hashBlock, each
// with a mask of the sectors it holds; an index (a runs) maps a block's
// sectors to its id + 1. A block goes as soon as none of its sectors holds
// arbitrary data any more (its slot is reused; the pages of slots go when
// the store is empty), so memory follows the most sectors held such data
// at once, not what was ever written: per block 64 bytes of hashes, a byte
// of mask and at most two index boundaries (8 bytes each), about 10 bytes
// a sector when blocks are full and 90 bytes for a lone 4 KiB write.
type hashes struct {
	idx   runs
	pages [][]uint64 // block b is pages[b/pageBlocks][b%pageBlocks*hashBlock:][:hashBlock]
	mask  []uint8    // sectors held, by block
	free  []uint32   // ids of blocks to reuse
	used  *int64     // blocks held by every store of the oracle (its budget)
}

const (
	hashBlock  = 8 // sectors a block
	pageBlocks = 512
)

// hashSector is the content hash of one sector of data.
func hashSector(p []byte) uint64 { return xxh3.Hash(p) }

func (h *hashes) block(id uint32) []uint64 {
	return h.pages[id/pageBlocks][id%pageBlocks*hashBlock:][:hashBlock]
}

// at returns the hash of sector s (0 if it holds none).
func (h *hashes) at(s int64) uint64 {
	v := h.idx.at(s)
	if v == 0 {
		return 0
	}
	return h.block(v - 1)[s%hashBlock]
}

// get fills dst with the hashes of sectors [s, s+len(dst)).
func (h *hashes) get(dst []uint64, s int64) {
	for i := range dst {
		dst[i] = h.at(s + int64(i))
	}
}

// alloc returns a free block's id.
func (h *hashes) alloc() uint32 {
	*h.used++
	if n := len(h.free); n > 0 {
		id := h.free[n-1]
		h.free = h.free[:n-1]
		return id
	}
	id := uint32(len(h.mask))
	h.mask = append(h.mask, 0)
	if int(id/pageBlocks) == len(h.pages) {
		h.pages = append(h.pages, make([]uint64, pageBlocks*hashBlock))
	}
	return id
}

// put stores hs as the hashes of sectors [s, s+len(hs)).
func (h *hashes) put(s int64, hs []uint64) {
	for len(hs) > 0 {
		b0 := s &^ (hashBlock - 1)
		n := min(int64(len(hs)), b0+hashBlock-s)
		v := h.idx.at(s)
		if v == 0 {
			v = h.alloc() + 1
			h.idx.set(b0, b0+hashBlock, v)
		}
		blk := h.block(v - 1)
		copy(blk[s-b0:], hs[:n])
		for i := s - b0; i < s-b0+n; i++ {
			h.mask[v-1] |= 1 << i
		}
		hs = hs[n:]
		s += n
	}
}

// clear forgets the hashes of sectors [lo, hi).
func (h *hashes) clear(lo, hi int64) {
	if h.idx.empty() {
		return
	}
	// The blocks that meet [lo, hi), collected first: clearing changes
	// the index.
	var buf [8]int64
	blocks := buf[:0]
	h.idx.each(lo, hi, func(a, b int64, v uint32) {
		if v == 0 {
			return
		}
		for b0 := a &^ (hashBlock - 1); b0 < b; b0 += hashBlock {
			blocks = append(blocks, b0)
		}
	})
	for _, b0 := range blocks {
		v := h.idx.at(b0)
		m, blk := h.mask[v-1], h.block(v-1)
		for i := max(lo, b0) - b0; i < min(hi, b0+hashBlock)-b0; i++ {
			m &^= 1 << i
			blk[i] = 0
		}
		h.mask[v-1] = m
		if m == 0 {
			h.idx.set(b0, b0+hashBlock, 0)
			h.free = append(h.free, v-1)
			*h.used--
		}
	}
	if h.blocks() == 0 {
		h.release()
	}
}

// release forgets every hash.
func (h *hashes) release() {
	*h.used -= int64(len(h.mask) - len(h.free))
	*h = hashes{used: h.used}
}

// blocks returns the number of blocks held.
func (h *hashes) blocks() int { return len(h.mask) - len(h.free) }
