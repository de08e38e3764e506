package web

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"regexp"
	"testing"
	"time"

	"lacre.io/milter/internal/smimetest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// derHeader is an ASN.1 SEQUENCE header for a content of n bytes.
func derHeader(n int) []byte {
	switch {
	case n < 0x80:
		return []byte{0x30, byte(n)}
	case n < 1<<8:
		return []byte{0x30, 0x81, byte(n)}
	case n < 1<<16:
		return []byte{0x30, 0x82, byte(n >> 8), byte(n)}
	default:
		return []byte{0x30, 0x83, byte(n >> 16), byte(n >> 8), byte(n)}
	}
}

// nestedDER is depth SEQUENCEs, each holding the next, around inner.
func nestedDER(depth int, inner []byte) []byte {
	headers := make([][]byte, depth)
	n := len(inner)
	for i := range headers {
		headers[i] = derHeader(n)
		n += len(headers[i])
	}
	b := make([]byte, 0, n)
	for i := depth - 1; i >= 0; i-- {
		b = append(b, headers[i]...)
	}
	return append(b, inner...)
}

// hostileDER are certificate files made to hurt a parser: lengths that
// lie, deep nesting, many tiny elements, and sizes at and over the limit.
func hostileDER(t testing.TB) map[string][]byte {
	cert := smimetest.New(t, smimetest.Spec{Addresses: []string{"alice@example.org"}})
	p7 := func(certs []byte) []byte { // a PKCS #7 bundle around certs
		oid := []byte{0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02}
		set := append([]byte{0xa0}, derHeader(len(certs))[1:]...)
		sd := append([]byte{0x02, 0x01, 0x01, 0x31, 0x00, 0x30, 0x00}, append(set, certs...)...)
		sd = append(derHeader(len(sd)), sd...)
		content := append([]byte{0xa0}, derHeader(len(sd))[1:]...)
		ci := append(append(oid, content...), sd...)
		return append(derHeader(len(ci)), ci...)
	}
	return map[string][]byte{
		"length claims 2 GiB":         {0x30, 0x84, 0x7f, 0xff, 0xff, 0xff, 0x30, 0x00},
		"length claims 2^64":          {0x30, 0x88, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		"indefinite length (BER)":     {0x30, 0x80, 0x30, 0x00, 0x00, 0x00},
		"nested 200 000 deep":         nestedDER(200000, nil),
		"one SEQUENCE of 1 MiB zeros": append(derHeader(keys.MaxKeyBytes-5), make([]byte, keys.MaxKeyBytes-5)...),
		"200 000 empty SEQUENCEs":     bytes.Repeat([]byte{0x30, 0x00}, 200000),
		"200 copies of a certificate": bytes.Repeat(cert.Cert.Raw, 200),
		"p7b of 100 000 empty certs":  p7(bytes.Repeat([]byte{0x30, 0x00}, 100000)),
		"p7b of 300 certificates":     p7(bytes.Repeat(cert.Cert.Raw, 300)),
		"over the size limit":         append(slicesClone(cert.Cert.Raw), make([]byte, keys.MaxKeyBytes)...),
		"certificate cut short":       cert.Cert.Raw[:len(cert.Cert.Raw)-1],
	}
}

// TestHostileCertificateFiles uploads each hostile file through the form
// and the service: each is refused as a bad submission (400, or 413 when
// the body is over the form's limit) within a few seconds, sends no mail
// and stores nothing. A crash fails the test binary.
func TestHostileCertificateFiles(t *testing.T) {
	f := newFixtureWith(t, nil, func(o *Options) { o.MaxRequestsPerClient = 1000 })
	for name, data := range hostileDER(t) {
		start := time.Now()
		status, page := uploadForm(t, f, browser(t), "alice@example.org", "alice.der", data)
		took := time.Since(start)
		if status != http.StatusBadRequest && status != http.StatusRequestEntityTooLarge {
			t.Errorf("%s: upload answered %d\n%s", name, status, errorText(page))
		}
		_, err := f.svc.Submit(context.Background(), "alice@example.org", data, "192.0.2.1")
		var ue *Error
		if !errors.As(err, &ue) || ue.Status != 400 {
			t.Errorf("%s: Submit: %v", name, err)
		}
		if took > 5*time.Second {
			t.Errorf("%s: took %v", name, took)
		}
		t.Logf("%s (%d bytes): %d %q in %v", name, len(data), status, errorText(page), took.Round(time.Millisecond))
	}
	nothingHappened(t, f, "alice@example.org", 0)
}

var privatePEM = regexp.MustCompile(`-----BEGIN [^\n-]*PRIVATE KEY-----`)

// FuzzSubmission feeds arbitrary submissions to the parsing and
// admission of the service (what a POST reaches once it passes the
// limits). It must not panic; it must refuse with a 400 *Error or return
// keys that each pass the policy for the address; and splitting a text
// submission into its OpenPGP and certificate parts must keep every PEM
// BEGIN line (nothing dropped unseen).
func FuzzSubmission(f *testing.F) {
	alice := smimetest.New(f, smimetest.Spec{Addresses: []string{"alice@example.org"}})
	ec := smimetest.New(f, smimetest.Spec{Key: smimetest.P256, Addresses: []string{"alice@example.org"}})
	pgp := testkeys.ArmoredPublic(f, testkeys.Generate(f, testkeys.Curve25519, "alice@example.org"))
	f.Add(alice.PEM())
	f.Add(alice.Cert.Raw)
	f.Add(ec.PEM())
	f.Add(append(slicesClone(pgp), alice.PEM()...))
	f.Add(append(alice.PEM(), pgp...))
	f.Add(append(alice.PEM(), alice.KeyPEM(f)...))
	f.Add(alice.KeyPEM(f))
	f.Add([]byte("-----BEGIN PKCS7-----\nMAA=\n-----END PKCS7-----\n"))
	for _, d := range hostileDER(f) {
		if len(d) < 4096 {
			f.Add(d)
		}
	}
	svc, err := New(nil, nil, Options{Domains: []string{"example.org"}, MaxPendingPerAddress: 3,
		Policy: keys.Policy{MinRSABits: 2048, Normalizer: norm}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		pgpPart, certPart := splitSubmission(data)
		if len(data) == 0 || data[0] != 0x30 {
			const begin = "-----BEGIN "
			if n := bytes.Count(pgpPart, []byte(begin)) + bytes.Count(certPart, []byte(begin)); n != bytes.Count(data, []byte(begin)) {
				t.Fatalf("split %d BEGIN lines into %d", bytes.Count(data, []byte(begin)), n)
			}
		}
		ks, err := svc.parseKeys(context.Background(), "alice@example.org", data)
		if err != nil {
			var ue *Error
			if !errors.As(err, &ue) || ue.Status != 400 || ue.Rule == "" {
				t.Fatalf("refused without a rule: %v", err)
			}
			return
		}
		if len(ks) == 0 || len(ks) > MaxKeysPerSubmission {
			t.Fatalf("%d keys", len(ks))
		}
		certs := 0
		for _, k := range ks {
			if err := svc.opt.Policy.Validate(k, "alice@example.org", time.Now()); err != nil {
				t.Fatalf("accepted a key the policy refuses: %v", err)
			}
			if k.Kind() == keys.KindX509 {
				certs++
				if privatePEM.Match(data) {
					t.Fatal("a certificate accepted from data with a PEM private key")
				}
			}
		}
		if certs > 1 {
			t.Fatalf("%d certificates from one submission", certs)
		}
	})
}
