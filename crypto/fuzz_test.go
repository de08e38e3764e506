package crypto

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"mime"
	"net/mail"
	"strings"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp/armor"

	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// Fuzz targets of the crypto package. Seed inputs live in the f.Add calls
// and in testdata/fuzz/<target>/; run one target at a time, e.g.
//
//	go test ./crypto -run '^$' -fuzz '^FuzzEncrypt$' -fuzztime 60s -fuzzminimizetime 5s
//
// (With the default minimisation budget of 60 s, minimising one new
// multi-kilobyte input can take the rest of a short run.)

// fuzzMessages are the seeds of FuzzEncrypt: the round-trip corpus plus
// header and body shapes that have tripped mail software before.
func fuzzMessages() []string {
	var out []string
	for _, m := range corpus(false) {
		out = append(out, string(m.raw))
	}
	return append(out,
		"",
		"\r\n",
		"\r\n\r\n",
		"body only, no header at all\r\n",
		" continuation first\r\nFrom: a\r\n\r\nbody",
		"Subject: x\r\n",
		"Subject: no body separator, header only",
		"Content-Type: text/plain\r\nContent-Type: text/html\r\ncontent-type: image/png\r\n\r\n<b>two types</b>\r\n",
		"Content-Transfer-Encoding: base64\r\nContent-Disposition: inline\r\nContent-ID: <x>\r\nContent-: odd\r\n\r\nSGVsbG8=\r\n",
		"MIME-Version: 1.0\r\nMIME-Version: 2.0\r\nSubject: a\r\nSubject: b\r\n\r\nbody\r\n",
		"Subject: folded\r\n\tline\r\n \r\nContent-Type: text/plain;\r\n charset=utf-8\r\n\r\nbody",
		"A: x\r\r\n \r\n\r\nbare\rCR\r",
		"Subject : obs\r\nContent-Type:text/plain;\r\n\r\nbody\r\n--=_lacre_000000000000000000000000--\r\n",
		"Content-Type: multipart/encrypted; boundary=b\r\n\r\n--b\r\n-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA\r\n-----END PGP MESSAGE-----\r\n--b--\r\n",
		"Caf\xe9: x\n\n\x00\xff\xfe binary \x00 body\n",
		"Subject: Gr\xc3\xbc\xc3\x9fe \xff\r\n\r\n"+strings.Repeat("0123456789abcdef", 256),
	)
}

// FuzzEncrypt checks that any message, once split, encrypts to a
// well-formed RFC 3156 message whose ciphertext decrypts to the original
// body byte for byte, with and without header protection.
func FuzzEncrypt(f *testing.F) {
	for _, m := range fuzzMessages() {
		f.Add([]byte(m))
	}
	// One key for the whole fuzzing process (testkeys caches it; Parse is
	// done once here, not per input).
	key, secret := testKey(f, testkeys.Curve25519, "alice@example.org")
	to := []*keys.Key{key}
	f.Fuzz(func(t *testing.T, data []byte) {
		fields, body := Split(data)
		orig := append([]byte(nil), data...)
		for _, protect := range []bool{false, true} {
			// Randomness from the input: the same input always takes the
			// same paths (session key, ephemeral ECDH key, boundary), which
			// keeps coverage stable and failures reproducible.
			rnd := rand.NewChaCha8(sha256.Sum256(data))
			res, err := Encrypt(fields, body, to, Options{ProtectHeaders: protect, Rand: rnd})
			if err != nil {
				t.Fatalf("protect=%v: Encrypt: %v", protect, err)
			}
			if !bytes.Equal(data, orig) {
				t.Fatalf("Encrypt modified its input")
			}
			if bytes.Contains(res.Body, []byte("\n")) && bytes.Count(res.Body, []byte("\n")) != bytes.Count(res.Body, []byte("\r\n")) {
				t.Errorf("protect=%v: the new body has a bare LF", protect)
			}

			// The outer header: one Content-Type, the PGP/MIME one; every
			// other Content-* field gone; MIME-Version present; with header
			// protection no readable Subject left.
			outer := Apply(fields, res.Changes)
			ct := fuzzCheckOuter(t, outer, protect)

			// The outer structure with the standard library's parsers, on a
			// header the standard library can always read...
			var m bytes.Buffer
			if err := WriteMessage(&m, []Field{{"MIME-Version", "1.0"}, {"Content-Type", ct}}, res.Body); err != nil {
				t.Fatal(err)
			}
			_, armored := pgptest.Open(t, m.Bytes())
			// ...and on the delivered message as a whole, when the standard
			// library can read the original header at all.
			if fuzzStdlibReadable(fields) {
				_, armored2 := pgptest.Open(t, delivered(t, fields, res))
				if !bytes.Equal(armored, armored2) {
					t.Fatalf("protect=%v: the ciphertext part differs when read with the whole header", protect)
				}
			}

			inner, md := pgptest.Decrypt(t, armored, secret)
			if !md.IsEncrypted || md.DecryptedWith.Entity != secret {
				t.Fatalf("protect=%v: not decrypted with the recipient's key", protect)
			}
			// The body, byte for byte, as Split finds it after the inner
			// header section.
			if _, ib := Split(inner); !bytes.Equal(ib, body) {
				t.Fatalf("protect=%v: inner body %q, want %q", protect, fuzzShort(ib), fuzzShort(body))
			}
			fuzzCheckInner(t, inner, fields, protect)
		}
	})
}

// fuzzCheckInner checks the header section of the decrypted entity: the
// original Content-* fields in their order, exactly one Content-Type (the
// original first one, or text/plain), and with header protection the
// protected fields and their HP-Outer records; nothing else. Values are
// compared up to their line-end form (writeField writes CRLF, and drops
// the bare CRs before a line end), which checkInner does not allow for.
func fuzzCheckInner(t *testing.T, inner []byte, fields []Field, protect bool) {
	t.Helper()
	innerFields, _ := Split(inner)
	var wantContent, wantOther, gotContent, gotOther []Field
	origType, hasType := get(fields, "Content-Type")
	for _, f := range fields {
		if isContentField(f.Name) && !strings.EqualFold(f.Name, "Content-Type") {
			wantContent = append(wantContent, Field{f.Name, fuzzNorm(f.Value)})
		}
	}
	if protect {
		for _, name := range ProtectedFields {
			for _, f := range fields {
				if strings.EqualFold(f.Name, name) {
					wantOther = append(wantOther, Field{f.Name, fuzzNorm(f.Value)})
				}
			}
		}
		for _, name := range ProtectedFields {
			for _, f := range fields {
				if strings.EqualFold(f.Name, name) {
					v := f.Value
					if strings.EqualFold(name, "Subject") {
						v = ObscuredSubject
					}
					wantOther = append(wantOther, Field{"HP-Outer", fuzzNorm(f.Name + ": " + v)})
				}
			}
		}
	}
	var types []string
	for _, f := range innerFields {
		switch {
		case strings.EqualFold(f.Name, "Content-Type"):
			types = append(types, fuzzNorm(f.Value))
		case isContentField(f.Name):
			gotContent = append(gotContent, Field{f.Name, fuzzNorm(f.Value)})
		default:
			gotOther = append(gotOther, Field{f.Name, fuzzNorm(f.Value)})
		}
	}
	if !sameFields(gotContent, wantContent) {
		t.Fatalf("protect=%v: inner Content-* fields %q, want %q", protect, gotContent, wantContent)
	}
	if !sameFields(gotOther, wantOther) {
		t.Fatalf("protect=%v: other inner fields %q, want %q", protect, gotOther, wantOther)
	}
	if len(types) != 1 {
		t.Fatalf("protect=%v: inner Content-Type fields %q, want exactly one", protect, types)
	}
	ct := types[0]
	switch {
	case !hasType && !strings.HasPrefix(ct, "text/plain; charset=us-ascii"):
		t.Fatalf("protect=%v: inner Content-Type %q for a message without one", protect, ct)
	case hasType && !protect && ct != fuzzNorm(origType):
		t.Fatalf("inner Content-Type %q, want the original %q", ct, origType)
	case hasType && protect && !fuzzHasHPParams(origType) && !strings.HasPrefix(ct, strings.TrimRight(fuzzNorm(origType), " \t\r\n;")):
		t.Fatalf("protect=%v: inner Content-Type %q does not keep the original %q", protect, ct, origType)
	}
	if protect {
		_, params := mediaType(ct)
		if params["protected-headers"] != "v1" || params["hp"] != "cipher" {
			t.Fatalf("inner Content-Type %q: protected-headers=%q hp=%q, want v1 and cipher", ct, params["protected-headers"], params["hp"])
		}
		// A rebuilt Content-Type (the original had hp= or
		// protected-headers=) keeps every other parameter, and no
		// parameter appears twice (mime.ParseMediaType refuses that).
		if fuzzHasHPParams(origType) {
			// An original that does not parse cannot give one that does.
			if _, orig, err := mime.ParseMediaType(unfold(origType)); err == nil {
				if _, _, err := mime.ParseMediaType(unfold(ct)); err != nil {
					t.Fatalf("inner Content-Type %q does not parse: %v", ct, err)
				}
				for k, v := range orig {
					if k != "hp" && k != "protected-headers" && params[k] != v {
						t.Fatalf("inner Content-Type %q lost %s=%q", ct, k, v)
					}
				}
			}
		}
	}
}

// fuzzHasHPParams reports whether a Content-Type already names the
// header-protection parameters, which the inner one must not repeat.
func fuzzHasHPParams(contentType string) bool {
	low := strings.ToLower(contentType)
	return strings.Contains(low, "hp=") || strings.Contains(low, "protected-headers")
}

// fuzzNorm gives a header value's lines LF ends, dropping a CR before a
// line end, as writeField does.
func fuzzNorm(v string) string {
	lines := strings.Split(v, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, "\r")
	}
	return strings.Join(lines, "\n")
}

// fuzzCheckOuter checks the outer header fields and returns the value of
// their Content-Type.
func fuzzCheckOuter(t *testing.T, outer []Field, protect bool) string {
	t.Helper()
	ct, ok := get(outer, "Content-Type")
	if !ok {
		t.Fatalf("no outer Content-Type: %q", outer)
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "multipart/encrypted" || params["protocol"] != "application/pgp-encrypted" || !strings.HasPrefix(params["boundary"], "=_lacre_") {
		t.Fatalf("outer Content-Type %q (%v)", ct, err)
	}
	hasVersion := false
	for _, f := range outer {
		name := strings.ToLower(f.Name)
		switch {
		case name == "content-type":
			if f.Value != ct {
				t.Errorf("a second outer Content-Type %q stays", f.Value)
			}
		case isContentField(f.Name):
			t.Errorf("outer header still has %s: %q", f.Name, f.Value)
		case name == "mime-version":
			hasVersion = true
		case name == "subject" && protect && f.Value != ObscuredSubject:
			t.Errorf("outer Subject %q with header protection", f.Value)
		}
	}
	if !hasVersion {
		t.Errorf("no outer MIME-Version")
	}
	return ct
}

// fuzzStdlibReadable reports whether net/mail reads the header section
// and finds what openPGPMIME insists on in the outer header: MIME-Version
// 1.0 if any, and no field the standard library counts as a Content-* field that
// is not one for RFC 2045 (a field called "Content-" with nothing after
// the dash is no MIME field and stays outside).
func fuzzStdlibReadable(fields []Field) bool {
	var b bytes.Buffer
	if err := WriteMessage(&b, fields, nil); err != nil {
		return false
	}
	m, err := mail.ReadMessage(bufio.NewReader(&b))
	if err != nil {
		return false
	}
	// The outer MIME-Version is kept as sent, whatever its value (only a
	// missing one is added); openPGPMIME wants "1.0".
	if vs, ok := m.Header["Mime-Version"]; ok && vs[0] != "1.0" {
		return false
	}
	for k := range m.Header {
		if strings.HasPrefix(strings.ToLower(k), "content-") && !isContentField(k) {
			return false
		}
	}
	return true
}

func fuzzShort(b []byte) []byte {
	if len(b) > 200 {
		return b[:200]
	}
	return b
}

// FuzzAlreadyEncrypted feeds arbitrary header sections and bodies to
// AlreadyEncrypted. It must not panic, and every "already encrypted"
// answer must be justified: the body is one armoured OpenPGP message whose
// first packet (after Marker packets) is a session-key packet, or the
// Content-Type, read strictly in ASCII, is multipart/encrypted, enveloped
// S/MIME, or an octet-stream .p7m file. A wrong "yes" passes clear text.
func FuzzAlreadyEncrypted(f *testing.F) {
	hdr := func(lines ...string) []byte { return []byte(strings.Join(lines, "\r\n") + "\r\n") }
	for _, h := range [][]byte{
		nil,
		hdr("Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b"),
		hdr("Content-Type:", " multipart/encrypted; boundary=b"),
		hdr("Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m"),
		hdr("Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m"),
		hdr("Content-Type: application/x-pkcs7-mime; smime-type*=utf-8''signed-data"),
		hdr("Content-Type: application/pkcs7-mime; smime-type*0=enveloped; smime-type*1=-data"),
		hdr("Content-Type: application/octet-stream; name=\"x.P7M\""),
		hdr("Content-Type: application/octet-stream", "Content-Disposition: attachment; filename=smime.p7m"),
		hdr("Content-Type: text/plain; charset=us-ascii"),
		hdr("Content-Type: text/plain", "Content-Transfer-Encoding: base64"),
		hdr("Content-Type: text/html"),
		hdr("From: a@example.net", "Subject: x"),
		// Found by this fuzzer: Unicode case folding once made these pass.
		hdr("Content-Type: mult\u0130part/encrypted; boundary=b"),
		hdr("Content-Type: \u00a0multipart/encrypted"),
		hdr("Content-Type: appl\u0130cation/octet-stream", "Content-Disposition: attachment; filename=x.p7m"),
	} {
		f.Add(h, []byte(nil))
		f.Add(h, []byte(detectArmour))
	}
	// Real ciphertext, and the same with text around it or twice.
	key, _ := testKey(f, testkeys.Curve25519, "alice@example.org")
	res, err := Encrypt(nil, []byte("secret"), []*keys.Key{key}, Options{})
	if err != nil {
		f.Fatal(err)
	}
	_, armored := pgptest.Open(f, delivered(f, nil, res))
	for _, b := range []string{
		string(armored),
		"\r\n  " + string(armored) + "\r\n\r\n",
		"clear text\r\n" + string(armored),
		string(armored) + "\r\nclear text",
		string(armored) + string(armored),
		"-----BEGIN PGP MESSAGE-----\r\n\r\nowE=\r\n-----END PGP MESSAGE-----",         // compressed data first
		"-----BEGIN PGP MESSAGE-----\r\n\r\nqANQR1DDAQ==\r\n-----END PGP MESSAGE-----", // marker, then SKESK
		"-----BEGIN PGP MESSAGE-----\r\nComment: x\r\n\r\nwy4=\r\n-----END PGP MESSAGE-----",
		"-----BEGIN PGP SIGNED MESSAGE-----\r\nHash: SHA256\r\n\r\nclear\r\n-----BEGIN PGP SIGNATURE-----\r\n\r\nwsB=\r\n-----END PGP SIGNATURE-----",
	} {
		f.Add([]byte(nil), []byte(b))
		f.Add(hdr("Content-Type: text/plain"), []byte(b))
	}
	f.Fuzz(func(t *testing.T, header, body []byte) {
		fields, _ := Split(header)
		byHeader := EncryptedByHeader(fields)
		got := AlreadyEncrypted(fields, body)
		if byHeader && !got {
			t.Fatalf("EncryptedByHeader but not AlreadyEncrypted: %q", fields)
		}
		if byHeader && !fuzzHeaderSaysEncrypted(fields) {
			t.Fatalf("EncryptedByHeader for a header that does not say so: %q", fields)
		}
		if got && !byHeader && !fuzzOneEncryptedBlock(body) {
			t.Fatalf("AlreadyEncrypted for a body that is not one encrypted OpenPGP block: header %q, body %q", fields, fuzzShort(body))
		}
	})
}

// fuzzHeaderSaysEncrypted is the oracle for EncryptedByHeader, written
// from RFC 1847, RFC 3156 and RFC 8551 and deliberately strict: media
// types and parameter names are compared in ASCII only, as mail readers
// do (strings.ToLower would turn "İ" and the Kelvin sign into ASCII).
func fuzzHeaderSaysEncrypted(fields []Field) bool {
	ct, ok := fuzzGet(fields, "content-type")
	if !ok {
		return false
	}
	ct = fuzzUnfold(ct)
	base, _, _ := strings.Cut(ct, ";")
	typ := fuzzASCIILower(strings.Trim(base, " \t"))
	_, params, strictErr := mime.ParseMediaType(ct)
	switch typ {
	case "multipart/encrypted":
		return true
	case "application/pkcs7-mime", "application/x-pkcs7-mime":
		if strictErr != nil || strings.Count(fuzzASCIILower(ct), "smime-type") > 1 {
			return false
		}
		switch fuzzASCIILower(params["smime-type"]) {
		case "", "enveloped-data", "authenveloped-data":
			return true
		}
	case "application/octet-stream":
		if strictErr == nil && strings.HasSuffix(fuzzASCIILower(params["name"]), ".p7m") {
			return true
		}
		if cd, ok := fuzzGet(fields, "content-disposition"); ok {
			if _, dp, err := mime.ParseMediaType(fuzzUnfold(cd)); err == nil && strings.HasSuffix(fuzzASCIILower(dp["filename"]), ".p7m") {
				return true
			}
		}
	}
	return false
}

// fuzzOneEncryptedBlock is the oracle for the inline case: the body,
// without surrounding white space, is exactly one "PGP MESSAGE" armour
// block, and its first packet that is not a Marker is a PKESK (tag 1) or
// SKESK (tag 3). Packet headers are read in full (RFC 9580 §4.2), all
// length forms included.
func fuzzOneEncryptedBlock(body []byte) bool {
	b := bytes.TrimSpace(body)
	if !bytes.HasPrefix(b, pgpBegin) || !bytes.HasSuffix(b, pgpEnd) ||
		bytes.Count(b, pgpBegin) != 1 || bytes.Count(b, pgpEnd) != 1 {
		return false
	}
	blk, err := armor.Decode(bytes.NewReader(b))
	if err != nil || blk.Type != "PGP MESSAGE" {
		return false
	}
	r := bufio.NewReader(blk.Body)
	for {
		tag, length, ok := fuzzPacketHeader(r)
		if !ok {
			return false
		}
		switch tag {
		case 1, 3:
			return true
		case 10:
			if length < 0 { // partial length: not a marker
				return false
			}
			if _, err := io.CopyN(io.Discard, r, length); err != nil {
				return false
			}
		default:
			return false
		}
	}
}

// fuzzPacketHeader reads one OpenPGP packet header. The tag alone decides
// whether a packet is a session-key packet; length is -1 when it is
// partial, indeterminate or cut short.
func fuzzPacketHeader(r *bufio.Reader) (tag byte, length int64, ok bool) {
	h, err := r.ReadByte()
	if err != nil || h&0x80 == 0 {
		return 0, 0, false
	}
	readN := func(n int) int64 {
		var v int64
		for range n {
			c, err := r.ReadByte()
			if err != nil {
				return -1
			}
			v = v<<8 | int64(c)
		}
		return v
	}
	if h&0x40 != 0 { // new format
		tag = h & 0x3F
		l1 := readN(1)
		switch {
		case l1 < 0:
			return tag, -1, true
		case l1 < 192:
			return tag, l1, true
		case l1 < 224:
			l2 := readN(1)
			if l2 < 0 {
				return tag, -1, true
			}
			return tag, (l1-192)<<8 + l2 + 192, true
		case l1 == 255:
			return tag, readN(4), true
		default:
			return tag, -1, true
		}
	}
	tag = (h >> 2) & 0x0F // legacy format
	switch h & 3 {
	case 0:
		return tag, readN(1), true
	case 1:
		return tag, readN(2), true
	case 2:
		return tag, readN(4), true
	default:
		return tag, -1, true
	}
}

func fuzzGet(fields []Field, lowerName string) (string, bool) {
	for _, f := range fields {
		if fuzzASCIILower(f.Name) == lowerName {
			return f.Value, true
		}
	}
	return "", false
}

func fuzzUnfold(v string) string {
	return strings.NewReplacer("\r\n", "", "\n", "").Replace(v)
}

func fuzzASCIILower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
