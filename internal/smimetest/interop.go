package smimetest

// The harness of the interoperability tests (crypto/smime and package
// crypto's EncryptSMIME): recipients written to files, and decryption
// with OpenSSL (openssl cms), GnuPG (gpgsm) and NSS (cmsutil, the library
// Thunderbird uses).

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Party is a recipient's certificate and key written to a directory.
type Party struct {
	C                 *Cert
	CertPath, KeyPath string
}

// NewParty makes a certificate of kind (with a subject key identifier)
// and writes it and its key, in PEM, into dir.
func NewParty(t *testing.T, dir string, kind KeyKind) Party {
	t.Helper()
	name := strings.ToLower(strings.ReplaceAll(kind.String(), "-", ""))
	c := New(t, Spec{Key: kind, Addresses: []string{name + "@example.org"}, CommonName: "Interop " + kind.String(),
		SubjectKeyID: []byte("ski-" + name)})
	p := Party{C: c, CertPath: filepath.Join(dir, name+".crt"), KeyPath: filepath.Join(dir, name+".key")}
	if err := os.WriteFile(p.CertPath, c.PEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.KeyPath, c.KeyPEM(t), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// WriteFile writes data to dir/name and returns the path.
func WriteFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// LogTool runs a tool (its version, typically) and logs and returns the
// first line it prints.
func LogTool(t *testing.T, path string, args ...string) string {
	t.Helper()
	out, stderr, err := Run(t.TempDir(), nil, nil, path, args...)
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", path, args, err, stderr)
	}
	line, _, _ := strings.Cut(string(append(out, stderr...)), "\n")
	t.Logf("%s: %s", filepath.Base(path), line)
	return line
}

// OpenSSLDecrypt decrypts a DER CMS object (or, with smimeFormat, an
// S/MIME entity) with openssl cms.
func OpenSSLDecrypt(t *testing.T, openssl, dir string, p Party, in []byte, smimeFormat bool) ([]byte, []byte, error) {
	t.Helper()
	inform := "DER"
	if smimeFormat {
		inform = "SMIME"
	}
	f := WriteFile(t, dir, "msg", in)
	return Run(dir, nil, nil, openssl, "cms", "-decrypt", "-binary", "-inform", inform, "-in", f,
		"-recip", p.CertPath, "-inkey", p.KeyPath)
}

// GpgsmReader makes a GnuPG home with p's PKCS #12 imported (empty
// passphrase, loopback pinentry, no dirmngr) and returns it with a
// decrypt function. The home has a short path because gpg-agent's socket
// lives in it; the agent is killed at cleanup.
func GpgsmReader(t *testing.T, gpgsm string, p Party) func(der []byte) ([]byte, []byte, error) {
	t.Helper()
	gpgconf := Tool(t, "gpgconf")
	home, err := os.MkdirTemp("", "s")
	if err == nil && len(home) > 64 {
		os.Remove(home)
		home, err = os.MkdirTemp("/tmp", "s")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, stderr, err := Run(home, nil, nil, gpgconf, "--homedir", home, "--kill", "all"); err != nil {
			t.Errorf("gpgconf --kill all: %v\n%s", err, stderr)
		}
		os.RemoveAll(home)
	})
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	WriteFile(t, home, "gpg-agent.conf", []byte("allow-loopback-pinentry\n"))
	WriteFile(t, home, "gpgsm.conf", []byte("disable-dirmngr\ndisable-crl-checks\n"))
	env := []string{"GNUPGHOME=" + home}
	p12 := PKCS12Password(t, p.C, home, "recipient", true, "test")
	base := []string{"--homedir", home, "--batch", "--pinentry-mode", "loopback", "--passphrase-fd", "0"}
	// gpgsm reads one passphrase and uses it for every prompt: the PKCS
	// #12 password, and then that of its own store of the key, so the
	// decryption below gives it again.
	if _, stderr, err := Run(home, []byte("test\n"), env, gpgsm, append(base, "--import", p12)...); err != nil {
		t.Fatalf("gpgsm --import: %v\n%s", err, stderr)
	}
	out, stderr, err := Run(home, nil, env, gpgsm, "--homedir", home, "--batch", "--list-secret-keys")
	if err != nil || !bytes.Contains(out, []byte(p.C.Cert.Subject.CommonName)) {
		t.Fatalf("gpgsm holds no secret key after the import: %v\n%s%s", err, out, stderr)
	}
	return func(der []byte) ([]byte, []byte, error) {
		f := WriteFile(t, home, "msg.p7m", der)
		return Run(home, []byte("test\n"), env, gpgsm, append(base, "--decrypt", f)...)
	}
}

// NSSReader makes an NSS database with an empty password holding p's PKCS #12
// and returns a decrypt function using cmsutil -D.
func NSSReader(t *testing.T, p Party) func(der []byte) ([]byte, []byte, error) {
	t.Helper()
	certutil := Tool(t, "certutil")
	pk12util := Tool(t, "pk12util")
	cmsutil := Tool(t, "cmsutil")
	dir := t.TempDir()
	db := "sql:" + filepath.Join(dir, "db")
	if err := os.Mkdir(filepath.Join(dir, "db"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := Run(dir, nil, nil, certutil, "-N", "-d", db, "--empty-password"); err != nil {
		t.Fatalf("certutil -N: %v\n%s", err, stderr)
	}
	p12 := PKCS12(t, p.C, dir, "recipient", false)
	if out, stderr, err := Run(dir, nil, nil, pk12util, "-i", p12, "-d", db, "-W", "", "-K", ""); err != nil {
		t.Fatalf("pk12util -i: %v\n%s%s", err, out, stderr)
	}
	return func(der []byte) ([]byte, []byte, error) {
		f := WriteFile(t, dir, "msg.p7m", der)
		return Run(dir, nil, nil, cmsutil, "-D", "-d", db, "-p", "", "-i", f)
	}
}

// NSSVersion asks dpkg for the version of libnss3 (NSS's tools print
// none); "" when that cannot be known.
func NSSVersion(t *testing.T) string {
	dpkg, err := exec.LookPath("dpkg-query")
	if err != nil {
		return ""
	}
	out, _, err := Run(t.TempDir(), nil, nil, dpkg, "-W", "-f", "${Version}", "libnss3")
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
