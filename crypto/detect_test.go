package crypto

import (
	"bytes"
	"encoding/base64"
	"io"
	"mime/quotedprintable"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/hostiletest"
	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// detectPacket returns one new-format OpenPGP packet (RFC 9580 §4.2.1)
// with a definite length.
func detectPacket(tag byte, body []byte) []byte {
	return append(appendNewLength([]byte{0xC0 | tag}, len(body)), body...)
}

// detectArmourOf armours data as a "PGP MESSAGE" with CRLF line ends and
// a checksum line.
func detectArmourOf(data []byte) string {
	var b bytes.Buffer
	w := newArmorWriter(&b, true)
	w.Write(data)
	w.Close()
	return b.String()
}

// detectArmourWidth armours data with base64 lines of width characters
// and a checksum line.
func detectArmourWidth(data []byte, width int) string {
	enc := base64.StdEncoding.EncodeToString(data)
	var b strings.Builder
	b.WriteString("-----BEGIN PGP MESSAGE-----\r\n\r\n")
	for len(enc) > width {
		b.WriteString(enc[:width] + "\r\n")
		enc = enc[width:]
	}
	crc := crc24Update(crc24Init, data)
	b.WriteString(enc + "\r\n=" + base64.StdEncoding.EncodeToString([]byte{byte(crc >> 16), byte(crc >> 8), byte(crc)}) + "\r\n-----END PGP MESSAGE-----\r\n")
	return b.String()
}

// detectFakePackets is the framing of an encrypted message without any
// real cryptography: a v3 PKESK and a v1 SEIPD whose contents are filler.
// encryptedPackets looks at framing only, so it passes; the look-alikes
// below differ from it in one point each.
func detectFakePackets() []byte {
	pkesk := append([]byte{3}, bytes.Repeat([]byte{0x42}, 60)...)
	seipd := append([]byte{1}, bytes.Repeat([]byte{0x17}, 80)...)
	return append(detectPacket(tagPKESK, pkesk), detectPacket(tagSEIPD, seipd)...)
}

// detectArmour is a structurally valid inline OpenPGP message (see
// detectFakePackets), with CRLF line ends.
var detectArmour = detectArmourOf(detectFakePackets())

// detectMessage parses header lines and a body into the form the milter
// passes to AlreadyEncrypted. Header lines are joined with CRLF.
func detectMessage(t testing.TB, header []string, body string) ([]Field, []byte) {
	t.Helper()
	raw := strings.Join(header, "\r\n")
	if len(header) > 0 {
		raw += "\r\n"
	}
	return Split([]byte(raw + "\r\n" + body))
}

// detectPGPMIME wraps an armoured message in the RFC 3156 structure.
func detectPGPMIME(armoured string) ([]string, string) {
	return []string{"MIME-Version: 1.0", `Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"`},
		"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n" +
			"--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n" +
			"--b\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\r\n" + armoured + "\r\n--b--\r\n"
}

// realEncrypted returns a delivered PGP/MIME message made by Encrypt, its
// fields and body, and the armoured ciphertext in it.
func realEncrypted(t testing.TB, kind testkeys.Kind, protect bool) ([]Field, []byte, string) {
	t.Helper()
	k, _ := keystest.Key(t, kind, "alice@example.org")
	fields, body := Split([]byte("From: a@example.net\r\nSubject: x\r\nContent-Type: text/plain\r\n\r\nThe launch code is 1234.\r\n"))
	res, err := Encrypt(fields, body, []*keys.Key{k}, Options{ProtectHeaders: protect})
	if err != nil {
		t.Fatal(err)
	}
	msg := delivered(t, fields, res)
	_, armoured := pgptest.Open(t, msg)
	f, b := Split(msg)
	return f, b, string(armoured)
}

// TestAlreadyEncryptedLookalikes: every form of mail that only looks
// encrypted (issue 11) is encrypted again. Each case differs from a
// genuine message (TestAlreadyEncryptedGenuine) in one point.
func TestAlreadyEncryptedLookalikes(t *testing.T) {
	packets := detectFakePackets()
	pkesk := detectPacket(tagPKESK, append([]byte{3}, bytes.Repeat([]byte{0x42}, 60)...))
	seipd := detectPacket(tagSEIPD, append([]byte{1}, bytes.Repeat([]byte{0x17}, 80)...))
	literal := detectPacket(tagLiteral, []byte("b\x00\x00\x00\x00\x00The launch code is 1234.\n"))
	// The checksum of the fake message with one bit flipped.
	badCRC := detectArmour
	i := strings.Index(badCRC, "\r\n=") + 3
	badCRC = badCRC[:i] + string(badCRC[i]^1) + badCRC[i+1:]
	// The same with a base64 character changed in the data instead.
	badData := "-----BEGIN PGP MESSAGE-----\r\n\r\n" + string(detectArmour[31]^1) + detectArmour[32:]

	plain := "The launch code is 1234.\r\n"
	b64 := base64.StdEncoding.EncodeToString([]byte(plain)) + "\r\n"
	pgpHeader, pgpBody := detectPGPMIME(detectArmour)
	textPlain := []string{"Content-Type: text/plain; charset=us-ascii"}

	type lookalike struct {
		name   string
		header []string
		body   string
	}
	cases := []lookalike{
		// multipart/encrypted around clear text.
		{"plain text under multipart/encrypted with protocol", []string{`Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"`}, plain},
		{"plain text under multipart/encrypted without protocol", []string{`Content-Type: multipart/encrypted; boundary="b"`}, plain},
		{"plain text under multipart/encrypted without parameters", []string{`Content-Type: multipart/encrypted`}, plain},
		{"clear parts under multipart/encrypted", []string{`Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"`},
			"--b\r\nContent-Type: text/plain\r\n\r\n" + plain + "--b--\r\n"},
		{"multipart/encrypted of another protocol", []string{`Content-Type: multipart/encrypted; protocol="application/x-other"; boundary="b"`},
			strings.TrimPrefix(pgpBody, "")},
		// S/MIME types around clear text.
		{"pkcs7-mime without smime-type, plain body", []string{"Content-Type: application/pkcs7-mime"}, plain},
		{"pkcs7-mime without smime-type, base64 plain body", []string{"Content-Type: application/pkcs7-mime; name=smime.p7m", "Content-Transfer-Encoding: base64"}, b64},
		{"pkcs7-mime enveloped-data, plain body", []string{"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m"}, plain},
		{"x-pkcs7-mime, base64 plain body", []string{"Content-Type: application/x-pkcs7-mime; smime-type=enveloped-data", "Content-Transfer-Encoding: base64"}, b64},
		{"octet-stream named letter.p7m", []string{`Content-Type: application/octet-stream; name="letter.p7m"`}, plain},
		{"octet-stream named letter.p7m, base64", []string{`Content-Type: application/octet-stream; name="letter.p7m"`, "Content-Transfer-Encoding: base64"}, b64},
		{"octet-stream with a .p7m disposition", []string{"Content-Type: application/octet-stream", "Content-Disposition: attachment; filename=x.p7m"}, plain},
		// A second MIME field over a genuine structure.
		{"second Content-Type field", append(pgpHeader, "Content-Type: text/plain"), pgpBody},
		{"second Content-Type field first", append([]string{"Content-Type: text/plain"}, pgpHeader...), pgpBody},
		{"second content-type field in lower case", append(pgpHeader, "content-type: text/plain"), pgpBody},
		{"second MIME-Version field", append(pgpHeader, "MIME-Version: 1.0"), pgpBody},
		{"second Content-Transfer-Encoding field", append(textPlain, "Content-Transfer-Encoding: 7bit", "Content-Transfer-Encoding: base64"), detectArmour},
		{"inline with two Content-Type fields", append(textPlain, "Content-Type: text/html"), detectArmour},
		// Armour whose packets are not an encrypted message.
		{"session key then literal data", textPlain, detectArmourOf(append(bytes.Clone(pkesk), literal...))},
		{"literal data only", textPlain, detectArmourOf(literal)},
		{"session key then literal data then encrypted data", textPlain, detectArmourOf(append(append(bytes.Clone(pkesk), literal...), seipd...))},
		{"encrypted data without a session key", textPlain, detectArmourOf(seipd)},
		{"session key only", textPlain, detectArmourOf(pkesk)},
		{"marker and encrypted data, no session key", textPlain, detectArmourOf(append(detectPacket(tagMarker, []byte("PGP")), seipd...))},
		{"encrypted data not spanning to the end: a byte after it", textPlain, detectArmourOf(append(bytes.Clone(packets), 0))},
		{"encrypted data not spanning to the end: a literal packet after it", textPlain, detectArmourOf(append(bytes.Clone(packets), literal...))},
		{"encrypted data not spanning to the end: two encrypted packets", textPlain, detectArmourOf(append(bytes.Clone(packets), seipd...))},
		{"encrypted data cut short", textPlain, detectArmourOf(packets[:len(packets)-1])},
		{"encrypted data of version 3", textPlain, detectArmourOf(append(bytes.Clone(pkesk), detectPacket(tagSEIPD, []byte{3, 1, 2, 3})...))},
		{"session key of version 9", textPlain, detectArmourOf(append(detectPacket(tagPKESK, []byte{9, 1, 2}), seipd...))},
		{"marker with another body", textPlain, detectArmourOf(append(append(detectPacket(tagMarker, []byte("PGX")), pkesk...), seipd...))},
		{"partial length on the session key", textPlain, detectArmourOf(append(append([]byte{0xC0 | tagPKESK, 0xE0, 3}, detectPacket(tagPKESK, []byte{3})...), seipd...))},
		{"signed data (one-pass signature first)", textPlain, detectArmourOf(append(detectPacket(4, []byte{3, 0, 8, 22, 1, 2, 3, 4, 5, 6, 7, 8, 1}), literal...))},
		{"compressed data", textPlain, detectArmourOf(detectPacket(8, []byte{1, 0x63, 0x60}))},
		{"bad armour checksum", textPlain, badCRC},
		{"changed data, old checksum", textPlain, badData},
		{"checksum line twice", textPlain, strings.Replace(detectArmour, "\r\n-----END", "\r\n"+detectArmour[strings.Index(detectArmour, "\r\n=")+2:strings.Index(detectArmour, "\r\n-----END")]+"\r\n-----END", 1)},
		{"a base64 line of 80 characters", textPlain, detectArmourWidth(packets, 80)},
		{"data after the checksum line", textPlain, strings.Replace(detectArmour, "\r\n-----END", "\r\nAAAA\r\n-----END", 1)},
		// Text outside the armour block.
		{"trailing cleartext after the armour block", textPlain, detectArmour + "\r\n-- \r\nThe launch code is 1234.\r\n"},
		{"cleartext before the armour block", textPlain, plain + "\r\n" + detectArmour},
		{"cleartext on the END line", textPlain, strings.TrimSuffix(detectArmour, "\r\n") + " launch code 1234\r\n"},
		{"cleartext between the data and the END line", textPlain, strings.Replace(detectArmour, "-----END", "launch code 1234\r\n-----END", 1)},
		{"cleartext in an unknown armour header", textPlain, strings.Replace(detectArmour, "\r\n\r\n", "\r\nSecret: the launch code is 1234\r\n\r\n", 1)},
		{"two armour blocks", textPlain, detectArmour + "\r\n" + detectArmour},
		{"armour block quoted", textPlain, "> " + strings.ReplaceAll(strings.TrimSuffix(detectArmour, "\r\n"), "\r\n", "\r\n> ") + "\r\n"},
		{"armour without the blank line", textPlain, strings.Replace(detectArmour, "\r\n\r\n", "\r\n", 1)},
		{"signed-message armour", textPlain, strings.ReplaceAll(detectArmour, "PGP MESSAGE", "PGP SIGNED MESSAGE")},
		{"armour as text/html", []string{"Content-Type: text/html"}, detectArmour},
		{"armour in base64", append(textPlain, "Content-Transfer-Encoding: base64"), base64.StdEncoding.EncodeToString([]byte(detectArmour))},
		{"armour with an unknown transfer encoding", append(textPlain, "Content-Transfer-Encoding: x-uuencode"), detectArmour},
		{"armour with a broken Content-Type", []string{`Content-Type: text/plain; charset="utf-8`}, detectArmour},
		{"armour with a Unicode media type", []string{"Content-Type: text/pla\u0130n"}, detectArmour},
		{"quoted-printable that does not decode", append(textPlain, "Content-Transfer-Encoding: quoted-printable"), strings.Replace(detectArmour, "\r\n=", "\r\n=Z", 1)},
		// PGP/MIME structure broken in one point.
		{"Version: 2", pgpHeader, strings.Replace(pgpBody, "Version: 1", "Version: 2", 1)},
		{"no version part", pgpHeader, "--b\r\nContent-Type: application/octet-stream\r\n\r\n" + detectArmour + "\r\n--b--\r\n"},
		{"version part of the wrong type", pgpHeader, strings.Replace(pgpBody, "Content-Type: application/pgp-encrypted", "Content-Type: text/plain", 1)},
		{"encrypted part of the wrong type", pgpHeader, strings.Replace(pgpBody, "application/octet-stream", "text/plain", 1)},
		{"encrypted part in base64", pgpHeader, strings.Replace(pgpBody, "name=\"encrypted.asc\"\r\n", "name=\"encrypted.asc\"\r\nContent-Transfer-Encoding: base64\r\n", 1)},
		{"encrypted part with two Content-Types", pgpHeader, strings.Replace(pgpBody, "name=\"encrypted.asc\"\r\n", "name=\"encrypted.asc\"\r\nContent-Type: text/plain\r\n", 1)},
		{"delimiters with mixed line ends", pgpHeader, strings.Replace(pgpBody, "\r\n--b\r\nContent-Type: application/octet-stream", "\n--b\nContent-Type: application/octet-stream", 1)},
		{"closing delimiter with another line end", pgpHeader, strings.Replace(pgpBody, "\r\n--b--\r\n", "\n--b--\n", 1)},
		{"part header without the blank line", pgpHeader, strings.Replace(pgpBody, "name=\"encrypted.asc\"\r\n\r\n", "name=\"encrypted.asc\"\r\n", 1)},
		{"space before the colon in a part header", pgpHeader, strings.Replace(pgpBody, "Content-Type: application/octet-stream", "Content-Type : application/octet-stream", 1)},
		{"part header starting with a continuation", pgpHeader, strings.Replace(pgpBody, "--b\r\nContent-Type: application/octet-stream", "--b\r\n x\r\nContent-Type: application/octet-stream", 1)},
		{"a NUL in a part's header", pgpHeader, strings.Replace(pgpBody, "name=\"encrypted.asc\"\r\n", "name=\"encrypted.asc\"\r\nContent-Disposition: inline; filename=\"a\x00b.asc\"\r\n", 1)},
		{"a part's field name that is not a token", pgpHeader, strings.Replace(pgpBody, "name=\"encrypted.asc\"\r\n", "name=\"encrypted.asc\"\r\nX(y): z\r\n", 1)},
		{"encrypted part holds clear text", pgpHeader, strings.Replace(pgpBody, detectArmour, plain, 1)},
		{"a third part in clear", pgpHeader, strings.Replace(pgpBody, "--b--", "--b\r\nContent-Type: text/plain\r\n\r\n"+plain+"--b--", 1)},
		{"no closing delimiter", pgpHeader, strings.Replace(pgpBody, "--b--\r\n", "", 1)},
		{"clear text after the closing delimiter", pgpHeader, pgpBody + plain},
		{"clear text in the preamble", pgpHeader, plain + pgpBody},
		{"a long preamble line", pgpHeader, strings.Repeat("x", maxPreambleLine+1) + "\r\n" + pgpBody},
		{"wrong boundary", []string{`Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="c"`}, pgpBody},
		{"boundary parameter twice", []string{`Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"; boundary="c"`}, pgpBody},
		{"protocol spelt in Unicode", []string{"Content-Type: multipart/encrypted; protocol=\"appl\u0130cation/pgp-encrypted\"; boundary=\"b\""}, pgpBody},
		{"multipart/encrypted spelt in Unicode", []string{"Content-Type: mult\u0130part/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"b\""}, pgpBody},
		{"armour in the version part", pgpHeader, strings.Replace(pgpBody, "Version: 1", "Version: 1\r\n"+plain, 1)},
		{"encrypted part nested in multipart/mixed", []string{`Content-Type: multipart/mixed; boundary="o"`},
			"--o\r\nContent-Type: text/plain\r\n\r\n" + plain + "--o\r\n" + strings.Join(pgpHeader[1:], "\r\n") + "\r\n\r\n" + pgpBody + "--o--\r\n"},
		// Nothing at all.
		{"empty body", textPlain, ""},
		{"blank body", textPlain, "\r\n\r\n"},
		{"no header, plain body", nil, plain},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fields, body := detectMessage(t, tc.header, tc.body)
			if AlreadyEncrypted(fields, body) {
				t.Errorf("AlreadyEncrypted = true for a look-alike: header %q, body %.300q", fields, body)
			}
		})
	}
	// Header fields alone never decide, whatever they say: each of these
	// headers over clear text is encrypted (they were all once enough).
	for _, h := range []string{
		`Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"`,
		"Content-Type: multipart/encrypted;\r\n\tprotocol=\"application/pgp-encrypted\";\r\n boundary=\"------------abc\"",
		`CONTENT-TYPE: MULTIPART/ENCRYPTED; PROTOCOL="APPLICATION/PGP-ENCRYPTED"; BOUNDARY="B"`,
		`Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"`,
		`Content-Type: application/pkcs7-mime; smime-type=authEnveloped-data; name=smime.p7m`,
		`Content-Type: application/x-pkcs7-mime; name="smime.p7m"`,
		`Content-Type: application/octet-stream; name=SMIME.P7M`,
		`Content-Type: application/octet-stream; name*=utf-8''smime%2Ep7m`,
	} {
		for _, body := range []string{"", plain, b64, "--b\r\n" + plain + "--b--\r\n"} {
			fields, b := detectMessage(t, []string{h, "Content-Transfer-Encoding: base64"}, body)
			if AlreadyEncrypted(fields, b) {
				t.Errorf("AlreadyEncrypted = true for %q over %q", h, body)
			}
		}
	}
}

// TestAlreadyEncryptedGenuine: what real encrypted mail looks like passes,
// PGP/MIME from Encrypt (SEIPDv1 for a v4 key, SEIPDv2 with partial
// lengths for a v6 key, with and without header protection) and the same
// ciphertext inline, in the forms mail software writes.
func TestAlreadyEncryptedGenuine(t *testing.T) {
	for _, kind := range []testkeys.Kind{testkeys.Curve25519, testkeys.V6} {
		for _, protect := range []bool{false, true} {
			fields, body, armoured := realEncrypted(t, kind, protect)
			if !AlreadyEncrypted(fields, body) {
				t.Errorf("%v protect=%v: Encrypt's own PGP/MIME output is not already encrypted", kind, protect)
			}
			lf := strings.ReplaceAll(armoured, "\r\n", "\n")
			var qp bytes.Buffer
			qw := quotedprintable.NewWriter(&qp)
			qw.Write([]byte(armoured))
			qw.Close()
			h, b := detectPGPMIME(armoured)
			for _, tc := range []struct {
				name   string
				header []string
				body   string
			}{
				{"PGP/MIME rebuilt", h, b},
				{"PGP/MIME with LF line ends", h, strings.ReplaceAll(b, "\r\n", "\n")},
				{"PGP/MIME without a preamble", h, b[strings.Index(b, "--b"):]},
				{"PGP/MIME with transport padding and a blank epilogue", h, strings.ReplaceAll(b, "--b\r\n", "--b \t\r\n") + "\r\n\r\n"},
				{"inline, no header", nil, armoured},
				{"inline text/plain", []string{"Content-Type: text/plain; charset=us-ascii"}, armoured},
				{"inline with LF line ends", []string{"Content-Type: text/plain"}, lf},
				{"inline with white space around", []string{"Content-Type: text/plain"}, "\r\n \r\n" + armoured + "\r\n\t\r\n"},
				{"inline with armour headers", []string{"Content-Type: text/plain"},
					strings.Replace(armoured, "\r\n\r\n", "\r\nVersion: GnuPG v2\r\nComment: https://gnupg.org\r\n\r\n", 1)},
				{"inline quoted-printable", []string{"Content-Type: text/plain", "Content-Transfer-Encoding: quoted-printable"}, qp.String()},
				{"inline 7bit", []string{"Content-Type: text/plain", "Content-Transfer-Encoding: 7BIT"}, armoured},
			} {
				f, body := detectMessage(t, tc.header, tc.body)
				if !AlreadyEncrypted(f, body) {
					t.Errorf("%v protect=%v %s: not already encrypted:\n%s", kind, protect, tc.name, body)
				}
			}
		}
	}
	if f, b := detectMessage(t, nil, detectArmourWidth(detectFakePackets(), 76)); !AlreadyEncrypted(f, b) {
		t.Errorf("armour of 76-character lines (RFC 9580 §6.3) does not pass")
	}
	// The synthetic framing the look-alikes are made from passes too, so
	// that each look-alike fails for its own defect.
	f, b := detectMessage(t, []string{"Content-Type: text/plain"}, detectArmour)
	if !AlreadyEncrypted(f, b) {
		t.Errorf("the synthetic armour does not pass")
	}
	h, body := detectPGPMIME(detectArmour)
	f, b = detectMessage(t, h, body)
	if !AlreadyEncrypted(f, b) {
		t.Errorf("the synthetic PGP/MIME message does not pass")
	}
}

// TestAlreadyEncryptedLooksInside uses real OpenPGP messages: a signed-only
// message carries the same "BEGIN PGP MESSAGE" armour as an encrypted one
// but is readable by anyone, so it must be encrypted. Marker packets may
// come first; framing variants of real ciphertext are read correctly.
func TestAlreadyEncryptedLooksInside(t *testing.T) {
	e := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	var signed bytes.Buffer
	aw, _ := armor.Encode(&signed, "PGP MESSAGE", nil)
	sw, err := openpgp.Sign(aw, []*openpgp.Entity{e}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(sw, "The launch code is 1234.\n")
	sw.Close()
	aw.Close()

	_, _, ct := realEncrypted(t, testkeys.Curve25519, false)
	blk, err := armor.Decode(strings.NewReader(ct))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(blk.Body)
	marker := detectPacket(tagMarker, []byte("PGP"))
	// The PKESK again in the legacy packet format (RFC 9580 §4.2.2).
	_, pkBody, rest, ok := nextPacket(raw)
	if !ok {
		t.Fatal("no first packet")
	}
	legacy := append([]byte{0x80 | tagPKESK<<2 | 1, byte(len(pkBody) >> 8), byte(len(pkBody))}, pkBody...)
	// The SEIPD in partial body lengths (RFC 9580 §4.2.1.4): 512, then
	// the rest.
	_, seBody, _, _ := nextPacket(rest)
	var partial []byte
	if len(seBody) > 512 {
		t.Fatalf("SEIPD body of %d bytes; the test wants a short one", len(seBody))
	}
	padded := append(bytes.Clone(seBody), make([]byte, 600)...) // framing only: the contents do not matter
	partial = append([]byte{0xC0 | tagSEIPD, 0xE9}, padded[:512]...)
	partial = appendNewLength(partial, len(padded)-512)
	partial = append(partial, padded[512:]...)

	for _, tc := range []struct {
		name string
		data string
		want bool
	}{
		{"signed only", signed.String(), false},
		{"encrypted", ct, true},
		{"marker then encrypted", detectArmourOf(append(bytes.Clone(marker), raw...)), true},
		{"two markers then encrypted", detectArmourOf(append(append(bytes.Clone(marker), marker...), raw...)), true},
		{"legacy-format session key", detectArmourOf(append(legacy, rest...)), true},
		{"partial lengths on the encrypted data", detectArmourOf(append(legacy, partial...)), true},
		{"partial lengths cut short", detectArmourOf(append(legacy, partial[:len(partial)-1]...)), false},
		{"without the checksum line", strings.Join(strings.SplitAfter(ct, "\r\n")[:len(strings.SplitAfter(ct, "\r\n"))-2], "") + "-----END PGP MESSAGE-----\r\n", true},
	} {
		if got := AlreadyEncrypted([]Field{{"Content-Type", "text/plain"}}, []byte(tc.data)); got != tc.want {
			t.Errorf("%s: AlreadyEncrypted = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestEncryptedPacketsBounds: the packet walker is linear and stops at
// its bounds on hostile framing.
func TestEncryptedPacketsBounds(t *testing.T) {
	seipd := detectPacket(tagSEIPD, []byte{1, 2, 3})
	pk := detectPacket(tagPKESK, []byte{3, 1})
	many := append(bytes.Repeat(pk, maxSessionKeyPackets), seipd...)
	if !encryptedPackets(many) {
		t.Errorf("%d session-key packets refused", maxSessionKeyPackets)
	}
	if encryptedPackets(append(bytes.Repeat(pk, maxSessionKeyPackets+1), seipd...)) {
		t.Errorf("%d session-key packets accepted", maxSessionKeyPackets+1)
	}
	// Partial lengths of one octet each: one chunk per two octets.
	var chunks []byte
	chunks = append(chunks, 0xC0|tagSEIPD)
	for range 100000 {
		chunks = append(chunks, 0xE0, 1)
	}
	chunks = append(chunks, 1, 1)
	if !encryptedPackets(append(bytes.Clone(pk), chunks...)) {
		t.Errorf("100,000 one-octet partial chunks refused")
	}
	for _, bad := range [][]byte{
		nil, {0}, {0xC1}, {0xC1, 0xFF}, {0xC1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}, {0xC1, 0xC0},
		append(bytes.Clone(pk), 0xD2, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 1), // a 2 GiB length
		append(bytes.Clone(pk), 0x84|3),                                // legacy, indeterminate
	} {
		if encryptedPackets(bad) {
			t.Errorf("encryptedPackets(%x) = true", bad)
		}
	}
}

// TestCMSBounds: the BER walker refuses nesting beyond berMaxDepth and
// stops at its element budget, so neither deep nor wide hostile input is
// expensive; a CMS object cut anywhere is refused.
func TestCMSBounds(t *testing.T) {
	deep := append(bytes.Repeat([]byte{0x30, 0x80}, 200000), bytes.Repeat([]byte{0, 0}, 200000)...)
	if _, ok := cmsEnveloped(deep); ok {
		t.Error("200,000 nested indefinite SEQUENCEs accepted")
	}
	r := &berReader{budget: berMaxElements}
	if _, _, ok := r.next(deep, 0); ok {
		t.Error("nesting deeper than berMaxDepth read")
	}
	wide := append([]byte{0x30, 0x80}, bytes.Repeat([]byte{0x05, 0x00}, berMaxElements)...)
	wide = append(wide, 0, 0)
	r = &berReader{budget: berMaxElements}
	if _, _, ok := r.next(wide, 0); ok {
		t.Errorf("%d elements read within a budget of %d", berMaxElements+1, berMaxElements)
	}
	for _, cms := range fuzzCMSSeeds() {
		if _, ok := cmsEnveloped(cms); !ok {
			t.Fatalf("seed refused: % x", cms[:16])
		}
		for i := range len(cms) {
			if _, ok := cmsEnveloped(cms[:i]); ok {
				t.Fatalf("cut at %d of %d: accepted", i, len(cms))
			}
		}
	}
	for _, bad := range [][]byte{
		nil, {0x30}, {0x30, 0x80}, {0x30, 0x80, 0}, {0x04, 0x80, 0, 0}, {0x30, 0x85, 1, 0, 0, 0, 0},
		{0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF}, {0x30, 0xFF}, {0x1F, 0x81, 0x81, 0x81, 0x81, 0x01, 0x00},
		{0x30, 0x02, 0x00, 0x00}, // end-of-contents inside a definite length
	} {
		if _, ok := cmsEnveloped(bad); ok {
			t.Errorf("cmsEnveloped(% x) = true", bad)
		}
	}
}

// Bounds of one AlreadyEncrypted call on an 8 MiB hostile body: CPU time
// (the whole process, getrusage) at most detectCPU; bytes allocated at
// most detectAllocPerByte times the body plus hostileAllocConst. The
// body is copied at most twice (the base64 text without line ends, then
// the decoded data; or the quoted-printable decoding, whose buffer grows
// by doubling). Under the race detector the time bound is not asserted.
const (
	detectCPU          = 2 * time.Second
	detectAllocPerByte = 6
)

// TestAlreadyEncryptedHostileCost: bodies built to make the structure
// checks expensive (millions of lines, delimiters, packets, BER elements
// or levels) are refused within the bounds above.
func TestAlreadyEncryptedHostileCost(t *testing.T) {
	const size = 8 << 20
	fill := func(unit string) string { return strings.Repeat(unit, size/len(unit)) }
	b64 := func(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
	oid := append([]byte{0x06, byte(len(oidEnvelopedData))}, oidEnvelopedData...)
	wideSet := append([]byte{0x30, 0x80}, oid...)
	wideSet = append(wideSet, 0xA0, 0x80, 0x30, 0x80, 0x02, 0x01, 0x00, 0x31, 0x80)
	wideSet = append(wideSet, bytes.Repeat([]byte{0x30, 0x00}, size/2/2)...)
	wideSet = append(wideSet, 0, 0, 0, 0, 0, 0, 0, 0)
	pk := detectPacket(tagPKESK, []byte{3, 1})
	smime := []string{"Content-Type: application/pkcs7-mime", "Content-Transfer-Encoding: base64"}
	pgpMIME := []string{`Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"`}
	for _, tc := range []struct {
		name   string
		header []string
		body   string
	}{
		{"armour of millions of short lines", nil, "-----BEGIN PGP MESSAGE-----\n\n" + fill("QUJD\n") + "-----END PGP MESSAGE-----\n"},
		{"armour of one long line", nil, "-----BEGIN PGP MESSAGE-----\n\n" + fill("QUJD") + "\n-----END PGP MESSAGE-----\n"},
		{"millions of armour headers", nil, "-----BEGIN PGP MESSAGE-----\n" + fill("Comment: x\n")},
		{"millions of blank lines", nil, "-----BEGIN PGP MESSAGE-----\n" + fill("\n\t\n") + "x"},
		{"too many session-key packets", nil, detectArmourOf(bytes.Repeat(pk, size/len(pk)/2))},
		{"one-octet partial chunks", nil, detectArmourOf(append(append(bytes.Clone(pk), 0xC0|tagSEIPD), bytes.Repeat([]byte{0xE0, 1}, size/4)...))},
		{"quoted-printable escapes", []string{"Content-Transfer-Encoding: quoted-printable"}, fill(strings.Repeat("=41", 25) + "=\r\n")},
		{"millions of delimiters", pgpMIME, fill("--b\r\n")},
		{"millions of near-miss delimiters", pgpMIME, fill("--bx\r\n") + "--b--\r\n"},
		{"millions of preamble lines", pgpMIME, fill("\r\n") + "x\r\n--b--\r\n"},
		{"BER nested to the bottom", smime, b64(append(bytes.Repeat([]byte{0x30, 0x80}, size/8), bytes.Repeat([]byte{0, 0}, size/8)...))},
		{"BER of millions of elements", smime, b64(append(append([]byte{0x30, 0x80}, bytes.Repeat([]byte{0x04, 0x00}, size/4)...), 0, 0))},
		{"millions of recipient infos", smime, b64(wideSet)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fields, body := detectMessage(t, tc.header, tc.body)
			var got bool
			m := hostiletest.Run(t, tc.name, hostileHang, func() { got = AlreadyEncrypted(fields, body) })
			m.Check(t, tc.name, hostiletest.Bounds{CPU: detectCPU, Wall: hostileWall, Alloc: uint64(detectAllocPerByte*len(body) + hostileAllocConst)})
			if got {
				t.Errorf("AlreadyEncrypted = true")
			}
		})
	}
}
