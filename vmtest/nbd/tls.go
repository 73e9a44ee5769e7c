package nbd

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
)

// TLS over NBD: NBD_OPT_STARTTLS (doc/proto.md "TLS support"), with the
// certificate layout of qemu's tls-creds-x509 and nbdkit's
// --tls-certificates.

// repErrTLSReqd is NBD_REP_ERR_TLS_REQD: the option needs TLS first.
const repErrTLSReqd = repErrBit + 5

// TLSMode says whether a server configured with WithTLS insists on TLS.
type TLSMode int

const (
	// TLSRequired is the protocol's FORCEDTLS mode (qemu-nbd --tls-creds,
	// nbdkit --tls=require): before NBD_OPT_STARTTLS every option but
	// STARTTLS and ABORT is refused with NBD_REP_ERR_TLS_REQD, and
	// NBD_OPT_EXPORT_NAME closes the connection. It is the zero value.
	TLSRequired TLSMode = iota
	// TLSOptional lets the client choose (nbdkit --tls=on; the protocol's
	// SELECTIVETLS with no TLS-only export): it may upgrade with
	// NBD_OPT_STARTTLS or stay in plaintext. Open to downgrade attacks.
	TLSOptional
)

func (m TLSMode) String() string {
	switch m {
	case TLSRequired:
		return "required"
	case TLSOptional:
		return "optional"
	}
	return fmt.Sprintf("TLSMode(%d)", int(m))
}

// tlsState is a Server's TLS configuration (nil: the protocol's NOTLS mode,
// where NBD_OPT_STARTTLS gets NBD_REP_ERR_POLICY).
type tlsState struct {
	cfg  *tls.Config
	mode TLSMode
}

// WithTLS offers TLS through NBD_OPT_STARTTLS with cfg (a server
// configuration: certificates, and client authentication if wanted; see
// LoadX509Dir), optional or required as mode says. Versions below TLS 1.2
// are never negotiated; TLS 1.3 is preferred when the client has it. The
// TLS handshake counts against the handshake timeout (WithHandshakeTimeout).
//
// WithTLS panics if cfg is nil or carries no server certificate.
func WithTLS(cfg *tls.Config, mode TLSMode) Option {
	switch {
	case cfg == nil:
		panic("nbd: WithTLS: nil *tls.Config")
	case len(cfg.Certificates) == 0 && cfg.GetCertificate == nil && cfg.GetConfigForClient == nil:
		panic("nbd: WithTLS: the tls.Config has no server certificate (Certificates, GetCertificate or GetConfigForClient)")
	case mode != TLSRequired && mode != TLSOptional:
		panic(fmt.Sprintf("nbd: WithTLS: unknown mode %d", int(mode)))
	}
	c := cfg.Clone()
	if c.MinVersion < tls.VersionTLS12 {
		c.MinVersion = tls.VersionTLS12
	}
	st := &tlsState{cfg: c, mode: mode}
	return func(s *Server) { s.tls = st }
}

// tlsRequired answers an option other than STARTTLS and ABORT that arrived
// in plaintext on a server requiring TLS: its data is skipped unread (none
// of it is kept) and it gets NBD_REP_ERR_TLS_REQD, except EXPORT_NAME, which
// cannot be refused and so ends the connection.
func (n *negotiation) tlsRequired(opt, length uint32) (bool, error) {
	if opt == optExportName {
		return false, errors.New("NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS, and this server requires TLS")
	}
	if _, err := io.CopyN(io.Discard, n.r, int64(length)); err != nil {
		return false, fmt.Errorf("skipping %d bytes of option %d: %w", length, opt, err)
	}
	n.errReply(opt, repErrTLSReqd, "this server requires TLS: send NBD_OPT_STARTTLS before option %d", opt)
	return false, nil
}

// startTLS answers NBD_OPT_STARTTLS and, when it sends NBD_REP_ACK, runs the
// TLS handshake as the server and moves the negotiation onto TLS.
func (n *negotiation) startTLS(length uint32) (bool, error) {
	switch {
	case n.tc != nil:
		n.errReply(optStartTLS, repErrInvalid, "TLS is already active on this connection")
		return false, nil
	case length != 0:
		n.errReply(optStartTLS, repErrInvalid, "NBD_OPT_STARTTLS carries %d bytes of data, want none", length)
		return false, nil
	case n.s.tls == nil:
		n.errReply(optStartTLS, repErrPolicy, "TLS is not enabled on this server (no certificates configured)")
		return false, nil
	case n.nc == nil:
		n.errReply(optStartTLS, repErrPolicy, "TLS is not available on this connection")
		return false, nil
	}
	// The client must wait for our reply before its TLS handshake; bytes
	// it sent already are plaintext someone wants to pass off as coming
	// through TLS (STARTTLS command injection). Refuse them.
	if b := n.r.Buffered(); b > 0 {
		return false, fmt.Errorf("client sent %d bytes after NBD_OPT_STARTTLS without waiting for the reply (plaintext injection?)", b)
	}
	n.reply(optStartTLS, repAck, nil)
	if err := n.w.Flush(); err != nil {
		return false, fmt.Errorf("sending NBD_OPT_STARTTLS reply: %w", err)
	}
	tc := tls.Server(n.nc, n.s.tls.cfg)
	if err := tc.Handshake(); err != nil { // under the connection's handshake deadline
		return false, fmt.Errorf("TLS handshake: %w", err)
	}
	// From here every byte goes through TLS. Nothing negotiated in
	// plaintext survives (doc/proto.md: the server MUST NOT preserve
	// per-connection state from before the upgrade; nbdkit's
	// CVE-2021-3716 kept structured replies): the negotiation starts over
	// with only the client's flags. Any field added to negotiation is
	// dropped here unless it is copied below.
	*n = negotiation{s: n.s, r: n.r, w: n.w, nc: n.nc, tc: tc, buf: n.buf,
		sess: session{noZeroes: n.sess.noZeroes}}
	n.r.Reset(tc)
	n.w.Reset(tc)
	st := tc.ConnectionState()
	args := []any{"version", tls.VersionName(st.Version), "cipher", tls.CipherSuiteName(st.CipherSuite)}
	if len(st.PeerCertificates) > 0 {
		args = append(args, "client", st.PeerCertificates[0].Subject.String())
	}
	n.s.log.Debug("nbd: TLS established", args...)
	return false, nil
}

// serverTLSConn is a server connection after NBD_OPT_STARTTLS: reads and
// writes go through TLS, while Close closes the socket at once, as Shutdown
// and a broken reply stream need (tls.Conn.Close first sends close_notify,
// which can wait seconds on a client that has stopped reading). The orderly
// TLS close is (*tls.Conn).Close when the connection ends.
type serverTLSConn struct {
	*tls.Conn
	raw net.Conn
}

func (c serverTLSConn) Close() error { return c.raw.Close() }

// Certificate files in a directory, as qemu's tls-creds-x509 and nbdkit's
// --tls-certificates name them.
const (
	caCertFile     = "ca-cert.pem"
	caCRLFile      = "ca-crl.pem"
	serverCertFile = "server-cert.pem"
	serverKeyFile  = "server-key.pem"
)

// LoadX509Dir loads a server's X.509 credentials from dir laid out as
// qemu's tls-creds-x509 (endpoint=server) and nbdkit's --tls-certificates
// expect:
//
//	ca-cert.pem      the certificate authority (one or more PEM certificates)
//	server-cert.pem  the server's certificate, then any intermediates
//	server-key.pem   the server's private key
//	ca-crl.pem       optional: revoked client certificates (with verifyPeer)
//
// The server certificate must verify against ca-cert.pem for server
// authentication, as qemu checks when it loads the credentials. With
// verifyPeer (qemu's verify-peer=on, nbdkit's --tls-verify-peer) clients
// must present a certificate for client authentication signed by the CA
// and not revoked; without it no client certificate is asked for. The
// configuration allows TLS 1.2 and 1.3. Errors name the file at fault.
func LoadX509Dir(dir string, verifyPeer bool) (*tls.Config, error) {
	path := func(name string) string { return filepath.Join(dir, name) }
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(path(name))
		if err != nil {
			return nil, fmt.Errorf("nbd: TLS certificates: %w", err)
		}
		return b, nil
	}
	caPEM, err := read(caCertFile)
	if err != nil {
		return nil, err
	}
	cas, err := parseCerts(path(caCertFile), caPEM)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	for _, ca := range cas {
		if !ca.IsCA || !ca.BasicConstraintsValid {
			return nil, fmt.Errorf("nbd: TLS certificates: %s: %q is not a CA certificate (basic constraints CA:TRUE missing)",
				path(caCertFile), ca.Subject)
		}
		roots.AddCert(ca)
	}
	certPEM, err := read(serverCertFile)
	if err != nil {
		return nil, err
	}
	chain, err := parseCerts(path(serverCertFile), certPEM)
	if err != nil {
		return nil, err
	}
	keyPEM, err := read(serverKeyFile)
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("nbd: TLS certificates: %s (the key of %s): %w", path(serverKeyFile), path(serverCertFile), err)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return nil, fmt.Errorf("nbd: TLS certificates: %s does not verify against %s: %w",
			path(serverCertFile), path(caCertFile), err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	if !verifyPeer {
		return cfg, nil
	}
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	cfg.ClientCAs = roots
	crlPEM, err := os.ReadFile(path(caCRLFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return cfg, nil
	case err != nil:
		return nil, fmt.Errorf("nbd: TLS certificates: %w", err)
	}
	revoked, err := parseCRLs(path(caCRLFile), crlPEM, cas)
	if err != nil {
		return nil, err
	}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		for _, chain := range cs.VerifiedChains {
			for _, c := range chain {
				if revoked[string(c.RawIssuer)+"\x00"+c.SerialNumber.String()] {
					return fmt.Errorf("nbd: client certificate %q (serial %s) is revoked by %s",
						c.Subject, c.SerialNumber, path(caCRLFile))
				}
			}
		}
		return nil
	}
	return cfg, nil
}

// parseCerts decodes every CERTIFICATE block of a PEM file.
func parseCerts(file string, b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("nbd: TLS certificates: %s: certificate %d: %w", file, len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("nbd: TLS certificates: %s: no PEM \"CERTIFICATE\" block", file)
	}
	return certs, nil
}

// parseCRLs decodes the X509 CRL blocks of a PEM file, each signed by one
// of cas, into a set of revoked (issuer, serial) keys.
func parseCRLs(file string, b []byte, cas []*x509.Certificate) (map[string]bool, error) {
	revoked := map[string]bool{}
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "X509 CRL" {
			continue
		}
		n++
		crl, err := x509.ParseRevocationList(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("nbd: TLS certificates: %s: CRL %d: %w", file, n, err)
		}
		signed := false
		for _, ca := range cas {
			if crl.CheckSignatureFrom(ca) == nil {
				signed = true
				break
			}
		}
		if !signed {
			return nil, fmt.Errorf("nbd: TLS certificates: %s: CRL %d (issuer %q) is not signed by a certificate of %s",
				file, n, crl.Issuer, caCertFile)
		}
		for _, e := range crl.RevokedCertificateEntries {
			revoked[string(crl.RawIssuer)+"\x00"+e.SerialNumber.String()] = true
		}
	}
	if n == 0 {
		return nil, fmt.Errorf("nbd: TLS certificates: %s: no PEM \"X509 CRL\" block", file)
	}
	return revoked, nil
}

// ErrNoPSK is LoadPSK's error: TLS with pre-shared keys cannot be offered.
var ErrNoPSK = fmt.Errorf("nbd: TLS with pre-shared keys (qemu tls-creds-psk, nbdkit --tls-psk) is not available: "+
	"Go's crypto/tls has no PSK key exchange (no TLS 1.2 PSK cipher suites; TLS 1.3 PSKs only resume its own sessions, "+
	"golang/go#6379), and snaplab uses no other TLS stack; use X.509 certificates (LoadX509Dir): %w", errors.ErrUnsupported)

// LoadPSK would load a psktool(1) key file ("username:hexkey" lines) for
// TLS-PSK as nbdkit --tls-psk and qemu's tls-creds-psk do. It always fails
// with ErrNoPSK (errors.Is(err, errors.ErrUnsupported) holds): the standard
// library's TLS cannot do PSK.
func LoadPSK(file string) (*tls.Config, error) {
	return nil, fmt.Errorf("%w (key file %s not read)", ErrNoPSK, file)
}
