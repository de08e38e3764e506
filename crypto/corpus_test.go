package crypto

import (
	"bytes"
	"encoding/base64"
	"math/rand/v2"
	"strings"
	"testing"
)

// testMessage is one message of the round-trip corpus.
type testMessage struct {
	name string
	raw  []byte
}

func crlf(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

// pseudoRandom returns n deterministic bytes, standing in for an attachment.
func pseudoRandom(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9E3779B97F4A7C15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// base64Lines encodes b as a MIME base64 body (76-character lines).
func base64Lines(b []byte) string {
	enc := base64.StdEncoding.EncodeToString(b)
	var s strings.Builder
	s.Grow(len(enc) + len(enc)/76*2 + 2)
	for len(enc) > 76 {
		s.WriteString(enc[:76])
		s.WriteString("\r\n")
		enc = enc[76:]
	}
	s.WriteString(enc)
	s.WriteString("\r\n")
	return s.String()
}

const stdHeader = "Received: from client.example (client.example [192.0.2.1])\n" +
	"\tby mx.example.org (Postfix) with ESMTPS id 4ABCDEF;\n\tThu, 26 Nov 2026 10:00:00 +0000 (UTC)\n" +
	"From: Sender <sender@example.net>\n" +
	"To: Alice <alice@example.org>\n" +
	"Date: Thu, 26 Nov 2026 10:00:00 +0000\n" +
	"Message-ID: <corpus@example.net>\n"

// corpus returns the messages every encryption test round-trips. Each
// exercises a way real mail differs: charset, transfer encoding, MIME
// structure, signatures, line ends, size, header folding.
func corpus(large bool) []testMessage {
	att := pseudoRandom(3000, 1)
	msgs := []testMessage{
		{"ascii", []byte(crlf(stdHeader + "Subject: plain ascii\nMIME-Version: 1.0\n" +
			"Content-Type: text/plain; charset=us-ascii\n\nHello Alice,\n\nthis is plain text.\n"))},
		{"utf8-8bit", []byte(crlf(stdHeader + "Subject: =?UTF-8?Q?gr=C3=BC=C3=9Fe?=\nMIME-Version: 1.0\n" +
			"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n" +
			"Grüße aus Köln — 東京 — Ελληνικά 🙂\n"))},
		{"quoted-printable", []byte(crlf(stdHeader + "Subject: qp\nMIME-Version: 1.0\n" +
			"Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\n" +
			"Gr=FC=DFe, a soft line=\n break and a trailing space=20\n"))},
		{"base64-attachment", []byte(crlf(stdHeader+"Subject: attachment\nMIME-Version: 1.0\n"+
			"Content-Type: multipart/mixed; boundary=\"outer\"\n\n--outer\nContent-Type: text/plain\n\nSee attached.\n"+
			"--outer\nContent-Type: application/octet-stream; name=\"data.bin\"\n"+
			"Content-Disposition: attachment; filename=\"data.bin\"\nContent-Transfer-Encoding: base64\n\n") +
			base64Lines(att) + "--outer--\r\n")},
		{"alternative-html", []byte(crlf(stdHeader + "Subject: html\nMIME-Version: 1.0\n" +
			"Content-Type: multipart/alternative;\n boundary=\"alt\"\n\n--alt\nContent-Type: text/plain; charset=utf-8\n\nHi *there*\n" +
			"--alt\nContent-Type: text/html; charset=utf-8\n\n<html><body><p>Hi <b>there</b></p></body></html>\n--alt--\n"))},
		{"multipart-signed", []byte(crlf(stdHeader + "Subject: signed\nMIME-Version: 1.0\n" +
			"Content-Type: multipart/signed; micalg=pgp-sha256;\n protocol=\"application/pgp-signature\"; boundary=\"sig\"\n\n" +
			"--sig\nContent-Type: text/plain; charset=us-ascii\n\nSigned text, whitespace matters:  \n" +
			"--sig\nContent-Type: application/pgp-signature; name=\"signature.asc\"\n\n" +
			"-----BEGIN PGP SIGNATURE-----\n\niHUEARYKAB0WIQTestTestTestTestTestTestTestTestAAoJEFakeSignatureData\n=AbCd\n-----END PGP SIGNATURE-----\n--sig--\n"))},
		{"no-content-type", []byte(crlf(stdHeader + "Subject: no MIME at all\n\nJust text, no MIME headers.\n"))},
		{"lf-line-ends", []byte(stdHeader + "Subject: LF only\nMIME-Version: 1.0\nContent-Type: text/plain\n\nline one\nline two\n")},
		{"mixed-line-ends", []byte("From: a@example.net\r\nTo: alice@example.org\nSubject: mixed\r\n\r\nCRLF line\r\nLF line\nbare CR\rend\r\n")},
		{"folded-2047-headers", []byte(crlf(stdHeader + "Subject: =?UTF-8?B?8J+UkCBFbmNyeXB0ZWQ=?=\n =?ISO-8859-1?Q?_f=FCr?= you\n" +
			"Cc: =?UTF-8?Q?Bj=C3=B6rn?= <bjorn@example.org>,\n\tCarol <carol@example.org>\n" +
			"References: <a@example.net>\n <b@example.net>\nIn-Reply-To: <b@example.net>\n" +
			"MIME-Version: 1.0\nContent-Type: text/plain;\n\tcharset=\"utf-8\";\n\tformat=flowed\n" +
			"Content-Transfer-Encoding: 7bit\n\nbody\n"))},
		{"empty-body", []byte(crlf(stdHeader + "Subject: empty\n\n"))},
		{"no-final-newline", []byte(crlf(stdHeader+"Subject: no newline\n\n") + "last line without end")},
		// Issue 15: cron and scripts send 8-bit text without MIME fields.
		{"no-mime-utf8", []byte(crlf(stdHeader + "Subject: backup report\n\nBackup für Größe ✓\n"))},
		{"no-mime-latin1", []byte(crlf(stdHeader + "Subject: old mailer\n\nBackup f\xfcr Gr\xf6\xdfe\n"))},
		// Issue 15: Outlook repeats the Subject in Thread-Topic.
		{"outlook-thread-topic", []byte(crlf(stdHeader + "Subject: RE: Quarterly numbers\nThread-Topic: Quarterly numbers\n" +
			"Thread-Index: AQHZ1234567890abcdefABCDEFGH==\nMIME-Version: 1.0\n" +
			"Content-Type: text/plain; charset=\"utf-8\"\nContent-Transfer-Encoding: 8bit\n\nThe numbers are in.\n"))},
	}
	if large {
		big := pseudoRandom(10<<20/4*3, 2) // base64 turns this into a 10 MB attachment
		msgs = append(msgs, testMessage{"10MB-attachment", []byte(crlf(stdHeader+"Subject: big\nMIME-Version: 1.0\n"+
			"Content-Type: multipart/mixed; boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\nBig file.\n--b\n"+
			"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n") + base64Lines(big) + "--b--\r\n")})
	}
	return msgs
}

func TestCorpusSplitsCleanly(t *testing.T) {
	for _, m := range corpus(false) {
		fields, body := Split(m.raw)
		if len(fields) < 3 {
			t.Errorf("%s: only %d fields", m.name, len(fields))
		}
		var b bytes.Buffer
		WriteMessage(&b, fields, body)
		// Headers are rewritten with CRLF; the body must be untouched.
		if !bytes.HasSuffix(b.Bytes(), body) || !bytes.HasSuffix(m.raw, body) {
			t.Errorf("%s: body not preserved by Split/WriteMessage", m.name)
		}
	}
}
