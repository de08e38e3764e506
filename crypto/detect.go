package crypto

import (
	"bytes"
	"mime"
	"strings"
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
	mt, params := mediaType(ct)
	switch mt {
	case "multipart/encrypted":
		return true
	case "application/pkcs7-mime", "application/x-pkcs7-mime":
		// A signed-only S/MIME message is readable by anyone: encrypt it.
		// Look at the raw value, not only the parsed parameter: a malformed
		// or repeated parameter must not hide "signed-data" and let a
		// readable message pass as encrypted.
		raw := strings.ToLower(unfold(ct))
		return !strings.Contains(raw, "signed-data") && !strings.Contains(raw, "certs-only")
	}
	// A file name only counts when the field parses cleanly: a malformed
	// header may lead to more encryption, never to less.
	if _, _, err := mime.ParseMediaType(unfold(ct)); err == nil && strings.HasSuffix(strings.ToLower(params["name"]), ".p7m") {
		return true
	}
	if cd, ok := get(fields, "Content-Disposition"); ok {
		if _, dp, err := mime.ParseMediaType(unfold(cd)); err == nil && strings.HasSuffix(strings.ToLower(dp["filename"]), ".p7m") {
			return true
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
		if mt, _ := mediaType(ct); mt != "text/plain" {
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
	return bytes.HasPrefix(b, pgpBegin) && bytes.HasSuffix(b, pgpEnd) &&
		bytes.Count(b, pgpBegin) == 1 && bytes.Count(b, pgpEnd) == 1
}
