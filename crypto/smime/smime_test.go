package smime

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"lacre.io/milter/internal/smimetest"
)

const testInner = "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nThe launch code is 1234. Grüße.\r\n"

// allOptions is every combination of the options.
func allOptions() []Options {
	var out []Options
	for _, c := range []Cipher{AES256CBC, AES256GCM} {
		for _, p := range []RSAPadding{PKCS1v15, OAEP} {
			for _, ski := range []bool{false, true} {
				out = append(out, Options{Cipher: c, RSAPadding: p, SubjectKeyID: ski})
			}
		}
	}
	return out
}

func (o Options) name() string {
	return fmt.Sprintf("%v/%v/ski=%v", o.Cipher, o.RSAPadding, o.SubjectKeyID)
}

func recipient(t testing.TB, kind smimetest.KeyKind, addr string) *smimetest.Cert {
	return smimetest.New(t, smimetest.Spec{Key: kind, Addresses: []string{addr}, SubjectKeyID: []byte(addr)})
}

// TestEncryptRoundTrip encrypts to RSA and EC recipients together with
// every option and decrypts for each of them, checking the versions RFC
// 5652 §6.1 and RFC 5083 §2.1 prescribe.
func TestEncryptRoundTrip(t *testing.T) {
	kinds := []smimetest.KeyKind{smimetest.RSA2048, smimetest.RSA4096, smimetest.P256, smimetest.P384, smimetest.P521}
	var recips []*smimetest.Cert
	var certs []*x509.Certificate
	for i, k := range kinds {
		c := recipient(t, k, fmt.Sprintf("r%d@example.org", i))
		recips = append(recips, c)
		certs = append(certs, c.Cert)
	}
	for _, opts := range allOptions() {
		for _, n := range []int{1, 2, len(certs)} { // RSA only, RSA×2, RSA and EC
			t.Run(fmt.Sprintf("%s/%d", opts.name(), n), func(t *testing.T) {
				der, err := Encrypt([]byte(testInner), certs[:n], opts)
				if err != nil {
					t.Fatal(err)
				}
				for i, r := range recips[:n] {
					got, p, err := smimetest.Decrypt(der, r.Cert, r.Key)
					if err != nil {
						t.Fatalf("recipient %d (%v): %v", i, kinds[i], err)
					}
					if string(got) != testInner {
						t.Fatalf("recipient %d decrypted %q", i, got)
					}
					if p.RICount != n {
						t.Fatalf("%d RecipientInfos, want %d", p.RICount, n)
					}
					if p.Auth != (opts.Cipher == AES256GCM) {
						t.Fatalf("AuthEnvelopedData %v for %v", p.Auth, opts.Cipher)
					}
					wantVersion := int64(0)
					if !p.Auth && (n > 2 || opts.SubjectKeyID) {
						wantVersion = 2
					}
					if p.Version != wantVersion {
						t.Fatalf("version %d, want %d", p.Version, wantVersion)
					}
					for j, v := range p.RIVersion {
						if v != 0 && v != 2 && v != 3 || (v == 2) != (opts.SubjectKeyID && p.KeyAlg[j].Equal(keyTransportOID(opts))) {
							t.Fatalf("RecipientInfo %d version %d (%v)", j, v, p.KeyAlg[j])
						}
					}
					for _, a := range p.KeyAlg {
						if !a.Equal(keyTransportOID(opts)) && !a.Equal(oidStdDHSHA256KDFScheme) {
							t.Fatalf("key algorithm %v with %v", a, opts.RSAPadding)
						}
					}
				}
			})
		}
	}
}

func keyTransportOID(o Options) asn1.ObjectIdentifier {
	if o.RSAPadding == OAEP {
		return oidRSAESOAEP
	}
	return oidRSAEncryption
}

// TestEncryptSizes round-trips the lengths around the AES block size (the
// CBC padding is 1 to 16 bytes, never 0) and a large entity.
func TestEncryptSizes(t *testing.T) {
	r := recipient(t, smimetest.RSA2048, "a@example.org")
	e := recipient(t, smimetest.P256, "b@example.org")
	for _, n := range []int{0, 1, 15, 16, 17, 31, 32, 33, 111, 112, 127, 128, 255, 256, 4096, 65535, 65536, 1<<20 + 3} {
		in := bytes.Repeat([]byte("x"), n)
		for _, c := range []Cipher{AES256CBC, AES256GCM} {
			der, err := Encrypt(in, []*x509.Certificate{r.Cert, e.Cert}, Options{Cipher: c})
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range []*smimetest.Cert{r, e} {
				got, _, err := smimetest.Decrypt(der, k.Cert, k.Key)
				if err != nil || !bytes.Equal(got, in) {
					t.Fatalf("%v, %d bytes: %v (got %d bytes)", c, n, err, len(got))
				}
			}
		}
	}
}

// TestEncryptTamper: a changed byte anywhere in the GCM ciphertext or tag
// fails authentication (the reason for AuthEnvelopedData).
func TestEncryptTamper(t *testing.T) {
	r := recipient(t, smimetest.RSA2048, "a@example.org")
	der, err := Encrypt([]byte(testInner), []*x509.Certificate{r.Cert}, Options{Cipher: AES256GCM})
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int{len(der) - 1, len(der) - 20, len(der) - 40} {
		bad := bytes.Clone(der)
		bad[off] ^= 1
		if got, _, err := smimetest.Decrypt(bad, r.Cert, r.Key); err == nil {
			t.Errorf("byte %d changed and still decrypted: %q", off, got)
		}
	}
}

func TestEncryptRefuses(t *testing.T) {
	ok := recipient(t, smimetest.RSA2048, "a@example.org")
	ed := smimetest.New(t, smimetest.Spec{Key: smimetest.Ed25519, Addresses: []string{"e@example.org"}, KeyUsage: x509.KeyUsageDigitalSignature})
	p224 := recipient(t, smimetest.P224, "p@example.org")
	for _, tc := range []struct {
		name  string
		certs []*x509.Certificate
		opts  Options
		want  error
	}{
		{"no certificates", nil, Options{}, ErrNoRecipients},
		{"Ed25519", []*x509.Certificate{ok.Cert, ed.Cert}, Options{}, ErrKeyType},
		{"P-224", []*x509.Certificate{p224.Cert}, Options{}, ErrKeyType},
		{"unknown cipher", []*x509.Certificate{ok.Cert}, Options{Cipher: 7}, nil},
		{"unknown padding", []*x509.Certificate{ok.Cert}, Options{RSAPadding: 7}, nil},
		{"nil certificate", []*x509.Certificate{nil}, Options{}, nil},
	} {
		der, err := Encrypt([]byte(testInner), tc.certs, tc.opts)
		if err == nil || der != nil {
			t.Errorf("%s: no error", tc.name)
		} else if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// TestEncryptFresh: every call draws a new key and IV, and a certificate
// given twice gets one RecipientInfo.
func TestEncryptFresh(t *testing.T) {
	r := recipient(t, smimetest.P256, "a@example.org")
	a, err := Encrypt([]byte(testInner), []*x509.Certificate{r.Cert, r.Cert}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Encrypt([]byte(testInner), []*x509.Certificate{r.Cert}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a[len(a)-48:], b[len(b)-48:]) {
		t.Error("two encryptions of the same entity end alike")
	}
	if _, p, err := smimetest.Decrypt(a, r.Cert, r.Key); err != nil || p.RICount != 1 {
		t.Errorf("duplicate certificate: %v, %+v", err, p)
	}
}

// TestKeyWrapRFC3394 is the test vector of RFC 3394 §4.6 (256-bit key
// data with a 256-bit KEK).
func TestKeyWrapRFC3394(t *testing.T) {
	h := func(s string) []byte {
		b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	kek := h("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
	key := h("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")
	want := h("28C9F404C4B810F4 CBCCB35CFB87F826 3F5786E2D80ED326 CBC7F0E71A99F43B FB988B9B7A02DD21")
	got, err := keyWrap(kek, key)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("keyWrap = %X, %v; want %X", got, err, want)
	}
	back, err := smimetest.KeyUnwrap(kek, got)
	if err != nil || !bytes.Equal(back, key) {
		t.Fatalf("keyUnwrap = %X, %v", back, err)
	}
	got[3] ^= 1
	if _, err := smimetest.KeyUnwrap(kek, got); err == nil {
		t.Fatal("a changed wrapped key unwrapped")
	}
}

// TestEntity checks the MIME entity (RFC 8551 §3.2). That the milter's
// own detector sees it as already encrypted, so that it is never
// encrypted twice, is checked in package crypto
// (TestEncryptSMIMEAlreadyEncrypted): package crypto imports this one.
func TestEntity(t *testing.T) {
	r := recipient(t, smimetest.RSA2048, "a@example.org")
	for _, opts := range []Options{{}, {Cipher: AES256GCM}} {
		ent, err := EncryptEntity(bytes.Repeat([]byte(testInner), 20), []*x509.Certificate{r.Cert}, opts)
		if err != nil {
			t.Fatal(err)
		}
		head, body, ok := bytes.Cut(ent, []byte("\r\n\r\n"))
		if !ok {
			t.Fatal("no blank line")
		}
		kind := "enveloped-data"
		if opts.Cipher == AES256GCM {
			kind = "authEnveloped-data"
		}
		wantHead := "Content-Type: application/pkcs7-mime; smime-type=" + kind + "; name=smime.p7m\r\n" +
			"Content-Transfer-Encoding: base64\r\n" +
			"Content-Disposition: attachment; filename=smime.p7m\r\n" +
			"Content-Description: S/MIME Encrypted Message"
		if string(head) != wantHead {
			t.Errorf("header:\n%s\nwant:\n%s", head, wantHead)
		}
		lines := strings.Split(string(body), "\r\n")
		if lines[len(lines)-1] != "" {
			t.Errorf("body does not end with CRLF")
		}
		lines = lines[:len(lines)-1]
		for i, l := range lines {
			if len(l) > 76 || (i < len(lines)-1 && len(l) != 76) || strings.ContainsAny(l, "\r\n") {
				t.Fatalf("line %d has %d characters", i, len(l))
			}
		}
		der, err := base64.StdEncoding.DecodeString(strings.Join(lines, ""))
		if err != nil {
			t.Fatal(err)
		}
		if got, _, err := smimetest.Decrypt(der, r.Cert, r.Key); err != nil || !bytes.Equal(got, bytes.Repeat([]byte(testInner), 20)) {
			t.Fatalf("entity does not decrypt: %v", err)
		}
	}
	if got := Body(nil); len(got) != 0 {
		t.Errorf("Body(nil) = %q", got)
	}
}

// TestEncryptConcurrentOptions runs encryptions with different options at
// once (run with -race): each output must have its own options, which a
// library with package-level algorithm variables cannot promise.
func TestEncryptConcurrentOptions(t *testing.T) {
	r := recipient(t, smimetest.RSA2048, "a@example.org")
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		opts := allOptions()[i%len(allOptions())]
		wg.Go(func() {
			der, err := Encrypt([]byte(testInner), []*x509.Certificate{r.Cert}, opts)
			if err != nil {
				errs <- err
				return
			}
			_, p, err := smimetest.Decrypt(der, r.Cert, r.Key)
			if err != nil {
				errs <- err
				return
			}
			if p.Auth != (opts.Cipher == AES256GCM) || !p.KeyAlg[0].Equal(keyTransportOID(opts)) || (p.RIVersion[0] == 2) != opts.SubjectKeyID {
				errs <- fmt.Errorf("options %s produced auth=%v alg=%v version=%d", opts.name(), p.Auth, p.KeyAlg[0], p.RIVersion[0])
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestDERLengths checks the hand-written DER lengths at the boundaries
// of their encodings (X.690 §8.1.3) against cryptobyte's reader.
func TestDERLengths(t *testing.T) {
	for _, n := range []int{0, 1, 127, 128, 129, 255, 256, 257, 65535, 65536, 1<<24 - 1, 1 << 24} {
		b := appendTL(nil, 0x04, n)
		if len(b)+n != tlvLen(n) {
			t.Errorf("n=%d: header of %d bytes, tlvLen says %d", n, len(b), tlvLen(n)-n)
		}
		s := cryptobyte.String(append(b, make([]byte, n)...))
		var content cryptobyte.String
		if !s.ReadASN1(&content, cbasn1.OCTET_STRING) || len(content) != n || !s.Empty() {
			t.Errorf("n=%d: %x does not read back as a DER length", n, b)
		}
	}
}

// TestEncryptParts: the entity given as a header section and a body, split
// anywhere, decrypts to the two joined, with either cipher.
func TestEncryptParts(t *testing.T) {
	r := recipient(t, smimetest.RSA2048, "a@example.org")
	inner := []byte(testInner)
	for _, opts := range []Options{{}, {Cipher: AES256GCM}} {
		for i := 0; i <= len(inner); i++ {
			der, err := EncryptParts(inner[:i], inner[i:], []*x509.Certificate{r.Cert}, opts)
			if err != nil {
				t.Fatal(err)
			}
			if got, _, err := smimetest.Decrypt(der, r.Cert, r.Key); err != nil || !bytes.Equal(got, inner) {
				t.Fatalf("%v, split at %d: %q, %v", opts.Cipher, i, got, err)
			}
		}
	}
}
