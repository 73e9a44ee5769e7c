package cli_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"snaplab/vmtest/nbd/pkitest"
)

var _ = Describe("snaplab serve with TLS", Label("nbd"), func() {
	It("serves on every interface with -tls-creds: TLS clients get the data, plaintext ones are refused", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		creds := filepath.Join(dir, "pki")
		Expect(os.Mkdir(creds, 0o700)).To(Succeed())
		pkitest.WriteDir(GinkgoT(), creds, pkitest.NewCA(GinkgoT(), "snaplab test CA"))
		s := startServe("-listen", "0.0.0.0:0", "-tls-creds", creds, "-record", "", write(dir, "s.scn", good))
		Expect(s.err.String()).NotTo(ContainSubstring("warning"))
		m := regexp.MustCompile(`nbds://[^ ]*:(\d+)/snap\n`).FindStringSubmatch(s.out.String())
		Expect(m).NotTo(BeNil(), "the URIs say nbds: %s", s.out.String())
		port := m[1]

		info, err := exec.CommandContext(ctx, "nbdinfo", "--size", "nbds://127.0.0.1:"+port+"/snap?tls-certificates="+creds).CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "%s", info)
		Expect(strings.TrimSpace(string(info))).To(Equal("8388608"))
		img, err := exec.CommandContext(ctx, "qemu-img", "info",
			"--object", "tls-creds-x509,id=tls0,dir="+creds+",endpoint=client",
			"--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port="+port+",export=base,tls-creds=tls0").CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "%s", img)
		Expect(string(img)).To(ContainSubstring("virtual size: 8 MiB (8388608 bytes)"))
		plain, err := exec.CommandContext(ctx, "qemu-img", "info", "nbd://127.0.0.1:"+port+"/snap").CombinedOutput()
		Expect(err).To(HaveOccurred(), "a plaintext client was served: %s", plain)
		Expect(string(plain)).To(ContainSubstring("requires TLS"))
		Expect(s.quit()).To(Equal(0))
	}, SpecTimeout(2*time.Minute))

	It("names a bad credentials directory", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		r := snaplab(ctx, dir, nil, "serve", "-listen", "0.0.0.0:0", "-tls-creds", dir, write(dir, "s.scn", good))
		Expect(r.Code).To(Equal(2))
		Expect(r.Stderr).To(ContainSubstring("ca-cert.pem"))
	}, SpecTimeout(time.Minute))
})
