package keys

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/internal/smimetest"
	"lacre.io/milter/internal/testkeys"
)

const certAddr = "alice@example.org"

var certPolicy = CertificatePolicy{Policy: Policy{MinRSABits: 2048, Normalizer: Normalizer{FoldLocalPartCase: true, SubaddressSeparator: "+"}}}

func alice(t *testing.T, s smimetest.Spec) *smimetest.Cert {
	t.Helper()
	if s.Addresses == nil && s.SubjectEmail == "" {
		s.Addresses = []string{certAddr}
	}
	return smimetest.New(t, s)
}

func wantRule(t *testing.T, err error, rule Rule) {
	t.Helper()
	var re *RejectError
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T), want a *RejectError with rule %q", err, err, rule)
	}
	if re.Rule != rule {
		t.Fatalf("rule %q (%v), want %q", re.Rule, err, rule)
	}
}

func mustParseCert(t *testing.T, data []byte, address string) *Certificate {
	t.Helper()
	c, err := ParseCertificate(data, address, certPolicy.Normalizer)
	if err != nil {
		t.Fatalf("ParseCertificate: %v", err)
	}
	return c
}

func pemOf(certs ...*smimetest.Cert) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, c.PEM()...)
	}
	return b
}

func derOf(certs ...*smimetest.Cert) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, c.Cert.Raw...)
	}
	return b
}

func TestIsCertificate(t *testing.T) {
	c := alice(t, smimetest.Spec{})
	e := testkeys.Generate(t, testkeys.Curve25519, certAddr)
	pgpArmored, pgpBinary := testkeys.ArmoredPublic(t, e), testkeys.Public(t, e)
	for _, tc := range []struct {
		name string
		data []byte
		want bool
	}{
		{"PEM", c.PEM(), true},
		{"PEM after text (openssl x509 -text)", append([]byte("Certificate:\n    Data: ...\n"), c.PEM()...), true},
		{"X509 CERTIFICATE PEM", pem.EncodeToMemory(&pem.Block{Type: "X509 CERTIFICATE", Bytes: c.Cert.Raw}), true},
		{"DER", c.Cert.Raw, true},
		{"DER chain", derOf(c, c), true},
		{"OpenPGP armoured", pgpArmored, false},
		{"OpenPGP binary", pgpBinary, false},
		{"OpenPGP armour first, then a certificate", append(append([]byte(nil), pgpArmored...), c.PEM()...), false},
		{"certificate first, then OpenPGP armour", append(c.PEM(), pgpArmored...), true},
		{"empty", nil, false},
		{"text", []byte("hello"), false},
		{"PEM private key alone", c.KeyPEM(t), true},
		{"PEM RSA private key alone", []byte("-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n"), true},
		{"OpenPGP secret key armour", []byte("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nxcA\n-----END PGP PRIVATE KEY BLOCK-----\n"), false},
	} {
		if got := IsCertificate(tc.data); got != tc.want {
			t.Errorf("%s: IsCertificate = %v, want %v", tc.name, got, tc.want)
		}
	}
	// A lone PEM private key is refused as secret material by ParseAny,
	// not as a malformed OpenPGP key.
	if _, err := ParseAny(c.KeyPEM(t), certAddr, Normalizer{}); err == nil {
		t.Error("ParseAny accepted a PEM private key")
	} else {
		wantRule(t, err, RuleSecret)
	}
	// Every OpenPGP kind the key tests use is told apart.
	for _, kind := range []testkeys.Kind{testkeys.RSA3072, testkeys.V6, testkeys.Revoked} {
		e := testkeys.Generate(t, kind, certAddr)
		if IsCertificate(testkeys.Public(t, e)) || IsCertificate(testkeys.ArmoredPublic(t, e)) {
			t.Errorf("%v: an OpenPGP key taken for a certificate", kind)
		}
	}
}

// TestParseCertificateForms reads one certificate and a chain, PEM and
// DER, in either order, and checks which one is the end-entity
// certificate and that Raw reads back to the same Certificate.
func TestParseCertificateForms(t *testing.T) {
	root := smimetest.New(t, smimetest.Spec{Key: smimetest.P256, CommonName: "Test Root", CA: true})
	inter := smimetest.New(t, smimetest.Spec{Key: smimetest.P256, CommonName: "Test Intermediate", CA: true, Parent: root})
	leaf := alice(t, smimetest.Spec{Parent: inter})
	bob := smimetest.New(t, smimetest.Spec{Addresses: []string{"bob@example.org"}, Parent: inter})
	selfCA := alice(t, smimetest.Spec{CA: true, KeyUsage: x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign}) // openssl req -x509 style
	text := append([]byte("subject=CN = Test User\n"), leaf.PEM()...)
	for _, tc := range []struct {
		name      string
		data      []byte
		address   string
		wantLeaf  *smimetest.Cert
		wantChain int
	}{
		{"PEM", leaf.PEM(), certAddr, leaf, 0},
		{"PEM with text", text, certAddr, leaf, 0},
		{"CRLF PEM", bytes.ReplaceAll(leaf.PEM(), []byte("\n"), []byte("\r\n")), certAddr, leaf, 0},
		{"DER", leaf.Cert.Raw, certAddr, leaf, 0},
		{"PEM chain leaf first", pemOf(leaf, inter, root), certAddr, leaf, 2},
		{"PEM chain root first", pemOf(root, inter, leaf), certAddr, leaf, 2},
		{"DER chain root first", derOf(root, inter, leaf), certAddr, leaf, 2},
		{"no address: first non-CA", pemOf(root, inter, leaf), "", leaf, 2},
		{"two end-entities, chosen by address", pemOf(bob, leaf, inter), certAddr, leaf, 2},
		{"two end-entities, other address", pemOf(bob, leaf, inter), "bob@example.org", bob, 2},
		{"two end-entities, no match: the first", pemOf(bob, leaf), "carol@example.org", bob, 1},
		{"self-signed CA certificate alone", selfCA.PEM(), certAddr, selfCA, 0},
		{"address matches a CA only", pemOf(root, selfCA), certAddr, selfCA, 1},
		{"address matches a CA and an end-entity", pemOf(selfCA, leaf), certAddr, leaf, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := mustParseCert(t, tc.data, tc.address)
			if !c.Cert.Equal(tc.wantLeaf.Cert) {
				t.Fatalf("end-entity %q, want %q", c.Cert.Subject, tc.wantLeaf.Cert.Subject)
			}
			if len(c.Chain) != tc.wantChain {
				t.Fatalf("chain of %d, want %d", len(c.Chain), tc.wantChain)
			}
			if len(c.Fingerprint) != 64 || strings.ToUpper(c.Fingerprint) != c.Fingerprint {
				t.Fatalf("fingerprint %q", c.Fingerprint)
			}
			back := mustParseCert(t, c.Raw(), "")
			if !back.Cert.Equal(c.Cert) || back.Fingerprint != c.Fingerprint || len(back.Chain) != len(c.Chain) {
				t.Fatalf("Raw did not read back to the same certificate")
			}
		})
	}
}

func TestParseCertificateRefuses(t *testing.T) {
	c := alice(t, smimetest.Spec{})
	rsaKey := smimetest.Key(t, smimetest.RSA2048).(*rsa.PrivateKey)
	ecKey := smimetest.Key(t, smimetest.P256).(*ecdsa.PrivateKey)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	pkcs1 := x509.MarshalPKCS1PrivateKey(rsaKey)
	sec1, _ := x509.MarshalECPrivateKey(ecKey)
	pemBlock := func(typ string, der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}) }
	var many []byte
	for range MaxCertificates + 1 {
		many = append(many, alice(t, smimetest.Spec{}).PEM()...)
	}
	for _, tc := range []struct {
		name string
		data []byte
		rule Rule
	}{
		{"PEM certificate and PKCS #8 key", append(c.PEM(), c.KeyPEM(t)...), RuleSecret},
		{"PEM key before the certificate", append(c.KeyPEM(t), c.PEM()...), RuleSecret},
		{"PEM RSA PRIVATE KEY", append(c.PEM(), pemBlock("RSA PRIVATE KEY", pkcs1)...), RuleSecret},
		{"PEM EC PRIVATE KEY", append(c.PEM(), pemBlock("EC PRIVATE KEY", sec1)...), RuleSecret},
		{"PEM ENCRYPTED PRIVATE KEY", append(c.PEM(), pemBlock("ENCRYPTED PRIVATE KEY", []byte{0x30, 0})...), RuleSecret},
		{"DER certificate then PKCS #8", append(append([]byte(nil), c.Cert.Raw...), pkcs8...), RuleSecret},
		{"DER PKCS #1 key", pkcs1, RuleSecret},
		{"DER SEC 1 key", sec1, RuleSecret},
		{"certificate request", pemBlock("CERTIFICATE REQUEST", []byte{0x30, 0}), RuleFormat},
		{"PKCS7 block", pemBlock("PKCS7", []byte{0x30, 0}), RuleFormat},
		{"broken PEM block", []byte("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"), RuleFormat},
		{"broken block before a good one", append([]byte("-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n"), c.PEM()...), RuleFormat},
		{"not a certificate in PEM", pemBlock("CERTIFICATE", []byte{0x30, 3, 2, 1, 0}), RuleFormat},
		{"truncated DER", c.Cert.Raw[:len(c.Cert.Raw)-1], RuleFormat},
		{"DER with trailing garbage", append(append([]byte(nil), c.Cert.Raw...), 0, 0), RuleFormat},
		{"text", []byte("not a certificate"), RuleFormat},
		{"empty", nil, RuleFormat},
		{"the same certificate twice", pemOf(c, c), RuleFormat},
		{"too many certificates", many, RuleFormat},
		{"too large", append(c.PEM(), bytes.Repeat([]byte(" "), MaxKeyBytes)...), RuleTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseCertificate(tc.data, certAddr, certPolicy.Normalizer)
			if err == nil {
				t.Fatalf("accepted (%v)", got.Cert.Subject)
			}
			wantRule(t, err, tc.rule)
		})
	}
}

// TestParseCertificatePKCS12 refuses the file users most often submit
// by mistake: the PKCS #12 export with their private key.
func TestParseCertificatePKCS12(t *testing.T) {
	c := alice(t, smimetest.Spec{})
	dir := t.TempDir()
	for _, legacy := range []bool{false, true} {
		p12, err := os.ReadFile(smimetest.PKCS12(t, c, dir, "alice", legacy))
		if err != nil {
			t.Fatal(err)
		}
		if !IsCertificate(p12) {
			t.Errorf("legacy %v: a PKCS #12 file is not routed to the certificate parser", legacy)
		}
		_, err = ParseCertificate(p12, certAddr, certPolicy.Normalizer)
		wantRule(t, err, RuleSecret)
	}
}

func TestCertificatePolicyRules(t *testing.T) {
	now := time.Now()
	root := smimetest.New(t, smimetest.Spec{Key: smimetest.P384, CommonName: "Test Root", CA: true})
	inter := smimetest.New(t, smimetest.Spec{Key: smimetest.P256, CommonName: "Test Intermediate", CA: true, Parent: root})
	chained := alice(t, smimetest.Spec{Parent: inter})
	otherRoot := smimetest.New(t, smimetest.Spec{Key: smimetest.P256, CommonName: "Other Root", CA: true})
	anchors := x509.NewCertPool()
	anchors.AddCert(root.Cert)
	withAnchors := certPolicy
	withAnchors.TrustAnchors = anchors
	strict := certPolicy
	strict.MinRSABits = 3072
	exact := certPolicy
	exact.Normalizer = Normalizer{}

	for _, tc := range []struct {
		name    string
		data    []byte
		policy  CertificatePolicy
		address string
		now     time.Time
		rule    Rule // "" = accepted
	}{
		{"RSA-2048", alice(t, smimetest.Spec{}).PEM(), certPolicy, certAddr, now, ""},
		{"RSA-4096", alice(t, smimetest.Spec{Key: smimetest.RSA4096}).PEM(), strict, certAddr, now, ""},
		{"P-256", alice(t, smimetest.Spec{Key: smimetest.P256}).PEM(), certPolicy, certAddr, now, ""},
		{"P-384", alice(t, smimetest.Spec{Key: smimetest.P384}).PEM(), certPolicy, certAddr, now, ""},
		{"P-521", alice(t, smimetest.Spec{Key: smimetest.P521}).PEM(), certPolicy, certAddr, now, ""},

		{"expired", alice(t, smimetest.Spec{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}).PEM(), certPolicy, certAddr, now, RuleExpired},
		{"not yet valid", alice(t, smimetest.Spec{NotBefore: now.Add(time.Hour)}).PEM(), certPolicy, certAddr, now, RuleNotYetValid},

		{"RSA-1024", alice(t, smimetest.Spec{Key: smimetest.RSA1024}).PEM(), certPolicy, certAddr, now, RuleStrength},
		{"RSA-2048 under min_rsa_bits 3072", alice(t, smimetest.Spec{}).PEM(), strict, certAddr, now, RuleStrength},
		{"P-224", alice(t, smimetest.Spec{Key: smimetest.P224}).PEM(), certPolicy, certAddr, now, RuleStrength},
		{"Ed25519", alice(t, smimetest.Spec{Key: smimetest.Ed25519, KeyUsage: x509.KeyUsageDigitalSignature}).PEM(), certPolicy, certAddr, now, RuleStrength},

		{"RSA without keyEncipherment", alice(t, smimetest.Spec{KeyUsage: x509.KeyUsageDigitalSignature}).PEM(), certPolicy, certAddr, now, RuleKeyUsage},
		{"RSA with keyAgreement only", alice(t, smimetest.Spec{KeyUsage: x509.KeyUsageKeyAgreement}).PEM(), certPolicy, certAddr, now, RuleKeyUsage},
		{"EC without keyAgreement", alice(t, smimetest.Spec{Key: smimetest.P256, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment}).PEM(), certPolicy, certAddr, now, RuleKeyUsage},
		{"RSA without key usage extension", alice(t, smimetest.Spec{NoKeyUsage: true}).PEM(), certPolicy, certAddr, now, ""},
		{"EC without key usage extension", alice(t, smimetest.Spec{Key: smimetest.P256, NoKeyUsage: true}).PEM(), certPolicy, certAddr, now, ""},
		{"extended key usage serverAuth only", alice(t, smimetest.Spec{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}).PEM(), certPolicy, certAddr, now, RuleKeyUsage},
		{"extended key usage any", alice(t, smimetest.Spec{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}).PEM(), certPolicy, certAddr, now, ""},
		{"no extended key usage", alice(t, smimetest.Spec{ExtKeyUsage: []x509.ExtKeyUsage{}}).PEM(), certPolicy, certAddr, now, ""},

		{"other address", smimetest.New(t, smimetest.Spec{Addresses: []string{"bob@example.org"}}).PEM(), certPolicy, certAddr, now, RuleAddress},
		{"no address", smimetest.New(t, smimetest.Spec{Addresses: []string{}}).PEM(), certPolicy, certAddr, now, RuleAddress},
		{"address in the subject only", alice(t, smimetest.Spec{SubjectEmail: certAddr}).PEM(), certPolicy, certAddr, now, ""},
		{"subject address ignored when the SAN has one", smimetest.New(t, smimetest.Spec{Addresses: []string{"bob@example.org"}, SubjectEmail: certAddr}).PEM(), certPolicy, certAddr, now, RuleAddress},
		{"second SAN address", smimetest.New(t, smimetest.Spec{Addresses: []string{"bob@example.org", certAddr}}).PEM(), certPolicy, certAddr, now, ""},
		{"address case folded", smimetest.New(t, smimetest.Spec{Addresses: []string{"Alice@EXAMPLE.org"}}).PEM(), certPolicy, certAddr, now, ""},
		{"local part case kept when not folding", smimetest.New(t, smimetest.Spec{Addresses: []string{"Alice@EXAMPLE.org"}}).PEM(), exact, certAddr, now, RuleAddress},
		{"domain case folded when not folding local parts", smimetest.New(t, smimetest.Spec{Addresses: []string{"alice@EXAMPLE.org"}}).PEM(), exact, certAddr, now, ""},
		{"IDN domain in punycode matches", smimetest.New(t, smimetest.Spec{Addresses: []string{"alice@xn--bcher-kva.example"}}).PEM(), certPolicy, "alice@xn--bcher-kva.example", now, ""},

		{"no trust anchors: self-signed accepted", alice(t, smimetest.Spec{}).PEM(), certPolicy, certAddr, now, ""},
		{"chain to the anchor", pemOf(chained, inter), withAnchors, certAddr, now, ""},
		{"chain without the intermediate", chained.PEM(), withAnchors, certAddr, now, RuleTrustChain},
		{"self-signed with anchors", alice(t, smimetest.Spec{}).PEM(), withAnchors, certAddr, now, RuleTrustChain},
		{"chain to another root", pemOf(alice(t, smimetest.Spec{Parent: otherRoot}), otherRoot), withAnchors, certAddr, now, RuleTrustChain},
		{"chain whose intermediate is not for e-mail", pemOf(alice(t, smimetest.Spec{Parent: smimetest.New(t, smimetest.Spec{Key: smimetest.P256, CA: true, Parent: root, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})})), withAnchors, certAddr, now, RuleTrustChain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := mustParseCert(t, tc.data, tc.address)
			err := tc.policy.Validate(c, tc.address, tc.now)
			if tc.rule == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			wantRule(t, err, tc.rule)
			if !strings.HasPrefix(err.Error(), "key sha256:") {
				t.Errorf("error %q does not name the certificate", err)
			}
			// Usable is Validate without the address rule.
			uerr := tc.policy.Usable(c, tc.now)
			if tc.rule == RuleAddress {
				if uerr != nil {
					t.Errorf("Usable: %v, want nil", uerr)
				}
			} else {
				wantRule(t, uerr, tc.rule)
			}
		})
	}
}

// TestCertificateValidityBounds checks both ends of the validity period,
// which RFC 5280 §4.1.2.5 includes.
func TestCertificateValidityBounds(t *testing.T) {
	nb := time.Now().Add(-time.Hour).Truncate(time.Second)
	na := nb.Add(48 * time.Hour)
	c := mustParseCert(t, alice(t, smimetest.Spec{NotBefore: nb, NotAfter: na}).PEM(), certAddr)
	for _, tc := range []struct {
		at   time.Time
		rule Rule
	}{
		{nb.Add(-time.Second), RuleNotYetValid},
		{nb, ""},
		{na, ""},
		{na.Add(time.Second), RuleExpired},
	} {
		err := certPolicy.Validate(c, certAddr, tc.at)
		if tc.rule == "" {
			if err != nil {
				t.Errorf("at %v: %v", tc.at, err)
			}
		} else {
			wantRule(t, err, tc.rule)
		}
	}
}

func TestCertificateSummary(t *testing.T) {
	issuer := smimetest.New(t, smimetest.Spec{Key: smimetest.P256, CommonName: "Test CA", CA: true})
	c := mustParseCert(t, alice(t, smimetest.Spec{Parent: issuer, CommonName: "Alice Example"}).PEM(), certAddr)
	s := c.Summary()
	if !strings.Contains(s.Subject, "CN=Alice Example") || !strings.Contains(s.Issuer, "CN=Test CA") {
		t.Errorf("subject %q, issuer %q", s.Subject, s.Issuer)
	}
	wantSerial := strings.ToUpper(c.Cert.SerialNumber.Text(16))
	if len(wantSerial)%2 == 1 {
		wantSerial = "0" + wantSerial
	}
	if strings.ReplaceAll(s.Serial, ":", "") != wantSerial || !strings.Contains(s.Serial, ":") {
		t.Errorf("serial %q, want %q with colons", s.Serial, wantSerial)
	}
	if !s.NotAfter.Equal(c.Cert.NotAfter) || !s.NotBefore.Equal(c.Cert.NotBefore) {
		t.Errorf("validity %v–%v", s.NotBefore, s.NotAfter)
	}
	if s.Fingerprint != c.Fingerprint || s.Key != "RSA 2048" || len(s.Addresses) != 1 || s.Addresses[0] != certAddr {
		t.Errorf("summary %+v", s)
	}
	out := s.String()
	for _, want := range []string{s.Subject, s.Issuer, s.Serial, s.Fingerprint, s.NotAfter.Format(time.RFC3339)} {
		if !strings.Contains(out, want) {
			t.Errorf("String() lacks %q:\n%s", want, out)
		}
	}
	ec := mustParseCert(t, alice(t, smimetest.Spec{Key: smimetest.P384}).PEM(), certAddr)
	if k := ec.Summary().Key; k != "EC P-384" {
		t.Errorf("EC key described as %q", k)
	}
}

// TestCertificateFingerprint pins the fingerprint to SHA-256 of the DER,
// which "openssl x509 -fingerprint -sha256" prints.
func TestCertificateFingerprint(t *testing.T) {
	c := mustParseCert(t, alice(t, smimetest.Spec{}).PEM(), certAddr)
	openssl := smimetest.Tool(t, "openssl")
	out, stderr, err := smimetest.Run(t.TempDir(), c.Cert.Raw, nil, openssl, "x509", "-inform", "DER", "-noout", "-fingerprint", "-sha256")
	if err != nil {
		t.Fatalf("openssl: %v\n%s", err, stderr)
	}
	_, fp, _ := strings.Cut(strings.TrimSpace(string(out)), "=")
	if strings.ReplaceAll(fp, ":", "") != c.Fingerprint {
		t.Errorf("fingerprint %s, openssl says %s", c.Fingerprint, fp)
	}
}

// TestParseCertificatePKCS7 reads certificate bundles as Windows exports
// them and "openssl crl2pkcs7" writes them, PEM and DER.
func TestParseCertificatePKCS7(t *testing.T) {
	openssl := smimetest.Tool(t, "openssl")
	root := smimetest.New(t, smimetest.Spec{Key: smimetest.P256, CommonName: "Test Root", CA: true})
	leaf := alice(t, smimetest.Spec{Parent: root})
	dir := t.TempDir()
	chain := dir + "/chain.pem"
	if err := os.WriteFile(chain, pemOf(root, leaf), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, form := range []string{"PEM", "DER"} {
		out, stderr, err := smimetest.Run(dir, nil, nil, openssl, "crl2pkcs7", "-nocrl", "-certfile", chain, "-outform", form)
		if err != nil {
			t.Fatalf("openssl crl2pkcs7: %v\n%s", err, stderr)
		}
		if !IsCertificate(out) {
			t.Errorf("%s: a PKCS #7 bundle is not recognised", form)
		}
		c := mustParseCert(t, out, certAddr)
		if !c.Cert.Equal(leaf.Cert) || len(c.Chain) != 1 || !c.Chain[0].Equal(root.Cert) {
			t.Errorf("%s: end-entity %q with %d others", form, c.Cert.Subject, len(c.Chain))
		}
		if err := certPolicy.Validate(c, certAddr, time.Now()); err != nil {
			t.Errorf("%s: %v", form, err)
		}
	}
	// A PKCS #7 block that is not a SignedData with certificates.
	_, err := ParseCertificate(pem.EncodeToMemory(&pem.Block{Type: "PKCS7", Bytes: leaf.Cert.Raw}), certAddr, certPolicy.Normalizer)
	wantRule(t, err, RuleFormat)
}

func TestCertificateNextChange(t *testing.T) {
	now := time.Now()
	nb, na := now.Add(time.Hour).Truncate(time.Second), now.Add(48*time.Hour).Truncate(time.Second)
	c := mustParseCert(t, alice(t, smimetest.Spec{NotBefore: nb, NotAfter: na}).PEM(), certAddr)
	for _, tc := range []struct {
		at, want time.Time
	}{
		{now, nb},
		{nb, na.Add(time.Nanosecond)},
		{na, na.Add(time.Nanosecond)},
		{na.Add(time.Nanosecond), time.Time{}},
	} {
		if got := c.NextChange(tc.at); !got.Equal(tc.want) {
			t.Errorf("NextChange(%v) = %v, want %v", tc.at, got, tc.want)
		}
		// The answer changes at NextChange and not before.
		if !tc.want.IsZero() {
			before := certPolicy.Usable(c, tc.want.Add(-time.Nanosecond))
			after := certPolicy.Usable(c, tc.want)
			if (before == nil) == (after == nil) {
				t.Errorf("Usable does not change at %v (%v, then %v)", tc.want, before, after)
			}
		}
	}
}
