// Package smimetest makes real X.509 certificates and private keys for
// the tests of S/MIME code (keys/certificate*_test.go, crypto/smime), so
// that no private key material is ever committed to the repository.
//
// Private keys are generated on first use and cached per KeyKind for the
// life of the test binary (RSA-4096 takes a second or more); certificates
// are made fresh for each call. Treat what it returns as read-only.
package smimetest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// KeyKind selects a certificate's key.
type KeyKind int

const (
	RSA2048 KeyKind = iota
	RSA4096
	P256
	P384
	P521
	RSA1024 // below every minimum (for the strength rule)
	P224    // a curve that is refused
	Ed25519 // a signature-only algorithm
)

func (k KeyKind) String() string {
	return [...]string{"RSA-2048", "RSA-4096", "P-256", "P-384", "P-521", "RSA-1024", "P-224", "Ed25519"}[k]
}

// EC reports whether the kind is an ECDH-capable NIST curve key.
func (k KeyKind) EC() bool { return k == P256 || k == P384 || k == P521 || k == P224 }

// Spec describes the certificate New makes. The zero value (with an
// address) is what a mail client's CA issues: RSA-2048, valid from an hour
// ago for a day, the address as subjectAltName rfc822Name, key usage
// digitalSignature plus keyEncipherment (RSA) or keyAgreement (EC),
// extended key usage emailProtection, not a CA, signed by itself.
type Spec struct {
	Key KeyKind
	// Addresses go into the subjectAltName as rfc822Names.
	Addresses []string
	// SubjectEmail, when not "", is set as the subject's emailAddress
	// attribute (the pre-RFC 5280 way).
	SubjectEmail string
	// CommonName defaults to "Test User".
	CommonName string
	// NotBefore and NotAfter default to an hour ago and a day from now.
	NotBefore, NotAfter time.Time
	// KeyUsage replaces the default key usage when not 0.
	KeyUsage x509.KeyUsage
	// NoKeyUsage leaves the key usage extension out.
	NoKeyUsage bool
	// ExtKeyUsage replaces the default (emailProtection) when not nil;
	// an empty non-nil slice leaves the extension out.
	ExtKeyUsage []x509.ExtKeyUsage
	// CA makes a CA certificate (basicConstraints cA, keyCertSign).
	CA bool
	// SubjectKeyID is set as the subject key identifier when not nil.
	SubjectKeyID []byte
	// Parent signs the certificate; nil means self-signed.
	Parent *Cert
}

// Cert is a certificate with its private key.
type Cert struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// PEM returns the certificate in PEM.
func (c *Cert) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Cert.Raw})
}

// KeyPEM returns the private key in PKCS #8 PEM ("PRIVATE KEY").
func (c *Cert) KeyPEM(t testing.TB) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(c.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

type keyEntry struct {
	once sync.Once
	key  crypto.Signer
	err  error
}

var (
	keyCache [Ed25519 + 1]keyEntry
	serial   atomic.Int64
)

// Key returns the cached private key of kind.
func Key(t testing.TB, kind KeyKind) crypto.Signer {
	t.Helper()
	e := &keyCache[kind]
	e.once.Do(func() {
		switch kind {
		case RSA2048, RSA4096, RSA1024:
			bits := map[KeyKind]int{RSA2048: 2048, RSA4096: 4096, RSA1024: 1024}[kind]
			e.key, e.err = rsaKey(bits)
		case P256:
			e.key, e.err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		case P384:
			e.key, e.err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		case P521:
			e.key, e.err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
		case P224:
			e.key, e.err = ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
		case Ed25519:
			_, e.key, e.err = ed25519.GenerateKey(rand.Reader)
		default:
			e.err = fmt.Errorf("unknown key kind %d", kind)
		}
	})
	if e.err != nil {
		t.Fatalf("generating a %v key: %v", kind, e.err)
	}
	return e.key
}

// rsaKey generates an RSA key; crypto/rsa refuses sizes below 1024 bits
// unless told otherwise, and 1024 is fine.
func rsaKey(bits int) (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, bits) }

var oidEmailAddress = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}

// New makes a certificate as s describes.
func New(t testing.TB, s Spec) *Cert {
	t.Helper()
	key := Key(t, s.Key)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano() + serial.Add(1)),
		Subject:      pkix.Name{CommonName: s.CommonName, Organization: []string{"Lacre tests"}},
		NotBefore:    s.NotBefore,
		NotAfter:     s.NotAfter,
		KeyUsage:     s.KeyUsage,
		ExtKeyUsage:  s.ExtKeyUsage,
		SubjectKeyId: s.SubjectKeyID,
	}
	if tmpl.Subject.CommonName == "" {
		tmpl.Subject.CommonName = "Test User"
	}
	for _, a := range s.Addresses {
		tmpl.EmailAddresses = append(tmpl.EmailAddresses, a)
	}
	if s.SubjectEmail != "" {
		tmpl.Subject.ExtraNames = append(tmpl.Subject.ExtraNames, pkix.AttributeTypeAndValue{Type: oidEmailAddress, Value: s.SubjectEmail})
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = now.Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = now.Add(24 * time.Hour)
	}
	if tmpl.KeyUsage == 0 && !s.NoKeyUsage {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		if s.Key.EC() {
			tmpl.KeyUsage |= x509.KeyUsageKeyAgreement
		} else {
			tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
		}
		if s.CA {
			tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		}
	}
	if s.NoKeyUsage {
		tmpl.KeyUsage = 0
	}
	if tmpl.ExtKeyUsage == nil && !s.CA {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}
	}
	if s.CA {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	}
	parent, signer := tmpl, key
	if s.Parent != nil {
		parent, signer = s.Parent.Cert, s.Parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		t.Fatalf("making a certificate: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &Cert{Cert: c, Key: key}
}

// Tool finds a tool on PATH. Without it the test is skipped, except in
// CI (CI set), where a skipped interoperability test would pass unnoticed.
func Tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is required in CI: %v", name, err)
		}
		t.Skipf("%s not installed: %v", name, err)
	}
	return p
}

// Timeout bounds every tool invocation of Run.
const Timeout = 60 * time.Second

// Run runs a tool in dir with dir as HOME, a minimal environment, stdin
// as its input and Timeout. extraEnv entries ("K=V") are added.
func Run(dir string, stdin []byte, extraEnv []string, path string, args ...string) (stdout, stderr []byte, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "LC_ALL=C", "TZ=UTC"}, extraEnv...)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = 5 * time.Second // a daemon (gpg-agent) that inherited the pipes must not hold Wait
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s: timed out after %v: %w", filepath.Base(path), Timeout, err)
	}
	return out.Bytes(), errb.Bytes(), err
}

// PKCS12 writes c's certificate and key as a PKCS #12 file with an empty
// password into dir and returns its path, using openssl (there is no
// PKCS #12 writer in Go's standard library). legacy selects the
// 3DES/SHA-1 encryption older readers (GnuPG's gpgsm) need instead of
// OpenSSL 3's AES-256/PBKDF2 default.
func PKCS12(t testing.TB, c *Cert, dir, name string, legacy bool) string {
	t.Helper()
	return PKCS12Password(t, c, dir, name, legacy, "")
}

// PKCS12Password is PKCS12 with a password. gpgsm needs one: with the
// empty password it fails to import about one file in 25 that openssl
// wrote ("data error at shrouded_key_bag.decrypted-text"; 1 of 25 with
// "", 0 of 85 with "test", measured with openssl-made keys), which made
// TestInteropGpgsm fail at random.
func PKCS12Password(t testing.TB, c *Cert, dir, name string, legacy bool, password string) string {
	t.Helper()
	openssl := Tool(t, "openssl")
	certPath, keyPath := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certPath, c.PEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, c.KeyPEM(t), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, name+".p12")
	args := []string{"pkcs12", "-export", "-in", certPath, "-inkey", keyPath, "-out", out, "-passout", "pass:" + password, "-name", name}
	if legacy {
		args = append(args, "-keypbe", "PBE-SHA1-3DES", "-certpbe", "PBE-SHA1-3DES", "-macalg", "sha1")
	}
	if _, stderr, err := Run(dir, nil, nil, openssl, args...); err != nil {
		t.Fatalf("openssl pkcs12 -export: %v\n%s", err, stderr)
	}
	return out
}
