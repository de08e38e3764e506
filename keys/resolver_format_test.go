package keys_test

import (
	"context"
	"testing"
	"time"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/smimetest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

func certKey(t *testing.T, addr string, spec smimetest.Spec) *keys.Key {
	t.Helper()
	spec.Addresses = []string{addr}
	if spec.Key == 0 {
		spec.Key = smimetest.RSA2048
	}
	ks, err := keys.ParseAny(smimetest.New(t, spec).PEM(), addr, keys.Normalizer{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ks) != 1 || ks[0].Kind() != keys.KindX509 {
		t.Fatalf("ParseAny of a certificate = %v", ks)
	}
	return ks[0]
}

// TestResolverFormat: the format rule of chooseFormat, documented in
// docs/keys.md. A recipient always gets the keys of its format's kind
// only, and never clear text while it has any usable key.
func TestResolverFormat(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	s := keystest.NewStore()
	add := func(addr string, ks ...*keys.Key) {
		t.Helper()
		if err := s.Add(ctx, addr, ks, false); err != nil {
			t.Fatal(err)
		}
	}
	prefs := func(addr string, f keys.Format) {
		t.Helper()
		if err := s.SetPrefs(ctx, addr, keys.Prefs{Format: f}); err != nil {
			t.Fatal(err)
		}
	}
	pgp := func(addr string) *keys.Key { return parseOne(t, testkeys.Curve25519, addr) }
	expired := smimetest.Spec{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)}

	add("both@example.org", pgp("both@example.org"), certKey(t, "both@example.org", smimetest.Spec{}))
	add("both-smime@example.org", pgp("both-smime@example.org"), certKey(t, "both-smime@example.org", smimetest.Spec{}))
	prefs("both-smime@example.org", keys.FormatSMIME)
	add("cert@example.org", certKey(t, "cert@example.org", smimetest.Spec{Key: smimetest.P256}))
	add("cert-inline@example.org", certKey(t, "cert-inline@example.org", smimetest.Spec{}))
	prefs("cert-inline@example.org", keys.FormatPGPInline) // asks for a kind it has no key of
	add("expired-cert@example.org", pgp("expired-cert@example.org"), certKey(t, "expired-cert@example.org", expired))
	prefs("expired-cert@example.org", keys.FormatSMIME)
	add("inline@example.org", pgp("inline@example.org"))
	prefs("inline@example.org", keys.FormatPGPInline)
	add("static@example.org", pgp("static@example.org"))
	add("static-pref@example.org", pgp("static-pref@example.org"))
	prefs("static-pref@example.org", keys.FormatPGPMIME)
	add("only-expired@example.org", certKey(t, "only-expired@example.org", expired))

	opt := defaultOptions()
	opt.Formats = map[string]keys.Format{"Static@example.org": keys.FormatPGPInline, "static-pref@example.org": keys.FormatPGPInline}
	r, err := keys.NewResolver(s, opt)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		addr   string
		format keys.Format
		kind   keys.Kind
		n      int
	}{
		{"both@example.org", keys.FormatPGPMIME, keys.KindOpenPGP, 1},         // no choice: OpenPGP wins
		{"both-smime@example.org", keys.FormatSMIME, keys.KindX509, 1},        // chose S/MIME
		{"cert@example.org", keys.FormatSMIME, keys.KindX509, 1},              // a certificate alone
		{"cert-inline@example.org", keys.FormatSMIME, keys.KindX509, 1},       // asked for inline, has only a certificate
		{"expired-cert@example.org", keys.FormatPGPMIME, keys.KindOpenPGP, 1}, // certificate expired: OpenPGP, not clear
		{"inline@example.org", keys.FormatPGPInline, keys.KindOpenPGP, 1},
		{"inline+tag@example.org", keys.FormatPGPInline, keys.KindOpenPGP, 1}, // the base address's choice
		{"static@example.org", keys.FormatPGPInline, keys.KindOpenPGP, 1},     // [static.formats]
		{"static-pref@example.org", keys.FormatPGPMIME, keys.KindOpenPGP, 1},  // the stored choice beats [static.formats]
		{"only-expired@example.org", keys.FormatDefault, "", 0},
		{"nobody@example.org", keys.FormatDefault, "", 0},
	} {
		l, err := r.Resolve(ctx, tt.addr)
		if err != nil {
			t.Fatalf("%s: %v", tt.addr, err)
		}
		if l.Format != tt.format || len(l.Keys) != tt.n {
			t.Errorf("%s: format %s with %d keys, want %s with %d", tt.addr, l.Format, len(l.Keys), tt.format, tt.n)
			continue
		}
		for _, k := range l.Keys {
			if k.Kind() != tt.kind {
				t.Errorf("%s: a %s key in a %s recipient", tt.addr, k.Kind(), l.Format)
			}
		}
	}
	if l, _ := r.Resolve(ctx, "only-expired@example.org"); !l.AllUnusable() {
		t.Errorf("an address with only an expired certificate is not AllUnusable: %+v", l)
	}

	// The operator's default for OpenPGP keys.
	opt.PGPFormat = keys.FormatPGPInline
	r, err = keys.NewResolver(s, opt)
	if err != nil {
		t.Fatal(err)
	}
	if l, err := r.Resolve(ctx, "both@example.org"); err != nil || l.Format != keys.FormatPGPInline {
		t.Errorf("pgp_format = pgp-inline: both@ got %v, %v", l.Format, err)
	}
	opt.PGPFormat = keys.FormatSMIME
	if _, err := keys.NewResolver(s, opt); err == nil {
		t.Error("NewResolver accepted pgp_format = smime")
	}
	opt.PGPFormat = ""
	opt.Formats = map[string]keys.Format{"a@example.org": "html"}
	if err := opt.Check(); err == nil {
		t.Error("Check accepted an unknown format in static.formats")
	}
}

// TestParseAnyAndStored: a certificate and an OpenPGP key are told apart
// by their framing, and what a store keeps (Raw) reads back as the same key.
func TestParseAnyAndStored(t *testing.T) {
	c := certKey(t, "alice@example.org", smimetest.Spec{})
	p := parseOne(t, testkeys.Curve25519, "alice@example.org")
	for _, k := range []*keys.Key{c, p} {
		back, err := keys.ParseStored(k.Raw)
		if err != nil || len(back) != 1 || back[0].Fingerprint != k.Fingerprint || back[0].Kind() != k.Kind() {
			t.Fatalf("ParseStored of a %s key = %v, %v", k.Kind(), back, err)
		}
	}
	if c.NumSubkeys() != 0 || c.KeyID() != "sha256:"+c.Fingerprint[:16] || c.Expires().IsZero() {
		t.Errorf("certificate key: subkeys %d, id %s, expires %v", c.NumSubkeys(), c.KeyID(), c.Expires())
	}
	if got := c.UserIDs(); len(got) != 1 || got[0] != "alice@example.org" {
		t.Errorf("certificate UserIDs = %v", got)
	}
	if c.ExportFor("alice@example.org", keys.Normalizer{}) != nil {
		t.Error("ExportFor (WKD) exported a certificate")
	}
	pol := keys.Policy{MinRSABits: 2048}
	if err := pol.Validate(c, "alice@example.org", time.Now()); err != nil {
		t.Errorf("Validate of a good certificate: %v", err)
	}
	if err := pol.Validate(c, "bob@example.org", time.Now()); err == nil {
		t.Error("Validate accepted a certificate for another address")
	}
}
