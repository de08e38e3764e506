package milter

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/crypto"
	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/smimetest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// formatFixture is newFixture with recipients of every format besides
// alice@, bob@ (PGP/MIME) and carol@ (PGP/MIME, header protection):
// dan@ and frank@ hold S/MIME certificates (RSA-2048 and P-256), erin@
// one with header protection on, ivy@ an OpenPGP key and the format
// pgp-inline, and both@ an OpenPGP key and a certificate with the format
// smime.
type formatFixture struct {
	*fixture
	certs map[string]*smimetest.Cert
}

func newFormatFixture(t *testing.T, tweak func(*Options)) *formatFixture {
	t.Helper()
	f := &formatFixture{fixture: newFixture(t, tweak), certs: map[string]*smimetest.Cert{}}
	ctx := context.Background()
	on := true
	for addr, kind := range map[string]smimetest.KeyKind{"dan@example.org": smimetest.RSA2048, "frank@example.org": smimetest.P256,
		"erin@example.org": smimetest.RSA2048, "both@example.org": smimetest.RSA2048} {
		f.addCert(t, addr, kind)
	}
	f.store.SetPrefs(ctx, "erin@example.org", keys.Prefs{ProtectHeaders: &on})
	for _, a := range []string{"ivy@example.org", "both@example.org"} {
		e := testkeys.Generate(t, testkeys.Curve25519, a)
		ks, err := keys.Parse(testkeys.Public(t, e))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.store.Add(ctx, a, ks, false); err != nil {
			t.Fatal(err)
		}
		f.secrets[a] = e
	}
	f.store.SetPrefs(ctx, "ivy@example.org", keys.Prefs{Format: keys.FormatPGPInline})
	f.store.SetPrefs(ctx, "both@example.org", keys.Prefs{Format: keys.FormatSMIME})
	return f
}

// addCert makes a certificate for addr and binds it in the store.
func (f *formatFixture) addCert(t *testing.T, addr string, kind smimetest.KeyKind) {
	t.Helper()
	c := smimetest.New(t, smimetest.Spec{Key: kind, Addresses: []string{addr}})
	ks, err := keys.ParseAny(c.PEM(), addr, keys.Normalizer{})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.store.Add(context.Background(), addr, ks, false); err != nil {
		t.Fatal(err)
	}
	f.certs[addr] = c
}

// smimeOpen checks that a delivered message is S/MIME enveloped-data and
// decrypts it with the certificate of each of who (smimetest's reader),
// checking that every one gets the same inner entity; it returns that
// entity and the number of RecipientInfos.
func (f *formatFixture) smimeOpen(t *testing.T, delivered []byte, who ...string) ([]byte, int) {
	t.Helper()
	fields, body := crypto.Split(delivered)
	var ct string
	for _, fl := range fields {
		if strings.EqualFold(fl.Name, "Content-Type") {
			ct = fl.Value
		}
	}
	if !strings.Contains(ct, "application/pkcs7-mime") || !strings.Contains(ct, "enveloped-data") {
		t.Fatalf("delivered Content-Type %q, want S/MIME enveloped-data", ct)
	}
	der, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(string(body), "\r\n", ""))
	if err != nil {
		t.Fatalf("S/MIME body: %v", err)
	}
	var inner []byte
	n := 0
	for _, a := range who {
		c := f.certs[a]
		got, p, err := smimetest.Decrypt(der, c.Cert, c.Key)
		if err != nil {
			t.Fatalf("%s cannot decrypt: %v", a, err)
		}
		if inner != nil && !bytes.Equal(got, inner) {
			t.Fatalf("%s decrypts to another entity", a)
		}
		inner, n = got, p.RICount
	}
	return inner, n
}

// sameEntity checks that inner carries msg's Content-* fields and body
// byte for byte.
func sameEntity(t *testing.T, inner, msg []byte) {
	t.Helper()
	ofields, obody := crypto.Split(msg)
	ifields, ibody := crypto.Split(inner)
	if !bytes.Equal(ibody, obody) {
		t.Fatalf("inner body %q, want %q", ibody, obody)
	}
	var want, got []crypto.Field
	for _, fl := range ofields {
		if strings.HasPrefix(strings.ToLower(fl.Name), "content-") {
			want = append(want, fl)
		}
	}
	for _, fl := range ifields {
		if strings.HasPrefix(strings.ToLower(fl.Name), "content-") {
			got = append(got, fl)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("inner Content-* fields %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("inner Content-* fields %v, want %v", got, want)
		}
	}
}

func check452(t *testing.T, r *result, rcpts ...string) {
	t.Helper()
	for _, rc := range rcpts {
		a := r.rcptReplies[rc]
		if a == nil || a.Code != actReplyCode || a.SMTPCode != 452 || !strings.HasPrefix(a.SMTPText, "4.5.3 ") {
			t.Errorf("%s: reply %+v, want 452 4.5.3", rc, a)
		}
	}
	if len(r.rcptReplies) != len(rcpts) {
		t.Errorf("replies to RCPT %v, want 452 for %v only", r.rcptReplies, rcpts)
	}
}

// TestFormatSplit: the format is part of the class. Recipients of
// another format than the transaction's first get 452 4.5.3 like keyed
// and unkeyed ones; each deferred recipient then gets its own format.
func TestFormatSplit(t *testing.T) {
	f := newFormatFixture(t, nil)
	m := f.connect(t, false)
	all := []string{"alice@example.org", "dan@example.org", "ivy@example.org", "nobody@example.org", "bob@example.org", "frank@example.org", "erin@example.org", "carol@example.org"}

	// PGP/MIME first.
	r := m.send("F1", all, []byte(plainMsg))
	check452(t, r, "dan@example.org", "ivy@example.org", "nobody@example.org", "frank@example.org", "erin@example.org", "carol@example.org")
	checkDecryptsFor(t, r.delivered, f.secrets["alice@example.org"], f.secrets["bob@example.org"])
	logs := f.logs.String()
	for _, want := range []string{
		"queue_id=F1 rcpt=dan@example.org class=smime transaction_class=pgp-mime",
		"queue_id=F1 rcpt=ivy@example.org class=pgp-inline transaction_class=pgp-mime",
		"queue_id=F1 rcpt=erin@example.org class=smime+hp transaction_class=pgp-mime",
		"queue_id=F1 action=encrypted rcpts=2 classes=pgp-mime:2 ",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}

	// The sender's retry of the deferred ones, S/MIME first: frank@'s EC
	// certificate is a class of its own (NSS cannot open a message with
	// any ECDH recipient, so dan@'s RSA copy must have none).
	r = m.send("F2", all[1:], []byte(plainMsg))
	check452(t, r, "ivy@example.org", "nobody@example.org", "bob@example.org", "frank@example.org", "erin@example.org", "carol@example.org")
	inner, n := f.smimeOpen(t, r.delivered, "dan@example.org")
	if n != 1 {
		t.Errorf("%d RecipientInfos, want 1", n)
	}
	sameEntity(t, inner, []byte(plainMsg))
	if !bytes.Contains(r.delivered, []byte("Subject: hello\r\n")) {
		t.Error("S/MIME without header protection changed the Subject")
	}
	if !strings.Contains(f.logs.String(), "queue_id=F2 action=encrypted rcpts=1 classes=smime:1 size_in=") ||
		!strings.Contains(f.logs.String(), "queue_id=F2 rcpt=frank@example.org class=smime-ec transaction_class=smime") {
		t.Errorf("log lines of F2 missing:\n%s", f.logs.String())
	}
	r = m.send("F2b", []string{"frank@example.org", "dan@example.org"}, []byte(plainMsg))
	check452(t, r, "dan@example.org")
	inner, n = f.smimeOpen(t, r.delivered, "frank@example.org")
	if n != 1 {
		t.Errorf("F2b: %d RecipientInfos, want 1", n)
	}
	sameEntity(t, inner, []byte(plainMsg))

	// PGP/inline first.
	r = m.send("F3", []string{"ivy@example.org", "alice@example.org", "erin@example.org", "nobody@example.org"}, []byte(plainMsg))
	check452(t, r, "alice@example.org", "erin@example.org", "nobody@example.org")
	checkInlineText(t, r.delivered, f.secrets["ivy@example.org"], "Grüße,\r\nthe body.\r\n")

	// Clear first: every keyed format is deferred.
	r = m.send("F4", []string{"nobody@example.org", "dan@example.org", "ivy@example.org"}, []byte(plainMsg))
	check452(t, r, "dan@example.org", "ivy@example.org")
	if r.endedAt != "data" {
		t.Errorf("clear transaction ended at %s", r.endedAt)
	}

	// An address with an OpenPGP key and a certificate reads what it chose.
	r = m.send("F5", []string{"both@example.org", "dan@example.org"}, []byte(plainMsg))
	check452(t, r)
	inner, n = f.smimeOpen(t, r.delivered, "both@example.org", "dan@example.org")
	if n != 2 {
		t.Errorf("both@ and dan@: %d RecipientInfos, want 2", n)
	}
	sameEntity(t, inner, []byte(plainMsg))
}

// checkDecryptsFor checks that a PGP/MIME message decrypts for each
// secret key to plainMsg's body.
func checkDecryptsFor(t *testing.T, delivered []byte, secrets ...*openpgp.Entity) {
	t.Helper()
	_, origBody := crypto.Split([]byte(plainMsg))
	for _, s := range secrets {
		_, inner := pgptest.OpenAndDecrypt(t, delivered, s)
		if !bytes.Equal(innerBody(t, inner), origBody) {
			t.Fatalf("inner body differs")
		}
	}
}

// checkInlineText checks a single-part PGP/inline message: text/plain,
// the original charset declared, an armoured OpenPGP message that
// decrypts to the decoded text want.
func checkInlineText(t *testing.T, delivered []byte, secret *openpgp.Entity, want string) {
	t.Helper()
	fields, body := crypto.Split(delivered)
	var ct string
	for _, fl := range fields {
		if strings.EqualFold(fl.Name, "Content-Type") {
			ct = fl.Value
		}
	}
	if !strings.HasPrefix(ct, "text/plain") || !strings.Contains(strings.ToLower(ct), "utf-8") {
		t.Fatalf("PGP/inline Content-Type %q", ct)
	}
	if !bytes.HasPrefix(body, []byte("-----BEGIN PGP MESSAGE-----")) {
		t.Fatalf("PGP/inline body does not start with the armour: %.80q", body)
	}
	if bytes.Contains(delivered, []byte("the body.")) {
		t.Fatal("cleartext in the PGP/inline message")
	}
	plain, _ := pgptest.Decrypt(t, body, secret)
	if string(plain) != want {
		t.Fatalf("PGP/inline decrypts to %q, want %q", plain, want)
	}
}

// TestSMIMEHeaderProtection: header protection applies to S/MIME as to
// PGP/MIME (the class smime+hp), and PGP/inline reports that it cannot.
func TestSMIMEHeaderProtection(t *testing.T) {
	f := newFormatFixture(t, nil)
	m := f.connect(t, false)
	r := m.send("H1", []string{"erin@example.org", "dan@example.org"}, []byte(plainMsg))
	check452(t, r, "dan@example.org")
	inner, _ := f.smimeOpen(t, r.delivered, "erin@example.org")
	ifields, ibody := crypto.Split(inner)
	if _, obody := crypto.Split([]byte(plainMsg)); !bytes.Equal(ibody, obody) {
		t.Fatalf("inner body %q", ibody)
	}
	var subject string
	for _, fl := range ifields {
		if strings.EqualFold(fl.Name, "Subject") {
			subject = fl.Value
		}
	}
	if strings.TrimSpace(subject) != "hello" {
		t.Errorf("inner Subject %q, want the original", subject)
	}
	if bytes.Contains(r.delivered, []byte("Subject: hello")) || !bytes.Contains(r.delivered, []byte("Subject: [...]")) {
		t.Error("outer Subject not obscured")
	}
	if !strings.Contains(f.logs.String(), "queue_id=H1 action=encrypted rcpts=1 classes=smime+hp:1 ") {
		t.Errorf("log line missing:\n%s", f.logs.String())
	}

	// PGP/inline with header protection asked for: one class with
	// inline recipients who did not ask, and the log says why the
	// header stayed as it was.
	ctx := context.Background()
	on := true
	f.store.SetPrefs(ctx, "ivy@example.org", keys.Prefs{Format: keys.FormatPGPInline, ProtectHeaders: &on})
	f.start(t) // a fresh resolver cache
	e := testkeys.Generate(t, testkeys.Curve25519, "ines@example.org")
	ks, _ := keys.Parse(testkeys.Public(t, e))
	f.store.Add(ctx, "ines@example.org", ks, false)
	f.store.SetPrefs(ctx, "ines@example.org", keys.Prefs{Format: keys.FormatPGPInline})
	m = f.connect(t, false)
	r = m.send("H2", []string{"ivy@example.org", "ines@example.org"}, []byte(plainMsg))
	check452(t, r)
	checkInlineText(t, r.delivered, f.secrets["ivy@example.org"], "Grüße,\r\nthe body.\r\n")
	checkInlineText(t, r.delivered, e, "Grüße,\r\nthe body.\r\n")
	if !regexp.MustCompile(`queue_id=H2 action=encrypted rcpts=2 classes=pgp-inline:2 .* headers_unprotected="` + crypto.UnprotectedInline).MatchString(f.logs.String()) {
		t.Errorf("log line of H2 missing:\n%s", f.logs.String())
	}
}

// TestNonSMTPFormats: mixed_local = "encrypt" encrypts local mail when
// every keyed recipient has the same format, and holds it otherwise.
func TestNonSMTPFormats(t *testing.T) {
	f := newFormatFixture(t, func(o *Options) { o.MixedLocal = MixedLocalEncrypt })
	r := f.connect(t, true).send("N1", []string{"nobody@example.org", "dan@example.org", "frank@example.org"}, []byte(plainMsg))
	if r.quarantine != "" || len(r.rcptReplies) != 0 {
		t.Fatalf("one format: quarantine %q, replies %v", r.quarantine, r.rcptReplies)
	}
	inner, n := f.smimeOpen(t, r.delivered, "dan@example.org", "frank@example.org")
	if n != 2 {
		t.Errorf("%d RecipientInfos, want 2", n)
	}
	sameEntity(t, inner, []byte(plainMsg))

	r = f.connect(t, true).send("N2", []string{"alice@example.org", "dan@example.org"}, []byte(plainMsg))
	if !strings.Contains(r.quarantine, "dan@example.org is smime, an earlier recipient pgp-mime") ||
		!strings.Contains(r.quarantine, "different formats") {
		t.Fatalf("two formats: quarantine %q, want held for the formats", r.quarantine)
	}
	if !bytes.Equal(r.delivered, []byte(plainMsg)) {
		t.Fatal("held message was changed")
	}
}

// TestAliasFormatConflict: an alias whose keyed mailboxes need different
// formats cannot share one body: it is deferred (451 4.3.0) with a log
// line naming the conflict, never sent in a format one of them may not
// read, never in clear. Mailboxes of one format share one ciphertext.
func TestAliasFormatConflict(t *testing.T) {
	x := &fakeExpander{table: map[string][]string{
		"mixed@example.org":  {"alice@example.org", "dan@example.org"},
		"inline@example.org": {"ivy@example.org", "alice@example.org"},
		"smime@example.org":  {"dan@example.org", "frank@example.org"},
		"big@example.org": {"alice@example.org", "dan@example.org", "frank@example.org", "erin@example.org",
			"both@example.org", "ivy@example.org", "carol@example.org"},
	}}
	f := newFormatFixture(t, func(o *Options) { o.Expander = x })
	m := f.connect(t, false)
	for _, a := range []string{"mixed@example.org", "inline@example.org", "big@example.org"} {
		r := m.send("A1", []string{a}, []byte(plainMsg))
		if r := r.rcptReplies[a]; r == nil || r.SMTPCode != 451 || !strings.HasPrefix(r.SMTPText, "4.3.0 ") {
			t.Errorf("%s: reply %+v, want 451 4.3.0", a, r)
		}
	}
	logs := f.logs.String()
	for _, want := range []string{
		`rcpt=mixed@example.org conflict="alice@example.org is pgp-mime, dan@example.org is smime"`,
		`rcpt=inline@example.org conflict="ivy@example.org is pgp-inline, alice@example.org is pgp-mime"`,
		// At most four mailboxes named: five differ from alice@.
		`rcpt=big@example.org conflict="alice@example.org is pgp-mime, dan@example.org is smime, frank@example.org is smime, erin@example.org is smime, and 2 more"`,
	} {
		if !strings.Contains(logs, "recipient expands to keyed mailboxes that need different formats") || !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}

	r := m.send("A2", []string{"smime@example.org"}, []byte(plainMsg))
	if len(r.rcptReplies) != 0 {
		t.Fatalf("one format: replies %v", r.rcptReplies)
	}
	inner, n := f.smimeOpen(t, r.delivered, "dan@example.org", "frank@example.org")
	if n != 2 {
		t.Errorf("%d RecipientInfos, want 2", n)
	}
	sameEntity(t, inner, []byte(plainMsg))
	if !strings.Contains(f.logs.String(), "queue_id=A2 action=encrypted rcpts=1 classes=smime-ec:1 ") {
		t.Errorf("log line of A2 missing")
	}

	// Local mail to the conflicting alias is held, also with
	// mixed_local = "encrypt".
	f.srv.Reload(func() Options {
		o := *f.srv.opts.Load()
		o.MixedLocal = MixedLocalEncrypt
		return o
	}())
	r = f.connect(t, true).send("A3", []string{"mixed@example.org"}, []byte(plainMsg))
	if !strings.Contains(r.quarantine, "mixed@example.org expands to keyed mailboxes of different formats") {
		t.Fatalf("local mail: quarantine %q", r.quarantine)
	}
}

// kindResolver hands back keys under a format they do not fit.
type kindResolver struct {
	keys   []*keys.Key
	format keys.Format
}

func (r kindResolver) Resolve(_ context.Context, a string) (*keys.Recipient, error) {
	return &keys.Recipient{Address: a, Source: keys.SourceStore, Keys: r.keys, Format: r.format}, nil
}

// TestFormatKindMismatchFailsClosed: a key source that hands back a
// certificate for PGP/MIME, or an OpenPGP key for S/MIME, gets a
// temporary failure, never a message in clear or half encrypted.
func TestFormatKindMismatchFailsClosed(t *testing.T) {
	f := newFormatFixture(t, nil)
	cert, _ := f.store.KeysFor(context.Background(), "dan@example.org")
	pgp, _ := f.store.KeysFor(context.Background(), "alice@example.org")
	for i, kr := range []kindResolver{{cert, keys.FormatPGPMIME}, {cert, keys.FormatPGPInline}, {cert, keys.FormatDefault}, {pgp, keys.FormatSMIME}} {
		f.srv.Reload(Options{Keys: kr, LookupTimeout: time.Second, MaxMessageSize: 1 << 20})
		id := fmt.Sprintf("K%d", i)
		r := f.connect(t, false).send(id, []string{"x@example.org"}, []byte(plainMsg))
		if r.endedAt != "eom" || r.final.Code != actReplyCode || r.final.SMTPCode != 451 || len(r.mods) != 0 {
			t.Errorf("case %d (%s): ended at %s with %+v, %d mods; want 451 and nothing changed", i, kr.format, r.endedAt, r.final, len(r.mods))
		}
		if !regexp.MustCompile(`queue_id=` + id + ` action=tempfail .*does not fit the transaction's format`).MatchString(f.logs.String()) {
			t.Errorf("case %d (%s): no log line for the mismatch:\n%s", i, kr.format, f.logs.String())
		}
	}
}

// TestClassNames: the names the log and the metrics use.
func TestClassNames(t *testing.T) {
	for _, tt := range []struct {
		c    class
		want string
	}{
		{class{}, "clear"},
		{encryptClass(keys.FormatDefault, false, nil), "pgp-mime"},
		{encryptClass(keys.FormatPGPMIME, false, nil), "pgp-mime"},
		{encryptClass(keys.FormatPGPMIME, true, nil), "pgp-mime+hp"},
		{encryptClass(keys.FormatPGPInline, false, nil), "pgp-inline"},
		{encryptClass(keys.FormatPGPInline, true, nil), "pgp-inline"},
		{encryptClass(keys.FormatSMIME, false, nil), "smime"},
		{encryptClass(keys.FormatSMIME, true, nil), "smime+hp"},
		{class{encrypt: true, format: keys.FormatSMIME, ec: true}, "smime-ec"},
		{class{encrypt: true, format: keys.FormatSMIME, ec: true, protect: true}, "smime-ec+hp"},
	} {
		if got := tt.c.String(); got != tt.want {
			t.Errorf("%+v: %q, want %q", tt.c, got, tt.want)
		}
	}
	if encryptClass(keys.FormatPGPInline, true, nil) != encryptClass(keys.FormatPGPInline, false, nil) {
		t.Error("header protection splits PGP/inline recipients, which cannot have it")
	}
	rcpts := []recipient{{class: class{}}, {class: encryptClass(keys.FormatSMIME, true, nil)}, {class: encryptClass(keys.FormatSMIME, true, nil)},
		{class: encryptClass(keys.FormatPGPInline, false, nil)}, {class: encryptClass(keys.FormatPGPMIME, false, nil)}}
	if got := classList(rcpts); got != "clear:1,pgp-mime:1,pgp-inline:1,smime+hp:2" {
		t.Errorf("classList = %q", got)
	}
}
