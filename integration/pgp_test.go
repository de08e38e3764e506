package integration

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

// openPGPMIME checks the RFC 3156 structure of a delivered message with the
// standard library's parsers and returns its outer header and the
// armoured ciphertext.
func openPGPMIME(t testing.TB, msg []byte) (mail.Header, []byte) {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		t.Fatalf("delivered message does not parse: %v", err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/encrypted" || params["protocol"] != "application/pgp-encrypted" {
		t.Fatalf("outer Content-Type = %q (%v), want multipart/encrypted; protocol=\"application/pgp-encrypted\"", m.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	p1, err := mr.NextRawPart()
	if err != nil {
		t.Fatalf("first part: %v", err)
	}
	v, _ := io.ReadAll(p1)
	if p1.Header.Get("Content-Type") != "application/pgp-encrypted" || !bytes.Contains(v, []byte("Version: 1")) {
		t.Fatalf("first part = %q %q, want application/pgp-encrypted with Version: 1", p1.Header.Get("Content-Type"), v)
	}
	p2, err := mr.NextRawPart()
	if err != nil {
		t.Fatalf("second part: %v", err)
	}
	if mt, _, _ := mime.ParseMediaType(p2.Header.Get("Content-Type")); mt != "application/octet-stream" {
		t.Fatalf("second part Content-Type = %q", p2.Header.Get("Content-Type"))
	}
	ct, _ := io.ReadAll(p2)
	if _, err := mr.NextRawPart(); err != io.EOF {
		t.Fatalf("a third part or a broken closing boundary: %v", err)
	}
	return m.Header, ct
}

// decryptPGPMIME checks that msg is PGP/MIME, decrypts it with the secret
// keys in ring (go-crypto) and returns the outer header and the decrypted
// inner entity (MIME header fields, blank line, original body).
func decryptPGPMIME(t testing.TB, msg []byte, ring ...*openpgp.Entity) (mail.Header, []byte) {
	t.Helper()
	hdr, armored := openPGPMIME(t, msg)
	blk, err := armor.Decode(bytes.NewReader(armored))
	if err != nil {
		t.Fatalf("armour: %v", err)
	}
	md, err := openpgp.ReadMessage(blk.Body, openpgp.EntityList(ring), nil, nil)
	if err != nil {
		t.Fatalf("decrypt: %v", err)
	}
	pt, err := io.ReadAll(md.UnverifiedBody)
	if err != nil {
		t.Fatalf("decrypt (integrity check): %v", err)
	}
	if !md.IsEncrypted {
		t.Fatalf("the message is not encrypted")
	}
	return hdr, pt
}

// splitMessage returns the header (up to and including the CRLF that
// ends the last field) and the body of a CRLF message.
func splitMessage(msg []byte) (header, body []byte) {
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		return msg[:i+2], msg[i+4:]
	}
	return msg, nil
}
