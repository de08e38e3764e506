package main

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"io"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/smimetest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// cert makes a certificate for addr as spec says (RSA-2048 by default).
func cert(t *testing.T, addr string, spec smimetest.Spec) *smimetest.Cert {
	t.Helper()
	if addr != "" {
		spec.Addresses = append(spec.Addresses, addr)
	}
	return smimetest.New(t, spec)
}

// certFpr is the fingerprint the store keeps a certificate under.
func certFpr(t *testing.T, c *smimetest.Cert) string {
	t.Helper()
	kc, err := keys.ParseCertificate(c.Cert.Raw, "", keys.Normalizer{})
	if err != nil {
		t.Fatal(err)
	}
	return kc.Fingerprint
}

// displayed is what the CLI shows of a certificate (summary).
func displayed(t *testing.T, c *smimetest.Cert) keys.CertificateSummary {
	t.Helper()
	kc, err := keys.ParseCertificate(c.Cert.Raw, "", keys.Normalizer{})
	if err != nil {
		t.Fatal(err)
	}
	return kc.Summary()
}

// p7b bundles certificates as a PKCS #7 file, as Windows exports them.
func p7b(t *testing.T, certs ...*smimetest.Cert) []byte {
	t.Helper()
	openssl := smimetest.Tool(t, "openssl")
	dir := t.TempDir()
	var pemData []byte
	for _, c := range certs {
		pemData = append(pemData, c.PEM()...)
	}
	in := filepath.Join(dir, "in.pem")
	if err := os.WriteFile(in, pemData, 0o600); err != nil {
		t.Fatal(err)
	}
	out, stderr, err := smimetest.Run(dir, nil, nil, openssl, "crl2pkcs7", "-nocrl", "-certfile", in, "-outform", "DER")
	if err != nil {
		t.Fatalf("openssl crl2pkcs7: %v\n%s", err, stderr)
	}
	return out
}

// TestKeysAddCertificate: "keys add" takes an S/MIME certificate (PEM,
// DER, a chain, a PKCS #7 bundle) through the same admission path as an
// OpenPGP key, and refuses one for each rule, changing nothing.
func TestKeysAddCertificate(t *testing.T) {
	const addr = "alice@example.org"
	now := time.Now()
	ca := smimetest.New(t, smimetest.Spec{CA: true, CommonName: "Example CA", Key: smimetest.P384})
	leaf := cert(t, addr, smimetest.Spec{Parent: ca, CommonName: "Alice"})
	rsa := cert(t, addr, smimetest.Spec{CommonName: "Alice RSA"})
	good := []struct {
		name  string
		data  []byte
		stdin bool
		want  *smimetest.Cert
	}{
		{"RSA-2048 PEM file", rsa.PEM(), false, rsa},
		{"RSA-2048 DER on stdin", rsa.Cert.Raw, true, rsa},
		{"RSA-4096", nil, false, cert(t, addr, smimetest.Spec{Key: smimetest.RSA4096})},
		{"P-256", nil, false, cert(t, addr, smimetest.Spec{Key: smimetest.P256})},
		{"P-384", nil, false, cert(t, addr, smimetest.Spec{Key: smimetest.P384})},
		{"P-521", nil, true, cert(t, addr, smimetest.Spec{Key: smimetest.P521})},
		{"CA first, then the end-entity certificate", concat(ca.PEM(), []byte("\n# issued:\n"), leaf.PEM()), false, leaf},
		{"PKCS #7 bundle", p7b(t, ca, leaf), true, leaf},
		{"address only in the subject", nil, false, cert(t, "", smimetest.Spec{SubjectEmail: "Alice@Example.org"})},
		{"no key usage extension", nil, false, cert(t, addr, smimetest.Spec{NoKeyUsage: true})},
		{"subaddress-free address in other case", nil, false, cert(t, "ALICE@example.org", smimetest.Spec{})},
	}
	for _, tc := range good {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, false, "")
			data := tc.data
			if data == nil {
				data = tc.want.PEM()
			}
			var r result
			if tc.stdin {
				r = f.run(data, "keys", "add", addr, "-")
			} else {
				r = f.run(nil, "keys", "add", "<"+strings.ToUpper(addr)+">", f.file("alice.crt", data))
			}
			wantCode(t, r, 0)
			sum := displayed(t, tc.want)
			fp := certFpr(t, tc.want)
			wantContains(t, "stdout", r.stdout, addr+": added certificate "+fp+" (subject "+sum.Subject+", issuer "+sum.Issuer+
				", serial "+sum.Serial+", expires "+tc.want.Cert.NotAfter.UTC().Format("2006-01-02")+")\n")
			rows, _ := f.listFull()
			if len(rows) != 1 {
				t.Fatalf("keys list: %v", rows)
			}
			want := fullRow{row{addr, fp, today(), tc.want.Cert.NotAfter.UTC().Format("2006-01-02"), "ok"}, "x509", "smime",
				`subject "` + sum.Subject + `", issuer "` + sum.Issuer + `", serial ` + sum.Serial}
			if rows[0] != want {
				t.Errorf("keys list:\n got %+v\nwant %+v", rows[0], want)
			}
			// A subject emailAddress is shown by name, not as an OID.
			if tc.name == "address only in the subject" && (!strings.Contains(rows[0].detail, "emailAddress=Alice@Example.org") || strings.Contains(r.stdout+rows[0].detail, "1.2.840.113549")) {
				t.Errorf("subject e-mail shown as %q", rows[0].detail)
			}
		})
	}

	key := func(c *smimetest.Cert) []byte { return c.KeyPEM(t) }
	bad := []struct {
		name   string
		config string
		data   func(t *testing.T) []byte
		reason []string
	}{
		{"expired", "", func(t *testing.T) []byte {
			return cert(t, addr, smimetest.Spec{NotBefore: now.AddDate(0, 0, -30), NotAfter: now.AddDate(0, 0, -1)}).PEM()
		}, []string{"the certificate expired on " + now.AddDate(0, 0, -1).UTC().Format("2006-01-02")}},
		{"not yet valid", "", func(t *testing.T) []byte {
			return cert(t, addr, smimetest.Spec{NotBefore: now.Add(48 * time.Hour), NotAfter: now.AddDate(1, 0, 0)}).PEM()
		}, []string{"the certificate is not valid before"}},
		{"RSA-1024", "", func(t *testing.T) []byte { return cert(t, addr, smimetest.Spec{Key: smimetest.RSA1024}).PEM() },
			[]string{"RSA 1024 bits, below the minimum of 2048"}},
		{"RSA-2048 below min_rsa_bits = 3072", "[keys]\nmin_rsa_bits = 3072\n", func(t *testing.T) []byte { return rsa.PEM() },
			[]string{"RSA 2048 bits, below the minimum of 3072"}},
		{"P-224", "", func(t *testing.T) []byte { return cert(t, addr, smimetest.Spec{Key: smimetest.P224}).PEM() },
			[]string{"on the curve P-224, which is not accepted"}},
		{"Ed25519", "", func(t *testing.T) []byte {
			return cert(t, addr, smimetest.Spec{Key: smimetest.Ed25519, KeyUsage: x509.KeyUsageDigitalSignature}).PEM()
		}, []string{"which cannot encrypt mail"}},
		{"RSA without keyEncipherment", "", func(t *testing.T) []byte {
			return cert(t, addr, smimetest.Spec{KeyUsage: x509.KeyUsageDigitalSignature}).PEM()
		}, []string{"does not allow key encipherment"}},
		{"EC without keyAgreement", "", func(t *testing.T) []byte {
			return cert(t, addr, smimetest.Spec{Key: smimetest.P256, KeyUsage: x509.KeyUsageDigitalSignature}).PEM()
		}, []string{"does not allow key agreement"}},
		{"TLS server certificate", "", func(t *testing.T) []byte {
			return cert(t, addr, smimetest.Spec{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}).PEM()
		}, []string{"extended key usage does not include e-mail protection"}},
		{"another address", "", func(t *testing.T) []byte { return cert(t, "mallory@example.net", smimetest.Spec{}).PEM() },
			[]string{"the certificate is not for alice@example.org (it names: mallory@example.net)"}},
		{"no address at all", "", func(t *testing.T) []byte { return cert(t, "", smimetest.Spec{}).PEM() },
			[]string{"(it names: no e-mail address at all)"}},
		{"certificate with its private key", "", func(t *testing.T) []byte { return concat(rsa.PEM(), key(rsa)) },
			[]string{"the file contains a private key (PRIVATE KEY); submit only the certificate"}},
		{"a private key alone", "", func(t *testing.T) []byte { return key(rsa) },
			[]string{"the file contains a private key (PRIVATE KEY); submit only the certificate"}},
		{"PKCS #12 file", "", func(t *testing.T) []byte {
			data, err := os.ReadFile(smimetest.PKCS12(t, rsa, t.TempDir(), "alice", false))
			if err != nil {
				t.Fatal(err)
			}
			return data
		}, []string{"private key material"}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, false, tc.config)
			f.add("bob@example.org", testkeys.Generate(t, testkeys.Curve25519, "bob@example.org"))
			_, before := f.list()
			r := f.run(nil, "keys", "add", addr, f.file("alice.crt", tc.data(t)))
			wantCode(t, r, 1)
			wantContains(t, "stderr", r.stderr, append([]string{"lacre-milter keys add: nothing changed: "}, tc.reason...)...)
			if r.stdout != "" {
				t.Errorf("stdout on failure: %q", r.stdout)
			}
			if _, after := f.list(); after.stdout != before.stdout {
				t.Errorf("the store changed:\n%s\n%s", before.stdout, after.stdout)
			}
		})
	}
}

// TestTrustAnchors: with [smime] trust_anchors, "keys add" admits only
// certificates with a chain to one of its roots (through the
// intermediates of the submitted file), and the resolver stops using a
// stored certificate when the anchors change (here: a new config).
func TestTrustAnchors(t *testing.T) {
	const addr = "alice@example.org"
	root := smimetest.New(t, smimetest.Spec{CA: true, CommonName: "Example Root", Key: smimetest.P384})
	inter := smimetest.New(t, smimetest.Spec{CA: true, CommonName: "Example Mail CA", Key: smimetest.P256, Parent: root})
	viaRoot := cert(t, addr, smimetest.Spec{Parent: root, CommonName: "Alice"})
	viaInter := cert(t, addr, smimetest.Spec{Parent: inter, CommonName: "Alice 2", Key: smimetest.P256})
	self := cert(t, addr, smimetest.Spec{CommonName: "Alice self-signed"})

	f := newFixture(t, false, "[smime]\ntrust_anchors = \"roots.pem\"\n")
	// newFixture could not init the store: the file did not exist yet.
	f.file("roots.pem", root.PEM())
	f.must(nil, "store", "init")
	r := f.must(nil, "check-config")
	wantContains(t, "check-config", r.stdout, "trust_anchors   "+filepath.Join(f.dir, "roots.pem")+": certificates must chain to one of its roots\n")

	for _, tc := range []struct {
		name   string
		data   []byte
		reason string // "" means admitted
	}{
		{"self-signed", self.PEM(), "was not issued by a trusted authority (issuer: CN=Alice self-signed,O=Lacre tests)"},
		{"intermediate missing", viaInter.PEM(), "include the intermediate certificates in the file"},
		{"issued by the root", viaRoot.PEM(), ""},
		{"issued by an intermediate, given in the file", concat(viaInter.PEM(), inter.PEM()), ""},
	} {
		r := f.run(nil, "keys", "add", addr, f.file("alice.crt", tc.data))
		if tc.reason == "" {
			wantCode(t, r, 0)
			continue
		}
		wantCode(t, r, 1)
		wantContains(t, tc.name, r.stderr, "nothing changed", tc.reason)
	}
	rows, _ := f.listFull()
	if len(rows) != 2 || rows[0].state != "ok" || rows[1].state != "ok" {
		t.Fatalf("keys list: %+v", rows)
	}
	// Another root: the stored certificates are no longer usable, and
	// the list says why.
	other := smimetest.New(t, smimetest.Spec{CA: true, CommonName: "Other Root"})
	f.file("roots.pem", other.PEM())
	rows, _ = f.listFull()
	for _, rw := range rows {
		if !strings.HasPrefix(rw.state, "UNUSABLE: the certificate was not issued by a trusted authority") || rw.format != "-" {
			t.Errorf("after a change of roots: %+v", rw)
		}
	}
	// A trust_anchors file that holds no certificate is a config error.
	f.file("roots.pem", []byte("nothing\n"))
	r = f.run(nil, "keys", "list")
	wantCode(t, r, 1)
	wantContains(t, "keys list", r.stderr, "smime.trust_anchors", "holds no PEM certificate")
}

// TestCertificateAndOpenPGPKey: an address with both kinds. The format
// rule (docs/keys.md): OpenPGP first, unless the address chose smime;
// keys set sets one preference without resetting the other; -replace
// replaces the keys of the kind added only; export writes PEM.
func TestCertificateAndOpenPGPKey(t *testing.T) {
	const addr = "alice@example.org"
	pgp := testkeys.Generate(t, testkeys.Curve25519, addr)
	c1 := cert(t, addr, smimetest.Spec{CommonName: "Alice 1"})
	c2 := cert(t, addr, smimetest.Spec{CommonName: "Alice 2", Key: smimetest.P256})
	f := newFixture(t, false, "")
	f.add(addr, pgp)
	f.must(nil, "keys", "add", addr, f.file("c1.pem", c1.PEM()))

	formatOf := func() (string, map[string][]string) {
		t.Helper()
		m, _ := f.show(addr)
		if len(m["format"]) != 1 {
			t.Fatalf("keys show: format %q", m["format"])
		}
		return m["format"][0], m
	}
	// No choice: OpenPGP, in pgp_format; the certificate is listed as not used.
	got, m := formatOf()
	if got != "pgp-mime (encryption.pgp_format)" || len(m["key"]) != 2 || m["key"][1] != certFpr(t, c1)+" not used: mail goes as pgp-mime" {
		t.Errorf("no choice: %q %q", got, m["key"])
	}
	rows, _ := f.listFull()
	for _, rw := range rows {
		if rw.format != "pgp-mime" {
			t.Errorf("keys list FORMAT %q, want pgp-mime for both rows", rw.format)
		}
	}

	// protect-headers then format: both kept.
	f.must(nil, "keys", "set", addr, "protect-headers", "on")
	r := f.must(nil, "keys", "set", "Alice@Example.org", "format", "SMIME")
	if r.stdout != addr+": format smime\n" || r.stderr != "" {
		t.Errorf("keys set format: %v", r)
	}
	got, m = formatOf()
	if got != "smime (chosen for alice@example.org with \"keys set\")" || m["headers"][0] != "protected = true" ||
		m["key"][0] != certFpr(t, c1)+" ok" || m["key"][1] != fpr(pgp)+" not used: mail goes as smime" {
		t.Errorf("after keys set format smime: %q %q %q", got, m["headers"], m["key"])
	}
	_, full := f.show(addr)
	sum := displayed(t, c1)
	wantContains(t, "keys show", full.stdout, "X.509 certificate, RSA 2048, valid ", "subject "+sum.Subject+"\n", "issuer  "+sum.Issuer+"\n",
		"serial  "+sum.Serial+"\n", "address "+addr+"\n")
	f.must(nil, "keys", "set", addr, "protect-headers", "off")
	if got, m = formatOf(); !strings.HasPrefix(got, "smime ") || m["headers"][0] != "protected = false" {
		t.Errorf("protect-headers reset the format: %q %q", got, m["headers"])
	}

	// Export: PEM for the certificate used.
	r = f.must(nil, "keys", "show", "-export", addr)
	blk, rest := pem.Decode([]byte(r.stdout))
	if blk == nil || blk.Type != "CERTIFICATE" || !bytes.Equal(blk.Bytes, c1.Cert.Raw) || len(bytes.TrimSpace(rest)) != 0 {
		t.Errorf("export:\n%s", r.stdout)
	}

	// -replace with a certificate keeps the OpenPGP key.
	r = f.must(nil, "keys", "add", "-replace", addr, f.file("c2.pem", c2.PEM()))
	wantContains(t, "keys add -replace", r.stdout, addr+": other certificates removed; its OpenPGP keys (1) stay bound")
	rows, _ = f.listFull()
	if len(rows) != 2 || rows[0].fingerprint != fpr(pgp) || rows[1].fingerprint != certFpr(t, c2) {
		t.Fatalf("after -replace: %+v", rows)
	}

	// Inline for an address with a certificate only asks for a kind it
	// has no key of: a note, and S/MIME is used, never clear text.
	f.must(nil, "keys", "remove", addr, fpr(pgp))
	r = f.must(nil, "keys", "set", addr, "format", "pgp-inline")
	wantContains(t, "keys set note", r.stderr, "note: alice@example.org has no OpenPGP key: until one is added, its mail is encrypted to its certificates")
	if got, _ = formatOf(); got != `smime (pgp-inline is chosen for alice@example.org with "keys set", but no OpenPGP key of the address is usable: mail goes to the other kind, never in clear)` {
		t.Errorf("inline without an OpenPGP key: %q", got)
	}
	f.must(nil, "keys", "set", addr, "format", "default")
	if got, _ = formatOf(); got != "smime (the address has no usable OpenPGP key)" {
		t.Errorf("certificate only: %q", got)
	}

	// Bad values are usage errors; nothing is stored.
	for _, args := range [][]string{{addr, "format", "html"}, {addr, "format", ""}, {addr, "colour", "blue"}} {
		wantCode(t, f.run(nil, append([]string{"keys", "set"}, args...)...), 2)
	}
}

// TestStaticFormats: [static.formats] and pgp_format reach the resolver,
// and a stored choice wins over [static.formats].
func TestStaticFormats(t *testing.T) {
	bob := testkeys.Generate(t, testkeys.Curve25519, "bob@example.org")
	carol := testkeys.Generate(t, testkeys.Curve25519, "carol@example.org")
	dave := testkeys.Generate(t, testkeys.Curve25519, "dave@example.org")
	f := newFixture(t, false, "[encryption]\npgp_format = \"pgp-inline\"\n[static.formats]\n\"Bob@example.org\" = \"pgp-mime\"\n\"carol@example.org\" = \"pgp-mime\"\n")
	f.add("bob@example.org", bob)
	f.add("carol@example.org", carol)
	f.add("dave@example.org", dave)
	f.must(nil, "keys", "set", "carol@example.org", "format", "pgp-inline")
	for addr, want := range map[string]string{
		"bob@example.org":   `pgp-mime ([static.formats] "Bob@example.org")`,
		"carol@example.org": `pgp-inline (chosen for carol@example.org with "keys set")`,
		"dave@example.org":  "pgp-inline (encryption.pgp_format)",
	} {
		m, _ := f.show(addr)
		if len(m["format"]) != 1 || m["format"][0] != want {
			t.Errorf("%s: format %q, want %q", addr, m["format"], want)
		}
	}
	r := f.must(nil, "check-config")
	wantContains(t, "check-config", r.stdout, "pgp_format      pgp-inline ([static.formats] sets 2 address(es))\n",
		"smime           aes-256-cbc, RSA pkcs1v15, recipients by issuer and serial\n", "trust_anchors   none")
}

// TestEncryptFormats: "encrypt" writes each recipient's format as the
// milter would: S/MIME for a certificate (decrypted here with the
// certificate's key), PGP/inline for a recipient who chose it, and
// refuses recipients of different formats in one message.
func TestEncryptFormats(t *testing.T) {
	carol := cert(t, "carol@example.org", smimetest.Spec{})
	dave := cert(t, "dave@example.org", smimetest.Spec{Key: smimetest.P256})
	bob := testkeys.Generate(t, testkeys.Curve25519, "bob@example.org")
	f := newFixture(t, false, "[smime]\ncipher = \"aes-256-gcm\"\n")
	f.must(nil, "keys", "add", "carol@example.org", f.file("carol.pem", carol.PEM()))
	f.must(nil, "keys", "add", "dave@example.org", f.file("dave.pem", dave.PEM()))
	f.add("bob@example.org", bob)
	f.must(nil, "keys", "set", "bob@example.org", "format", "pgp-inline")
	msg := []byte("From: a@example.net\r\nTo: carol@example.org\r\nSubject: hi\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsecret text\r\n")

	r := f.must(msg, "encrypt", "carol@example.org", "dave@example.org")
	hdr, body := bodyParts(t, r.stdout)
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "application/pkcs7-mime") || !strings.Contains(ct, "authEnveloped-data") {
		t.Fatalf("S/MIME Content-Type %q (cipher = aes-256-gcm)", ct)
	}
	der, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(string(body)), ""))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*smimetest.Cert{carol, dave} {
		inner, p, err := smimetest.Decrypt(der, c.Cert, c.Key)
		if err != nil || !p.Auth || p.RICount != 2 || !bytes.Contains(inner, []byte("\r\n\r\nsecret text\r\n")) {
			t.Errorf("%s: %v %+v\n%s", c.Cert.EmailAddresses, err, p, inner)
		}
	}
	if strings.Contains(r.stdout, "secret text") {
		t.Error("the S/MIME output holds the text in clear")
	}

	r = f.must(msg, "encrypt", "bob@example.org")
	_, body = bodyParts(t, r.stdout)
	if !bytes.HasPrefix(bytes.TrimSpace(body), []byte("-----BEGIN PGP MESSAGE-----")) || strings.Contains(r.stdout, "multipart/encrypted") {
		t.Fatalf("not PGP/inline:\n%s", r.stdout)
	}
	if got, _ := pgptest.Decrypt(t, body, bob); !bytes.Equal(got, []byte("secret text\r\n")) {
		t.Errorf("inline decrypts to %q", got)
	}

	r = f.run(msg, "encrypt", "carol@example.org", "bob@example.org")
	wantCode(t, r, 1)
	wantContains(t, "mixed formats", r.stderr, "carol@example.org reads smime and bob@example.org reads pgp-inline: the milter would split them")
	if r.stdout != "" {
		t.Errorf("output for mixed formats:\n%s", r.stdout)
	}
}

// bodyParts splits a message the CLI wrote.
func bodyParts(t *testing.T, s string) (mail.Header, []byte) {
	t.Helper()
	m, err := mail.ReadMessage(strings.NewReader(s))
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(m.Body)
	if err != nil {
		t.Fatal(err)
	}
	return m.Header, b
}
