package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lacre.io/milter/config"
	"lacre.io/milter/crypto/smime"
	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/smimetest"
	"lacre.io/milter/keys"
	"lacre.io/milter/milter"
)

// TestSMIMEOptions: every value of [smime] cipher and rsa_padding maps to
// its crypto/smime constant, and the defaults are the zero value (what
// every reader opens).
func TestSMIMEOptions(t *testing.T) {
	c := config.Default()
	if o, err := smimeOptions(c); err != nil || o != (smime.Options{}) {
		t.Errorf("defaults: %+v, %v", o, err)
	}
	for _, tc := range []struct {
		cipher, padding string
		ski             bool
		want            smime.Options
	}{
		{"aes-256-cbc", "pkcs1v15", false, smime.Options{Cipher: smime.AES256CBC, RSAPadding: smime.PKCS1v15}},
		{"aes-256-gcm", "pkcs1v15", false, smime.Options{Cipher: smime.AES256GCM, RSAPadding: smime.PKCS1v15}},
		{"aes-256-cbc", "oaep", true, smime.Options{Cipher: smime.AES256CBC, RSAPadding: smime.OAEP, SubjectKeyID: true}},
	} {
		c.SMIME = config.SMIME{Cipher: tc.cipher, RSAPadding: tc.padding, SubjectKeyID: tc.ski}
		o, err := smimeOptions(c)
		if err != nil || o != tc.want {
			t.Errorf("%+v: %+v, %v", c.SMIME, o, err)
		}
		c.Aliases.Source = config.AliasesNone
		mo, err := milterOptions(c, keystest.NewStore(), nil)
		if err != nil || mo.SMIME != tc.want {
			t.Errorf("milterOptions %+v: %+v, %v", c.SMIME, mo.SMIME, err)
		}
	}
	for _, bad := range []config.SMIME{{Cipher: "3des", RSAPadding: "pkcs1v15"}, {Cipher: "aes-256-cbc", RSAPadding: "pss"}} {
		c.SMIME = bad
		if _, err := smimeOptions(c); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// TestReloadSMIME: SIGHUP's reload builds the milter's options from the
// file again: new S/MIME choices, formats and trust anchors reach the
// new resolver; a trust_anchors file that no longer loads keeps the
// running configuration.
func TestReloadSMIME(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "lacre.toml")
	root := smimetest.New(t, smimetest.Spec{CA: true, CommonName: "Root 1"})
	write := func(name, text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("roots.pem", string(root.PEM()))
	write("lacre.toml", "[aliases]\nsource = \"none\"\n")
	e := &env{stdout: io.Discard, stderr: io.Discard, configFlag: cfg}
	c, err := e.loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	store := keystest.NewStore()
	ctx := context.Background()
	// bob has an OpenPGP key and a certificate issued by the root.
	bobCert := smimetest.New(t, smimetest.Spec{Addresses: []string{"bob@example.org"}, Parent: root})
	bobKeys, err := keys.ParseAny(bobCert.PEM(), "bob@example.org", keys.Normalizer{})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Add(ctx, "bob@example.org", bobKeys, false); err != nil {
		t.Fatal(err)
	}
	opts, err := milterOptions(c, store, log)
	if err != nil {
		t.Fatal(err)
	}
	ref := &resolverRef{}
	ref.set(opts.Keys.(*keys.Resolver))
	srv := milter.New(opts, log)
	if ref.p.Load().Policy().TrustAnchors != nil || opts.SMIME != (smime.Options{}) {
		t.Fatalf("defaults: anchors %v, %+v", ref.p.Load().Policy().TrustAnchors, opts.SMIME)
	}

	write("lacre.toml", "[aliases]\nsource = \"none\"\n[smime]\ntrust_anchors = \"roots.pem\"\ncipher = \"aes-256-gcm\"\n"+
		"[encryption]\npgp_format = \"pgp-inline\"\n")
	next, err := reload(e, c, store, ref, srv, log)
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	res := ref.p.Load()
	if res.Policy().TrustAnchors == nil || next.SMIME.Cipher != config.CipherAES256GCM {
		t.Fatalf("after reload: anchors %v, %+v", res.Policy().TrustAnchors, next.SMIME)
	}
	if l, err := res.Resolve(ctx, "bob@example.org"); err != nil || !l.Encrypt() || l.Format != keys.FormatSMIME {
		t.Errorf("bob after reload: %+v, %v", l, err)
	}

	// The anchors file breaks: the reload fails, the resolver stays.
	write("roots.pem", "not a certificate\n")
	if _, err := reload(e, next, store, ref, srv, log); err == nil || !strings.Contains(err.Error(), "smime.trust_anchors") {
		t.Errorf("reload with a broken trust_anchors file: %v", err)
	}
	if ref.p.Load() != res {
		t.Error("a failed reload replaced the resolver")
	}

	// Another root: bob's certificate no longer chains, so it is unusable.
	other := smimetest.New(t, smimetest.Spec{CA: true, CommonName: "Root 2"})
	write("roots.pem", string(other.PEM()))
	if _, err := reload(e, next, store, ref, srv, log); err != nil {
		t.Fatal(err)
	}
	l, err := ref.p.Load().Resolve(ctx, "bob@example.org")
	if err != nil || l.Encrypt() || !l.AllUnusable() {
		t.Errorf("bob with another root: %+v, %v", l, err)
	}
}
