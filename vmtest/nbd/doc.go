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
//     clients that asked for NBD_INFO_BLOCK_SIZE (who must obey it); others
//     keep the protocol default of byte granularity.
//   - Device errors map through block.Errno: EPERM/EROFS → EPERM,
//     ENOSPC/EDQUOT/EFBIG → ENOSPC, EINVAL → EINVAL, anything else → EIO.
//   - Concurrency: up to WithMaxInFlight requests per connection run at
//     once, each on its own goroutine (the one that read it, nbdkit-style);
//     replies are written in turn, batched, and may be out of order. A FLUSH calls Dev.Flush after it has been received, so every
//     write already replied to is durable when FLUSH is answered. FUA
//     writes go through block.WriteFUA. TRIM uses block.Discarder when the
//     device has it (else it succeeds doing nothing); WRITE_ZEROES discards
//     when allowed and possible, else writes zeros.
//   - Malformed input, or a client vanishing mid-request, closes only that
//     connection, after its in-flight requests finish.
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
