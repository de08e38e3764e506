package crypto

// Message-level S/MIME interoperability: the whole message EncryptSMIME
// makes (the outer header after Result.Changes, and Result.Body), read by
// implementations we did not write. OpenSSL reads the MIME message itself
// (openssl cms -decrypt, S/MIME input); gpgsm and NSS's cmsutil read the
// CMS object, which the test takes out of the message with Go's own mail
// and base64 readers (as a mail client's MIME layer would). Each must give
// back the inner entity EncryptSMIME promises: the original Content-*
// fields and the body byte for byte (innerHeader, as for PGP/MIME, and
// checkInner's independent oracle). The harness is internal/smimetest;
// a missing tool skips, except under CI (CI set), where it fails.

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strings"
	"testing"

	"lacre.io/milter/crypto/smime"
	"lacre.io/milter/internal/smimetest"
)

// smimeInteropMessage is the richest message of the interop runs: 8-bit
// UTF-8 text, a quoted-printable part, a base64 attachment, folded
// fields, protected fields to copy inside, a body not ending in CRLF.
var smimeInteropMessage = crlf(stdHeader+"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= from the interop test\n"+
	"Cc: Bob <bob@example.org>\nThread-Topic: interop\nMIME-Version: 1.0\n"+
	"Content-Type: multipart/mixed;\n boundary=\"=_outer\"\nContent-Language: de\n\n"+
	"--=_outer\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"+
	"Grüße aus Köln — 東京 — trailing space  \n"+
	"--=_outer\nContent-Type: text/html; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\n"+
	"<p>Gr=FC=DFe</p>=\n\n"+
	"--=_outer\nContent-Type: application/octet-stream; name=\"data.bin\"\n"+
	"Content-Disposition: attachment; filename=\"data.bin\"\nContent-Transfer-Encoding: base64\n\n") +
	base64Lines(pseudoRandom(1000, 5)) + "--=_outer--\r\nepilogue without a line end"

// smimeInteropOptions are every option that applies to a key: both
// ciphers, both RSA paddings (RSA only), both ways to name the recipient.
func smimeInteropOptions(kind smimetest.KeyKind) []smime.Options {
	var out []smime.Options
	for _, c := range []smime.Cipher{smime.AES256CBC, smime.AES256GCM} {
		for _, p := range []smime.RSAPadding{smime.PKCS1v15, smime.OAEP} {
			if kind.EC() && p != smime.PKCS1v15 {
				continue
			}
			for _, ski := range []bool{false, true} {
				out = append(out, smime.Options{Cipher: c, RSAPadding: p, SubjectKeyID: ski})
			}
		}
	}
	return out
}

func smimeOptName(o smime.Options) string {
	return fmt.Sprintf("%v/%v/ski=%v", o.Cipher, o.RSAPadding, o.SubjectKeyID)
}

// smimeMessage encrypts m and returns the delivered message and the inner
// entity every reader must return.
func smimeMessage(t *testing.T, m []byte, certs []*x509.Certificate, opt Options) (msg, want []byte) {
	t.Helper()
	fields, body := Split(m)
	res, err := EncryptSMIME(fields, body, certs, opt)
	if err != nil {
		t.Fatal(err)
	}
	want = append(innerHeader(fields, body, opt.ProtectHeaders && !oracleSigned(fields)), body...)
	return delivered(t, fields, res), want
}

// checkSMIMEInner compares what a reader returned with want, and with the
// oracle of the original message.
func checkSMIMEInner(t *testing.T, reader string, m, got, want []byte, protect bool, stderr []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s gave\n%q\nwant\n%q\n%s", reader, got, want, stderr)
	}
	fields, body := Split(m)
	checkInner(t, reader, got, fields, body, protect)
}

// smimeDERFromMessage takes the CMS object out of a delivered message
// with net/mail, mime and encoding/base64 (not with our own code), after
// checking the outer Content-Type and transfer encoding.
func smimeDERFromMessage(t *testing.T, msg []byte, opts smime.Options) []byte {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	kind := "enveloped-data"
	if opts.Cipher == smime.AES256GCM {
		kind = "authEnveloped-data"
	}
	if err != nil || mt != "application/pkcs7-mime" || params["smime-type"] != kind || params["name"] != "smime.p7m" {
		t.Fatalf("outer Content-Type %q (%v)", m.Header.Get("Content-Type"), err)
	}
	if cte := m.Header.Get("Content-Transfer-Encoding"); !strings.EqualFold(cte, "base64") {
		t.Fatalf("outer Content-Transfer-Encoding %q", cte)
	}
	clean := strings.NewReplacer("\r", "", "\n", "")
	raw, _ := io.ReadAll(m.Body)
	der, err := base64.StdEncoding.DecodeString(clean.Replace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestSMIMEMessageInteropOpenSSL: for RSA-2048, RSA-4096 and P-256
// certificates and every option, the whole message decrypts with openssl
// cms reading it as S/MIME, to the identical inner entity, with header
// protection on; with the default options every corpus message, with and
// without header protection, and one message to all three recipients.
func TestSMIMEMessageInteropOpenSSL(t *testing.T) {
	openssl := smimetest.Tool(t, "openssl")
	smimetest.LogTool(t, openssl, "version")
	dir := t.TempDir()
	kinds := []smimetest.KeyKind{smimetest.RSA2048, smimetest.RSA4096, smimetest.P256}
	var parties []smimetest.Party
	var all []*x509.Certificate
	for _, kind := range kinds {
		p := smimetest.NewParty(t, dir, kind)
		parties = append(parties, p)
		all = append(all, p.C.Cert)
	}
	m := []byte(smimeInteropMessage)
	for i, p := range parties {
		for _, o := range smimeInteropOptions(kinds[i]) {
			t.Run(kinds[i].String()+"/"+smimeOptName(o), func(t *testing.T) {
				for _, to := range [][]*x509.Certificate{{p.C.Cert}, all} {
					msg, want := smimeMessage(t, m, to, Options{ProtectHeaders: true, SMIME: o})
					got, stderr, err := smimetest.OpenSSLDecrypt(t, openssl, t.TempDir(), p, msg, true)
					if err != nil {
						t.Fatalf("openssl cms -decrypt (%d recipients): %v\n%s", len(to), err, stderr)
					}
					checkSMIMEInner(t, "openssl cms", m, got, want, true, stderr)
				}
			})
		}
	}
	for _, protect := range []bool{false, true} {
		for _, cm := range corpus(false) {
			t.Run(fmt.Sprintf("corpus/protect=%v/%s", protect, cm.name), func(t *testing.T) {
				msg, want := smimeMessage(t, cm.raw, all[:1], Options{ProtectHeaders: protect})
				got, stderr, err := smimetest.OpenSSLDecrypt(t, openssl, t.TempDir(), parties[0], msg, true)
				if err != nil {
					t.Fatalf("openssl cms -decrypt: %v\n%s", err, stderr)
				}
				checkSMIMEInner(t, "openssl cms", cm.raw, got, want, protect, stderr)
			})
		}
	}
}

// TestSMIMEMessageInteropDefault: the default options (RSA PKCS #1 v1.5,
// AES-256-CBC, issuer and serial) decrypt with gpgsm, with NSS's cmsutil
// and with openssl smime (OpenSSL's PKCS #7 reader, on the MIME message)
// for RSA-2048 and RSA-4096, with and without header protection, to the
// identical inner entity.
func TestSMIMEMessageInteropDefault(t *testing.T) {
	gpgsm := smimetest.Tool(t, "gpgsm")
	smimetest.LogTool(t, gpgsm, "--version")
	smimetest.Tool(t, "cmsutil")
	smimetest.NSSVersion(t)
	openssl := smimetest.Tool(t, "openssl")
	m := []byte(smimeInteropMessage)
	for _, kind := range []smimetest.KeyKind{smimetest.RSA2048, smimetest.RSA4096} {
		t.Run(kind.String(), func(t *testing.T) {
			p := smimetest.NewParty(t, t.TempDir(), kind)
			readers := []struct {
				name    string
				decrypt func([]byte) ([]byte, []byte, error)
			}{
				{"gpgsm", smimetest.GpgsmReader(t, gpgsm, p)},
				{"cmsutil", smimetest.NSSReader(t, p)},
			}
			for _, protect := range []bool{false, true} {
				msg, want := smimeMessage(t, m, []*x509.Certificate{p.C.Cert}, Options{ProtectHeaders: protect})
				der := smimeDERFromMessage(t, msg, smime.Options{})
				for _, r := range readers {
					got, stderr, err := r.decrypt(der)
					if err != nil {
						t.Fatalf("%s (protect=%v): %v\n%s", r.name, protect, err, stderr)
					}
					checkSMIMEInner(t, r.name, m, got, want, protect, stderr)
				}
				// OpenSSL's older PKCS #7 command, on the MIME message.
				dir := t.TempDir()
				f := smimetest.WriteFile(t, dir, "msg.eml", msg)
				got, stderr, err := smimetest.Run(dir, nil, nil, openssl, "smime", "-decrypt", "-binary", "-in", f,
					"-recip", p.CertPath, "-inkey", p.KeyPath)
				if err != nil {
					t.Fatalf("openssl smime -decrypt (protect=%v): %v\n%s", protect, err, stderr)
				}
				checkSMIMEInner(t, "openssl smime", m, got, want, protect, stderr)
			}
		})
	}
}
