package crypto

// Genuine encrypted mail from other implementations must pass as already
// encrypted, and their readable look-alikes must not: OpenPGP from GnuPG
// and Sequoia, S/MIME from OpenSSL (DER, and BER with indefinite lengths
// from -stream; EnvelopedData and AuthEnvelopedData; RSA and ECDH
// recipients). Keys and certificates are made in the test, in temporary
// directories; none is committed.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"

	"lacre.io/milter/internal/testkeys"
)

const detectSecret = "Content-Type: text/plain\r\n\r\nThe launch code is 1234.\r\n"

// detectCert writes a self-signed certificate for alice@example.org and
// its private key (PEM) to dir and returns their paths.
func detectCert(t *testing.T, dir, name string, ec bool) (certPath, keyPath string) {
	t.Helper()
	var priv any
	var pub any
	if ec {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		priv, pub = k, &k.PublicKey
	} else {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		priv, pub = k, &k.PublicKey
	}
	tmpl := &x509.Certificate{
		SerialNumber:   big.NewInt(time.Now().UnixNano()),
		Subject:        pkix.Name{CommonName: "Alice"},
		EmailAddresses: []string{"alice@example.org"},
		NotBefore:      time.Now().Add(-time.Hour),
		NotAfter:       time.Now().Add(24 * time.Hour),
		KeyUsage:       x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// detectCMSOf returns the CMS object in an S/MIME message's base64 body.
func detectCMSOf(t *testing.T, body []byte) []byte {
	t.Helper()
	der, err := base64.StdEncoding.DecodeString(strings.NewReplacer("\r", "", "\n", "").Replace(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestAlreadyEncryptedOpenSSL(t *testing.T) {
	openssl := lookTool(t, "openssl")
	logVersion(t, openssl, "version")
	dir := t.TempDir()
	rsaCert, rsaKey := detectCert(t, dir, "rsa", false)
	ecCert, ecKey := detectCert(t, dir, "ec", true)
	in := filepath.Join(dir, "msg.txt")
	if err := os.WriteFile(in, []byte(detectSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	cms := func(t *testing.T, args ...string) []byte {
		t.Helper()
		out, stderr, err := runTool(dir, nil, openssl, append([]string{"cms"}, args...)...)
		if err != nil {
			t.Fatalf("openssl cms %s: %v\n%s", strings.Join(args, " "), err, stderr)
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		args   []string
		kind   string // smime-type openssl writes
		stream bool   // BER with indefinite lengths
		certs  [][2]string
	}{
		{"EnvelopedData DER, RSA", []string{"-aes256", rsaCert}, "enveloped-data", false, [][2]string{{rsaCert, rsaKey}}},
		{"EnvelopedData BER -stream, RSA", []string{"-stream", "-aes256", rsaCert}, "enveloped-data", true, [][2]string{{rsaCert, rsaKey}}},
		{"EnvelopedData DER, ECDH", []string{"-aes128", ecCert}, "enveloped-data", false, [][2]string{{ecCert, ecKey}}},
		{"EnvelopedData BER -stream, RSA and ECDH", []string{"-stream", "-aes256", rsaCert, ecCert}, "enveloped-data", true, [][2]string{{rsaCert, rsaKey}, {ecCert, ecKey}}},
		{"AuthEnvelopedData DER, RSA", []string{"-aes-256-gcm", rsaCert}, "authEnveloped-data", false, [][2]string{{rsaCert, rsaKey}}},
		{"AuthEnvelopedData BER -stream, RSA and ECDH", []string{"-stream", "-aes-256-gcm", rsaCert, ecCert}, "authEnveloped-data", true, [][2]string{{rsaCert, rsaKey}, {ecCert, ecKey}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := cms(t, append([]string{"-encrypt", "-in", in}, tc.args...)...)
			// It is genuine: each recipient decrypts it.
			for _, ck := range tc.certs {
				out, stderr, err := runTool(dir, msg, openssl, "cms", "-decrypt", "-recip", ck[0], "-inkey", ck[1])
				if err != nil || !bytes.Equal(bytes.ReplaceAll(out, []byte("\r\n"), []byte("\n")), []byte(strings.ReplaceAll(detectSecret, "\r\n", "\n"))) {
					t.Fatalf("openssl cms -decrypt: %v %q\n%s", err, out, stderr)
				}
			}
			fields, body := Split(msg)
			if ct, _ := get(fields, "Content-Type"); !strings.Contains(ct, "smime-type="+tc.kind) {
				t.Fatalf("openssl wrote Content-Type %q, want smime-type=%s", ct, tc.kind)
			}
			der := detectCMSOf(t, body)
			if indefinite := len(der) > 1 && der[1] == 0x80; indefinite != tc.stream {
				t.Fatalf("outer length indefinite: %v, want %v", indefinite, tc.stream)
			}
			if !AlreadyEncrypted(fields, body) {
				t.Fatalf("openssl's %s is not already encrypted:\n%s", tc.name, msg)
			}
			// The same object under the other names S/MIME goes by; the
			// name does not matter, the content does.
			for _, ct := range []string{
				"application/pkcs7-mime",
				"application/x-pkcs7-mime; smime-type=" + tc.kind,
				`application/octet-stream; name="smime.p7m"`,
				`application/octet-stream; name="letter.bin"`,
			} {
				f := []Field{{"MIME-Version", "1.0"}, {"Content-Type", ct}, {"Content-Transfer-Encoding", "base64"}}
				if !AlreadyEncrypted(f, body) {
					t.Errorf("as %s: not already encrypted", ct)
				}
			}
			// Each change below makes it doubtful or readable.
			other := "enveloped-data"
			if tc.kind == "enveloped-data" {
				other = "authEnveloped-data"
			}
			setCT := func(v string) []Field {
				f := append([]Field(nil), fields...)
				for i := range f {
					if strings.EqualFold(f[i].Name, "Content-Type") {
						f[i].Value = v
					}
				}
				return f
			}
			trunc := detectCMSOf(t, body)
			trunc = trunc[:len(trunc)-2]
			flipped := detectCMSOf(t, body)
			flipped[bytes.Index(flipped, oidEnvelopedData[:7])+8] ^= 0x7F // the OID's last arc
			b64 := func(b []byte) []byte { return []byte(base64.StdEncoding.EncodeToString(b) + "\r\n") }
			for _, bad := range []struct {
				name   string
				fields []Field
				body   []byte
			}{
				{"smime-type=signed-data", setCT("application/pkcs7-mime; smime-type=signed-data; name=smime.p7m"), body},
				{"smime-type of the other kind", setCT("application/pkcs7-mime; smime-type=" + other), body},
				{"smime-type twice, differing", setCT("application/pkcs7-mime; smime-type=" + tc.kind + "; smime-type=" + other), body},
				{"a second Content-Type", append(append([]Field(nil), fields...), Field{"Content-Type", "text/plain"}), body},
				{"a second Content-Transfer-Encoding", append(append([]Field(nil), fields...), Field{"Content-Transfer-Encoding", "base64"}), body},
				{"no transfer encoding", []Field{{"Content-Type", "application/pkcs7-mime"}}, body},
				{"as text/plain", setCT("text/plain"), body},
				{"clear text after the base64", fields, append(bytes.Clone(body), "\r\nThe launch code is 1234.\r\n"...)},
				{"bytes after the CMS object", fields, b64(append(detectCMSOf(t, body), 0, 0, 0))},
				{"the CMS object cut short", fields, b64(trunc)},
				{"another content type OID", fields, b64(flipped)},
			} {
				if AlreadyEncrypted(bad.fields, bad.body) {
					t.Errorf("%s: still already encrypted", bad.name)
				}
			}
		})
	}
	t.Run("signed only", func(t *testing.T) {
		msg := cms(t, "-sign", "-nodetach", "-in", in, "-signer", rsaCert, "-inkey", rsaKey)
		fields, body := Split(msg)
		if AlreadyEncrypted(fields, body) {
			t.Errorf("signed-only S/MIME (readable by anyone) is already encrypted:\n%s", msg)
		}
		for _, ct := range []string{"application/pkcs7-mime", "application/pkcs7-mime; smime-type=enveloped-data", `application/octet-stream; name="smime.p7m"`} {
			f := []Field{{"Content-Type", ct}, {"Content-Transfer-Encoding", "base64"}}
			if AlreadyEncrypted(f, body) {
				t.Errorf("signed data labelled %s is already encrypted", ct)
			}
		}
	})
}

func TestAlreadyEncryptedGnuPG(t *testing.T) {
	gpg := lookTool(t, "gpg")
	gpgconf := lookTool(t, "gpgconf")
	logVersion(t, gpg, "--version")
	home := gpgHome(t, gpgconf)
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	common := []string{"--homedir", home, "--batch", "--yes", "--no-tty", "--pinentry-mode", "loopback",
		"--disable-dirmngr", "--no-auto-key-retrieve", "--no-auto-key-locate", "--trust-model", "always"}
	run := func(t *testing.T, stdin []byte, args ...string) []byte {
		t.Helper()
		out, stderr, err := runTool(home, stdin, gpg, append(common, args...)...)
		if err != nil {
			t.Fatalf("gpg %s: %v\n%s", strings.Join(args, " "), err, stderr)
		}
		return out
	}
	run(t, testkeys.ArmoredSecret(t, alice), "--import")
	secret := []byte("The launch code is 1234.\n")
	for _, tc := range []struct {
		name string
		args []string
		want bool
	}{
		{"public-key encrypted", []string{"--encrypt", "--armor", "-r", "alice@example.org"}, true},
		{"public-key encrypted, with comment and version headers", []string{"--encrypt", "--armor", "--emit-version", "--comment", "made by gpg", "-r", "alice@example.org"}, true},
		{"public-key encrypted, uncompressed", []string{"--encrypt", "--armor", "-z", "0", "-r", "alice@example.org"}, true},
		{"public-key encrypted, large (partial lengths)", []string{"--encrypt", "--armor", "-z", "0", "-r", "alice@example.org"}, true},
		{"passphrase encrypted", []string{"--symmetric", "--armor", "--passphrase", "correct horse"}, true},
		{"passphrase and public key", []string{"--symmetric", "--encrypt", "--armor", "--passphrase", "correct horse", "-r", "alice@example.org"}, true},
		{"stored, not encrypted", []string{"--store", "--armor"}, false},
		{"stored and compressed, not encrypted", []string{"--store", "--armor", "-z", "6"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := secret
			if strings.Contains(tc.name, "large") {
				in = bytes.Repeat(secret, 40000) // 1 MB, beyond one definite-length chunk
			}
			armoured := run(t, in, tc.args...)
			if strings.Contains(tc.name, "large") {
				// gpg streams it: the encrypted data has partial lengths.
				blk, err := armor.Decode(bytes.NewReader(armoured))
				if err != nil {
					t.Fatal(err)
				}
				data, _ := io.ReadAll(blk.Body)
				_, _, rest, ok := nextPacket(data)
				if !ok || len(rest) < 2 || rest[0] != 0xC0|tagSEIPD || rest[1] < 224 || rest[1] == 255 {
					t.Fatalf("gpg's encrypted data does not start with a partial length: % x", rest[:min(len(rest), 8)])
				}
			}
			// What passes is genuine: gpg decrypts it (with alice's key or
			// the passphrase).
			if tc.want {
				if out := run(t, armoured, "--decrypt", "--passphrase", "correct horse"); !bytes.Equal(out, in) {
					t.Fatalf("gpg --decrypt gives %d bytes, want the %d sent", len(out), len(in))
				}
			}
			inline := []Field{{"Content-Type", "text/plain; charset=us-ascii"}}
			if got := AlreadyEncrypted(inline, armoured); got != tc.want {
				t.Errorf("inline: AlreadyEncrypted = %v, want %v\n%.400s", got, tc.want, armoured)
			}
			h, b := detectPGPMIME(strings.ReplaceAll(string(armoured), "\n", "\r\n"))
			f, body := detectMessage(t, h, b)
			if got := AlreadyEncrypted(f, body); got != tc.want {
				t.Errorf("PGP/MIME: AlreadyEncrypted = %v, want %v", got, tc.want)
			}
			if tc.want {
				if AlreadyEncrypted(inline, append(bytes.Clone(armoured), "The launch code is 1234.\n"...)) {
					t.Errorf("inline with text after it: still already encrypted")
				}
			}
		})
	}
}
