package smime

// Interoperability with S/MIME implementations we did not write: OpenSSL
// (openssl cms), GnuPG (gpgsm) and NSS (cmsutil, the library Thunderbird
// uses). Certificates and keys are made in the test (crypto/smime/
// smimetest) and written to temporary directories only; none is committed.
// A missing tool skips its test, except under CI (CI set), where it fails.
//
// What each reader can open (docs/smime.md has the table):
//
//   - OpenSSL 3.0 reads every option, for RSA-2048, RSA-4096 and P-256.
//   - gpgsm 2.2.40 (Debian 12) and NSS 3.87 (Debian 12) read the default
//     (RSA PKCS #1 v1.5 + AES-256-CBC). readerClaims records what they
//     refuse; TestInteropReaderClaims checks it on those versions.

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"testing"

	"lacre.io/milter/internal/smimetest"
)

// interopInner is the entity every reader must give back byte for byte:
// CRLF line ends, 8-bit text, a line of exactly 76 characters, a final
// line without a line end, and a length not a multiple of 16.
const interopInner = "Content-Type: text/plain; charset=utf-8\r\n" +
	"Content-Transfer-Encoding: 8bit\r\n" +
	"Content-Disposition: inline\r\n\r\n" +
	"Grüße aus Köln — S/MIME interop.\r\n" +
	"0123456789012345678901234567890123456789012345678901234567890123456789012345\r\n" +
	"\r\n" +
	"last line without a line end"

// interopKinds are the certificate keys the issue names.
var interopKinds = []smimetest.KeyKind{smimetest.RSA2048, smimetest.RSA4096, smimetest.P256}

// interopOptions returns every option that applies to a key kind: both
// ciphers, both paddings for RSA, and both recipient identifiers.
func interopOptions(kind smimetest.KeyKind) []Options {
	var out []Options
	for _, o := range allOptions() {
		if kind.EC() && o.RSAPadding != PKCS1v15 {
			continue // padding is an RSA choice; ECDH ignores it
		}
		out = append(out, o)
	}
	return out
}

// TestInteropOpenSSL: every option, for RSA-2048, RSA-4096 and P-256
// (and P-384, P-521, which the certificate rules also admit), alone and
// all recipients in one message, decrypts with openssl cms to the
// identical entity.
func TestInteropOpenSSL(t *testing.T) {
	openssl := smimetest.Tool(t, "openssl")
	smimetest.LogTool(t, openssl, "version")
	dir := t.TempDir()
	var parties []smimetest.Party
	var all []*x509.Certificate
	kinds := append(slices.Clone(interopKinds), smimetest.P384, smimetest.P521)
	for _, kind := range kinds {
		p := smimetest.NewParty(t, dir, kind)
		parties = append(parties, p)
		all = append(all, p.C.Cert)
	}
	for i, kind := range kinds {
		for _, opts := range interopOptions(kind) {
			t.Run(kind.String()+"/"+opts.name(), func(t *testing.T) {
				for _, to := range [][]*x509.Certificate{{all[i]}, all} {
					der, err := Encrypt([]byte(interopInner), to, opts)
					if err != nil {
						t.Fatal(err)
					}
					out, stderr, err := smimetest.OpenSSLDecrypt(t, openssl, t.TempDir(), parties[i], der, false)
					if err != nil {
						t.Fatalf("openssl cms -decrypt (%d recipients): %v\n%s", len(to), err, stderr)
					}
					if string(out) != interopInner {
						t.Fatalf("openssl cms -decrypt (%d recipients) gave\n%q\nwant\n%q", len(to), out, interopInner)
					}
				}
			})
		}
	}
	// The MIME entity itself, as a mail client receives it, in OpenSSL's
	// S/MIME parser.
	for _, opts := range []Options{{}, {Cipher: AES256GCM}} {
		ent, err := EncryptEntity([]byte(interopInner), all, opts)
		if err != nil {
			t.Fatal(err)
		}
		msg := append([]byte("MIME-Version: 1.0\r\n"), ent...)
		for _, p := range parties {
			out, stderr, err := smimetest.OpenSSLDecrypt(t, openssl, t.TempDir(), p, msg, true)
			if err != nil || string(out) != interopInner {
				t.Errorf("%v entity, %s: %v %q\n%s", opts.Cipher, p.C.Cert.Subject.CommonName, err, out, stderr)
			}
		}
	}
}

// TestInteropGpgsm: the default options decrypt with gpgsm, for both RSA
// sizes, alone and with an EC recipient in the same message.
func TestInteropGpgsm(t *testing.T) {
	gpgsm := smimetest.Tool(t, "gpgsm")
	smimetest.LogTool(t, gpgsm, "--version")
	interopDefault(t, true, func(t *testing.T, p smimetest.Party) func([]byte) ([]byte, []byte, error) {
		return smimetest.GpgsmReader(t, gpgsm, p)
	})
}

// TestInteropNSS: the default options decrypt with NSS's cmsutil, to one
// recipient or several RSA ones. (NSS 3.87 cannot decode a message that
// also has an ECDH recipient: TestInteropReaderClaims.)
func TestInteropNSS(t *testing.T) {
	smimetest.Tool(t, "cmsutil")
	interopDefault(t, false, smimetest.NSSReader)
}

// interopDefault encrypts with the default options to an RSA-2048 and an
// RSA-4096 recipient, alone and together with another recipient (a P-256
// one when mixedEC, else an RSA-2048 one), and decrypts with reader.
func interopDefault(t *testing.T, mixedEC bool, reader func(*testing.T, smimetest.Party) func([]byte) ([]byte, []byte, error)) {
	other := smimetest.New(t, smimetest.Spec{Key: smimetest.RSA2048, Addresses: []string{"other@example.org"}})
	if mixedEC {
		other = smimetest.New(t, smimetest.Spec{Key: smimetest.P256, Addresses: []string{"other@example.org"}})
	}
	for _, kind := range []smimetest.KeyKind{smimetest.RSA2048, smimetest.RSA4096} {
		t.Run(kind.String(), func(t *testing.T) {
			p := smimetest.NewParty(t, t.TempDir(), kind)
			decrypt := reader(t, p)
			for _, to := range [][]*x509.Certificate{{p.C.Cert}, {other.Cert, p.C.Cert}} {
				der, err := Encrypt([]byte(interopInner), to, Options{})
				if err != nil {
					t.Fatal(err)
				}
				out, stderr, err := decrypt(der)
				if err != nil {
					t.Fatalf("%d recipients: %v\n%s", len(to), err, stderr)
				}
				if string(out) != interopInner {
					t.Fatalf("%d recipients: got\n%q\nwant\n%q\n%s", len(to), out, interopInner, stderr)
				}
			}
		})
	}
}

// readerClaim is one measured fact: whether a reader opens an option.
type readerClaim struct {
	kind  smimetest.KeyKind
	opts  Options
	reads bool
}

func (c readerClaim) String() string { return fmt.Sprintf("%v %s", c.kind, c.opts.name()) }

// readerClaims is what gpgsm and NSS were measured to open, on the
// versions named (Debian 12): every option not listed as read is refused.
// On these versions TestInteropReaderClaims checks the lists both ways,
// so that docs/smime.md cannot go stale unnoticed; on other versions it
// logs what it finds.
var readerClaims = map[string]struct {
	version string
	kinds   []smimetest.KeyKind
	reads   []readerClaim
}{
	// gpgsm cannot import a P-256 PKCS #12 (2.2.40 crashes on the
	// 3DES form and cannot read the AES form) nor make an EC
	// certificate, so ECDH is not tried with it.
	"gpgsm": {"2.2.40", []smimetest.KeyKind{smimetest.RSA2048}, []readerClaim{
		{smimetest.RSA2048, Options{}, true},
	}},
	"nss": {"3.87", []smimetest.KeyKind{smimetest.RSA2048, smimetest.P256}, []readerClaim{
		{smimetest.RSA2048, Options{}, true},
		{smimetest.RSA2048, Options{SubjectKeyID: true}, true},
	}},
}

// readerMatrix tries every option with one recipient of each kind and
// returns which a reader opened to the identical entity.
func readerMatrix(t *testing.T, kinds []smimetest.KeyKind, reader func(*testing.T, smimetest.Party) func([]byte) ([]byte, []byte, error)) map[string]bool {
	got := map[string]bool{}
	for _, kind := range kinds {
		p := smimetest.NewParty(t, t.TempDir(), kind)
		decrypt := reader(t, p)
		for _, opts := range interopOptions(kind) {
			der, err := Encrypt([]byte(interopInner), []*x509.Certificate{p.C.Cert}, opts)
			if err != nil {
				t.Fatal(err)
			}
			out, stderr, err := decrypt(der)
			ok := err == nil && string(out) == interopInner
			c := readerClaim{kind: kind, opts: opts}
			got[c.String()] = ok
			line, _, _ := strings.Cut(strings.TrimSpace(string(stderr)), "\n")
			t.Logf("%-40s reads=%-5v %s", c, ok, line)
		}
	}
	return got
}

// checkClaims compares a measured matrix with readerClaims[name].
func checkClaims(t *testing.T, name, version string, got map[string]bool) {
	claim := readerClaims[name]
	if !strings.HasPrefix(version, claim.version) {
		t.Logf("%s %s is not the measured %s: not checking the claims (the log above is what this version reads)", name, version, claim.version)
		return
	}
	want := map[string]bool{}
	for _, c := range claim.reads {
		want[c.String()] = c.reads
	}
	for k, ok := range got {
		if ok != want[k] {
			t.Errorf("%s %s: %s reads=%v, but readerClaims (and docs/smime.md) say %v", name, version, k, ok, want[k])
		}
	}
}

// TestInteropReaderClaims checks what docs/smime.md says gpgsm and NSS
// cannot read: RSA-OAEP, AES-GCM, ECDH (NSS; gpgsm: see readerClaims),
// and subject key identifiers (gpgsm). For NSS it also checks that a
// message with an ECDH recipient cannot be decoded at all, not even by
// its RSA recipient: the reason S/MIME recipients with EC certificates
// must not share a ciphertext with NSS (Thunderbird) users.
func TestInteropReaderClaims(t *testing.T) {
	gpgsm := smimetest.Tool(t, "gpgsm")
	smimetest.Tool(t, "cmsutil")
	t.Run("gpgsm", func(t *testing.T) {
		v := smimetest.LogTool(t, gpgsm, "--version")
		v = v[strings.LastIndexByte(v, ' ')+1:]
		got := readerMatrix(t, readerClaims["gpgsm"].kinds, func(t *testing.T, p smimetest.Party) func([]byte) ([]byte, []byte, error) {
			return smimetest.GpgsmReader(t, gpgsm, p)
		})
		checkClaims(t, "gpgsm", v, got)
	})
	t.Run("nss", func(t *testing.T) {
		v := smimetest.NSSVersion(t)
		got := readerMatrix(t, readerClaims["nss"].kinds, smimetest.NSSReader)
		checkClaims(t, "nss", v, got)
		// An RSA recipient of a message that also has an ECDH recipient.
		p := smimetest.NewParty(t, t.TempDir(), smimetest.RSA2048)
		ec := smimetest.New(t, smimetest.Spec{Key: smimetest.P256, Addresses: []string{"ec@example.org"}})
		der, err := Encrypt([]byte(interopInner), []*x509.Certificate{p.C.Cert, ec.Cert}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		out, stderr, err := smimetest.NSSReader(t, p)(der)
		mixed := err == nil && string(out) == interopInner
		t.Logf("RSA recipient of a message with an ECDH recipient: reads=%v %s", mixed, bytes.TrimSpace(stderr))
		if strings.HasPrefix(v, readerClaims["nss"].version) && mixed {
			t.Errorf("NSS %s now reads a message with an ECDH recipient: update docs/smime.md", v)
		}
	})
}
