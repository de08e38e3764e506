package gpgmailgate_test

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/gpgmailgate"
	"lacre.io/milter/internal/smimetest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// certDir is a gpg-mailgate [smime] cert_path as register-handler.py
// left it: one PEM file per address, named by it, some of them things
// gpg-mailgate would have used without a second look.
type certDir struct {
	dir                  string
	alice, carol, frank  *smimetest.Cert
	mallory, old, secret *smimetest.Cert
}

func makeCertDir(t *testing.T) certDir {
	t.Helper()
	now := time.Now()
	d := certDir{dir: t.TempDir()}
	write := func(name string, data []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(d.dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d.alice = smimetest.New(t, smimetest.Spec{Addresses: []string{"alice@example.org"}})
	write("alice@example.org", d.alice.PEM())
	// register-handler.py kept the local part as written.
	d.carol = smimetest.New(t, smimetest.Spec{Addresses: []string{"carol@example.org"}, Key: smimetest.P256})
	write("Carol@example.org", d.carol.PEM())
	// A signer's certificate saved for whoever sent the signed mail.
	d.mallory = smimetest.New(t, smimetest.Spec{Addresses: []string{"mallory@example.net"}})
	write("dave@example.org", d.mallory.PEM())
	d.old = smimetest.New(t, smimetest.Spec{Addresses: []string{"old@example.org"}, NotBefore: now.AddDate(-2, 0, 0), NotAfter: now.AddDate(-1, 0, 0)})
	write("old@example.org", d.old.PEM())
	// A certificate with its private key, and a key alone.
	d.secret = smimetest.New(t, smimetest.Spec{Addresses: []string{"erin@example.org"}})
	write("erin@example.org", append(d.secret.PEM(), d.secret.KeyPEM(t)...))
	write("frank@example.org.key", d.secret.KeyPEM(t))
	// Neither is an address: gpg-mailgate never used them.
	write("README", []byte("certificates of our users\n"))
	if err := os.Mkdir(filepath.Join(d.dir, "archive"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A symbolic link to a certificate counts, as os.path.isfile says.
	d.frank = smimetest.New(t, smimetest.Spec{Addresses: []string{"frank@example.org"}, Key: smimetest.P384})
	write("frank.pem", d.frank.PEM())
	if err := os.Symlink("frank.pem", filepath.Join(d.dir, "frank@example.org")); err != nil {
		t.Fatal(err)
	}
	return d
}

func certFingerprint(t *testing.T, c *smimetest.Cert) string {
	t.Helper()
	kc, err := keys.ParseCertificate(c.Cert.Raw, "", keys.Normalizer{})
	if err != nil {
		t.Fatal(err)
	}
	return kc.Fingerprint
}

// TestImportCertDir: every file through the admission rules, with the
// address of its file name; dry run first, then the import, then again.
func TestImportCertDir(t *testing.T) {
	ctx := context.Background()
	d := makeCertDir(t)
	entries, err := gpgmailgate.ReadCertDir(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	s := newStore(t)
	want := []string{
		" skipped", " skipped", " skipped", // README, archive/, frank.pem
		"alice@example.org imported",
		"carol@example.org imported",
		"dave@example.org refused (address)",
		"erin@example.org refused (public-only)",
		"frank@example.org imported",
		"frank@example.org.key refused (public-only)",
		"old@example.org refused (expired)",
	}
	for _, dry := range []bool{true, false} {
		im := &gpgmailgate.Importer{Store: s, Policy: policy, DryRun: dry}
		rep, err := im.Run(ctx, entries)
		if err != nil {
			t.Fatal(err)
		}
		if got := outcomes(rep); !slices.Equal(got, want) {
			t.Errorf("dry run %v:\n got %q\nwant %q\n%s", dry, got, want, lines(rep))
		}
		if dry && len(bindings(t, s)) != 0 {
			t.Fatalf("the dry run changed the store")
		}
		t.Log(lines(rep))
	}
	for addr, c := range map[string]*smimetest.Cert{"alice@example.org": d.alice, "carol@example.org": d.carol, "frank@example.org": d.frank} {
		ks, err := s.KeysFor(ctx, addr)
		if err != nil || len(ks) != 1 || ks[0].Kind() != keys.KindX509 || ks[0].Fingerprint != certFingerprint(t, c) {
			t.Errorf("%s: %v %v", addr, ks, err)
		}
	}
	rep, err := (&gpgmailgate.Importer{Store: s, Policy: policy}).Run(ctx, entries)
	if err != nil {
		t.Fatal(err)
	}
	if n := rep.Count(gpgmailgate.Present); n != 3 || rep.Count(gpgmailgate.Imported) != 0 {
		t.Errorf("second import:\n%s", lines(rep))
	}
	text := lines(rep)
	for _, s := range []string{
		"dave@example.org: refused (address): file dave@example.org: key sha256:",
		"the certificate is not for dave@example.org (it names: mallory@example.net)",
		"-: skipped: file README: the file name is not an address",
		"-: skipped: file archive: a directory",
		"carol@example.org: already present: file Carol@example.org: ",
		"summary: imported 0, updated 0, unbound 0, already present 3, refused 4 (address 1, expired 1, public-only 2), skipped 3",
	} {
		if !strings.Contains(text, s) {
			t.Errorf("the report does not say %q:\n%s", s, text)
		}
	}
}

// TestImportCertDirKeepsOpenPGP: the certificates of an address and its
// OpenPGP keys do not compete: importing one kind never refuses or
// unbinds the other, with or without Replace; Replace replaces the
// address's other certificates.
func TestImportCertDirKeepsOpenPGP(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	pgp := keysParse(t, testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")))
	if err := keys.Admit(ctx, s, policy, keys.Admission{Address: "alice@example.org", Keys: pgp}, time.Now()); err != nil {
		t.Fatal(err)
	}
	first := smimetest.New(t, smimetest.Spec{Addresses: []string{"alice@example.org"}})
	second := smimetest.New(t, smimetest.Spec{Addresses: []string{"alice@example.org"}, KeyUsage: x509.KeyUsageKeyEncipherment})
	entry := func(c *smimetest.Cert) []gpgmailgate.Entry {
		return []gpgmailgate.Entry{{Origin: "file alice@example.org", Address: "alice@example.org", Data: c.PEM(), Certificate: true}}
	}
	fprs := func() []string {
		ks, err := s.KeysFor(ctx, "alice@example.org")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, k := range ks {
			out = append(out, k.Fingerprint)
		}
		return out
	}
	rep, err := (&gpgmailgate.Importer{Store: s, Policy: policy}).Run(ctx, entry(first))
	if err != nil || rep.Count(gpgmailgate.Imported) != 1 {
		t.Fatalf("beside an OpenPGP key: %v\n%s", err, lines(rep))
	}
	// Another certificate: refused without Replace, replaces with it,
	// and the OpenPGP key stays either way.
	rep, _ = (&gpgmailgate.Importer{Store: s, Policy: policy}).Run(ctx, entry(second))
	if rep.Count(gpgmailgate.Refused) != 1 || !strings.Contains(lines(rep), certFingerprint(t, first)) || strings.Contains(lines(rep), pgp[0].Fingerprint) {
		t.Errorf("another certificate without Replace:\n%s", lines(rep))
	}
	rep, _ = (&gpgmailgate.Importer{Store: s, Policy: policy, Replace: true}).Run(ctx, entry(second))
	if got, want := fprs(), []string{pgp[0].Fingerprint, certFingerprint(t, second)}; !slices.Equal(got, want) || rep.Count(gpgmailgate.Imported) != 1 {
		t.Errorf("with Replace: bound %v, want %v\n%s", got, want, lines(rep))
	}
	// gpg-mailgate-web saying "no key" for the address (Replace) removes
	// its OpenPGP key, not its certificate.
	rep, err = (&gpgmailgate.Importer{Store: s, Policy: policy, Replace: true}).Run(ctx,
		[]gpgmailgate.Entry{{Origin: "row 1", Address: "alice@example.org", Unbind: true}})
	if err != nil || rep.Count(gpgmailgate.Unbound) != 1 {
		t.Fatalf("unbind: %v\n%s", err, lines(rep))
	}
	if got, want := fprs(), []string{certFingerprint(t, second)}; !slices.Equal(got, want) {
		t.Errorf("after the unbind: %v, want %v", got, want)
	}
	// With only a certificate left, "no key" has nothing to remove.
	rep, _ = (&gpgmailgate.Importer{Store: s, Policy: policy, Replace: true}).Run(ctx,
		[]gpgmailgate.Entry{{Origin: "row 1", Address: "alice@example.org", Unbind: true}})
	if rep.Count(gpgmailgate.Skipped) != 1 || len(fprs()) != 1 {
		t.Errorf("unbind with a certificate only:\n%s", lines(rep))
	}
}

func TestReadCertDirErrors(t *testing.T) {
	if _, err := gpgmailgate.ReadCertDir(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing directory was read")
	}
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o600)
	if _, err := gpgmailgate.ReadCertDir(f); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("a file: %v", err)
	}
}
