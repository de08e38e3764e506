package gpgmailgate_test

import (
	"crypto/rand"
	"crypto/rsa"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/config"
	"lacre.io/milter/gpgmailgate"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// sampleConf is testdata/gpg-mailgate.conf with its key IDs replaced.
func sampleConf(t *testing.T, archiveID, domainID string) *gpgmailgate.Conf {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "gpg-mailgate.conf"))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.NewReplacer("ARCHIVE_KEYID", archiveID, "DOMAIN_KEYID", domainID).Replace(string(b))
	c, err := gpgmailgate.ParseConf(strings.NewReader(s))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// loadTOML loads text as the daemon loads its configuration.
func loadTOML(t *testing.T, text string) *config.Config {
	t.Helper()
	p := filepath.Join(t.TempDir(), "lacre.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(p)
	if err != nil {
		t.Fatalf("the translation does not load: %v\n%s", err, text)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("the translation is not valid: %v\n%s", err, text)
	}
	return c
}

func TestTranslateSample(t *testing.T) {
	archive := keysParse(t, testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.Curve25519, "archive@example.org")))[0]
	domain := keysParse(t, testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.Curve25519, "all@example.net")))[0]
	stored := []*keys.Key{archive, domain}
	// The long key ID for one, the short one for the other, as the
	// sample's comments show both.
	longID := strings.TrimPrefix(archive.KeyID(), "0x")
	shortID := strings.ToLower(strings.TrimPrefix(domain.KeyID(), "0x")[8:])
	c := sampleConf(t, longID, shortID)
	tr := gpgmailgate.Translate(c, gpgmailgate.TranslateOptions{
		Resolve:       func(id string) (string, error) { return gpgmailgate.ResolveKeyID(id, stored) },
		StoreDatabase: "/var/lib/lacre/lacre.db",
	})
	if len(tr.Problems) != 0 {
		t.Fatalf("problems: %q\n%s", tr.Problems, tr.TOML)
	}
	lc := loadTOML(t, tr.TOML)
	checks := []struct {
		name      string
		got, want any
	}{
		{"milter.trace_header", lc.Milter.TraceHeader, "X-Lacre"},
		{"keys.fold_local_part_case", lc.Keys.FoldLocalPartCase, true},
		{"log.level", lc.Log.Level, "debug"},
		{"store.database", lc.Store.Database, "/var/lib/lacre/lacre.db"},
		{"web.base_url", lc.Web.BaseURL, "http://yourdomain.tld"},
		{"web.from", lc.Web.From, "gpg-mailgate@yourdomain.tld"},
		{"web.smtp.addr", lc.Web.SMTP.Addr, "127.0.0.1:25"},
		{"static.addresses", lc.Static.Addresses["archive@example.org"], []string{archive.Fingerprint}},
		{"static.domains", lc.Static.Domains["example.net"], []string{domain.Fingerprint}},
		{"encryption.pgp_format", lc.Encryption.PGPFormat, "pgp-mime"},
		{"static.formats", lc.Static.Formats["you@domain.tld"], "pgp-mime"},
	}
	for _, ch := range checks {
		if got, want := ch.got, ch.want; !equal(got, want) {
			t.Errorf("%s = %v, want %v", ch.name, got, want)
		}
	}
	// Every option of the sample is known; none falls through to the
	// catch-all for unknown options.
	if strings.Contains(tr.TOML, "not an option of gpg-mailgate's sample") {
		t.Errorf("an option of the sample is not handled:\n%s", tr.TOML)
	}
	if !strings.Contains(tr.TOML, "X-GPG-Mailgate") || !strings.Contains(tr.TOML, "\ntrace_header = \"X-Lacre\"\n") {
		t.Errorf("add_header is not mapped to trace_header:\n%s", tr.TOML)
	}
	// Every option of the file is named in the output: mapped, or in a
	// comment with the reason.
	for _, s := range c.Sections {
		for _, o := range s.Options {
			if !strings.Contains(tr.TOML, "["+s.Name+"] "+o.Name+" = ") {
				t.Errorf("[%s] %s is not mentioned in the output", s.Name, o.Name)
			}
		}
	}
	for _, want := range []string{
		"[dec_keymap] you@domain.tld = 12345678 (line 55): not mapped: lacre-milter never holds private keys",
		`[smime] cert_path = /var/gpgmailgate/smime (line 18): mapped to the key store: import its certificates with "lacre-milter import smime /var/gpgmailgate/smime"`,
		"[default] mime_conversion = yes (line 9): PGP/MIME (RFC 3156), lacre-milter's default pgp_format = \"pgp-mime\"",
		"[pgp_style] you@domain.tld = mime (line 58) \"you@domain.tld\" = \"pgp-mime\"",
		"[database] password = (not shown)",
	} {
		if !strings.Contains(strings.Join(strings.Fields(strings.ReplaceAll(tr.TOML, "\n#", " ")), " "), want) {
			t.Errorf("the output does not say %q:\n%s", want, tr.TOML)
		}
	}
	if strings.Contains(tr.TOML, "password = password") {
		t.Errorf("the database password is in the output")
	}
}

func equal(a, b any) bool {
	if as, ok := a.([]string); ok {
		bs, ok := b.([]string)
		return ok && slices.Equal(as, bs)
	}
	return a == b
}

// A key ID that the store does not hold, or holds twice, is a problem;
// the file still loads, without that entry.
func TestTranslateUnresolved(t *testing.T) {
	archive := keysParse(t, testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.Curve25519, "archive@example.org")))[0]
	c := sampleConf(t, "0123456789ABCDEF", strings.TrimPrefix(archive.KeyID(), "0x"))
	tr := gpgmailgate.Translate(c, gpgmailgate.TranslateOptions{
		Resolve: func(id string) (string, error) { return gpgmailgate.ResolveKeyID(id, []*keys.Key{archive}) },
	})
	if len(tr.Problems) != 1 || !strings.Contains(tr.Problems[0], "0123456789ABCDEF is not in the key store") {
		t.Fatalf("problems: %q", tr.Problems)
	}
	lc := loadTOML(t, tr.TOML)
	if _, ok := lc.Static.Addresses["archive@example.org"]; ok {
		t.Errorf("the unresolved entry was written")
	}
	if got := lc.Static.Domains["example.net"]; !slices.Equal(got, []string{archive.Fingerprint}) {
		t.Errorf("static.domains = %v", got)
	}
}

func TestResolveKeyID(t *testing.T) {
	a := keysParse(t, testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.Curve25519, "a@example.org")))[0]
	b := keysParse(t, testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.Curve25519, "b@example.org")))[0]
	long := strings.TrimPrefix(a.KeyID(), "0x")
	for _, id := range []string{long, "0x" + long, strings.ToLower(long[8:]), a.Fingerprint} {
		if got, err := gpgmailgate.ResolveKeyID(id, []*keys.Key{a, b}); err != nil || got != a.Fingerprint {
			t.Errorf("ResolveKeyID(%q) = %q, %v", id, got, err)
		}
	}
	// The same key listed twice (bound to two addresses) is one key.
	if got, err := gpgmailgate.ResolveKeyID(long, []*keys.Key{a, a, b}); err != nil || got != a.Fingerprint {
		t.Errorf("a key bound twice: %q, %v", got, err)
	}
	for _, id := range []string{"1234567", "you@domain.tld", ""} {
		if _, err := gpgmailgate.ResolveKeyID(id, []*keys.Key{a}); err == nil {
			t.Errorf("ResolveKeyID(%q) accepted", id)
		}
	}
}

// twoKeysSharingShortID makes two keys whose 32-bit short key IDs are the
// same: one RSA key with two creation times, found by the birthday bound
// (about 2^16 fingerprints).
func twoKeysSharingShortID(t *testing.T) (a, b *keys.Key) {
	t.Helper()
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now().Add(-24 * time.Hour).Truncate(time.Second)
	seen := map[uint32]time.Time{}
	var t1, t2 time.Time
	for i := 0; i < 1<<20; i++ {
		ct := base.Add(-time.Duration(i) * time.Second)
		short := uint32(packet.NewRSAPublicKey(ct, &rk.PublicKey).KeyId)
		if prev, ok := seen[short]; ok {
			t1, t2 = prev, ct
			break
		}
		seen[short] = ct
	}
	if t1.IsZero() {
		t.Fatal("no short key ID collision found")
	}
	mk := func(created time.Time) *keys.Key {
		priv := packet.NewSignerPrivateKey(created, rk)
		e := &openpgp.Entity{PrimaryKey: &priv.PublicKey, PrivateKey: priv, Identities: map[string]*openpgp.Identity{}}
		cfg := &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, Time: func() time.Time { return base }}
		if err := e.AddUserId("Archive", "", "archive@example.org", cfg); err != nil {
			t.Fatal(err)
		}
		if err := e.AddEncryptionSubkey(cfg); err != nil {
			t.Fatal(err)
		}
		return keysParse(t, testkeys.ArmoredPublic(t, e))[0]
	}
	return mk(t1), mk(t2)
}

func TestResolveKeyIDAmbiguous(t *testing.T) {
	a, b := twoKeysSharingShortID(t)
	short := strings.TrimPrefix(a.KeyID(), "0x")[8:]
	if short != strings.TrimPrefix(b.KeyID(), "0x")[8:] || a.Fingerprint == b.Fingerprint {
		t.Fatalf("not a short ID collision: %s %s", a.KeyID(), b.KeyID())
	}
	stored := []*keys.Key{a, b}
	_, err := gpgmailgate.ResolveKeyID(short, stored)
	if err == nil || !strings.Contains(err.Error(), "ambiguous") || !strings.Contains(err.Error(), a.Fingerprint) || !strings.Contains(err.Error(), b.Fingerprint) {
		t.Fatalf("ResolveKeyID(%s) = %v, want ambiguous naming both keys", short, err)
	}
	// The long ID tells them apart.
	if got, err := gpgmailgate.ResolveKeyID(b.KeyID(), stored); err != nil || got != b.Fingerprint {
		t.Errorf("long ID: %q, %v", got, err)
	}
	// In a gpg-mailgate.conf: left out, reported.
	c, err := gpgmailgate.ParseConf(strings.NewReader("[enc_keymap]\narchive@example.org = " + short + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	tr := gpgmailgate.Translate(c, gpgmailgate.TranslateOptions{Resolve: func(id string) (string, error) { return gpgmailgate.ResolveKeyID(id, stored) }})
	if len(tr.Problems) != 1 || !strings.Contains(tr.Problems[0], "ambiguous") {
		t.Errorf("problems %q", tr.Problems)
	}
	if lc := loadTOML(t, tr.TOML); len(lc.Static.Addresses) != 0 {
		t.Errorf("an ambiguous key ID was mapped: %v", lc.Static.Addresses)
	}
}

// TestTranslateFormats: [default] mime_conversion becomes pgp_format
// (anything but "yes" was PGP/inline in gpg-mailgate; not set, it stays
// PGP/MIME, with a note) and [pgp_style] becomes [static.formats]; what
// gpg-mailgate ignored is a note, not a problem.
func TestTranslateFormats(t *testing.T) {
	for _, tc := range []struct {
		conf    string
		format  string
		formats map[string]string
		says    []string
	}{
		{"[default]\nmime_conversion = yes\n", "pgp-mime", nil, nil},
		{"[default]\nmime_conversion = no\n", "pgp-inline", nil, []string{"gpg-mailgate wrote PGP/inline, so recipients keep getting it"}},
		{"[default]\nmime_conversion = Yes\n", "pgp-inline", nil, []string{`gpg-mailgate reads "Yes" as "no"`}},
		{"[default]\nadd_header = yes\n", "pgp-mime", nil, []string{"[default] mime_conversion (not set): not mapped: gpg-mailgate wrote PGP/inline when it was not \"yes\", lacre-milter writes PGP/MIME by default"}},
		{"[default]\nmime_conversion = no\n\n[pgp_style]\nAlice@Example.org = mime\nbob@example.org = inline\ncarol@example.org = html\nnobody = mime\n",
			"pgp-inline", map[string]string{"alice@example.org": "pgp-mime", "bob@example.org": "pgp-inline"},
			[]string{`gpg-mailgate did not know the style "html"`, "[pgp_style] nobody = mime (line 8): not mapped: not an address"}},
	} {
		c, err := gpgmailgate.ParseConf(strings.NewReader(tc.conf))
		if err != nil {
			t.Fatal(err)
		}
		tr := gpgmailgate.Translate(c, gpgmailgate.TranslateOptions{})
		if len(tr.Problems) != 0 {
			t.Errorf("%q: problems %q", tc.conf, tr.Problems)
		}
		lc := loadTOML(t, tr.TOML)
		if lc.Encryption.PGPFormat != tc.format || len(lc.Static.Formats) != len(tc.formats) {
			t.Errorf("%q: pgp_format %q, formats %v; want %q, %v\n%s", tc.conf, lc.Encryption.PGPFormat, lc.Static.Formats, tc.format, tc.formats, tr.TOML)
		}
		for a, f := range tc.formats {
			if lc.Static.Formats[a] != f {
				t.Errorf("%q: static.formats %q = %q, want %q", tc.conf, a, lc.Static.Formats[a], f)
			}
		}
		flat := strings.Join(strings.Fields(strings.ReplaceAll(tr.TOML, "\n#", " ")), " ")
		for _, s := range tc.says {
			if !strings.Contains(flat, s) {
				t.Errorf("%q: the output does not say %q:\n%s", tc.conf, s, tr.TOML)
			}
		}
	}
}
