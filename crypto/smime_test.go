package crypto

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"

	"lacre.io/milter/crypto/smime"
	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/smimetest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// smimeDER checks that an S/MIME body is base64 in lines of at most 76
// characters (all but the last exactly 76), each ended by CRLF, and
// returns the DER it encodes.
func smimeDER(t testing.TB, body []byte) []byte {
	t.Helper()
	s := string(body)
	if !strings.HasSuffix(s, "\r\n") {
		t.Fatalf("S/MIME body does not end with CRLF")
	}
	lines := strings.Split(strings.TrimSuffix(s, "\r\n"), "\r\n")
	for i, l := range lines {
		if len(l) > 76 || (i < len(lines)-1 && len(l) != 76) || strings.ContainsAny(l, "\r\n") {
			t.Fatalf("S/MIME body line %d has %d characters", i, len(l))
		}
	}
	der, err := base64.StdEncoding.DecodeString(strings.Join(lines, ""))
	if err != nil {
		t.Fatalf("S/MIME body is not base64: %v", err)
	}
	return der
}

// smimeOpen checks the outer header of a delivered S/MIME message
// (checkSMIMEContent, with exactly one MIME-Version: 1.0) and decrypts its
// body for c, returning the outer fields and the inner entity.
func smimeOpen(t testing.TB, fields []Field, res *Result, opts smime.Options, c *smimetest.Cert) ([]Field, []byte, *smimetest.Parsed) {
	t.Helper()
	outer, body := Split(delivered(t, fields, res))
	checkSMIMEContent(t, outer, opts, true)
	if !bytes.Equal(body, res.Body) {
		t.Fatalf("delivered body is not Result.Body")
	}
	inner, p, err := smimetest.Decrypt(smimeDER(t, body), c.Cert, c.Key)
	if err != nil {
		t.Fatalf("decrypting for %s: %v", c.Cert.Subject.CommonName, err)
	}
	return outer, inner, p
}

// TestEncryptSMIMERoundTrip: every corpus message (plain text, 8-bit
// UTF-8, quoted-printable, multipart with an attachment, multipart/signed,
// no MIME fields, ...), with and without header protection, to an RSA and
// a P-256 recipient in one ciphertext, decrypts for each to exactly the
// entity PGP/MIME encrypts (the original Content-* fields and the body byte
// for byte), with the outer header of RFC 8551 §3.2 and the Subject and
// concealed fields treated as for PGP/MIME.
func TestEncryptSMIMERoundTrip(t *testing.T) {
	rsa := smimetest.New(t, smimetest.Spec{Key: smimetest.RSA2048, Addresses: []string{"alice@example.org"}, SubjectKeyID: []byte("alice")})
	ec := smimetest.New(t, smimetest.Spec{Key: smimetest.P256, Addresses: []string{"bob@example.org"}, SubjectKeyID: []byte("bob")})
	pgpKey, pgpSecret := keystest.Key(t, testkeys.Curve25519, "alice@example.org")
	certs := []*x509.Certificate{rsa.Cert, ec.Cert}
	optsList := []smime.Options{{}, {Cipher: smime.AES256GCM, RSAPadding: smime.OAEP, SubjectKeyID: true}}
	for _, protect := range []bool{false, true} {
		for _, m := range corpus(false) {
			t.Run(fmt.Sprintf("protect=%v/%s", protect, m.name), func(t *testing.T) {
				fields, body := Split(m.raw)
				orig := bytes.Clone(m.raw)
				pgp, err := Encrypt(fields, body, []*keys.Key{pgpKey}, Options{ProtectHeaders: protect})
				if err != nil {
					t.Fatal(err)
				}
				_, pgpInner := pgptest.OpenAndDecrypt(t, delivered(t, fields, pgp), pgpSecret)
				for _, o := range optsList {
					res, err := EncryptSMIME(fields, body, certs, Options{ProtectHeaders: protect, SMIME: o})
					if err != nil {
						t.Fatal(err)
					}
					wantWhy := ""
					if protect && oracleSigned(fields) {
						wantWhy = UnprotectedSigned
					}
					if res.Unprotected != wantWhy {
						t.Errorf("Result.Unprotected = %q, want %q", res.Unprotected, wantWhy)
					}
					for _, c := range []*smimetest.Cert{rsa, ec} {
						outer, inner, p := smimeOpen(t, fields, res, o, c)
						if p.RICount != 2 || p.Auth != (o.Cipher == smime.AES256GCM) {
							t.Errorf("%d RecipientInfos, AuthEnvelopedData %v", p.RICount, p.Auth)
						}
						checkInner(t, m.name, inner, fields, body, protect)
						if !bytes.Equal(inner, pgpInner) {
							t.Fatalf("S/MIME inner entity differs from PGP/MIME's:\n%q\nwant\n%q", inner, pgpInner)
						}
						checkOuterSMIME(t, fields, outer, oracleProtects(fields, protect))
					}
				}
				if !bytes.Equal(m.raw, orig) {
					t.Fatal("EncryptSMIME changed the message it was given")
				}
			})
		}
	}
}

// checkOuterSMIME checks the non-Content fields of the outer header: all
// kept in order, except that with header protection every Subject is
// "[...]" and the concealed fields are gone.
func checkOuterSMIME(t testing.TB, fields, outer []Field, protect bool) {
	t.Helper()
	var want, got []string
	for _, f := range fields {
		switch {
		case isContentField(f.Name), strings.EqualFold(f.Name, "MIME-Version"):
		case protect && oracleIsConcealed(f.Name):
		case protect && strings.EqualFold(f.Name, "Subject"):
			want = append(want, f.Name+": "+ObscuredSubject)
		default:
			want = append(want, f.Name+": "+squash(f.Value))
		}
	}
	for _, f := range outer {
		if !isContentField(f.Name) && !strings.EqualFold(f.Name, "MIME-Version") {
			got = append(got, f.Name+": "+squash(f.Value))
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("outer fields:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestEncryptSMIMEInner spells out the inner entity for the cases of the
// issue, independent of innerHeader: what the reader gets after
// decryption, byte for byte.
func TestEncryptSMIMEInner(t *testing.T) {
	c := smimetest.New(t, smimetest.Spec{Key: smimetest.RSA2048, Addresses: []string{"alice@example.org"}})
	const hdr = "From: Sender <sender@example.net>\r\nTo: Alice <alice@example.org>\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n" +
		"Message-ID: <inner@example.net>\r\nSubject: Secret plans\r\n"
	att := base64Lines(pseudoRandom(200, 7))
	cases := []struct {
		name     string
		protect  bool
		msg      string // header fields after hdr, blank line, body
		inner    string // the decrypted entity
		subject  string // the outer Subject
		unprotec string
	}{
		{"plain", false,
			"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nHello Alice.\r\n",
			"Content-Type: text/plain; charset=us-ascii\r\n\r\nHello Alice.\r\n", "Secret plans", ""},
		{"utf8-8bit", false,
			"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln — 東京\r\n",
			"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln — 東京\r\n", "Secret plans", ""},
		{"multipart-attachment", false,
			"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n" +
				"--b\r\nContent-Type: application/octet-stream; name=\"x.bin\"\r\nContent-Disposition: attachment; filename=\"x.bin\"\r\n" +
				"Content-Transfer-Encoding: base64\r\n\r\n" + att + "--b--\r\n",
			"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n" +
				"--b\r\nContent-Type: application/octet-stream; name=\"x.bin\"\r\nContent-Disposition: attachment; filename=\"x.bin\"\r\n" +
				"Content-Transfer-Encoding: base64\r\n\r\n" + att + "--b--\r\n", "Secret plans", ""},
		{"signed-protect", true,
			"MIME-Version: 1.0\r\nContent-Type: multipart/signed; micalg=pgp-sha256; protocol=\"application/pgp-signature\"; boundary=\"s\"\r\n\r\n" +
				"--s\r\nContent-Type: text/plain\r\n\r\nSigned.  \r\n--s\r\nContent-Type: application/pgp-signature\r\n\r\nSIG\r\n--s--\r\n",
			"Content-Type: multipart/signed; micalg=pgp-sha256; protocol=\"application/pgp-signature\"; boundary=\"s\"\r\n\r\n" +
				"--s\r\nContent-Type: text/plain\r\n\r\nSigned.  \r\n--s\r\nContent-Type: application/pgp-signature\r\n\r\nSIG\r\n--s--\r\n",
			"Secret plans", UnprotectedSigned},
		{"protect", true,
			"Thread-Topic: Secret plans\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello.\r\n",
			"Content-Type: text/plain; charset=utf-8; protected-headers=\"v1\"; hp=\"cipher\"\r\n" +
				"Subject: Secret plans\r\nFrom: Sender <sender@example.net>\r\nTo: Alice <alice@example.org>\r\n" +
				"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <inner@example.net>\r\nThread-Topic: Secret plans\r\n" +
				"HP-Outer: Subject: [...]\r\nHP-Outer: From: Sender <sender@example.net>\r\nHP-Outer: To: Alice <alice@example.org>\r\n" +
				"HP-Outer: Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nHP-Outer: Message-ID: <inner@example.net>\r\n\r\nHello.\r\n",
			"[...]", ""},
		{"no-mime", false,
			"\r\nBackup für Größe ✓\r\n",
			"Content-Type: text/plain; charset=utf-8\r\n\r\nBackup für Größe ✓\r\n", "Secret plans", ""},
		{"no-mime-ascii-protect", true,
			"\r\nBackup done.\r\n",
			"Content-Type: text/plain; charset=us-ascii; protected-headers=\"v1\"; hp=\"cipher\"\r\n" +
				"Subject: Secret plans\r\nFrom: Sender <sender@example.net>\r\nTo: Alice <alice@example.org>\r\n" +
				"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <inner@example.net>\r\n" +
				"HP-Outer: Subject: [...]\r\nHP-Outer: From: Sender <sender@example.net>\r\nHP-Outer: To: Alice <alice@example.org>\r\n" +
				"HP-Outer: Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nHP-Outer: Message-ID: <inner@example.net>\r\n\r\nBackup done.\r\n",
			"[...]", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fields, body := Split([]byte(hdr + tc.msg))
			res, err := EncryptSMIME(fields, body, []*x509.Certificate{c.Cert}, Options{ProtectHeaders: tc.protect})
			if err != nil {
				t.Fatal(err)
			}
			outer, inner, _ := smimeOpen(t, fields, res, smime.Options{}, c)
			if string(inner) != tc.inner {
				t.Errorf("inner entity:\n%q\nwant\n%q", inner, tc.inner)
			}
			if v, _ := get(outer, "Subject"); v != tc.subject {
				t.Errorf("outer Subject %q, want %q", v, tc.subject)
			}
			if _, ok := get(outer, "Thread-Topic"); ok && tc.protect {
				t.Errorf("Thread-Topic stays outside with header protection")
			}
			if res.Unprotected != tc.unprotec {
				t.Errorf("Unprotected = %q, want %q", res.Unprotected, tc.unprotec)
			}
		})
	}
}

// TestEncryptSMIMEChanges spells out the header changes: existing
// Content-* fields named by the S/MIME entity are set in place (the first
// of each name), the others deleted highest index first, the missing ones
// and MIME-Version added, the Subject obscured and Thread-Topic removed
// with header protection.
func TestEncryptSMIMEChanges(t *testing.T) {
	c := smimetest.New(t, smimetest.Spec{Addresses: []string{"alice@example.org"}})
	fields := []Field{
		{"From", "a@example.net"},
		{"Content-Type", "text/plain"},
		{"Content-Transfer-Encoding", "8bit"},
		{"Subject", "secret"},
		{"Thread-Topic", "secret"},
		{"content-type", "text/html"}, // a malformed second Content-Type
		{"Content-Language", "de"},
		{"Content-Disposition", "inline"},
	}
	res, err := EncryptSMIME(fields, []byte("x\r\n"), []*x509.Certificate{c.Cert}, Options{ProtectHeaders: true, SMIME: smime.Options{Cipher: smime.AES256GCM}})
	if err != nil {
		t.Fatal(err)
	}
	ct := "application/pkcs7-mime; smime-type=authEnveloped-data; name=smime.p7m"
	want := []Change{
		{Set, "Content-Type", 1, ct},
		{Set, "Content-Transfer-Encoding", 1, "base64"},
		{Set, "Subject", 1, ObscuredSubject},
		{Set, "Content-Disposition", 1, "attachment; filename=smime.p7m"},
		{Delete, "Content-Language", 1, ""},
		{Delete, "content-type", 2, ""},
		{Delete, "Thread-Topic", 1, ""},
		{Add, "MIME-Version", 0, "1.0"},
		{Add, "Content-Description", 0, "S/MIME Encrypted Message"},
	}
	if fmt.Sprint(res.Changes) != fmt.Sprint(want) {
		t.Fatalf("changes:\n got %v\nwant %v", res.Changes, want)
	}
	wantFields := []Field{{"From", "a@example.net"}, {"Content-Type", ct}, {"Content-Transfer-Encoding", "base64"},
		{"Subject", "[...]"}, {"Content-Disposition", "attachment; filename=smime.p7m"},
		{"MIME-Version", "1.0"}, {"Content-Description", "S/MIME Encrypted Message"}}
	if got := Apply(fields, res.Changes); fmt.Sprint(got) != fmt.Sprint(wantFields) {
		t.Fatalf("applied:\n got %v\nwant %v", got, wantFields)
	}
}

// TestEncryptSMIMEAlreadyEncrypted checks that the milter's own detector
// sees EncryptSMIME's output (both smime-types) as already encrypted, so
// that it is never encrypted twice, and the refusals.
func TestEncryptSMIMEAlreadyEncrypted(t *testing.T) {
	c := smimetest.New(t, smimetest.Spec{Addresses: []string{"alice@example.org"}})
	fields, body := Split([]byte(crlf(stdHeader + "Subject: hi\nContent-Type: text/plain\n\nHello\n")))
	for _, o := range []smime.Options{{}, {Cipher: smime.AES256GCM}} {
		res, err := EncryptSMIME(fields, body, []*x509.Certificate{c.Cert}, Options{SMIME: o})
		if err != nil {
			t.Fatal(err)
		}
		if !AlreadyEncrypted(Apply(fields, res.Changes), res.Body) {
			t.Errorf("%v: AlreadyEncrypted does not recognise the result", o.Cipher)
		}
	}
}

func TestEncryptSMIMERefuses(t *testing.T) {
	fields, body := Split([]byte(crlf(stdHeader + "Subject: hi\n\nHello\n")))
	if _, err := EncryptSMIME(fields, body, nil, Options{}); !errors.Is(err, ErrNoKeys) {
		t.Errorf("no certificates: %v, want ErrNoKeys", err)
	}
	ed := smimetest.New(t, smimetest.Spec{Key: smimetest.Ed25519, Addresses: []string{"alice@example.org"}, KeyUsage: x509.KeyUsageDigitalSignature})
	ok := smimetest.New(t, smimetest.Spec{Addresses: []string{"bob@example.org"}})
	if res, err := EncryptSMIME(fields, body, []*x509.Certificate{ok.Cert, ed.Cert}, Options{}); !errors.Is(err, smime.ErrKeyType) {
		t.Errorf("an Ed25519 certificate: %v, %v; want smime.ErrKeyType", res, err)
	}
	if _, err := EncryptSMIME(fields, body, []*x509.Certificate{ok.Cert}, Options{SMIME: smime.Options{Cipher: 7}}); err == nil {
		t.Error("an unknown cipher was accepted")
	}
}

// FuzzEncryptSMIME: any message, with and without header protection and
// with either cipher, encrypts without error, leaves its input alone,
// gets an outer header with the S/MIME entity's fields once each and no
// other Content-* field, and decrypts to the original body byte for byte
// after an inner header that passes the PGP/MIME tests' oracle.
func FuzzEncryptSMIME(f *testing.F) {
	for _, m := range fuzzMessages() {
		f.Add([]byte(m), false)
	}
	f.Add([]byte(smimeInteropMessage), true)
	c := smimetest.New(f, smimetest.Spec{Key: smimetest.RSA2048, Addresses: []string{"alice@example.org"}})
	certs := []*x509.Certificate{c.Cert}
	f.Fuzz(func(t *testing.T, data []byte, gcm bool) {
		fields, body := Split(data)
		orig := bytes.Clone(data)
		opts := smime.Options{}
		if gcm {
			opts.Cipher = smime.AES256GCM
		}
		for _, protect := range []bool{false, true} {
			res, err := EncryptSMIME(fields, body, certs, Options{ProtectHeaders: protect, SMIME: opts})
			if err != nil {
				t.Fatalf("protect=%v: EncryptSMIME: %v", protect, err)
			}
			if !bytes.Equal(data, orig) {
				t.Fatalf("EncryptSMIME modified its input")
			}
			fuzzCheckOuterSMIME(t, Apply(fields, res.Changes), opts, oracleProtects(fields, protect))
			inner, _, err := smimetest.Decrypt(smimeDER(t, res.Body), c.Cert, c.Key)
			if err != nil {
				t.Fatalf("protect=%v: %v", protect, err)
			}
			if _, ib := Split(inner); !bytes.Equal(ib, body) {
				t.Fatalf("protect=%v: inner body %q, want %q", protect, fuzzShort(ib), fuzzShort(body))
			}
			fuzzCheckInner(t, inner, fields, body, oracleProtects(fields, protect))
		}
	})
}

// checkSMIMEContent checks the MIME fields of an outer header: each
// S/MIME entity field exactly once with its value, no other Content-*
// field, and a MIME-Version (with oneVersion, exactly one, "1.0": the
// message had none or one).
func checkSMIMEContent(t testing.TB, outer []Field, opts smime.Options, oneVersion bool) {
	t.Helper()
	want := map[string]string{}
	for _, f := range smime.Fields(opts) {
		want[strings.ToLower(f.Name)] = f.Value
	}
	seen := map[string]int{}
	for _, f := range outer {
		name := strings.ToLower(f.Name)
		seen[name]++
		switch {
		case isContentField(f.Name):
			if w, ok := want[name]; !ok || f.Value != w {
				t.Errorf("outer %s: %q, want %q", f.Name, f.Value, w)
			}
		case name == "mime-version" && oneVersion && strings.TrimSpace(f.Value) != "1.0":
			t.Errorf("outer MIME-Version: %q", f.Value)
		}
	}
	for name := range want {
		if seen[name] != 1 {
			t.Errorf("outer %s appears %d times", name, seen[name])
		}
	}
	if seen["mime-version"] == 0 || oneVersion && seen["mime-version"] != 1 {
		t.Errorf("outer MIME-Version appears %d times", seen["mime-version"])
	}
}

// fuzzCheckOuterSMIME checks an outer header: checkSMIMEContent, and with
// header protection no readable Subject or concealed field.
func fuzzCheckOuterSMIME(t *testing.T, outer []Field, opts smime.Options, protect bool) {
	t.Helper()
	checkSMIMEContent(t, outer, opts, false)
	if !protect {
		return
	}
	for _, f := range outer {
		switch {
		case strings.EqualFold(f.Name, "Subject") && f.Value != ObscuredSubject:
			t.Errorf("outer Subject %q with header protection", f.Value)
		case oracleIsConcealed(f.Name):
			t.Errorf("outer %s %q with header protection", f.Name, f.Value)
		}
	}
}
