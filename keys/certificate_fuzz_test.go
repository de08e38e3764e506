package keys

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"lacre.io/milter/internal/smimetest"
)

// FuzzParseCertificate feeds arbitrary bytes to ParseCertificate and what
// it accepts to CertificatePolicy.Validate, as "keys add" will. Nothing may
// panic or hang; every error must be a *RejectError; what is accepted must
// be recognised by IsCertificate, must read back unchanged from its Raw
// form (what the store keeps), and must not have been a file with a
// private key. Seeds are generated at run time (private keys included,
// which are never written to testdata).
//
//	go test ./keys -run '^$' -fuzz '^FuzzParseCertificate$' -fuzztime 60s
func FuzzParseCertificate(f *testing.F) {
	root := smimetest.New(f, smimetest.Spec{Key: smimetest.P256, CommonName: "Fuzz Root", CA: true})
	leaf := smimetest.New(f, smimetest.Spec{Addresses: []string{certAddr}, Parent: root})
	ec := smimetest.New(f, smimetest.Spec{Key: smimetest.P256, SubjectEmail: certAddr})
	for _, c := range []*smimetest.Cert{leaf, ec, root} {
		f.Add(c.PEM())
		f.Add(c.Cert.Raw)
		f.Add(c.Cert.Raw[:len(c.Cert.Raw)/2])
		f.Add(c.PEM()[:len(c.PEM())*2/3])
		f.Add(append(c.PEM(), c.KeyPEM(f)...))
	}
	f.Add(append(leaf.PEM(), root.PEM()...))
	p7 := pkcs7Bundle(leaf.Cert.Raw, root.Cert.Raw)
	f.Add(p7)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "PKCS7", Bytes: p7}))
	f.Add(append(append([]byte(nil), root.Cert.Raw...), leaf.Cert.Raw...))
	for _, s := range []string{
		"", "\x30", "\x30\x00", "\x30\x80\x00\x00", "\x30\x84\xff\xff\xff\xff",
		"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
		"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
		"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n-----END PGP PUBLIC KEY BLOCK-----\n",
	} {
		f.Add([]byte(s))
	}
	policy := CertificatePolicy{Policy: fuzzPolicy}
	pool := x509.NewCertPool()
	pool.AddCert(root.Cert)
	anchored := CertificatePolicy{Policy: fuzzPolicy, TrustAnchors: pool}
	now := time.Now()
	f.Fuzz(func(t *testing.T, data []byte) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			c, err := ParseCertificate(data, certAddr, policy.Normalizer)
			if err != nil {
				var re *RejectError
				if !errors.As(err, &re) {
					t.Errorf("ParseCertificate error %v is a %T, not a *RejectError", err, err)
				}
				return
			}
			if !IsCertificate(data) {
				t.Errorf("ParseCertificate accepted data IsCertificate does not recognise")
			}
			if data[0] != 0x30 && bytes.Contains(data, []byte("PRIVATE KEY-----")) {
				t.Errorf("accepted a PEM file with a private key block")
			}
			back, err := ParseCertificate(c.Raw(), certAddr, policy.Normalizer)
			if err != nil {
				t.Fatalf("Raw does not parse again: %v", err)
			}
			if back.Fingerprint != c.Fingerprint || len(back.Chain) != len(c.Chain) {
				t.Errorf("Raw read back as %s with %d others, was %s with %d", back.Fingerprint, len(back.Chain), c.Fingerprint, len(c.Chain))
			}
			for _, p := range []CertificatePolicy{policy, anchored} {
				if err := p.Validate(c, certAddr, now); err != nil {
					var re *RejectError
					if !errors.As(err, &re) {
						t.Errorf("Validate error %v is a %T, not a *RejectError", err, err)
					}
				}
			}
			_ = c.Summary().String()
		}()
		select {
		case <-done:
		case <-time.After(fuzzTimeout):
			t.Fatalf("ParseCertificate/Validate did not return within %v for %d bytes", fuzzTimeout, len(data))
		}
	})
}

// pkcs7Bundle is a certificates-only SignedData (RFC 5652 §5.1), as
// "openssl crl2pkcs7 -nocrl" writes it.
func pkcs7Bundle(certs ...[]byte) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(ci *cryptobyte.Builder) {
		ci.AddASN1ObjectIdentifier(oidSignedData)
		ci.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(e *cryptobyte.Builder) {
			e.AddASN1(cbasn1.SEQUENCE, func(sd *cryptobyte.Builder) {
				sd.AddASN1Int64(1)
				sd.AddASN1(cbasn1.SET, func(*cryptobyte.Builder) {})
				sd.AddASN1(cbasn1.SEQUENCE, func(eci *cryptobyte.Builder) {
					eci.AddASN1ObjectIdentifier(asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1})
				})
				sd.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(set *cryptobyte.Builder) {
					for _, c := range certs {
						set.AddBytes(c)
					}
				})
				sd.AddASN1(cbasn1.SET, func(*cryptobyte.Builder) {})
			})
		})
	})
	return b.BytesOrPanic()
}
