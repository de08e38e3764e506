package crypto

import (
	"crypto/x509"
	"fmt"

	"lacre.io/milter/crypto/smime"
)

// EncryptSMIME encrypts the message (fields, body) to every certificate
// in certs as S/MIME (RFC 8551): one enveloped-data (with AES-GCM an
// authEnveloped-data) ciphertext with a RecipientInfo per certificate,
// written as the message's own body in base64. The inner entity is the
// one Encrypt puts into PGP/MIME: the original Content-* fields and the
// body byte for byte, with the same header protection when
// opt.ProtectHeaders is on (and the same exception for signed mail,
// Result.Unprotected = UnprotectedSigned). The outer header gets the
// S/MIME entity's fields (smime.Fields(opt.SMIME)) in place of the
// message's Content-* fields, and MIME-Version. opt.SMIME chooses the
// cipher, RSA padding and recipient naming; opt.HideRecipients, MinRSABits,
// Now and Rand do not apply (certificates are judged by
// keys.CertificatePolicy before, and the randomness is crypto/rand's).
// EncryptSMIME does not modify fields or body.
func EncryptSMIME(fields []Field, body []byte, certs []*x509.Certificate, opt Options) (*Result, error) {
	if len(certs) == 0 {
		return nil, ErrNoKeys
	}
	protect, unprotected := opt.ProtectHeaders, ""
	if protect && signedBody(fields) {
		protect, unprotected = false, UnprotectedSigned
	}
	der, err := smime.EncryptParts(innerHeader(fields, body, protect), body, certs, opt.SMIME)
	if err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	sf := smime.Fields(opt.SMIME)
	content := make([]Field, len(sf))
	for i, f := range sf {
		content[i] = Field{Name: f.Name, Value: f.Value}
	}
	return &Result{
		Changes:     replaceContent(fields, content, protect),
		Body:        smime.Body(der),
		Unprotected: unprotected,
	}, nil
}
