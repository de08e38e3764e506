package crypto

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"testing"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// FuzzEncryptInline checks that EncryptInline never panics, fails only
// with ErrInlineMIME, and that whenever it succeeds the result is a
// well-formed message (every leaf one armoured text/plain part, one .pgp
// attachment or the note) whose encrypted parts all decrypt; when the
// standard library can read the original too, they decrypt to its parts'
// decoded contents, in order, byte for byte. Run it with
//
//	go test ./crypto -run '^$' -fuzz '^FuzzEncryptInline$' -fuzztime 60s -fuzzminimizetime 5s
func FuzzEncryptInline(f *testing.F) {
	for _, c := range inlineCases() {
		f.Add(c.raw)
	}
	for _, m := range fuzzMessages() {
		f.Add([]byte(m))
	}
	for _, m := range []string{
		"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n--b--\n",
		"Content-Type: multipart/mixed; boundary=b\n\n--b\r\n\r\nx\n--b--\n",
		"Content-Type: multipart/digest; boundary=d\n\n--d\n\nFrom: a\n\nm\n--d\nContent-Type: text/plain\n\nt\n--d--\n",
		"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: multipart/mixed; boundary=c\n\n--c\n\ny\n--c--\n--b--\n",
		"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\nSGVsbG8\n",
		"Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\na=\nb=C3=A4 =ZZ\n",
		"Content-Type: image/gif; name=\"a/b\\\\c.gif\"\nContent-Transfer-Encoding: base64\n\nR0lGODlh\n",
		"Content-Type: text/plain; name*=utf-8''%E2%82%AC.txt\n\nfile\n",
	} {
		f.Add([]byte(m))
	}
	key, secret := keystest.Key(f, testkeys.Curve25519, "alice@example.org")
	to := []*keys.Key{key}
	dec := goDecrypt(secret)
	f.Fuzz(func(t *testing.T, data []byte) {
		fields, body := Split(data)
		orig := bytes.Clone(data)
		rnd := rand.NewChaCha8(sha256.Sum256(data))
		res, err := EncryptInline(fields, body, to, Options{Rand: rnd})
		if !bytes.Equal(data, orig) {
			t.Fatal("EncryptInline modified its input")
		}
		if err != nil {
			if !errors.Is(err, ErrInlineMIME) {
				t.Fatalf("an error that is not ErrInlineMIME: %v", err)
			}
			return
		}
		if n := bytes.Count(res.Body, []byte("\n")); n != bytes.Count(res.Body, []byte("\r\n")) {
			t.Error("the new body has a bare LF")
		}
		// The result, with a header the standard library always reads: the
		// Content-* fields after the changes only (a MIME-Version other than
		// 1.0 is kept as sent).
		hdr := []Field{{"MIME-Version", "1.0"}}
		for _, f := range Apply(fields, res.Changes) {
			if isContentField(f.Name) {
				hdr = append(hdr, f)
			}
		}
		var m bytes.Buffer
		if err := WriteMessage(&m, hdr, res.Body); err != nil {
			t.Fatal(err)
		}
		got := resultLeaves(t, m.Bytes())
		// The original as Split read it (a line that is no header field
		// starts the body; the standard library may disagree).
		var norm bytes.Buffer
		if err := WriteMessage(&norm, fields, body); err != nil {
			t.Fatal(err)
		}
		want, err := stdLeaves(norm.Bytes())
		if err != nil || !fuzzStdlibReadable(fields) {
			// The standard library cannot read the original: every part
			// must still decrypt.
			for i, g := range got {
				if g.note {
					continue
				}
				if _, _, err := dec(g.data); err != nil {
					t.Fatalf("leaf %d does not decrypt: %v", i, err)
				}
			}
			return
		}
		checkLeaves(t, want, got, dec)
	})
}
