package crypto

// Issue 15: what readers see. Each test here failed before its fix.

import (
	"strings"
	"testing"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// readersEncrypt encrypts raw to a new Curve25519 key and returns the
// delivered outer header fields and the decrypted inner entity's fields
// and body.
func readersEncrypt(t *testing.T, raw string, protect bool) (res *Result, outer, inner []Field, innerBody []byte) {
	t.Helper()
	key, secret := keystest.Key(t, testkeys.Curve25519, "alice@example.org")
	fields, body := Split([]byte(raw))
	res, err := Encrypt(fields, body, []*keys.Key{key}, Options{ProtectHeaders: protect})
	if err != nil {
		t.Fatal(err)
	}
	_, ct := pgptest.Open(t, delivered(t, fields, res))
	plain, _ := pgptest.Decrypt(t, ct, secret)
	inner, innerBody = Split(plain)
	if string(innerBody) != string(body) {
		t.Fatalf("inner body %q, want %q", innerBody, body)
	}
	return res, Apply(fields, res.Changes), inner, innerBody
}

// TestEncryptNoMIMECharset: mail without MIME header fields (cron,
// scripts) gets an inner Content-Type whose charset the body does not
// contradict.
func TestEncryptNoMIMECharset(t *testing.T) {
	for _, c := range []struct {
		name, body, want string
	}{
		{"7-bit", "Backup done.\r\n", "text/plain; charset=us-ascii"},
		{"UTF-8", "Backup für Größe ✓\r\n", "text/plain; charset=utf-8"},
		{"Latin-1", "Backup f\xfcr Gr\xf6\xdfe\r\n", "text/plain"},
		{"UTF-8 then a stray byte", "Größe \xff\r\n", "text/plain"},
		{"empty", "", "text/plain; charset=us-ascii"},
	} {
		for _, protect := range []bool{false, true} {
			raw := "From: cron@example.net\r\nTo: alice@example.org\r\nSubject: backup\r\n\r\n" + c.body
			_, _, inner, body := readersEncrypt(t, raw, protect)
			ct, _ := get(inner, "Content-Type")
			want := c.want
			if protect {
				want += `; protected-headers="v1"; hp="cipher"`
			}
			if ct != want {
				t.Errorf("%s, protect=%v: inner Content-Type %q, want %q", c.name, protect, ct, want)
			}
			if err := oracleDefaultType(strings.TrimSuffix(ct, `; protected-headers="v1"; hp="cipher"`), body); err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
		}
	}
}

// TestEncryptConcealsSubjectCopies: with header protection, the fields
// that repeat the Subject or carry the author's text (Outlook's
// Thread-Topic, …) leave the outer header and live inside only; fields
// without content (Thread-Index) stay. Without protection nothing moves.
func TestEncryptConcealsSubjectCopies(t *testing.T) {
	raw := "From: Bob <bob@example.net>\r\nTo: alice@example.org\r\nSubject: RE: Merger with Initech\r\n" +
		"Thread-Topic: Merger with Initech\r\nThread-Index: AQHZ1234567890abcdefABCDEFGH==\r\n" +
		"X-Original-Subject: Merger with Initech\r\nOriginal-Subject: Merger with Initech\r\n" +
		"X-Spam-Prev-Subject: Merger with Initech\r\nKeywords: merger, Initech\r\n" +
		"Comments: the price is 12 million\r\nSummary: we buy Initech\r\nthread-topic: a second one\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nConfidential.\r\n"
	fields, _ := Split([]byte(raw))
	res, outer, inner, _ := readersEncrypt(t, raw, true)
	if res.Unprotected != "" {
		t.Errorf("Unprotected = %q", res.Unprotected)
	}
	for _, f := range outer {
		if strings.Contains(f.Value, "Initech") || strings.Contains(f.Value, "million") || strings.Contains(f.Value, "second one") {
			t.Errorf("outer %s: %q leaks protected content", f.Name, f.Value)
		}
	}
	if v, ok := get(outer, "Thread-Index"); !ok || v != "AQHZ1234567890abcdefABCDEFGH==" {
		t.Errorf("outer Thread-Index %q, %v: it carries no content and must stay", v, ok)
	}
	// Inside: every concealed field, value for value, and no HP-Outer
	// record for it (RFC 9788 §2.2.1: removed outside).
	for _, f := range fields {
		if !oracleIsConcealed(f.Name) {
			continue
		}
		found := false
		for _, g := range inner {
			if g.Name == f.Name && g.Value == f.Value {
				found = true
			}
		}
		if !found {
			t.Errorf("inner header lacks %s: %q", f.Name, f.Value)
		}
	}
	for _, g := range inner {
		if strings.EqualFold(g.Name, "HP-Outer") {
			name, _, _ := strings.Cut(g.Value, ":")
			if oracleIsConcealed(name) {
				t.Errorf("HP-Outer records a removed field: %q", g.Value)
			}
		}
	}
	// Without header protection the outer header is left as it was.
	_, outer, inner, _ = readersEncrypt(t, raw, false)
	for _, f := range fields {
		if oracleIsConcealed(f.Name) {
			if v, _ := get(outer, f.Name); v == "" {
				t.Errorf("without header protection %s was removed", f.Name)
			}
		}
	}
	if _, ok := get(inner, "Thread-Topic"); ok {
		t.Errorf("without header protection Thread-Topic was copied inside")
	}
}

// TestEncryptSignedKeepsHeader: a body that is already signed keeps its
// Subject and gets no header-protection parameters on the signed layer
// (where readers do not look for them); Result.Unprotected says why.
func TestEncryptSignedKeepsHeader(t *testing.T) {
	for _, ct := range []string{
		"multipart/signed; micalg=pgp-sha256;\r\n protocol=\"application/pgp-signature\"; boundary=\"sig\"",
		"Multipart/Signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"sig\"",
		"application/pkcs7-mime; smime-type=signed-data; name=smime.p7m",
		"application/x-pkcs7-mime; name=smime.p7m; smime-type=Signed-Data",
	} {
		raw := "From: bob@example.net\r\nTo: alice@example.org\r\nSubject: signed secret\r\n" +
			"Thread-Topic: signed secret\r\nMIME-Version: 1.0\r\nContent-Type: " + ct + "\r\n\r\n" +
			"--sig\r\nContent-Type: text/plain\r\n\r\nsigned text\r\n--sig\r\n" +
			"Content-Type: application/pgp-signature\r\n\r\nsig\r\n--sig--\r\n"
		res, outer, inner, _ := readersEncrypt(t, raw, true)
		if res.Unprotected != UnprotectedSigned {
			t.Errorf("%s: Unprotected = %q, want %q", ct, res.Unprotected, UnprotectedSigned)
		}
		if v, _ := get(outer, "Subject"); v != "signed secret" {
			t.Errorf("%s: outer Subject %q, want it unchanged", ct, v)
		}
		if v, _ := get(outer, "Thread-Topic"); v != "signed secret" {
			t.Errorf("%s: outer Thread-Topic %q, want it unchanged", ct, v)
		}
		if v, _ := get(inner, "Content-Type"); v != ct {
			t.Errorf("%s: inner Content-Type %q, want the original unchanged", ct, v)
		}
		for _, g := range inner {
			if !isContentField(g.Name) {
				t.Errorf("%s: inner header has %s: %q; the signed entity must stay as it was", ct, g.Name, g.Value)
			}
		}
	}
	// What only looks signed is protected as usual.
	for _, ct := range []string{"application/pkcs7-mime; name=x.p7m", "application/pkcs7-mime; smime-type=certs-only", "text/plain; x=multipart/signed"} {
		res, outer, _, _ := readersEncrypt(t, "Subject: secret\r\nContent-Type: "+ct+"\r\n\r\nbody\r\n", true)
		if v, _ := get(outer, "Subject"); v != ObscuredSubject || res.Unprotected != "" {
			t.Errorf("%s: outer Subject %q, Unprotected %q; want it obscured", ct, v, res.Unprotected)
		}
	}
}
