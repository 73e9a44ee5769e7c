// Package exstore implements device-mapper snapshot exception stores: the
// persistent store ("P", "PO") that keeps its exception table on the COW
// device in the Linux kernel's on-disk format, and the transient store ("N")
// that keeps nothing on disk.
//
// Contract:
//
//   - New parses the store part of a snapshot table (type and chunk size)
//     with the kernel's checks, in the kernel's order, and returns a *CtrError
//     whose text is the kernel's inner ti->error string.
//   - A Store is driven exactly as drivers/md/dm-snap.c drives a
//     struct dm_exception_store: ReadMetadata once at construction, then
//     Prepare for each new exception and Commit when its copy is done, Drop to
//     invalidate, Usage for status. Calls are synchronous: every COW I/O
//     happens during the call, and Commit callbacks run before Commit returns.
//     The caller decides when to call (the simulator's event loop).
//   - The persistent store reads and writes the kernel's format byte for byte
//     (dm-snap-persistent.c, SNAPSHOT_DISK_VERSION 1): a 16-byte header in
//     chunk 0 ("SnAp", valid, version, chunk size, little-endian, rest of the
//     chunk zero), then metadata areas of E = chunk_size*512/16 entries
//     {old_chunk, new_chunk} (two little-endian uint64) at chunks
//     1 + (E+1)*k, each followed by its E data chunks. The table ends at the
//     first entry whose new_chunk is 0. So a COW image moves between this
//     package and a real kernel unchanged.
//   - Kernel log lines (DMERR, DMWARN) go to a Logger with the kernel file's
//     DM_MSG_PREFIX, so callers can print them as the kernel does.
//   - No content of a COW device makes this package panic: bad metadata gives
//     a *MetadataError naming the device and byte offset.
//
// Inspect decodes a persistent COW image without writing, for tests, tools
// and structural checkers.
package exstore
