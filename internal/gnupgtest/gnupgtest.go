// Package gnupgtest makes GnuPG home directories with the gpg binary, as
// a gpg-mailgate installation has them: public keys only, in a keybox
// (pubring.kbx) or a legacy keyring (pubring.gpg). The keys are made in a
// separate scratch home, which keeps their secret halves for decryption.
package gnupgtest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

// Home is a GnuPG home directory holding public keys.
type Home struct {
	t      testing.TB
	Dir    string // the home, as gpg-mailgate's [gpg] keyhome
	Legacy bool   // pubring.gpg instead of pubring.kbx
	keygen string // scratch home with the secret keys
}

// New makes an empty home. Without gpg the test is skipped, or fails
// when CI is set.
func New(t testing.TB, legacy bool) *Home {
	t.Helper()
	if _, err := exec.LookPath("gpg"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("gpg is not installed (CI is set: a missing tool is a failure): %v", err)
		}
		t.Skipf("gpg is not installed: %v", err)
	}
	h := &Home{t: t, Dir: shortTemp(t, "home"), Legacy: legacy, keygen: shortTemp(t, "keygen")}
	t.Cleanup(func() {
		for _, d := range []string{h.keygen, h.Dir} {
			exec.Command("gpgconf", "--homedir", d, "--kill", "all").Run()
		}
	})
	return h
}

// shortTemp is a private directory with a short path: gpg-agent's socket
// path must fit in 108 bytes.
func shortTemp(t testing.TB, name string) string {
	d, err := os.MkdirTemp("", "gt-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}

// run runs gpg on the scratch home.
func (h *Home) run(stdin []byte, args ...string) []byte {
	h.t.Helper()
	return Run(h.t, h.keygen, stdin, args...)
}

// Run runs gpg with --homedir dir and returns its standard output.
func Run(t testing.TB, dir string, stdin []byte, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	all := append([]string{"--homedir", dir, "--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)
	cmd := exec.CommandContext(ctx, "gpg", all...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("gpg %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.Bytes()
}

// Key makes a key with User ID uid (Ed25519 primary, Curve25519
// encryption subkey), valid for life from created ("never" or gpg's
// "1y", "30d"), adds it to the home and returns its fingerprint. A zero
// created means now.
func (h *Home) Key(uid string, created time.Time, life string) string {
	h.t.Helper()
	var faked []string
	if !created.IsZero() {
		// "!" freezes gpg's clock there: a running faked clock could
		// pass the next second during key generation, and the subkey
		// command, faked to the same start, would then find the primary
		// key "created 1 second in the future" and fail (seen in CI).
		faked = []string{"--faked-system-time", created.UTC().Format("20060102T150405") + "!"}
	}
	h.run(nil, append(faked, "--quick-gen-key", uid, "ed25519", "sign", life)...)
	fpr := h.fingerprint(uid)
	h.run(nil, append(faked, "--quick-add-key", fpr, "cv25519", "encr", life)...)
	h.sync(fpr)
	return fpr
}

// AddUserID adds a User ID to the key and updates the home.
func (h *Home) AddUserID(fpr, uid string) {
	h.t.Helper()
	h.run(nil, "--quick-add-uid", fpr, uid)
	h.sync(fpr)
}

// RevokeUserID revokes one User ID of the key and updates the home.
func (h *Home) RevokeUserID(fpr, uid string) {
	h.t.Helper()
	h.run(nil, "--quick-revoke-uid", fpr, uid)
	h.sync(fpr)
}

// SetExpiry gives the key a new expiry (a new self-signature) and updates
// the home.
func (h *Home) SetExpiry(fpr, life string) {
	h.t.Helper()
	h.run(nil, "--quick-set-expire", fpr, life)
	h.sync(fpr)
}

// Revoke revokes the key with the revocation certificate gpg made with
// it, and updates the home.
func (h *Home) Revoke(fpr string) {
	h.t.Helper()
	rev, err := os.ReadFile(filepath.Join(h.keygen, "openpgp-revocs.d", fpr+".rev"))
	if err != nil {
		h.t.Fatal(err)
	}
	// gpg prefixes the armour with ":" so that it is not imported by accident.
	rev = bytes.ReplaceAll(rev, []byte("\n:-----BEGIN"), []byte("\n-----BEGIN"))
	h.run(rev, "--import")
	h.sync(fpr)
}

// Public returns the key's public certificate, ASCII-armoured.
func (h *Home) Public(fpr string) []byte {
	h.t.Helper()
	return h.run(nil, "--export", "--armor", fpr)
}

// Secret returns the key with its secret parts, for decrypting.
func (h *Home) Secret(fpr string) *openpgp.Entity {
	h.t.Helper()
	data := h.run(nil, "--export-secret-keys", fpr)
	el, err := openpgp.ReadKeyRing(bytes.NewReader(data))
	if err != nil || len(el) != 1 {
		h.t.Fatalf("reading the secret key %s: %v (%d keys)", fpr, err, len(el))
	}
	return el[0]
}

func (h *Home) fingerprint(uid string) string {
	h.t.Helper()
	out := h.run(nil, "--with-colons", "--fixed-list-mode", "--list-keys", "="+uid)
	var fpr string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Split(l, ":")
		if f[0] == "fpr" && len(f) > 9 {
			fpr = f[9] // the last key made for uid
			break
		}
	}
	if fpr == "" {
		h.t.Fatalf("no key for %q:\n%s", uid, out)
	}
	return fpr
}

// sync copies the key's public certificate into the home, in the home's format.
func (h *Home) sync(fpr string) {
	h.t.Helper()
	pub := h.run(nil, "--export", fpr)
	args := []string{"--import"}
	if h.Legacy {
		args = []string{"--no-default-keyring", "--keyring", "gnupg-ring:" + filepath.Join(h.Dir, "pubring.gpg"), "--import"}
	}
	Run(h.t, h.Dir, pub, args...)
}
