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
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"lacre.io/milter/crypto/smime/smimetest"
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

// party is a recipient's certificate and key written to a directory.
type party struct {
	c                 *smimetest.Cert
	certPath, keyPath string
}

func newParty(t *testing.T, dir string, kind smimetest.KeyKind) party {
	t.Helper()
	name := strings.ToLower(strings.ReplaceAll(kind.String(), "-", ""))
	c := smimetest.New(t, smimetest.Spec{Key: kind, Addresses: []string{name + "@example.org"}, CommonName: "Interop " + kind.String(),
		SubjectKeyID: []byte("ski-" + name)})
	p := party{c: c, certPath: filepath.Join(dir, name+".crt"), keyPath: filepath.Join(dir, name+".key")}
	if err := os.WriteFile(p.certPath, c.PEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.keyPath, c.KeyPEM(t), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func logTool(t *testing.T, path string, args ...string) string {
	t.Helper()
	out, stderr, err := smimetest.Run(t.TempDir(), nil, nil, path, args...)
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", path, args, err, stderr)
	}
	line, _, _ := strings.Cut(string(append(out, stderr...)), "\n")
	t.Logf("%s: %s", filepath.Base(path), line)
	return line
}

// opensslDecrypt decrypts a DER CMS object (or, with smimeFormat, an
// S/MIME entity) with openssl cms.
func opensslDecrypt(t *testing.T, openssl, dir string, p party, in []byte, smimeFormat bool) ([]byte, []byte, error) {
	t.Helper()
	inform := "DER"
	if smimeFormat {
		inform = "SMIME"
	}
	f := writeFile(t, dir, "msg", in)
	return smimetest.Run(dir, nil, nil, openssl, "cms", "-decrypt", "-binary", "-inform", inform, "-in", f,
		"-recip", p.certPath, "-inkey", p.keyPath)
}

// TestInteropOpenSSL: every option, for RSA-2048, RSA-4096 and P-256
// (and P-384, P-521, which the certificate rules also admit), alone and
// all recipients in one message, decrypts with openssl cms to the
// identical entity.
func TestInteropOpenSSL(t *testing.T) {
	openssl := smimetest.Tool(t, "openssl")
	logTool(t, openssl, "version")
	dir := t.TempDir()
	var parties []party
	var all []*x509.Certificate
	kinds := append(slices.Clone(interopKinds), smimetest.P384, smimetest.P521)
	for _, kind := range kinds {
		p := newParty(t, dir, kind)
		parties = append(parties, p)
		all = append(all, p.c.Cert)
	}
	for i, kind := range kinds {
		for _, opts := range interopOptions(kind) {
			t.Run(kind.String()+"/"+opts.name(), func(t *testing.T) {
				for _, to := range [][]*x509.Certificate{{all[i]}, all} {
					der, err := Encrypt([]byte(interopInner), to, opts)
					if err != nil {
						t.Fatal(err)
					}
					out, stderr, err := opensslDecrypt(t, openssl, t.TempDir(), parties[i], der, false)
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
			out, stderr, err := opensslDecrypt(t, openssl, t.TempDir(), p, msg, true)
			if err != nil || string(out) != interopInner {
				t.Errorf("%v entity, %s: %v %q\n%s", opts.Cipher, p.c.Cert.Subject.CommonName, err, out, stderr)
			}
		}
	}
}

// gpgsmHome makes a GnuPG home with p's PKCS #12 imported (empty
// passphrase, loopback pinentry, no dirmngr) and returns it with a
// decrypt function. The home has a short path because gpg-agent's socket
// lives in it; the agent is killed at cleanup.
func gpgsmHome(t *testing.T, gpgsm string, p party) func(der []byte) ([]byte, []byte, error) {
	t.Helper()
	gpgconf := smimetest.Tool(t, "gpgconf")
	home, err := os.MkdirTemp("", "s")
	if err == nil && len(home) > 64 {
		os.Remove(home)
		home, err = os.MkdirTemp("/tmp", "s")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, stderr, err := smimetest.Run(home, nil, nil, gpgconf, "--homedir", home, "--kill", "all"); err != nil {
			t.Errorf("gpgconf --kill all: %v\n%s", err, stderr)
		}
		os.RemoveAll(home)
	})
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, home, "gpg-agent.conf", []byte("allow-loopback-pinentry\n"))
	writeFile(t, home, "gpgsm.conf", []byte("disable-dirmngr\ndisable-crl-checks\n"))
	env := []string{"GNUPGHOME=" + home}
	p12 := smimetest.PKCS12(t, p.c, home, "recipient", true)
	base := []string{"--homedir", home, "--batch", "--pinentry-mode", "loopback", "--passphrase-fd", "0"}
	if _, stderr, err := smimetest.Run(home, []byte("\n\n\n"), env, gpgsm, append(base, "--import", p12)...); err != nil {
		t.Fatalf("gpgsm --import: %v\n%s", err, stderr)
	}
	out, stderr, err := smimetest.Run(home, nil, env, gpgsm, "--homedir", home, "--batch", "--list-secret-keys")
	if err != nil || !bytes.Contains(out, []byte(p.c.Cert.Subject.CommonName)) {
		t.Fatalf("gpgsm holds no secret key after the import: %v\n%s%s", err, out, stderr)
	}
	return func(der []byte) ([]byte, []byte, error) {
		f := writeFile(t, home, "msg.p7m", der)
		return smimetest.Run(home, []byte("\n"), env, gpgsm, append(base, "--decrypt", f)...)
	}
}

// nssDB makes an NSS database with an empty password holding p's PKCS #12
// and returns a decrypt function using cmsutil -D.
func nssDB(t *testing.T, p party) func(der []byte) ([]byte, []byte, error) {
	t.Helper()
	certutil := smimetest.Tool(t, "certutil")
	pk12util := smimetest.Tool(t, "pk12util")
	cmsutil := smimetest.Tool(t, "cmsutil")
	dir := t.TempDir()
	db := "sql:" + filepath.Join(dir, "db")
	if err := os.Mkdir(filepath.Join(dir, "db"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := smimetest.Run(dir, nil, nil, certutil, "-N", "-d", db, "--empty-password"); err != nil {
		t.Fatalf("certutil -N: %v\n%s", err, stderr)
	}
	p12 := smimetest.PKCS12(t, p.c, dir, "recipient", false)
	if out, stderr, err := smimetest.Run(dir, nil, nil, pk12util, "-i", p12, "-d", db, "-W", "", "-K", ""); err != nil {
		t.Fatalf("pk12util -i: %v\n%s%s", err, out, stderr)
	}
	return func(der []byte) ([]byte, []byte, error) {
		f := writeFile(t, dir, "msg.p7m", der)
		return smimetest.Run(dir, nil, nil, cmsutil, "-D", "-d", db, "-p", "", "-i", f)
	}
}

// TestInteropGpgsm: the default options decrypt with gpgsm, for both RSA
// sizes, alone and with an EC recipient in the same message.
func TestInteropGpgsm(t *testing.T) {
	gpgsm := smimetest.Tool(t, "gpgsm")
	logTool(t, gpgsm, "--version")
	interopDefault(t, true, func(t *testing.T, p party) func([]byte) ([]byte, []byte, error) { return gpgsmHome(t, gpgsm, p) })
}

// TestInteropNSS: the default options decrypt with NSS's cmsutil, to one
// recipient or several RSA ones. (NSS 3.87 cannot decode a message that
// also has an ECDH recipient: TestInteropReaderClaims.)
func TestInteropNSS(t *testing.T) {
	smimetest.Tool(t, "cmsutil")
	interopDefault(t, false, nssDB)
}

// interopDefault encrypts with the default options to an RSA-2048 and an
// RSA-4096 recipient, alone and together with another recipient (a P-256
// one when mixedEC, else an RSA-2048 one), and decrypts with reader.
func interopDefault(t *testing.T, mixedEC bool, reader func(*testing.T, party) func([]byte) ([]byte, []byte, error)) {
	other := smimetest.New(t, smimetest.Spec{Key: smimetest.RSA2048, Addresses: []string{"other@example.org"}})
	if mixedEC {
		other = smimetest.New(t, smimetest.Spec{Key: smimetest.P256, Addresses: []string{"other@example.org"}})
	}
	for _, kind := range []smimetest.KeyKind{smimetest.RSA2048, smimetest.RSA4096} {
		t.Run(kind.String(), func(t *testing.T) {
			p := newParty(t, t.TempDir(), kind)
			decrypt := reader(t, p)
			for _, to := range [][]*x509.Certificate{{p.c.Cert}, {other.Cert, p.c.Cert}} {
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
func readerMatrix(t *testing.T, kinds []smimetest.KeyKind, reader func(*testing.T, party) func([]byte) ([]byte, []byte, error)) map[string]bool {
	got := map[string]bool{}
	for _, kind := range kinds {
		p := newParty(t, t.TempDir(), kind)
		decrypt := reader(t, p)
		for _, opts := range interopOptions(kind) {
			der, err := Encrypt([]byte(interopInner), []*x509.Certificate{p.c.Cert}, opts)
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
		v := logTool(t, gpgsm, "--version")
		v = v[strings.LastIndexByte(v, ' ')+1:]
		got := readerMatrix(t, readerClaims["gpgsm"].kinds, func(t *testing.T, p party) func([]byte) ([]byte, []byte, error) { return gpgsmHome(t, gpgsm, p) })
		checkClaims(t, "gpgsm", v, got)
	})
	t.Run("nss", func(t *testing.T) {
		v := nssVersion(t)
		got := readerMatrix(t, readerClaims["nss"].kinds, nssDB)
		checkClaims(t, "nss", v, got)
		// An RSA recipient of a message that also has an ECDH recipient.
		p := newParty(t, t.TempDir(), smimetest.RSA2048)
		ec := smimetest.New(t, smimetest.Spec{Key: smimetest.P256, Addresses: []string{"ec@example.org"}})
		der, err := Encrypt([]byte(interopInner), []*x509.Certificate{p.c.Cert, ec.Cert}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		out, stderr, err := nssDB(t, p)(der)
		mixed := err == nil && string(out) == interopInner
		t.Logf("RSA recipient of a message with an ECDH recipient: reads=%v %s", mixed, bytes.TrimSpace(stderr))
		if strings.HasPrefix(v, readerClaims["nss"].version) && mixed {
			t.Errorf("NSS %s now reads a message with an ECDH recipient: update docs/smime.md", v)
		}
	})
}

// nssVersion asks dpkg for the version of libnss3 (NSS's tools print
// none); "" when that cannot be known.
func nssVersion(t *testing.T) string {
	dpkg, err := exec.LookPath("dpkg-query")
	if err != nil {
		return ""
	}
	out, _, err := smimetest.Run(t.TempDir(), nil, nil, dpkg, "-W", "-f", "${Version}", "libnss3")
	if err != nil {
		return ""
	}
	v := string(out)
	if _, after, ok := strings.Cut(v, ":"); ok {
		v = after // the Debian epoch, "2:3.87.1-1+deb12u4"
	}
	t.Logf("libnss3 %s", v)
	return v
}
