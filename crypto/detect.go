package crypto

import (
	"bytes"
	"io"
	"mime"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
)

// EncryptedByHeader reports whether the header fields alone show that the
// message is already end-to-end encrypted, so the milter can decide before
// the body arrives:
//   - multipart/encrypted, whatever the protocol (RFC 1847 §2.2, RFC 3156 §4);
//   - application/pkcs7-mime or application/x-pkcs7-mime, unless its
//     smime-type says it is only signed (RFC 8551 §3.2.2);
//   - a file named *.p7m (RFC 8551 §3.2.1).
func EncryptedByHeader(fields []Field) bool {
	ct, ok := get(fields, "Content-Type")
	if !ok {
		return false
	}
	_, params := mediaType(ct)
	switch asciiMediaType(ct) {
	case "multipart/encrypted":
		return true
	case "application/pkcs7-mime", "application/x-pkcs7-mime":
		// An allowlist (RFC 8551 §3.2.2): signed-data, certs-only and
		// compressed-data are readable by anyone and get encrypted. The
		// parameter must parse cleanly and appear once: a malformed or
		// repeated one must not let a readable message pass.
		_, strict, err := mime.ParseMediaType(unfold(ct))
		if err != nil || strings.Count(strings.ToLower(ct), "smime-type") > 1 {
			return false
		}
		switch strings.ToLower(strict["smime-type"]) {
		case "", "enveloped-data", "authenveloped-data":
			return true
		}
		return false
	case "application/octet-stream":
		// The legacy form: an S/MIME object sent as a *.p7m file
		// (RFC 8551 §3.2.1). Only on this type, and only when the fields
		// parse cleanly: a malformed header may lead to more encryption,
		// never to less.
		if _, _, err := mime.ParseMediaType(unfold(ct)); err == nil && strings.HasSuffix(strings.ToLower(params["name"]), ".p7m") {
			return true
		}
		if cd, ok := get(fields, "Content-Disposition"); ok {
			if _, dp, err := mime.ParseMediaType(unfold(cd)); err == nil && strings.HasSuffix(strings.ToLower(dp["filename"]), ".p7m") {
				return true
			}
		}
	}
	return false
}

var (
	pgpBegin = []byte("-----BEGIN PGP MESSAGE-----")
	pgpEnd   = []byte("-----END PGP MESSAGE-----")
)

// AlreadyEncrypted reports whether the message must pass unchanged because
// it is already encrypted: EncryptedByHeader, or a text/plain (or untyped)
// body that is one inline OpenPGP message (RFC 4880 armour) and nothing
// else. Text around an armour block is not encrypted, so such a message is
// encrypted again: when in doubt, encrypt; double encryption costs a
// click, a wrong "already encrypted" leaks the text.
func AlreadyEncrypted(fields []Field, body []byte) bool {
	if EncryptedByHeader(fields) {
		return true
	}
	if ct, ok := get(fields, "Content-Type"); ok {
		if asciiMediaType(ct) != "text/plain" {
			return false
		}
	}
	if cte, ok := get(fields, "Content-Transfer-Encoding"); ok {
		// Base64 would hide the markers; the rare base64-encoded inline
		// PGP message is simply encrypted again.
		if strings.EqualFold(strings.TrimSpace(unfold(cte)), "base64") {
			return false
		}
	}
	b := bytes.TrimSpace(body)
	// Exactly one block: text between a second pair of markers would be
	// clear text passing as encrypted.
	if !bytes.HasPrefix(b, pgpBegin) || !bytes.HasSuffix(b, pgpEnd) ||
		bytes.Count(b, pgpBegin) != 1 || bytes.Count(b, pgpEnd) != 1 {
		return false
	}
	return startsWithSessionKey(b)
}

// startsWithSessionKey reports whether an armoured "PGP MESSAGE" really is
// encrypted: its first packet (after Marker packets) must be a session-key
// packet, PKESK or SKESK (RFC 9580 §10.3). A signed-only message uses the
// same armour header and is readable by anyone.
func startsWithSessionKey(armored []byte) bool {
	blk, err := armor.Decode(bytes.NewReader(armored))
	if err != nil || blk.Type != "PGP MESSAGE" {
		return false
	}
	for range 4 { // a few Marker packets at most
		var hdr [1]byte
		if _, err := io.ReadFull(blk.Body, hdr[:]); err != nil || hdr[0]&0x80 == 0 {
			return false
		}
		var tag byte
		var length int
		if hdr[0]&0x40 != 0 { // new format (RFC 9580 §4.2.1)
			tag = hdr[0] & 0x3F
			var l [1]byte
			if _, err := io.ReadFull(blk.Body, l[:]); err != nil || l[0] >= 192 {
				// A marker is 3 bytes long; longer first packets are not markers.
				return tag == 1 || tag == 3
			}
			length = int(l[0])
		} else { // legacy format (RFC 9580 §4.2.2)
			tag = (hdr[0] >> 2) & 0x0F
			if hdr[0]&3 != 0 {
				return tag == 1 || tag == 3
			}
			var l [1]byte
			if _, err := io.ReadFull(blk.Body, l[:]); err != nil {
				return false
			}
			length = int(l[0])
		}
		switch tag {
		case 1, 3: // PKESK, SKESK
			return true
		case 10: // Marker: skip it and look at the next packet
			if _, err := io.CopyN(io.Discard, blk.Body, int64(length)); err != nil {
				return false
			}
		default:
			return false
		}
	}
	return false
}
