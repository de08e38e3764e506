package crypto

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// PGP/inline tests. The expected content of every part is found with the
// standard library's MIME parsers (net/mail, mime/multipart raw parts,
// mime/quotedprintable, encoding/base64), independently of inline.go; the
// result is taken apart the same way and every encrypted part decrypted,
// by go-crypto and by gpg, sq and rnp.

// inlineLeaf is one leaf part: for the original, its decoded content; for
// the result, its ciphertext.
type inlineLeaf struct {
	inline  bool   // a text/plain part shown as text (armour), not a file
	charset string // declared charset ("" when none)
	name    string // the result's attachment file name
	note    bool   // the clear InlineNote of the result
	data    []byte
}

// stdLeaves walks a message with the standard library and returns its
// leaf parts in order. ok is false when the standard library cannot read
// the message (the fuzz target then checks decryption only).
func stdLeaves(raw []byte) (leaves []inlineLeaf, err error) {
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	body, _ := io.ReadAll(m.Body)
	return stdEntity(textproto.MIMEHeader(m.Header), body, "text/plain", 0)
}

func stdEntity(h textproto.MIMEHeader, body []byte, defType string, depth int) ([]inlineLeaf, error) {
	if depth > 20 {
		return nil, errors.New("too deep")
	}
	mt, params := defType, map[string]string{}
	if v := h.Get("Content-Type"); v != "" {
		var err error
		if mt, params, err = mime.ParseMediaType(v); err != nil {
			return nil, err
		}
	}
	if strings.HasPrefix(mt, "multipart/") {
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		var out []inlineLeaf
		for {
			p, err := mr.NextRawPart()
			if err == io.EOF {
				return out, nil
			}
			if err != nil {
				return nil, err
			}
			pb, err := io.ReadAll(p)
			if err != nil {
				return nil, err
			}
			d := "text/plain"
			if mt == "multipart/digest" {
				d = "message/rfc822"
			}
			ls, err := stdEntity(p.Header, pb, d, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, ls...)
		}
	}
	var data []byte
	switch cte := strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding"))); cte {
	case "", "7bit", "8bit", "binary":
		data = body
	case "quoted-printable":
		var err error
		if data, err = io.ReadAll(quotedprintable.NewReader(bytes.NewReader(body))); err != nil {
			return nil, err
		}
	case "base64":
		var err error
		if data, err = io.ReadAll(base64.NewDecoder(base64.StdEncoding, bytes.NewReader(body))); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("transfer encoding %q", cte)
	}
	disp, dps, _ := mime.ParseMediaType(h.Get("Content-Disposition"))
	inline := mt == "text/plain" && disp != "attachment" && dps["filename"] == "" && params["name"] == ""
	return []inlineLeaf{{inline: inline, charset: params["charset"], data: data}}, nil
}

// resultLeaves takes the delivered inline message apart and checks each
// leaf's form: text/plain, 7bit, one armoured message (or the note); or
// an application/octet-stream attachment NAME.pgp in base64.
func resultLeaves(t testing.TB, msg []byte) []inlineLeaf {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		t.Fatalf("the result does not parse: %v", err)
	}
	if v := m.Header.Get("MIME-Version"); v != "1.0" {
		t.Errorf("MIME-Version = %q", v)
	}
	body, _ := io.ReadAll(m.Body)
	var out []inlineLeaf
	var walk func(h textproto.MIMEHeader, body []byte)
	walk = func(h textproto.MIMEHeader, body []byte) {
		mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
		if err != nil {
			t.Fatalf("result Content-Type %q: %v", h.Get("Content-Type"), err)
		}
		for k := range h {
			switch k {
			case "Content-Type", "Content-Transfer-Encoding", "Content-Disposition":
			default:
				if strings.HasPrefix(k, "Content-") {
					t.Errorf("a result part has %s: %q", k, h.Get(k))
				}
			}
		}
		cte := h.Get("Content-Transfer-Encoding")
		switch {
		case strings.HasPrefix(mt, "multipart/"):
			if mt == "multipart/signed" {
				t.Errorf("multipart/signed in the result: its parts are no longer what was signed")
			}
			if !strings.HasPrefix(params["boundary"], "=_lacre_") {
				t.Errorf("boundary %q is not a new one", params["boundary"])
			}
			mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
			for {
				p, err := mr.NextRawPart()
				if err == io.EOF {
					return
				}
				if err != nil {
					t.Fatalf("result multipart: %v", err)
				}
				pb, _ := io.ReadAll(p)
				walk(p.Header, pb)
			}
		case mt == "text/plain":
			if cte != "7bit" {
				t.Errorf("text part with Content-Transfer-Encoding %q", cte)
			}
			for _, c := range body {
				if c >= 0x80 {
					t.Fatalf("text part with 8-bit content")
				}
			}
			if bytes.HasPrefix(body, []byte("This message is encrypted with OpenPGP (PGP/inline).")) {
				out = append(out, inlineLeaf{note: true, data: body})
				return
			}
			if !bytes.HasPrefix(body, []byte("-----BEGIN PGP MESSAGE-----\r\n")) ||
				!bytes.HasSuffix(bytes.TrimRight(body, "\r\n"), []byte("-----END PGP MESSAGE-----")) {
				t.Fatalf("text part is not one armoured message: %.200q", body)
			}
			out = append(out, inlineLeaf{inline: true, charset: params["charset"], data: body})
		case mt == "application/octet-stream":
			disp, dps, err := mime.ParseMediaType(h.Get("Content-Disposition"))
			if err != nil || disp != "attachment" || !strings.HasSuffix(dps["filename"], ".pgp") || params["name"] != dps["filename"] {
				t.Fatalf("attachment header %q / %q", h.Get("Content-Type"), h.Get("Content-Disposition"))
			}
			if cte != "base64" {
				t.Errorf("attachment with Content-Transfer-Encoding %q", cte)
			}
			ct, err := io.ReadAll(base64.NewDecoder(base64.StdEncoding, bytes.NewReader(body)))
			if err != nil {
				t.Fatalf("attachment base64: %v", err)
			}
			out = append(out, inlineLeaf{name: dps["filename"], data: ct})
		default:
			t.Fatalf("a result leaf of type %s", mt)
		}
	}
	walk(textproto.MIMEHeader(m.Header), body)
	return out
}

// inlineDecrypt decrypts one armoured or binary OpenPGP message.
type inlineDecrypt func(ct []byte) (plain, stderr []byte, err error)

// goDecrypt decrypts with go-crypto, checking integrity.
func goDecrypt(secret ...*openpgp.Entity) inlineDecrypt {
	return func(ct []byte) ([]byte, []byte, error) {
		var r io.Reader = bytes.NewReader(ct)
		if bytes.HasPrefix(ct, []byte("-----BEGIN")) {
			blk, err := armor.Decode(r)
			if err != nil {
				return nil, nil, err
			}
			r = blk.Body
		}
		md, err := openpgp.ReadMessage(r, openpgp.EntityList(secret), nil, nil)
		if err != nil {
			return nil, nil, err
		}
		pt, err := io.ReadAll(md.UnverifiedBody)
		if err == nil && !md.IsEncrypted {
			err = errors.New("not encrypted")
		}
		return pt, nil, err
	}
}

// checkInline checks a delivered inline message against the original
// (raw): the same leaves in the same order, text parts inline with the
// original charset, everything else as .pgp files, each decrypting with
// dec to the original decoded content byte for byte.
func checkInline(t testing.TB, raw, msg []byte, dec inlineDecrypt) {
	t.Helper()
	want, err := stdLeaves(raw)
	if err != nil {
		t.Fatalf("the standard library cannot read the test message: %v", err)
	}
	checkLeaves(t, want, resultLeaves(t, msg), dec)
}

func checkLeaves(t testing.TB, want, got []inlineLeaf, dec inlineDecrypt) {
	t.Helper()
	if len(got) > 0 && got[0].note {
		if len(want) != 1 || want[0].inline || len(got) != 2 {
			t.Fatalf("a clear note, but the message is not a single non-text part (%d leaves)", len(want))
		}
		if !bytes.Contains(got[0].data, []byte(asciiOnly(got[1].name))) {
			t.Errorf("the note does not name the attachment %q: %q", got[1].name, got[0].data)
		}
		got = got[1:]
	}
	if len(got) != len(want) {
		t.Fatalf("%d leaves in the result, want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.note {
			t.Fatalf("leaf %d: a clear note", i)
		}
		if g.inline != w.inline {
			t.Fatalf("leaf %d: inline %v, want %v", i, g.inline, w.inline)
		}
		if w.inline {
			cs := w.charset
			if cs == "" {
				_, ps, _ := mime.ParseMediaType(defaultContentType(w.data))
				cs = ps["charset"]
			}
			if g.charset != cs {
				t.Errorf("leaf %d: charset %q, want %q", i, g.charset, cs)
			}
		}
		plain, stderr, err := dec(g.data)
		if err != nil {
			t.Fatalf("leaf %d (%d bytes) does not decrypt: %v\n%s", i, len(g.data), err, stderr)
		}
		if !bytes.Equal(plain, w.data) {
			t.Fatalf("leaf %d decrypts to %d bytes %.120q, want %d bytes %.120q", i, len(plain), plain, len(w.data), w.data)
		}
	}
}

// inlineCase is one test message.
type inlineCase struct {
	name string
	raw  []byte
}

const inlineHeader = stdHeader + "Subject: inline\n"

// crlfAll makes every line end CRLF, also in text that has some already.
func crlfAll(s string) string { return crlf(strings.ReplaceAll(s, "\r\n", "\n")) }

// inlineCases are the messages of the round-trip and interoperability
// tests.
func inlineCases() []inlineCase {
	att := pseudoRandom(3000, 7)
	png := append([]byte("\x89PNG\r\n\x1a\n"), pseudoRandom(700, 8)...)
	html := "<html><body><p>Gr\xc3\xbc\xc3\x9fe, <b>Welt</b> \xe2\x82\xac</p></body></html>\n"
	qp := func(s string) string {
		var b bytes.Buffer
		w := quotedprintable.NewWriter(&b)
		w.Write([]byte(s))
		w.Close()
		return b.String()
	}
	c := func(name, s string) inlineCase { return inlineCase{name, []byte(crlfAll(s))} }
	return []inlineCase{
		c("ascii", inlineHeader+"MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\nHello Alice,\n\nplain ASCII.\n-- \nBob\n"),
		c("no-content-type", inlineHeader+"\nA cron job's mail, no MIME at all.\n"),
		c("no-content-type-utf8", inlineHeader+"\nK\xc3\xa4se without a charset label.\n"),
		c("utf8-8bit", inlineHeader+"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"+
			"Gr\xc3\xbc\xc3\x9fe \xe2\x80\x94 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x94\x90\n"),
		c("latin1-8bit", inlineHeader+"MIME-Version: 1.0\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n"+
			"Content-Description: a description that must not stay in clear\n\nGr\xfc\xdfe aus K\xf6ln, \xa3 and \xe9\n"),
		c("utf8-qp", inlineHeader+"MIME-Version: 1.0\nContent-Type: text/plain; charset=\"UTF-8\"; format=flowed\nContent-Transfer-Encoding: quoted-printable\n\n"+
			qp("Na\xc3\xafve caf\xc3\xa9 = "+strings.Repeat("long line ", 12)+"\n\ttab and trailing space \nend")+"\n"),
		{"latin1-base64", []byte(crlfAll(inlineHeader+"MIME-Version: 1.0\nContent-Type: text/plain; charset=ISO-8859-15\nContent-Transfer-Encoding: base64\n\n") +
			base64Lines([]byte("Pr\xe9sentation: 100 \xa4, \xbd \xbe\r\nline two\r\n")))},
		{"mixed-text-attachment", []byte(crlfAll(inlineHeader+"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"outer\"\n\n"+
			"This is a multi-part message in MIME format.\n--outer\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"+
			"See the attachment, Bj\xc3\xb6rn.\n\n--outer\nContent-Type: application/octet-stream; name=\"data.bin\"\n"+
			"Content-Disposition: attachment; filename=\"data.bin\"\nContent-Transfer-Encoding: base64\n\n") +
			base64Lines(att) + crlfAll("--outer--\nepilogue text\n"))},
		c("alternative", inlineHeader+"MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=alt\n\n"+
			"--alt\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"+qp("Gr\xc3\xbc\xc3\x9fe, Welt \xe2\x82\xac\n")+
			"\n--alt\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"+qp(html)+"\n--alt--\n"),
		{"nested", []byte(crlfAll(inlineHeader+"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"---BEGIN PGP MESSAGE-----\"\n\n"+
			"-----BEGIN PGP MESSAGE-----\nContent-Type: multipart/related; boundary=rel\n\n"+
			"--rel\nContent-Type: multipart/alternative; boundary=alt\n\n"+
			"--alt\n\ntext part without any header field\n--alt\nContent-Type: text/html; charset=utf-8\n\n"+html+"--alt--\n"+
			"--rel\nContent-Type: image/png\nContent-ID: <img@x>\nContent-Transfer-Encoding: base64\n\n") + base64Lines(png) +
			crlfAll("--rel--\n-----BEGIN PGP MESSAGE-----\nContent-Type: text/plain; charset=us-ascii; name=\"notes.txt\"\nContent-Disposition: attachment; filename*=utf-8''K%C3%A4se%20notes.txt\n\n"+
				"a text file, sent as a file\n-----BEGIN PGP MESSAGE-----\nContent-Type: text/plain; name=\"log.txt\"\n\na named text part is a file too\n-----BEGIN PGP MESSAGE-----\nContent-Type: message/rfc822\n\nFrom: x@example.org\nSubject: forwarded\n\nforwarded body\n"+
				"-----BEGIN PGP MESSAGE-------\n"))},
		c("signed", inlineHeader+"MIME-Version: 1.0\nContent-Type: multipart/signed; micalg=pgp-sha256; protocol=\"application/pgp-signature\"; boundary=s\n\n"+
			"--s\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\nsigned text =E2=9C=93\n"+
			"--s\nContent-Type: application/pgp-signature; name=\"signature.asc\"\n\n-----BEGIN PGP SIGNATURE-----\n\niQEz\n=abcd\n-----END PGP SIGNATURE-----\n--s--\n"),
		c("html-only", inlineHeader+"MIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"+html),
		{"pdf-only", []byte(crlfAll(inlineHeader+"MIME-Version: 1.0\nContent-Type: application/pdf\nContent-Disposition: attachment; filename=\"../x/report.pdf\"\nContent-Transfer-Encoding: base64\n\n") +
			base64Lines(pseudoRandom(1000, 9)))},
		c("empty-text", inlineHeader+"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n"),
		// Two text parts in other charsets around an unnamed image: each
		// text part inline with its own charset, the image a file.
		{"mixed-two-texts", []byte(crlfAll(inlineHeader+"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=m\n\n"+
			"--m\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\nGr=FC=DFe vor dem Bild\n"+
			"--m\nContent-Type: image/jpeg\nContent-Transfer-Encoding: base64\n\n") + base64Lines(pseudoRandom(400, 10)) +
			crlfAll("--m\nContent-Type: text/plain; charset=windows-1252\nContent-Transfer-Encoding: 8bit\n\n\x93nach\x94 dem Bild \x80\n--m--\n"))},
	}
}

func TestEncryptInlineRoundTrip(t *testing.T) {
	for _, kind := range []testkeys.Kind{testkeys.Curve25519, testkeys.RSA3072, testkeys.V6} {
		t.Run(kind.String(), func(t *testing.T) {
			key, secret := keystest.Key(t, kind, "alice@example.org")
			key2, secret2 := keystest.Key(t, testkeys.Curve25519, "bob@example.org")
			for _, c := range inlineCases() {
				t.Run(c.name, func(t *testing.T) {
					fields, body := Split(c.raw)
					orig := bytes.Clone(c.raw)
					res, err := EncryptInline(fields, body, []*keys.Key{key, key2, key}, Options{})
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(c.raw, orig) {
						t.Fatal("EncryptInline modified its input")
					}
					msg := delivered(t, fields, res)
					// Each recipient alone decrypts every part: one ciphertext for all.
					checkInline(t, c.raw, msg, goDecrypt(secret))
					checkInline(t, c.raw, msg, goDecrypt(secret2))
					// A single text part is one armour block: the milter's own
					// check passes it unchanged if it comes by again.
					outFields, outBody := Split(msg)
					single := !bytes.Contains(c.raw, []byte("multipart/")) && !strings.HasSuffix(c.name, "-only")
					if AlreadyEncrypted(outFields, outBody) != single {
						t.Errorf("AlreadyEncrypted = %v, want %v", !single, single)
					}
					// A message of one non-text part gets the clear note first.
					if got := resultLeaves(t, msg); (c.name == "html-only" || c.name == "pdf-only") != got[0].note {
						t.Errorf("note: %v", got[0].note)
					}
					if bytes.Contains(msg, []byte("description that must not")) || bytes.Contains(msg, []byte("epilogue text")) ||
						bytes.Contains(msg, []byte("multi-part message in MIME")) {
						t.Error("clear text of the original survives in the result")
					}
				})
			}
		})
	}
}

// TestEncryptInlineAttachmentNames: every part that is not inline text
// becomes NAME.pgp, NAME the original file name (its last path element,
// RFC 2231 decoded) or one by media type, in the order of the parts.
func TestEncryptInlineAttachmentNames(t *testing.T) {
	key, _ := keystest.Key(t, testkeys.Curve25519, "alice@example.org")
	want := map[string][]string{
		"mixed-text-attachment": {"data.bin.pgp"},
		"alternative":           {"message.html.pgp"},
		"nested":                {"message.html.pgp", "image.png.pgp", "Käse notes.txt.pgp", "log.txt.pgp", "message.eml.pgp"},
		"signed":                {"signature.asc.pgp"},
		"html-only":             {"message.html.pgp"},
		"pdf-only":              {"report.pdf.pgp"},
		"mixed-two-texts":       {"image.jpg.pgp"},
	}
	for _, c := range inlineCases() {
		fields, body := Split(c.raw)
		res, err := EncryptInline(fields, body, []*keys.Key{key}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, l := range resultLeaves(t, delivered(t, fields, res)) {
			if !l.inline && !l.note {
				got = append(got, l.name)
			}
		}
		if strings.Join(got, "|") != strings.Join(want[c.name], "|") {
			t.Errorf("%s: attachments %q, want %q", c.name, got, want[c.name])
		}
	}
}

// TestEncryptInlineHeader checks the outer header edits.
func TestEncryptInlineHeader(t *testing.T) {
	key, _ := keystest.Key(t, testkeys.Curve25519, "alice@example.org")
	raw := crlf(inlineHeader + "Content-Type: text/plain;\n charset=iso-8859-1\nContent-Description: secret words\n" +
		"Content-Transfer-Encoding: quoted-printable\nContent-Language: de\n\nK=F6ln\n")
	fields, body := Split([]byte(raw))
	res, err := EncryptInline(fields, body, []*keys.Key{key}, Options{ProtectHeaders: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Unprotected != UnprotectedInline {
		t.Errorf("Unprotected = %q", res.Unprotected)
	}
	out := Apply(fields, res.Changes)
	var got []string
	for _, f := range out {
		if isContentField(f.Name) || strings.EqualFold(f.Name, "MIME-Version") || f.Name == "Subject" {
			got = append(got, f.Name+": "+f.Value)
		}
	}
	want := []string{"Subject: inline", "Content-Type: text/plain; charset=iso-8859-1", "Content-Transfer-Encoding: 7bit", "MIME-Version: 1.0"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("header:\n got %q\nwant %q", got, want)
	}
	if !bytes.HasPrefix(res.Body, []byte("-----BEGIN PGP MESSAGE-----\r\n")) {
		t.Errorf("body does not start with the armour: %.60q", res.Body)
	}
}

// TestEncryptInlineErrors: bad input is an ErrInlineMIME error, never a
// panic, never a partial result.
func TestEncryptInlineErrors(t *testing.T) {
	key, _ := keystest.Key(t, testkeys.Curve25519, "alice@example.org")
	deep := "Content-Type: multipart/mixed; boundary=b0\n\n"
	for i := range maxInlineDepth + 1 {
		deep += fmt.Sprintf("--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n", i, i+1)
	}
	deep += fmt.Sprintf("--b%d\n\nx\n", maxInlineDepth+1)
	for i := maxInlineDepth + 1; i >= 0; i-- {
		deep += fmt.Sprintf("--b%d--\n", i)
	}
	many := "Content-Type: multipart/mixed; boundary=b\n\n" + strings.Repeat("--b\n\nx\n", maxInlineParts) + "--b--\n"
	for _, c := range []struct{ name, msg, want string }{
		{"unknown-cte", "Content-Transfer-Encoding: x-uuencode\n\nbegin 644 x\n", "unknown Content-Transfer-Encoding"},
		{"bad-base64", "Content-Transfer-Encoding: base64\n\n!!!not base64\n", "base64"},
		{"bad-qp", "Content-Transfer-Encoding: quoted-printable\n\na NUL \x00 is not quoted-printable\n", "quoted-printable"},
		{"bad-content-type", "Content-Type: text/plain; charset=\"open\n\nx\n", "does not parse"},
		{"no-boundary", "Content-Type: multipart/mixed\n\n--b\n\nx\n--b--\n", "without boundary"},
		{"no-closing", "Content-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n", "closing delimiter"},
		{"no-parts", "Content-Type: multipart/mixed; boundary=b\n\n--b--\n", "without parts"},
		{"mixed-line-ends", "Content-Type: multipart/mixed; boundary=b\n\n--b\r\n\r\nx\n--b--\n", "mixed line ends"},
		{"bad-part-header", "Content-Type: multipart/mixed; boundary=b\n\n--b\nnot a header\n\nx\n--b--\n", "malformed header"},
		{"multipart-base64", "Content-Type: multipart/mixed; boundary=b\nContent-Transfer-Encoding: base64\n\n--b\n\nx\n--b--\n", "multipart with"},
		{"duplicate-type", "Content-Type: text/plain\nContent-Type: text/html\n\nx\n", "twice"},
		{"bad-disposition", "Content-Type: image/png\nContent-Disposition: attachment; filename=\"x\n\nx\n", "Content-Disposition"},
		{"too-deep", deep, "nested"},
		{"too-many-parts", many, "MIME parts"},
	} {
		t.Run(c.name, func(t *testing.T) {
			fields, body := Split([]byte(c.msg))
			res, err := EncryptInline(fields, body, []*keys.Key{key}, Options{})
			if err == nil || res != nil || !errors.Is(err, ErrInlineMIME) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("EncryptInline = (result %v), %v; want an ErrInlineMIME error saying %q", res != nil, err, c.want)
			}
		})
	}
	if _, err := EncryptInline(nil, []byte("x"), nil, Options{}); !errors.Is(err, ErrNoKeys) {
		t.Errorf("no keys: %v", err)
	}
}

// The interoperability tests: every case, every part, decrypted by the
// tool with a secret key of each kind the tool reads (v6 keys are not
// read by Debian 12's tools; see interop_test.go).

func runInlineInterop(t *testing.T, tool string, load func(t *testing.T, secret []byte) inlineDecrypt) {
	for _, kind := range []testkeys.Kind{testkeys.RSA3072, testkeys.Curve25519} {
		t.Run(kind.String(), func(t *testing.T) {
			key, secret := keystest.Key(t, kind, "alice@example.org")
			dec := load(t, testkeys.ArmoredSecret(t, secret))
			for _, c := range inlineCases() {
				t.Run(c.name, func(t *testing.T) {
					fields, body := Split(c.raw)
					res, err := EncryptInline(fields, body, []*keys.Key{key}, Options{})
					if err != nil {
						t.Fatal(err)
					}
					checkInline(t, c.raw, delivered(t, fields, res), dec)
				})
			}
		})
	}
}

func TestEncryptInlineInteropGnuPG(t *testing.T) {
	gpg := lookTool(t, "gpg")
	gpgconf := lookTool(t, "gpgconf")
	t.Parallel()
	runInlineInterop(t, "gpg", func(t *testing.T, secret []byte) inlineDecrypt {
		home := gpgHome(t, gpgconf)
		common := []string{"--homedir", home, "--batch", "--yes", "--pinentry-mode", "loopback", "--no-tty",
			"--disable-dirmngr", "--no-auto-key-retrieve", "--no-auto-key-locate"}
		if _, stderr, err := runTool(home, secret, gpg, append(common, "--import")...); err != nil {
			t.Fatalf("gpg --import: %v\n%s", err, stderr)
		}
		return func(ct []byte) ([]byte, []byte, error) {
			plain, stderr, err := runTool(home, ct, gpg, append(common, "--status-fd", "2", "--decrypt")...)
			// The status lines say that the integrity check ran.
			for _, s := range []string{"[GNUPG:] DECRYPTION_OKAY", "[GNUPG:] GOODMDC"} {
				if err == nil && !bytes.Contains(stderr, []byte(s)) {
					err = fmt.Errorf("no %q status", s)
				}
			}
			return plain, stderr, err
		}
	})
}

func TestEncryptInlineInteropSequoia(t *testing.T) {
	sq := lookTool(t, "sq")
	t.Parallel()
	runInlineInterop(t, "sq", func(t *testing.T, secret []byte) inlineDecrypt {
		home := t.TempDir()
		keyFile := filepath.Join(home, "key.asc")
		if err := os.WriteFile(keyFile, secret, 0o600); err != nil {
			t.Fatal(err)
		}
		return func(ct []byte) ([]byte, []byte, error) {
			return runTool(home, ct, sq, "decrypt", "--recipient-key", keyFile)
		}
	})
}

func TestEncryptInlineInteropRNP(t *testing.T) {
	rnp := lookTool(t, "rnp")
	rnpkeys := lookTool(t, "rnpkeys")
	t.Parallel()
	runInlineInterop(t, "rnp", func(t *testing.T, secret []byte) inlineDecrypt {
		home := t.TempDir()
		keyFile := filepath.Join(t.TempDir(), "key.asc")
		if err := os.WriteFile(keyFile, secret, 0o600); err != nil {
			t.Fatal(err)
		}
		if out, stderr, err := runTool(home, nil, rnpkeys, "--homedir", home, "--import", keyFile); err != nil {
			t.Fatalf("rnpkeys --import: %v\n%s%s", err, out, stderr)
		}
		return func(ct []byte) ([]byte, []byte, error) {
			return runTool(home, ct, rnp, "--homedir", home, "--decrypt")
		}
	})
}

// TestEncryptInlineOneSessionKey: with v4 keys (SEIPDv1) every part of a
// message carries the same session-key packets, so a message costs one
// public-key operation per key, not one per part.
func TestEncryptInlineOneSessionKey(t *testing.T) {
	key, secret := keystest.Key(t, testkeys.RSA3072, "alice@example.org")
	var raw []byte
	for _, c := range inlineCases() {
		if c.name == "mixed-text-attachment" {
			raw = c.raw
		}
	}
	fields, body := Split(raw)
	res, err := EncryptInline(fields, body, []*keys.Key{key}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	msg := delivered(t, fields, res)
	checkInline(t, raw, msg, goDecrypt(secret))
	leaves := resultLeaves(t, msg)
	blk, err := armor.Decode(bytes.NewReader(leaves[0].data))
	if err != nil {
		t.Fatal(err)
	}
	text, _ := io.ReadAll(blk.Body)
	att := leaves[1].data
	n := 0
	for n < len(text) && n < len(att) && text[n] == att[n] {
		n++
	}
	// An RSA-3072 session-key packet is about 400 bytes; the encrypted
	// data after it starts with a fresh random prefix.
	if n < 384 || n > 450 {
		t.Errorf("the parts share their first %d bytes, want the session-key packet (about 400)", n)
	}
}
