package crypto

import (
	"crypto/x509"
	"errors"
	"testing"

	"lacre.io/milter/crypto/smime"
	"lacre.io/milter/crypto/smime/smimetest"
)

// TestEncryptSMIMEAlreadyEncrypted checks that the milter's own detector
// sees EncryptSMIME's output (both smime-types) as already encrypted, so
// that it is never encrypted twice.
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
	if _, err := EncryptSMIME(fields, body, nil, Options{}); !errors.Is(err, ErrNoKeys) {
		t.Errorf("no certificates: %v, want ErrNoKeys", err)
	}
}
