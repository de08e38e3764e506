package smime

import (
	"bytes"
	"crypto/x509"
	"testing"
	"time"

	"lacre.io/milter/internal/smimetest"
)

// Fuzz targets of the smime package. Seeds are made at run time (the
// private keys never go to testdata). Run one at a time, e.g.
//
//	go test ./crypto/smime -run '^$' -fuzz '^FuzzEncrypt$' -fuzztime 60s

const fuzzTimeout = 10 * time.Second

func withTimeout(t *testing.T, f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(fuzzTimeout):
		t.Fatalf("did not return within %v", fuzzTimeout)
	}
}

// FuzzEncrypt encrypts arbitrary entities with arbitrary options to an
// RSA and an EC recipient; each must decrypt to the same bytes.
func FuzzEncrypt(f *testing.F) {
	r := smimetest.New(f, smimetest.Spec{Key: smimetest.RSA2048, Addresses: []string{"r@example.org"}, SubjectKeyID: []byte{1, 2, 3}})
	e := smimetest.New(f, smimetest.Spec{Key: smimetest.P256, Addresses: []string{"e@example.org"}, SubjectKeyID: []byte{4, 5, 6}})
	for i, s := range []string{"", "x", testInner, string(bytes.Repeat([]byte{0}, 16)), string(bytes.Repeat([]byte("\r\n"), 100))} {
		f.Add([]byte(s), uint8(i))
	}
	certs := []*x509.Certificate{r.Cert, e.Cert}
	f.Fuzz(func(t *testing.T, inner []byte, o uint8) {
		opts := Options{Cipher: Cipher(o & 1), RSAPadding: RSAPadding(o >> 1 & 1), SubjectKeyID: o&4 != 0}
		withTimeout(t, func() {
			der, err := Encrypt(inner, certs, opts)
			if err != nil {
				t.Errorf("Encrypt: %v", err)
				return
			}
			for _, k := range []*smimetest.Cert{r, e} {
				got, _, err := smimetest.Decrypt(der, k.Cert, k.Key)
				if err != nil || !bytes.Equal(got, inner) {
					t.Errorf("%s: %v, got %q", opts.name(), err, got)
				}
			}
		})
	})
}

// FuzzDecrypt feeds arbitrary bytes (Encrypt's outputs, mutated) to the
// tests' CMS reader, which the round-trip tests trust: it must never
// panic or hang.
func FuzzDecrypt(f *testing.F) {
	r := smimetest.New(f, smimetest.Spec{Key: smimetest.RSA2048, Addresses: []string{"r@example.org"}})
	e := smimetest.New(f, smimetest.Spec{Key: smimetest.P256, Addresses: []string{"e@example.org"}})
	for _, opts := range allOptions() {
		der, err := Encrypt([]byte(testInner), []*x509.Certificate{r.Cert, e.Cert}, opts)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(der, false)
		f.Add(der, true)
		f.Add(der[:len(der)/2], false)
	}
	f.Add([]byte{0x30, 0x80, 0, 0}, false)
	f.Fuzz(func(t *testing.T, der []byte, ec bool) {
		k := r
		if ec {
			k = e
		}
		withTimeout(t, func() { smimetest.Decrypt(der, k.Cert, k.Key) })
	})
}
