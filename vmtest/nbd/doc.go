// Package nbd is snaplab's NBD server: it serves block.Device values to
// NBD clients (QEMU, the guest kernel's nbd-client, libnbd tools, fio) over
// the protocol of NetworkBlockDevice/nbd doc/proto.md.
//
// The protocol core lives here and storage is whatever block.Device an
// Export carries, in the manner of nbdkit's core and plugins.
//
// Contract:
//
//   - Handshake: fixed newstyle only. Clients that do not set
//     NBD_FLAG_C_FIXED_NEWSTYLE, or set unknown flags, are disconnected.
//     Options: EXPORT_NAME, ABORT, LIST, INFO, GO (NBD_INFO_EXPORT, NAME,
//     DESCRIPTION, BLOCK_SIZE with minimum 512, preferred
//     Export.PreferredBlock and maximum 32 MiB), STRUCTURED_REPLY,
//     LIST_META_CONTEXT and SET_META_CONTEXT with "base:allocation". Other
//     options get NBD_REP_ERR_UNSUP, unknown exports NBD_REP_ERR_UNKNOWN.
//     STARTTLS as under TLS below.
//   - Transmission: READ, WRITE (+FUA), FLUSH, TRIM (+FUA), WRITE_ZEROES
//     (+FUA, NO_HOLE), BLOCK_STATUS (+REQ_ONE) and DISC, with simple or
//     structured replies. Structured reads use OFFSET_HOLE chunks for holes
//     a block.Mapper reports; errors go out as ERROR chunks carrying the
//     device error's text.
//   - Validation: unknown commands or flags, zero lengths, READ/WRITE over
//     32 MiB, reads/trims/block-status past the end → EINVAL; writes and
//     write-zeroes past the end → ENOSPC; writes of any kind to a read-only
//     export → EPERM. Offsets and lengths must be multiples of 512 only for
//     clients that asked for NBD_INFO_BLOCK_SIZE (who must obey it: what is
//     advertised is enforced); others keep the protocol default of byte
//     granularity.
//   - Alignment: devices are sector-addressed underneath (a dm bio carries
//     a sector), so every device call is whole 512-byte sectors, and a call
//     that would not be is refused with EIO rather than let the device move
//     the bytes. Unaligned requests of clients without block sizes are
//     served byte-exact, as qemu-nbd does: READ reads the covering sectors
//     and answers the bytes asked for (one data chunk when structured);
//     WRITE and WRITE_ZEROES read, modify and write the partial head and
//     tail sectors and write the aligned middle directly (up to 64 KiB of
//     cover as one merged write); TRIM, being advisory, trims only the whole
//     sectors inside; FUA holds for every piece. A read-modify-write holds
//     its covering sectors exclusively in a range lock shared by the exports
//     of one device name: it waits for overlapping writes, trims and zeroes
//     in flight, and overlapping ones wait for it; aligned requests take a
//     lock-free path while no read-modify-write is around.
//   - Device errors map through block.Errno: EPERM/EROFS → EPERM,
//     ENOSPC/EDQUOT/EFBIG → ENOSPC, EINVAL → EINVAL, anything else → EIO.
//     Error texts name the device, offset and length.
//   - Concurrency: each admitted request runs on its own goroutine (the one
//     that read it, nbdkit-style); replies are written in turn, batched,
//     and may be out of order. A FLUSH calls Dev.Flush after it has been
//     received, so every write already replied to is durable when FLUSH is
//     answered. FUA writes go through block.WriteFUA. TRIM uses
//     block.Discarder when the device has it (else it succeeds doing
//     nothing); WRITE_ZEROES discards when allowed and possible, else writes
//     zeros.
//   - Budgets: a request is admitted only within its connection's limits,
//     WithMaxInFlight requests (default 64) and WithMaxConnBytes bytes
//     (default 64 MiB; a lone request up to 32 MiB always fits), and within
//     the server's WithMaxServerBytes (default 256 MiB). A request is
//     charged its payload or reply data (at least 256 bytes) from before its
//     payload is read until its reply has been written to the socket, or
//     dropped; while a budget is spent the connection reads nothing more,
//     so the client's socket pushes back. Stats reports connections,
//     requests and bytes in flight.
//   - Fairness: the server budget goes to the connections waiting for it by
//     WF2Q+ over bytes (budget.go): a connection flooding with big requests
//     gets its share, and a light one's next request is granted at the next
//     release. Beyond the budget, a connection with nothing in flight may
//     always have one request of up to 256 KiB admitted, so clients that
//     hold the whole budget with replies they never read cannot stop
//     another's small requests. Devices such as vmtest/live's run requests
//     one at a time in arrival order, so what is admitted ahead of a
//     request bounds its wait; and a request reaches the device as calls
//     of at most 1 MiB (16 MiB for TRIM and WRITE_ZEROES' discards), so a
//     small request waits behind one piece of each big one, not the whole
//     of it (measured through snaplab serve: a 4 KiB read's p99 under
//     three 32 MiB read floods went from 1 s to about 0.1 s).
//   - Connections: at most WithMaxConns (default 128). One over the limit
//     is told so for up to 2 s: NBD_REP_ERR_POLICY with a message naming
//     the limit for every option, ABORT acknowledged, EXPORT_NAME closed.
//   - Broken connections: a client that closes or resets without
//     NBD_CMD_DISC, or whose reply cannot be written, cancels its queued
//     work: requests not yet on the device are dropped (the Observer sees
//     ECONNRESET), budget waits end, replies are discarded. NBD_CMD_DISC
//     lets every admitted request finish and its reply go out. Malformed
//     input closes only that connection, after its in-flight requests
//     finish.
//   - Opened devices: when an export's Dev is a block.Opener, NBD_OPT_GO
//     and NBD_OPT_EXPORT_NAME open a handle for the connection (INFO does
//     not), all its I/O goes through it, and it is closed when the
//     connection ends, after its last request. A failed Open answers GO
//     with NBD_REP_ERR_UNKNOWN and the error's text, and closes an
//     EXPORT_NAME connection.
//
// TLS (tls.go): NBD_OPT_STARTTLS with WithTLS(cfg, TLSRequired) — the
// protocol's FORCEDTLS, as qemu-nbd --tls-creds and nbdkit --tls=require:
// before TLS every option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD
// and EXPORT_NAME closes the connection — or TLSOptional (nbdkit --tls=on).
// Without WithTLS, STARTTLS gets NBD_REP_ERR_POLICY; a second STARTTLS gets
// NBD_REP_ERR_INVALID. The upgrade discards everything negotiated in
// plaintext except the client flags, refuses bytes pipelined behind
// STARTTLS, and counts against the handshake timeout. LoadX509Dir reads
// ca-cert.pem, server-cert.pem and server-key.pem (and ca-crl.pem) as
// qemu's tls-creds-x509 and nbdkit's --tls-certificates lay them out,
// optionally requiring client certificates. TLS 1.2 and 1.3 only. Clients:
// qemu's NBD driver takes tls-creds=ID with --object
// tls-creds-x509,id=ID,dir=DIR,endpoint=client (on a unix socket it also
// needs tls-hostname=NAME, else "No hostname for certificate validation");
// libnbd takes nbds://HOST:PORT/NAME?tls-certificates=DIR (libnbd 1.14,
// Debian 12's, verifies no server certificate on a unix socket). Pre-shared
// keys (tls-creds-psk, --tls-psk) are impossible with Go's crypto/tls:
// LoadPSK fails with ErrNoPSK.
package nbd
