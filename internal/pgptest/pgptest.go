// Package pgptest checks and decrypts PGP/MIME messages in tests, with
// the standard library's MIME parsers and go-crypto, independently of the
// code under test (package crypto). It is imported by tests only.
package pgptest

import (
	"bytes"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

// Open checks the RFC 3156 structure of msg: an outer multipart/encrypted
// with protocol application/pgp-encrypted and MIME-Version 1.0, no other
// Content-* field outside, a "Version: 1" application/pgp-encrypted part,
// an application/octet-stream part, and nothing after it. It returns the
// outer header and the armoured ciphertext.
func Open(t testing.TB, msg []byte) (mail.Header, []byte) {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		t.Fatalf("the message does not parse: %v", err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/encrypted" || params["protocol"] != "application/pgp-encrypted" {
		t.Fatalf("outer Content-Type = %q (%v), want multipart/encrypted; protocol=\"application/pgp-encrypted\"", m.Header.Get("Content-Type"), err)
	}
	if v := m.Header.Get("MIME-Version"); v != "1.0" {
		t.Errorf("MIME-Version = %q", v)
	}
	for k := range m.Header {
		if strings.HasPrefix(strings.ToLower(k), "content-") && !strings.EqualFold(k, "Content-Type") {
			t.Errorf("outer header still has %s", k)
		}
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

// Decrypt decrypts an armoured message with the secret keys in ring,
// checking its integrity (MDC or AEAD), and returns the plaintext.
func Decrypt(t testing.TB, armored []byte, ring ...*openpgp.Entity) ([]byte, *openpgp.MessageDetails) {
	t.Helper()
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
	return pt, md
}

// OpenAndDecrypt is Open, then Decrypt: it returns the outer header and
// the decrypted inner entity (its MIME header fields, a blank line, the
// original body).
func OpenAndDecrypt(t testing.TB, msg []byte, ring ...*openpgp.Entity) (mail.Header, []byte) {
	t.Helper()
	hdr, armored := Open(t, msg)
	pt, _ := Decrypt(t, armored, ring...)
	return hdr, pt
}

// DecryptFirstBlock decrypts the first armoured OpenPGP message found in
// msg with secret, without failing the test: for checks that a message
// cannot be read with a given key.
func DecryptFirstBlock(msg []byte, secret *openpgp.Entity) ([]byte, error) {
	i := bytes.Index(msg, []byte("-----BEGIN PGP MESSAGE-----"))
	if i < 0 {
		return nil, errNotEncrypted
	}
	blk, err := armor.Decode(bytes.NewReader(msg[i:]))
	if err != nil {
		return nil, err
	}
	md, err := openpgp.ReadMessage(blk.Body, openpgp.EntityList{secret}, nil, nil)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(md.UnverifiedBody)
}

var errNotEncrypted = errors.New("no armoured OpenPGP message")
