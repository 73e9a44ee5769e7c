package nbd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"snaplab/vmtest/nbd/pkitest"
)

// testPKI is a directory laid out for qemu's tls-creds-x509 and libnbd
// (ca-cert.pem, client-cert.pem, client-key.pem) that also holds the
// server's files (server-cert.pem, server-key.pem), as nbdkit reads them.
type testPKI struct {
	dir        string
	ca         *pkitest.CA
	clientCert *x509.Certificate
}

func newTestPKI(t testing.TB, ca *pkitest.CA) *testPKI {
	t.Helper()
	dir := t.TempDir()
	cert := pkitest.WriteDir(t, dir, ca)
	return &testPKI{dir: dir, ca: ca, clientCert: cert}
}

func (p *testPKI) serverConfig(t testing.TB, verifyPeer bool) *tls.Config {
	t.Helper()
	cfg, err := LoadX509Dir(p.dir, verifyPeer)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// clientConfig is a Go TLS client trusting p's CA, presenting p's client
// certificate if withCert.
func (p *testPKI) clientConfig(t testing.TB, withCert bool) *tls.Config {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(p.ca.Cert)
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost"}
	if withCert {
		pair, err := tls.LoadX509KeyPair(filepath.Join(p.dir, pkitest.ClientCert), filepath.Join(p.dir, pkitest.ClientKey))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg
}

// startTLS sends NBD_OPT_STARTTLS, expects NBD_REP_ACK and switches the raw
// client to TLS.
func (c *rawClient) startTLS(cfg *tls.Config) {
	c.t.Helper()
	c.sendOpt(optStartTLS, nil)
	if r := c.readOptReply(); r.opt != optStartTLS || r.typ != repAck {
		c.t.Fatalf("STARTTLS: reply 0x%x %q", r.typ, r.data)
	}
	if c.r.Buffered() != 0 {
		c.t.Fatalf("%d plaintext bytes after STARTTLS's ACK", c.r.Buffered())
	}
	tc := tls.Client(c.c, cfg)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.c, c.r = tc, bufio.NewReader(tc)
}

// goExport sends NBD_OPT_GO for name and returns the export's size and
// transmission flags.
func (c *rawClient) goExport(name string) (size uint64, flags uint16) {
	c.t.Helper()
	c.sendOpt(optGo, infoData(name))
	for _, r := range c.readUntilAck() {
		if r.typ&repErrBit != 0 {
			c.t.Fatalf("GO %q: error 0x%x %q", name, r.typ, r.data)
		}
		if r.typ == repInfo && binary.BigEndian.Uint16(r.data) == infoExport {
			size, flags = binary.BigEndian.Uint64(r.data[2:]), binary.BigEndian.Uint16(r.data[10:])
		}
	}
	return size, flags
}

func (c *rawClient) wantOptErr(opt uint32, data []byte, typ uint32, msg string) {
	c.t.Helper()
	c.sendOpt(opt, data)
	r := c.readOptReply()
	if r.opt != opt || r.typ != typ || !strings.Contains(string(r.data), msg) {
		c.t.Fatalf("option %d: reply opt %d type 0x%x %q, want type 0x%x with %q", opt, r.opt, r.typ, r.data, typ, msg)
	}
}

const tlsTestSize = 16 << 20

func tlsExports(dev *memDev) []Export { return []Export{{Name: "disk", Dev: dev}} }

// roundTrip writes a pattern with simple replies and reads it back.
func (c *rawClient) roundTrip(off uint64, n int) {
	c.t.Helper()
	data := bytes.Repeat([]byte{0xc3, 0x3c, 0x5a, 0xa5}, n/4)
	c.send(0, CmdWrite, 1, off, uint32(n), data)
	if errno, h := c.readSimple(); errno != 0 || h != 1 {
		c.t.Fatalf("WRITE: errno %d handle %d", errno, h)
	}
	c.send(0, CmdRead, 2, off, uint32(n), nil)
	if errno, h := c.readSimple(); errno != 0 || h != 2 {
		c.t.Fatalf("READ: errno %d handle %d", errno, h)
	}
	if got := c.read(n); !bytes.Equal(got, data) {
		c.t.Fatal("READ over TLS returned other data than written")
	}
}

func TestTLSRequiredOptionRules(t *testing.T) {
	p := newTestPKI(t, pkitest.NewCA(t, "snaplab test CA"))
	dev := newMemDev("d", tlsTestSize)
	ts := startServer(t, tlsExports(dev), WithTLS(p.serverConfig(t, false), TLSRequired))
	c := dialRaw(t, ts.addr)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	// Before TLS, every option but STARTTLS and ABORT, known or not,
	// whatever its length, is refused with a message.
	c.wantOptErr(optList, nil, repErrTLSReqd, "requires TLS")
	c.wantOptErr(optInfo, infoData("disk"), repErrTLSReqd, "NBD_OPT_STARTTLS")
	c.wantOptErr(optGo, infoData("disk"), repErrTLSReqd, "requires TLS")
	c.wantOptErr(optStructuredReply, nil, repErrTLSReqd, "requires TLS")
	c.wantOptErr(optSetMetaContext, metaData("disk", metaAllocation), repErrTLSReqd, "requires TLS")
	c.wantOptErr(99, []byte("x"), repErrTLSReqd, "requires TLS")
	c.wantOptErr(optList, make([]byte, maxOptionLen+1), repErrTLSReqd, "requires TLS")
	c.wantOptErr(optStartTLS, []byte("x"), repErrInvalid, "want none")
	c.startTLS(p.clientConfig(t, false))
	c.wantOptErr(optStartTLS, nil, repErrInvalid, "already active")
	rs := c.readListAfter()
	if len(rs) != 2 || rs[0].typ != repServer {
		t.Fatalf("LIST over TLS: %+v", rs)
	}
	size, flags := c.goExport("disk")
	if size != tlsTestSize || flags&flagSendDF != 0 {
		t.Fatalf("GO over TLS: size %d flags 0x%x", size, flags)
	}
	c.roundTrip(1<<20, 1<<20)
	c.roundTrip(4096, 512)
	got := make([]byte, 512)
	dev.ReadAt(got, 4096)
	if !bytes.Equal(got, bytes.Repeat([]byte{0xc3, 0x3c, 0x5a, 0xa5}, 128)) {
		t.Fatal("the device does not hold what was written over TLS")
	}
	c.send(0, CmdDisc, 3, 0, 0, nil)
	c.closed()
}

// readListAfter sends NBD_OPT_LIST and reads its replies.
func (c *rawClient) readListAfter() []optReply {
	c.t.Helper()
	c.sendOpt(optList, nil)
	return c.readUntilAck()
}

func TestTLSRequiredExportNameCloses(t *testing.T) {
	p := newTestPKI(t, pkitest.NewCA(t, "snaplab test CA"))
	ts := startServer(t, tlsExports(newMemDev("d", tlsTestSize)), WithTLS(p.serverConfig(t, false), TLSRequired))
	c := dialRaw(t, ts.addr)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.sendOpt(optExportName, []byte("disk"))
	c.closed()

	// ABORT is answered in plaintext.
	c = dialRaw(t, ts.addr)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.sendOpt(optAbort, nil)
	if r := c.readOptReply(); r.typ != repAck {
		t.Fatalf("ABORT: reply 0x%x %q", r.typ, r.data)
	}
	c.closed()

	// EXPORT_NAME after TLS enters transmission.
	c = dialRaw(t, ts.addr)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.startTLS(p.clientConfig(t, false))
	c.sendOpt(optExportName, []byte("disk"))
	if b := c.read(10); binary.BigEndian.Uint64(b) != tlsTestSize {
		t.Fatalf("EXPORT_NAME over TLS: % x", b)
	}
	c.roundTrip(0, 4096)
}

// State negotiated in plaintext does not survive STARTTLS: structured
// replies and the meta context set before it are gone after it.
func TestTLSDiscardsPlaintextState(t *testing.T) {
	p := newTestPKI(t, pkitest.NewCA(t, "snaplab test CA"))
	ts := startServer(t, tlsExports(newMemDev("d", tlsTestSize)), WithTLS(p.serverConfig(t, false), TLSOptional))
	c := dialRaw(t, ts.addr)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.sendOpt(optStructuredReply, nil)
	if r := c.readOptReply(); r.typ != repAck {
		t.Fatalf("STRUCTURED_REPLY: 0x%x %q", r.typ, r.data)
	}
	c.sendOpt(optSetMetaContext, metaData("disk", metaAllocation))
	if rs := c.readUntilAck(); len(rs) != 2 || rs[0].typ != repMetaContext {
		t.Fatalf("SET_META_CONTEXT: %+v", rs)
	}
	c.startTLS(p.clientConfig(t, false))
	// Meta contexts need structured replies, which are no longer negotiated.
	c.wantOptErr(optListMetaContext, metaData("disk"), repErrInvalid, "structured replies")
	if _, flags := c.goExport("disk"); flags&flagSendDF != 0 {
		t.Fatalf("GO: flags 0x%x carry NBD_FLAG_SEND_DF: structured replies survived STARTTLS", flags)
	}
	c.send(0, CmdBlockStatus, 7, 0, 4096, nil)
	if errno, h := c.readSimple(); errno != uint32(errInval) || h != 7 {
		t.Fatalf("BLOCK_STATUS after STARTTLS: errno %d handle %d, want EINVAL (no meta context)", errno, h)
	}
	c.roundTrip(0, 4096) // simple replies
}

func TestTLSOptionalPlaintext(t *testing.T) {
	p := newTestPKI(t, pkitest.NewCA(t, "snaplab test CA"))
	ts := startServer(t, tlsExports(newMemDev("d", tlsTestSize)), WithTLS(p.serverConfig(t, false), TLSOptional))
	c := dialRaw(t, ts.addr)
	if size, _ := c.open("disk", goOpts{}); size != tlsTestSize {
		t.Fatalf("size %d", size)
	}
	c.roundTrip(0, 4096)
}

func TestTLSNotConfigured(t *testing.T) {
	ts := startServer(t, tlsExports(newMemDev("d", tlsTestSize)))
	c := dialRaw(t, ts.addr)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.wantOptErr(optStartTLS, nil, repErrPolicy, "TLS is not enabled on this server")
	// The connection goes on in plaintext.
	if size, _ := c.goExport("disk"); size != tlsTestSize {
		t.Fatalf("size %d", size)
	}
	c.roundTrip(0, 4096)
}

// Bytes sent after STARTTLS before its reply are plaintext posing as TLS
// traffic: the server closes without acknowledging.
func TestTLSPlaintextAfterStartTLS(t *testing.T) {
	p := newTestPKI(t, pkitest.NewCA(t, "snaplab test CA"))
	ts := startServer(t, tlsExports(newMemDev("d", tlsTestSize)), WithTLS(p.serverConfig(t, false), TLSRequired))
	c := dialRaw(t, ts.addr)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	b := optBytes(optStartTLS, nil)
	b = append(b, optBytes(optStructuredReply, nil)...) // one write: one unix-socket read
	c.write(b)
	rest, err := io.ReadAll(c.r)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatal(err)
	}
	if len(rest) != 0 {
		t.Fatalf("server answered injected plaintext with % x", rest)
	}
}

// The TLS handshake is bounded by the handshake timeout.
func TestTLSHandshakeTimeout(t *testing.T) {
	p := newTestPKI(t, pkitest.NewCA(t, "snaplab test CA"))
	ts := startServer(t, tlsExports(newMemDev("d", tlsTestSize)),
		WithTLS(p.serverConfig(t, false), TLSRequired), WithHandshakeTimeout(300*time.Millisecond))
	c := dialRaw(t, ts.addr)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.sendOpt(optStartTLS, nil)
	if r := c.readOptReply(); r.typ != repAck {
		t.Fatalf("STARTTLS: 0x%x", r.typ)
	}
	start := time.Now()
	c.closed() // no ClientHello: the server gives up
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("server waited %v for a TLS handshake", d)
	}
}

func TestTLSVerifyPeer(t *testing.T) {
	ca := pkitest.NewCA(t, "snaplab test CA")
	p := newTestPKI(t, ca)
	ts := startServer(t, tlsExports(newMemDev("d", tlsTestSize)), WithTLS(p.serverConfig(t, true), TLSRequired))

	c := dialRaw(t, ts.addr)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.startTLS(p.clientConfig(t, true))
	if size, _ := c.goExport("disk"); size != tlsTestSize {
		t.Fatalf("size %d", size)
	}

	// No client certificate, or one from another CA: refused. Under TLS
	// 1.3 the client learns it on its first read.
	other := newTestPKI(t, pkitest.NewCA(t, "another CA"))
	otherCfg := p.clientConfig(t, false)
	pair, err := tls.LoadX509KeyPair(filepath.Join(other.dir, pkitest.ClientCert), filepath.Join(other.dir, pkitest.ClientKey))
	if err != nil {
		t.Fatal(err)
	}
	// Sent whatever CAs the server names (a Go client would otherwise
	// send none).
	otherCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	for name, cfg := range map[string]*tls.Config{"no certificate": p.clientConfig(t, false), "another CA": otherCfg} {
		c := dialRaw(t, ts.addr)
		c.greet(flagCFixedNewstyle | flagCNoZeroes)
		c.sendOpt(optStartTLS, nil)
		if r := c.readOptReply(); r.typ != repAck {
			t.Fatalf("%s: STARTTLS 0x%x", name, r.typ)
		}
		tc := tls.Client(c.c, cfg)
		err := tc.Handshake()
		if err == nil {
			tc.Write(optBytes(optList, nil))
			_, err = tc.Read(make([]byte, 1))
		}
		if err == nil {
			t.Fatalf("%s: server accepted the client", name)
		}
		t.Logf("%s: %v", name, err)
	}
}

func TestTLSRevokedClient(t *testing.T) {
	ca := pkitest.NewCA(t, "snaplab test CA")
	p := newTestPKI(t, ca)
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:     big.NewInt(1),
		ThisUpdate: time.Now().Add(-time.Hour),
		NextUpdate: time.Now().Add(time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{
			{SerialNumber: p.clientCert.SerialNumber, RevocationTime: time.Now().Add(-time.Minute)}},
	}, ca.Cert, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.dir, caCRLFile), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, tlsExports(newMemDev("d", tlsTestSize)), WithTLS(p.serverConfig(t, true), TLSRequired))
	c := dialRaw(t, ts.addr)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.sendOpt(optStartTLS, nil)
	c.readOptReply()
	tc := tls.Client(c.c, p.clientConfig(t, true))
	err = tc.Handshake()
	if err == nil {
		tc.Write(optBytes(optList, nil))
		_, err = tc.Read(make([]byte, 1))
	}
	if err == nil {
		t.Fatal("server accepted a revoked client certificate")
	}
	t.Logf("revoked: %v", err)

	// Another certificate of the same CA is not revoked.
	cc, ck, _ := ca.Issue(t, "another client", false)
	pair, err := tls.X509KeyPair(cc, ck)
	if err != nil {
		t.Fatal(err)
	}
	cfg := p.clientConfig(t, false)
	cfg.Certificates = []tls.Certificate{pair}
	c = dialRaw(t, ts.addr)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.startTLS(cfg)
	if size, _ := c.goExport("disk"); size != tlsTestSize {
		t.Fatalf("size %d", size)
	}
}

func TestLoadX509DirErrors(t *testing.T) {
	ca := pkitest.NewCA(t, "snaplab test CA")
	good := newTestPKI(t, ca)
	if _, err := LoadX509Dir(good.dir, true); err != nil {
		t.Fatal(err)
	}
	otherCA := pkitest.NewCA(t, "another CA")
	sc, sk, _ := otherCA.Issue(t, "server of another CA", true)
	cc, _, _ := ca.Issue(t, "a client", false)

	copyDir := func(edit func(dir string)) string {
		dir := t.TempDir()
		for _, f := range []string{caCertFile, serverCertFile, serverKeyFile} {
			b, err := os.ReadFile(filepath.Join(good.dir, f))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(dir, f), b, 0o600)
		}
		edit(dir)
		return dir
	}
	write := func(dir, f string, b []byte) { os.WriteFile(filepath.Join(dir, f), b, 0o600) }
	for _, tc := range []struct {
		name string
		edit func(dir string)
		want []string
	}{
		{"no CA", func(d string) { os.Remove(filepath.Join(d, caCertFile)) }, []string{caCertFile, "no such file"}},
		{"no cert", func(d string) { os.Remove(filepath.Join(d, serverCertFile)) }, []string{serverCertFile, "no such file"}},
		{"no key", func(d string) { os.Remove(filepath.Join(d, serverKeyFile)) }, []string{serverKeyFile, "no such file"}},
		{"garbage CA", func(d string) { write(d, caCertFile, []byte("hello")) }, []string{caCertFile, "no PEM"}},
		{"bad cert DER", func(d string) {
			write(d, serverCertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}))
		}, []string{serverCertFile, "certificate 1"}},
		{"leaf as CA", func(d string) { write(d, caCertFile, cc) }, []string{caCertFile, "not a CA"}},
		{"garbage key", func(d string) { write(d, serverKeyFile, []byte("nope")) }, []string{serverKeyFile}},
		{"key of another cert", func(d string) { write(d, serverKeyFile, sk) }, []string{serverKeyFile, serverCertFile, "does not match"}},
		{"cert of another CA", func(d string) { write(d, serverCertFile, sc); write(d, serverKeyFile, sk) },
			[]string{serverCertFile, "does not verify against", caCertFile}},
		{"client cert as server cert", func(d string) {
			c, k, _ := ca.Issue(t, "client", false)
			write(d, serverCertFile, c)
			write(d, serverKeyFile, k)
		}, []string{serverCertFile, "does not verify"}},
		{"garbage CRL", func(d string) { write(d, caCRLFile, []byte("x")) }, []string{caCRLFile, "no PEM"}},
	} {
		dir := copyDir(tc.edit)
		_, err := LoadX509Dir(dir, true)
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not say %q", tc.name, err, w)
			}
		}
	}
	if _, err := LoadX509Dir(filepath.Join(t.TempDir(), "missing"), false); err == nil || !strings.Contains(err.Error(), caCertFile) {
		t.Errorf("missing dir: %v", err)
	}
}

func TestLoadPSKUnsupported(t *testing.T) {
	cfg, err := LoadPSK("/tmp/keys.psk")
	if cfg != nil || !errors.Is(err, errors.ErrUnsupported) || !errors.Is(err, ErrNoPSK) ||
		!strings.Contains(err.Error(), "crypto/tls") || !strings.Contains(err.Error(), "/tmp/keys.psk") {
		t.Fatalf("LoadPSK: %v, %v", cfg, err)
	}
}

func TestWithTLSRejectsUnusableConfig(t *testing.T) {
	for name, f := range map[string]func(){
		"nil":             func() { WithTLS(nil, TLSRequired) },
		"no certificates": func() { WithTLS(&tls.Config{}, TLSRequired) },
		"bad mode":        func() { WithTLS(&tls.Config{Certificates: make([]tls.Certificate, 1)}, TLSMode(7)) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: WithTLS did not panic", name)
				}
			}()
			f()
		}()
	}
	// A TLS 1.0 floor is raised to 1.2.
	s := NewServer(WithTLS(&tls.Config{Certificates: make([]tls.Certificate, 1), MinVersion: tls.VersionTLS10}, TLSOptional))
	if s.tls.cfg.MinVersion != tls.VersionTLS12 {
		t.Fatalf("MinVersion 0x%x", s.tls.cfg.MinVersion)
	}
}

// tlsServer serves one 16 MiB export "disk" on 127.0.0.1 and on a unix
// socket.
type tlsServer struct {
	dev  *memDev
	port string
	sock string
}

func startTLSServer(t *testing.T, opts ...Option) *tlsServer {
	t.Helper()
	dir, err := os.MkdirTemp("", "nbdtls") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	tl, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ul, err := ListenUnix(filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	ts := &tlsServer{dev: newMemDev("d", tlsTestSize), sock: ul.Addr().String()}
	_, ts.port, _ = net.SplitHostPort(tl.Addr().String())
	s := NewServer(opts...)
	if err := s.AddExport(Export{Name: "disk", Dev: ts.dev}); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 2)
	go func() { served <- s.Serve(tl) }()
	go func() { served <- s.Serve(ul) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		for range 2 {
			if err := <-served; !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve: %v", err)
			}
		}
	})
	return ts
}

// run runs a client tool and returns its combined output and whether it
// succeeded; the test is skipped if the tool is not installed.
func runTool(t *testing.T, env []string, name string, args ...string) (string, bool) {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed (Debian: qemu-utils for qemu-io/qemu-img, libnbd-bin for nbdinfo): %v", name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	t.Logf("%s %s\n%s(err: %v)", name, strings.Join(args, " "), out, err)
	if ctx.Err() != nil {
		t.Fatalf("%s timed out", name)
	}
	return string(out), err == nil
}

// qemuTLS are the qemu-io/qemu-img arguments opening export "disk" with the
// X.509 credentials in dir (ca-cert.pem, client-cert.pem, client-key.pem).
func qemuTLS(dir, server string) []string {
	return []string{"--object", "tls-creds-x509,id=tls0,dir=" + dir + ",endpoint=client",
		"--image-opts", "driver=nbd," + server + ",export=disk,tls-creds=tls0"}
}

func wantOutput(t *testing.T, what, out string, ok, wantOK bool, want ...string) {
	t.Helper()
	if ok != wantOK {
		t.Errorf("%s: succeeded %v, want %v", what, ok, wantOK)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("%s: output does not contain %q", what, w)
		}
	}
}

// Real clients: qemu's NBD block driver (qemu-io, qemu-img) and libnbd
// (nbdinfo) against a server requiring TLS.
func TestTLSRealClients(t *testing.T) {
	p := newTestPKI(t, pkitest.NewCA(t, "snaplab test CA"))
	other := newTestPKI(t, pkitest.NewCA(t, "another CA"))
	ts := startTLSServer(t, WithTLS(p.serverConfig(t, false), TLSRequired))
	inet := "server.type=inet,server.host=127.0.0.1,server.port=" + ts.port
	nbds := "nbds://127.0.0.1:" + ts.port + "/disk?tls-certificates="

	t.Run("qemu-io", func(t *testing.T) {
		out, ok := runTool(t, nil, "qemu-io", append(qemuTLS(p.dir, inet),
			"-c", "write -P 0x5a 1M 1M", "-c", "read -P 0x5a 1M 1M")...)
		wantOutput(t, "qemu-io over TLS", out, ok, true,
			"wrote 1048576/1048576 bytes at offset 1048576", "read 1048576/1048576 bytes at offset 1048576")
		got := make([]byte, 1<<20)
		ts.dev.ReadAt(got, 1<<20)
		if !bytes.Equal(got, bytes.Repeat([]byte{0x5a}, 1<<20)) {
			t.Error("the device does not hold what qemu-io wrote over TLS")
		}
	})
	t.Run("qemu-img", func(t *testing.T) {
		out, ok := runTool(t, nil, "qemu-img", append([]string{"info"}, qemuTLS(p.dir, inet)...)...)
		wantOutput(t, "qemu-img info over TLS", out, ok, true, "virtual size: 16 MiB (16777216 bytes)")
	})
	t.Run("nbdinfo", func(t *testing.T) {
		out, ok := runTool(t, nil, "nbdinfo", "--size", nbds+p.dir)
		wantOutput(t, "nbdinfo over TLS", out, ok, true, "16777216")
		out, ok = runTool(t, nil, "nbdinfo", nbds+p.dir)
		wantOutput(t, "nbdinfo over TLS", out, ok, true, "with TLS")
	})
	t.Run("plaintext refused", func(t *testing.T) {
		out, ok := runTool(t, nil, "qemu-io", "--image-opts", "driver=nbd,"+inet+",export=disk", "-c", "read 0 4k")
		wantOutput(t, "plaintext qemu-io", out, ok, false, "TLS negotiation required", "this server requires TLS")
		// nbdinfo says "Operation not supported"; libnbd's debug output
		// carries the server's message.
		out, ok = runTool(t, []string{"LIBNBD_DEBUG=1"}, "nbdinfo", "nbd://127.0.0.1:"+ts.port+"/disk")
		wantOutput(t, "plaintext nbdinfo", out, ok, false, "this server requires TLS")
	})
	t.Run("another CA refused", func(t *testing.T) {
		out, ok := runTool(t, nil, "qemu-io", append(qemuTLS(other.dir, inet), "-c", "read 0 4k")...)
		wantOutput(t, "qemu-io trusting another CA", out, ok, false, "certificate")
		out, ok = runTool(t, nil, "nbdinfo", "--size", nbds+other.dir)
		wantOutput(t, "nbdinfo trusting another CA", out, ok, false, "certificate verification")
	})
	t.Run("unix socket", func(t *testing.T) {
		unix := "server.type=unix,server.path=" + ts.sock
		// qemu (7.0 on) has no hostname to check on a unix socket and
		// refuses X.509 credentials there unless tls-hostname names one;
		// it then checks the certificate for that name.
		out, ok := runTool(t, nil, "qemu-io", append(qemuTLS(p.dir, unix), "-c", "read 0 4k")...)
		wantOutput(t, "qemu-io on a unix socket without tls-hostname", out, ok, false, "hostname")
		out, ok = runTool(t, nil, "qemu-io", append(qemuTLS(p.dir, unix+",tls-hostname=localhost"),
			"-c", "write -P 0x17 0 64k", "-c", "read -P 0x17 0 64k")...)
		wantOutput(t, "qemu-io on a unix socket with tls-hostname=localhost", out, ok, true, "read 65536/65536 bytes")
		out, ok = runTool(t, nil, "qemu-io", append(qemuTLS(p.dir, unix+",tls-hostname=nbd.example"), "-c", "read 0 4k")...)
		wantOutput(t, "qemu-io on a unix socket with tls-hostname=nbd.example", out, ok, false, "does not match the hostname")
		// libnbd checks the server certificate only when it has a
		// hostname (nbd_set_tls_hostname is 1.22's): on a unix socket it
		// does not check it at all, whatever CA it trusts.
		out, ok = runTool(t, nil, "nbdinfo", "--size", "nbds+unix:///disk?socket="+ts.sock+"&tls-certificates="+p.dir)
		wantOutput(t, "nbdinfo on a unix socket", out, ok, true, "16777216")
		_, ok = runTool(t, nil, "nbdinfo", "--size", "nbds+unix:///disk?socket="+ts.sock+"&tls-certificates="+other.dir)
		t.Logf("nbdinfo on a unix socket trusting another CA: succeeded %v (libnbd checks no certificate there)", ok)
	})

	// verify-peer: qemu and libnbd present client-cert.pem from the same
	// directory; without one they are refused.
	tv := startTLSServer(t, WithTLS(p.serverConfig(t, true), TLSRequired))
	inetV := "server.type=inet,server.host=127.0.0.1,server.port=" + tv.port
	noClient := t.TempDir()
	os.WriteFile(filepath.Join(noClient, caCertFile), p.ca.PEM, 0o600)
	t.Run("client certificates", func(t *testing.T) {
		out, ok := runTool(t, nil, "qemu-io", append(qemuTLS(p.dir, inetV), "-c", "read 0 4k")...)
		wantOutput(t, "qemu-io with a client certificate", out, ok, true, "read 4096/4096 bytes")
		out, ok = runTool(t, nil, "nbdinfo", "--size", "nbds://127.0.0.1:"+tv.port+"/disk?tls-certificates="+p.dir)
		wantOutput(t, "nbdinfo with a client certificate", out, ok, true, "16777216")
		out, ok = runTool(t, nil, "qemu-io", append(qemuTLS(noClient, inetV), "-c", "read 0 4k")...)
		wantOutput(t, "qemu-io without a client certificate", out, ok, false)
		out, ok = runTool(t, nil, "nbdinfo", "--size", "nbds://127.0.0.1:"+tv.port+"/disk?tls-certificates="+noClient)
		wantOutput(t, "nbdinfo without a client certificate", out, ok, false)
	})
}

// Pipelined structured reads over TLS, then Shutdown with the client still
// connected: the server stops reading and closes promptly.
func TestTLSPipelinedAndShutdown(t *testing.T) {
	p := newTestPKI(t, pkitest.NewCA(t, "snaplab test CA"))
	dev := newMemDev("d", tlsTestSize)
	ts := startServer(t, tlsExports(dev), WithTLS(p.serverConfig(t, false), TLSRequired))
	c := dialRaw(t, ts.addr)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.startTLS(p.clientConfig(t, false))
	c.sendOpt(optStructuredReply, nil)
	if r := c.readOptReply(); r.typ != repAck {
		t.Fatalf("STRUCTURED_REPLY over TLS: 0x%x %q", r.typ, r.data)
	}
	c.goExport("disk")
	data := make([]byte, 256<<10)
	rand.Read(data)
	c.send(0, CmdWrite, 1000, 0, uint32(len(data)), data)
	if errno, h, _, _ := c.readReply(0, 0); errno != 0 || h != 1000 {
		t.Fatalf("WRITE: errno %d handle %d", errno, h)
	}
	const n, size = 32, 8 << 10
	var reqs []byte
	for i := range n {
		b := binary.BigEndian.AppendUint32(nil, magicRequest)
		b = binary.BigEndian.AppendUint16(b, 0)
		b = binary.BigEndian.AppendUint16(b, uint16(CmdRead))
		b = binary.BigEndian.AppendUint64(b, uint64(i))
		b = binary.BigEndian.AppendUint64(b, uint64(i*size))
		reqs = append(binary.BigEndian.AppendUint32(b, size), reqs...)
	}
	c.write(reqs)
	seen := map[uint64]bool{}
	for range n {
		m, err := c.r.Peek(16)
		if err != nil {
			t.Fatal(err)
		}
		h := binary.BigEndian.Uint64(m[8:])
		errno, _, got, _ := c.readReply(h*size, size)
		if errno != 0 || seen[h] || !bytes.Equal(got, data[h*size:(h+1)*size]) {
			t.Fatalf("READ %d: errno %d, seen %v, data equal %v", h, errno, seen[h], bytes.Equal(got, data[h*size:(h+1)*size]))
		}
		seen[h] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with a TLS client connected: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Shutdown took %v", d)
	}
	if b, err := io.ReadAll(c.r); err != nil || len(b) != 0 { // closed, nothing more
		t.Fatalf("after Shutdown: %d bytes, %v", len(b), err)
	}
}

// recordingConn keeps every byte read from the socket.
type recordingConn struct {
	net.Conn
	got bytes.Buffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.got.Write(p[:n])
	return n, err
}

// After NBD_CMD_DISC the server shuts TLS down before closing the socket
// (doc/proto.md): the last record is an alert (close_notify). TLS 1.2
// shows record types in clear.
func TestTLSCloseNotifyOnDisc(t *testing.T) {
	p := newTestPKI(t, pkitest.NewCA(t, "snaplab test CA"))
	ts := startServer(t, tlsExports(newMemDev("d", tlsTestSize)), WithTLS(p.serverConfig(t, false), TLSRequired))
	c := dialRaw(t, ts.addr)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.sendOpt(optStartTLS, nil)
	if r := c.readOptReply(); r.typ != repAck {
		t.Fatalf("STARTTLS: 0x%x", r.typ)
	}
	rec := &recordingConn{Conn: c.c}
	cfg := p.clientConfig(t, false)
	cfg.MaxVersion = tls.VersionTLS12
	tc := tls.Client(rec, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c.c, c.r = tc, bufio.NewReader(tc)
	c.goExport("disk")
	c.send(0, CmdDisc, 1, 0, 0, nil)
	if b, err := io.ReadAll(c.r); err != nil || len(b) != 0 {
		t.Fatalf("after DISC: %d bytes, %v", len(b), err)
	}
	var last byte
	for b := rec.got.Bytes(); len(b) >= 5; {
		last = b[0]
		b = b[min(len(b), 5+int(binary.BigEndian.Uint16(b[3:5]))):]
	}
	if last != 21 {
		t.Fatalf("last TLS record type %d, want 21 (alert: close_notify)", last)
	}
}
