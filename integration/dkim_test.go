package integration

// DKIM and lacre-milter (issue 15, docs/operations.md "DKIM and DMARC"):
// encryption replaces the body and Content-Type, so a DKIM-Signature over
// them cannot verify after the milter. A verifier must therefore run
// before lacre-milter: Debian's OpenDKIM as the first of smtpd_milters
// records Authentication-Results, then lacre-milter encrypts. The message
// is signed here with an RSA key made by the test (rsa-sha256,
// relaxed/relaxed, written in Go: the signer is not the verifier), and
// OpenDKIM finds the public key in a TestDNSData file: no DNS.

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"lacre.io/milter/internal/testkeys"
)

// dkimRelaxedHeader is a header field in DKIM's relaxed canonical form
// (RFC 6376 §3.4.2), without the final CRLF.
func dkimRelaxedHeader(name, value string) string {
	value = strings.NewReplacer("\r\n", "", "\n", "").Replace(value)
	value = strings.Join(strings.FieldsFunc(value, func(r rune) bool { return r == ' ' || r == '\t' }), " ")
	return strings.ToLower(strings.TrimSpace(name)) + ":" + value
}

// dkimRelaxedBody is a body in DKIM's relaxed canonical form (RFC 6376
// §3.4.4).
func dkimRelaxedBody(body []byte) []byte {
	lines := strings.Split(strings.ReplaceAll(string(body), "\r\n", "\n"), "\n")
	for i, l := range lines {
		l = strings.Join(strings.FieldsFunc(l, func(r rune) bool { return r == ' ' || r == '\t' }), " ")
		if strings.HasPrefix(lines[i], " ") || strings.HasPrefix(lines[i], "\t") {
			l = " " + l
		}
		lines[i] = l
	}
	for len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	if len(lines) == 0 {
		return nil
	}
	return []byte(strings.Join(lines, "\r\n") + "\r\n")
}

// dkimSign returns msg (CRLF line ends) with a DKIM-Signature of domain and
// selector by key, over the fields named in signed.
func dkimSign(t *testing.T, msg []byte, key *rsa.PrivateKey, domain, selector string, signed []string) []byte {
	t.Helper()
	header, body := splitMessage(msg)
	bh := sha256.Sum256(dkimRelaxedBody(body))
	// The header fields, unfolded, by name (the last instance is signed
	// first, RFC 6376 §5.4.2; the test's fields occur once each).
	fields := map[string]string{}
	var name string
	for _, l := range strings.Split(strings.TrimSuffix(string(header), "\r\n"), "\r\n") {
		if strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t") {
			fields[name] += "\r\n" + l
			continue
		}
		n, v, _ := strings.Cut(l, ":")
		name = strings.ToLower(n)
		fields[name] = v
	}
	sig := fmt.Sprintf("v=1; a=rsa-sha256; c=relaxed/relaxed; d=%s; s=%s; t=%d; h=%s; bh=%s; b=",
		domain, selector, time.Now().Unix(), strings.Join(signed, ":"), base64.StdEncoding.EncodeToString(bh[:]))
	h := sha256.New()
	for _, n := range signed {
		v, ok := fields[strings.ToLower(n)]
		if !ok {
			t.Fatalf("dkimSign: no field %s", n)
		}
		h.Write([]byte(dkimRelaxedHeader(n, v) + "\r\n"))
	}
	h.Write([]byte(dkimRelaxedHeader("DKIM-Signature", sig)))
	b, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, h.Sum(nil))
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte("DKIM-Signature: "+sig+base64.StdEncoding.EncodeToString(b)+"\r\n"), msg...)
}

// openDKIM is a running OpenDKIM verifier.
type openDKIM struct {
	port int
	cmd  *exec.Cmd
	out  bytes.Buffer
}

func (o *openDKIM) addr() string { return fmt.Sprintf("inet:127.0.0.1:%d", o.port) }

// startOpenDKIM starts OpenDKIM in verify mode on a free loopback port,
// with the public key of selector._domainkey.domain served from a
// TestDNSData file, and stops it when the test ends. Without OpenDKIM the
// test is skipped, except in CI, where it fails.
func startOpenDKIM(t *testing.T, pub *rsa.PublicKey, domain, selector string) *openDKIM {
	t.Helper()
	bin, err := lookSbin("opendkim")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("opendkim is required in CI (apt-get install opendkim): %v", err)
		}
		t.Skipf("opendkim not installed: %v", err)
	}
	dir := t.TempDir()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	o := &openDKIM{port: freePort(t)}
	files := map[string]string{
		// A data set: key (the DNS name), white space, value (the TXT record).
		"testdns": fmt.Sprintf("%s._domainkey.%s v=DKIM1;k=rsa;p=%s\n", selector, domain, base64.StdEncoding.EncodeToString(der)),
		// The default InternalHosts is 127.0.0.1, whose mail OpenDKIM
		// signs instead of verifying: the test submits from there.
		"internal": "192.0.2.1\n",
		"opendkim.conf": strings.Join([]string{
			"Mode v",
			fmt.Sprintf("Socket inet:%d@127.0.0.1", o.port),
			"AuthservID mx.test",
			"AlwaysAddARHeader yes",
			"TestDNSData " + filepath.Join(dir, "testdns"),
			"InternalHosts " + filepath.Join(dir, "internal"),
			"Background no",
			"Syslog no",
			"",
		}, "\n"),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	o.cmd = exec.Command(bin, "-f", "-x", filepath.Join(dir, "opendkim.conf"))
	o.cmd.Stdout, o.cmd.Stderr = &o.out, &o.out
	o.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := o.cmd.Start(); err != nil {
		t.Fatalf("starting opendkim: %v", err)
	}
	done := make(chan struct{})
	go func() { o.cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		o.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(milterStopTimeout):
			o.cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("opendkim output:\n%s", o.out.String())
		}
	})
	if err := waitPort(fmt.Sprintf("127.0.0.1:%d", o.port), milterStartTimeout, done); err != nil {
		t.Fatalf("opendkim: %v\n%s", err, o.out.String())
	}
	return o
}

// dkimResult returns the dkim= result of the Authentication-Results field
// that authserv-id mx.test wrote in a delivered message's header, or "".
func dkimResult(t *testing.T, msg []byte) (result, field string) {
	t.Helper()
	header, _ := splitMessage(msg)
	unfolded := regexp.MustCompile(`\r\n[ \t]+`).ReplaceAllString(string(header), " ")
	for _, l := range strings.Split(unfolded, "\r\n") {
		if !strings.HasPrefix(strings.ToLower(l), "authentication-results:") {
			continue
		}
		if m := regexp.MustCompile(`^Authentication-Results:\s*mx\.test;.*\bdkim=([a-z]+)`).FindStringSubmatch(l); m != nil {
			return m[1], l
		}
	}
	return "", ""
}

// TestDKIMVerifiedBeforeEncryption: with OpenDKIM before lacre-milter in
// smtpd_milters, the delivered message carries OpenDKIM's
// "Authentication-Results: mx.test; dkim=pass" and is encrypted, and it
// decrypts to the signed original. In the other order OpenDKIM sees the
// encrypted message, as any verifier after the milter does: dkim=fail.
func TestDKIMVerifiedBeforeEncryption(t *testing.T) {
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	dkimKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	s := startSink(t)
	m := startMilter(t, "[store]\ncache_ttl = \"1s\"\n")
	m.keysAdd(t, "alice@example.org", testkeys.ArmoredPublic(t, alice))
	od := startOpenDKIM(t, &dkimKey.PublicKey, "example.com", "lacretest")
	signed := []string{"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type", "Content-Transfer-Encoding"}

	send := func(t *testing.T, p *postfixInstance, id string) (sent, got []byte) {
		t.Helper()
		sent = dkimSign(t, message(id, "alice@example.org", textFields, textBody), dkimKey, "example.com", "lacretest", signed)
		if err := p.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, sent); err != nil {
			t.Fatal(err)
		}
		return sent, byMessageID(t, s, id).Data
	}

	p := startPostfix(t, postfixOptions{RelayPort: s.port, SMTPDMilters: od.addr() + ", " + m.addr()})
	t.Run("verify then encrypt", func(t *testing.T) {
		sent, got := send(t, p, "dkim-first")
		res, field := dkimResult(t, got)
		if res != "pass" || !strings.Contains(field, "header.d=example.com") {
			t.Fatalf("OpenDKIM's verdict before encryption is %q, want pass of example.com: %q", res, field)
		}
		t.Logf("%s", field)
		if !bytes.Contains(got, []byte("\r\nDKIM-Signature: v=1; a=rsa-sha256;")) {
			t.Errorf("the DKIM-Signature field is gone from the delivered message")
		}
		// Encrypted, and the signed original inside, byte for byte.
		checkDecrypts(t, got, sent, alice)
		if bytes.Contains(got, []byte("ünïcödé")) {
			t.Fatal("cleartext in the delivered message")
		}
	})

	// What a verifier after the milter (a later hop, the recipient's
	// provider) sees: the signature no longer verifies.
	p.setMain(t, map[string]string{"smtpd_milters": m.addr() + ", " + od.addr()})
	t.Run("encrypt then verify fails", func(t *testing.T) {
		sent, got := send(t, p, "dkim-after")
		if res, field := dkimResult(t, got); res != "fail" {
			t.Fatalf("OpenDKIM after encryption says %q, want fail: %q", res, field)
		} else {
			t.Logf("%s", field)
		}
		checkDecrypts(t, got, sent, alice)
	})
}
