package crypto

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"slices"
	"strings"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"lacre.io/milter/internal/keystest"
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
	key, secret := keystest.Key(f, testkeys.Curve25519, "alice@example.org")
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
			ct := fuzzCheckOuter(t, outer, oracleProtects(fields, protect))

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
			fuzzCheckInner(t, inner, fields, body, oracleProtects(fields, protect))
		}
	})
}

// fuzzCheckInner checks the header section of the decrypted entity: the
// original Content-* fields in their order, exactly one Content-Type (the
// original first one, or text/plain), and with header protection the
// protected fields and their HP-Outer records; nothing else. Values are
// compared up to their line-end form (writeField writes CRLF, and drops
// the bare CRs before a line end), which checkInner does not allow for.
func fuzzCheckInner(t *testing.T, inner []byte, fields []Field, body []byte, protect bool) {
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
		for _, name := range ProtectedFields() {
			for _, f := range fields {
				if strings.EqualFold(f.Name, name) {
					wantOther = append(wantOther, Field{f.Name, fuzzNorm(f.Value)})
				}
			}
		}
		for _, name := range ProtectedFields() {
			if oracleIsConcealed(name) {
				continue
			}
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
	case !hasType && oracleDefaultType(strings.TrimSuffix(ct, `; protected-headers="v1"; hp="cipher"`), body) != nil:
		t.Fatalf("protect=%v: %v", protect, oracleDefaultType(strings.TrimSuffix(ct, `; protected-headers="v1"; hp="cipher"`), body))
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
		case protect && oracleIsConcealed(f.Name):
			t.Errorf("outer %s %q with header protection", f.Name, f.Value)
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
// answer must be justified by oracles written independently of detect.go
// (a wrong "yes" delivers clear text):
//
//   - the structure holds when read with other parsers: mime/multipart
//     for PGP/MIME, go-crypto's armour decoder and opaque packet reader
//     plus a bitwise CRC24 for OpenPGP, encoding/asn1 (after a separate
//     BER-to-DER conversion) for CMS;
//   - no MIME field appears twice, and adding a second copy of any one
//     of them, or a second Content-Type, makes the answer "no";
//   - any byte that is not white space appended to the body makes the
//     answer "no" (nothing may follow the armour block, the closing
//     delimiter or the base64 CMS object).
func FuzzAlreadyEncrypted(f *testing.F) {
	hdr := func(lines ...string) []byte { return []byte(strings.Join(lines, "\r\n") + "\r\n") }
	for _, h := range [][]byte{
		nil,
		hdr("Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b"),
		hdr("Content-Type:", " multipart/encrypted; boundary=b"),
		hdr("Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m", "Content-Transfer-Encoding: base64"),
		hdr("Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m"),
		hdr("Content-Type: application/x-pkcs7-mime; smime-type*=utf-8''signed-data"),
		hdr("Content-Type: application/pkcs7-mime; smime-type*0=enveloped; smime-type*1=-data"),
		hdr("Content-Type: application/octet-stream; name=\"x.P7M\""),
		hdr("Content-Type: application/octet-stream", "Content-Disposition: attachment; filename=smime.p7m"),
		hdr("Content-Type: text/plain; charset=us-ascii"),
		hdr("Content-Type: text/plain", "Content-Transfer-Encoding: base64"),
		hdr("Content-Type: text/plain", "Content-Transfer-Encoding: quoted-printable"),
		hdr("Content-Type: text/html"),
		hdr("From: a@example.net", "Subject: x"),
		hdr("Content-Type: mult\u0130part/encrypted; boundary=b"),
		hdr("Content-Type: \u00a0multipart/encrypted"),
		hdr("Content-Type: appl\u0130cation/octet-stream", "Content-Disposition: attachment; filename=x.p7m"),
	} {
		f.Add(h, []byte(nil))
		f.Add(h, []byte(detectArmour))
	}
	// Real ciphertext, the same with text around it or twice, and its
	// PGP/MIME form (v4 key: SEIPDv1; v6 key: SEIPDv2 in partial lengths).
	for _, kind := range []testkeys.Kind{testkeys.Curve25519, testkeys.V6} {
		fields, body, armoured := realEncrypted(f, kind, false)
		var h bytes.Buffer
		WriteMessage(&h, fields, nil)
		f.Add(h.Bytes(), body)
		for _, b := range []string{
			armoured,
			"\r\n  " + armoured + "\r\n\r\n",
			"clear text\r\n" + armoured,
			armoured + "\r\nclear text",
			armoured + armoured,
		} {
			f.Add([]byte(nil), []byte(b))
			f.Add(hdr("Content-Type: text/plain"), []byte(b))
		}
	}
	// CMS: synthetic EnvelopedData and AuthEnvelopedData in DER and in
	// BER with indefinite lengths (the real ones come from openssl in
	// TestAlreadyEncryptedOpenSSL).
	for _, cms := range fuzzCMSSeeds() {
		b := []byte(base64.StdEncoding.EncodeToString(cms) + "\r\n")
		f.Add(hdr("Content-Type: application/pkcs7-mime; smime-type=enveloped-data", "Content-Transfer-Encoding: base64"), b)
		f.Add(hdr("Content-Type: application/pkcs7-mime", "Content-Transfer-Encoding: base64"), b)
	}
	for _, b := range []string{
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
		if !AlreadyEncrypted(fields, body) {
			return
		}
		if why := fuzzEncryptedOracle(fields, body); why != "" {
			t.Fatalf("AlreadyEncrypted, but %s: header %q, body %q", why, fields, fuzzShort(body))
		}
		for _, c := range []string{"x", "\x00", "\xff", "-", "="} {
			if AlreadyEncrypted(fields, append(bytes.Clone(body), c...)) {
				t.Fatalf("still AlreadyEncrypted with %q appended: header %q, body %q", c, fields, fuzzShort(body))
			}
		}
		// A copy of each MIME field, and a second, different Content-Type.
		var extra []Field
		if _, ok := fuzzGet(fields, "content-type"); ok {
			extra = append(extra, Field{"Content-Type", "text/plain"})
		}
		for _, fl := range fields {
			if n := fuzzASCIILower(fl.Name); n == "mime-version" || strings.HasPrefix(n, "content-") {
				extra = append(extra, fl)
			}
		}
		for _, x := range extra {
			if AlreadyEncrypted(append(slices.Clone(fields), x), body) {
				t.Fatalf("still AlreadyEncrypted with a second %s field: header %q", x.Name, fields)
			}
		}
	})
}

// fuzzEncryptedOracle says why a message is not an encrypted one, or ""
// if it is. It reads the message with other parsers than detect.go.
func fuzzEncryptedOracle(fields []Field, body []byte) string {
	if n := fuzzDuplicateMIME(fields); n != "" {
		return "a duplicate " + n + " field"
	}
	ct, ok := fuzzGet(fields, "content-type")
	if !ok {
		ct = "text/plain"
	}
	mt, params, err := mime.ParseMediaType(fuzzUnfold(ct))
	if err != nil {
		return "an unparseable Content-Type"
	}
	base, _, _ := strings.Cut(fuzzUnfold(ct), ";")
	if fuzzASCIILower(strings.Trim(base, " \t")) != mt {
		return "a media type outside ASCII"
	}
	cte := "7bit"
	if v, ok := fuzzGet(fields, "content-transfer-encoding"); ok {
		cte = fuzzASCIILower(strings.TrimSpace(fuzzUnfold(v)))
	}
	switch mt {
	case "text/plain":
		switch cte {
		case "7bit", "8bit", "binary":
		case "quoted-printable":
			dec, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(body)))
			if err != nil {
				return "quoted-printable that does not decode"
			}
			body = dec
		default:
			return "transfer encoding " + cte
		}
		return fuzzArmourOracle(body)
	case "multipart/encrypted":
		return fuzzPGPMIMEOracle(params, body)
	case "application/pkcs7-mime", "application/x-pkcs7-mime", "application/octet-stream":
		if cte != "base64" {
			return "S/MIME not in base64"
		}
		clean := bytes.Map(func(r rune) rune {
			if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
				return -1
			}
			return r
		}, body)
		der, err := base64.StdEncoding.DecodeString(string(clean))
		if err != nil {
			return "bad base64"
		}
		return fuzzCMSOracle(der)
	}
	return "media type " + mt
}

func fuzzDuplicateMIME(fields []Field) string {
	seen := map[string]bool{}
	for _, f := range fields {
		n := fuzzASCIILower(f.Name)
		if n == "mime-version" || strings.HasPrefix(n, "content-") {
			if seen[n] {
				return n
			}
			seen[n] = true
		}
	}
	return ""
}

// fuzzPGPMIMEOracle reads RFC 3156 structure with mime/multipart.
func fuzzPGPMIMEOracle(params map[string]string, body []byte) string {
	if fuzzASCIILower(params["protocol"]) != "application/pgp-encrypted" {
		return "protocol " + params["protocol"]
	}
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	var parts [][]byte
	var headers []textproto.MIMEHeader
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "mime/multipart: " + err.Error()
		}
		b, err := io.ReadAll(p)
		if err != nil {
			return "mime/multipart: " + err.Error()
		}
		parts, headers = append(parts, b), append(headers, p.Header)
	}
	if len(parts) != 2 {
		return fmt.Sprintf("%d parts", len(parts))
	}
	for i, want := range []string{"application/pgp-encrypted", "application/octet-stream"} {
		h := headers[i]
		for k, v := range h {
			if (strings.HasPrefix(k, "Content-") || k == "Mime-Version") && len(v) != 1 {
				return fmt.Sprintf("part %d has %d %s fields", i+1, len(v), k)
			}
		}
		if mt, _, err := mime.ParseMediaType(h.Get("Content-Type")); err != nil || mt != want {
			return fmt.Sprintf("part %d is %q", i+1, h.Get("Content-Type"))
		}
		switch cte := fuzzASCIILower(strings.TrimSpace(h.Get("Content-Transfer-Encoding"))); cte {
		case "", "7bit", "8bit", "binary":
		default:
			return fmt.Sprintf("part %d in %s", i+1, cte)
		}
	}
	if string(bytes.Trim(parts[0], " \t\r\n")) != "Version: 1" {
		return fmt.Sprintf("version part %q", fuzzShort(parts[0]))
	}
	return fuzzArmourOracle(parts[1])
}

// fuzzArmourOracle: one "PGP MESSAGE" armour block and nothing else,
// decoded by go-crypto, its checksum (if any) right by a bitwise CRC24,
// its packets read by go-crypto's opaque reader: session-key packets
// (and markers), then one encrypted-data packet, then the end.
func fuzzArmourOracle(body []byte) string {
	b := bytes.Trim(body, " \t\r\n")
	if !bytes.HasPrefix(b, []byte("-----BEGIN PGP MESSAGE-----")) || !bytes.HasSuffix(b, []byte("-----END PGP MESSAGE-----")) ||
		bytes.Count(b, []byte("-----BEGIN")) != 1 || bytes.Count(b, []byte("-----END")) != 1 {
		return "not exactly one armour block"
	}
	blk, err := armor.Decode(bytes.NewReader(b))
	if err != nil || blk.Type != "PGP MESSAGE" {
		return fmt.Sprintf("armour: %v", err)
	}
	for k := range blk.Header {
		switch k {
		case "Version", "Comment", "Charset", "MessageID":
		default:
			return "armour header " + k
		}
	}
	data, err := io.ReadAll(blk.Body)
	if err != nil {
		return "armour: " + err.Error()
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) >= 2 {
		if l := strings.TrimRight(lines[len(lines)-2], " \t\r"); strings.HasPrefix(l, "=") {
			sum, err := base64.StdEncoding.DecodeString(l[1:])
			if err != nil || len(sum) != 3 {
				return "bad checksum line"
			}
			if c := fuzzCRC24(data); sum[0] != byte(c>>16) || sum[1] != byte(c>>8) || sum[2] != byte(c) {
				return "checksum mismatch"
			}
		}
	}
	r := packet.NewOpaqueReader(bytes.NewReader(data))
	sessionKeys, encrypted := 0, 0
	for {
		p, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "packets: " + err.Error()
		}
		if encrypted > 0 {
			return fmt.Sprintf("packet %d after the encrypted data", p.Tag)
		}
		switch p.Tag {
		case 1, 3:
			sessionKeys++
		case 10:
			if string(p.Contents) != "PGP" {
				return "a marker that is not one"
			}
		case 18, 20:
			encrypted++
		default:
			return fmt.Sprintf("packet %d", p.Tag)
		}
	}
	if sessionKeys == 0 || encrypted != 1 {
		return fmt.Sprintf("%d session keys, %d encrypted-data packets", sessionKeys, encrypted)
	}
	return ""
}

// fuzzCRC24 is RFC 9580 §6.1.1's CRC24, a bit at a time.
func fuzzCRC24(data []byte) uint32 {
	crc := uint32(0xB704CE)
	for _, b := range data {
		crc ^= uint32(b) << 16
		for range 8 {
			crc <<= 1
			if crc&0x1000000 != 0 {
				crc ^= 0x1864CFB
			}
		}
	}
	return crc & 0xFFFFFF
}

// fuzzCMSOracle reads a CMS ContentInfo with encoding/asn1, after
// converting BER to DER: EnvelopedData or AuthEnvelopedData with a
// version, recipient infos and encrypted content, and nothing after it.
func fuzzCMSOracle(ber []byte) string {
	der, n, ok := fuzzBERToDER(ber, 0)
	if !ok || n != len(ber) {
		return "not one BER element"
	}
	var ci asn1.RawValue
	if rest, err := asn1.Unmarshal(der, &ci); err != nil || len(rest) != 0 {
		return fmt.Sprintf("encoding/asn1: %v", err)
	}
	items := fuzzASN1Items(ci)
	if ci.Tag != asn1.TagSequence || len(items) != 2 {
		return "ContentInfo"
	}
	var oid asn1.ObjectIdentifier
	if _, err := asn1.Unmarshal(items[0].FullBytes, &oid); err != nil {
		return "contentType"
	}
	auth := oid.Equal(asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 1, 23})
	if !auth && !oid.Equal(asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 3}) {
		return "contentType " + oid.String()
	}
	wrap := fuzzASN1Items(items[1])
	if items[1].Class != asn1.ClassContextSpecific || items[1].Tag != 0 || len(wrap) != 1 || wrap[0].Tag != asn1.TagSequence {
		return "content"
	}
	env := fuzzASN1Items(wrap[0])
	var version int
	if len(env) < 3 {
		return "EnvelopedData too short"
	}
	if _, err := asn1.Unmarshal(env[0].FullBytes, &version); err != nil {
		return "version"
	}
	env = env[1:]
	if env[0].Class == asn1.ClassContextSpecific && env[0].Tag == 0 {
		env = env[1:]
	}
	if len(env) < 2 || env[0].Class != asn1.ClassUniversal || env[0].Tag != asn1.TagSet || len(fuzzASN1Items(env[0])) == 0 {
		return "recipientInfos"
	}
	eci := fuzzASN1Items(env[1])
	if env[1].Tag != asn1.TagSequence || len(eci) != 3 || eci[2].Class != asn1.ClassContextSpecific || eci[2].Tag != 0 {
		return "encryptedContentInfo"
	}
	if auth {
		hasMAC := false
		for _, e := range env[2:] {
			hasMAC = hasMAC || (e.Class == asn1.ClassUniversal && e.Tag == asn1.TagOctetString)
		}
		if !hasMAC {
			return "no mac"
		}
	}
	return ""
}

func fuzzASN1Items(v asn1.RawValue) []asn1.RawValue {
	if !v.IsCompound {
		return nil
	}
	var out []asn1.RawValue
	for rest := v.Bytes; len(rest) > 0; {
		var e asn1.RawValue
		var err error
		if rest, err = asn1.Unmarshal(rest, &e); err != nil {
			return nil
		}
		out = append(out, e)
	}
	return out
}

// fuzzBERToDER re-encodes one BER element with definite, minimal
// lengths (X.690 §10.1): it returns the DER form and the BER octets read.
func fuzzBERToDER(b []byte, depth int) ([]byte, int, bool) {
	if depth > 100 || len(b) < 2 {
		return nil, 0, false
	}
	i := 1
	if b[0]&0x1F == 0x1F {
		for i < len(b) && b[i]&0x80 != 0 {
			i++
		}
		i++
	}
	if i >= len(b) {
		return nil, 0, false
	}
	id := b[:i]
	constructed := b[0]&0x20 != 0
	var content []byte
	l := int(b[i])
	i++
	if l == 0x80 {
		if !constructed {
			return nil, 0, false
		}
		for {
			if i+1 < len(b) && b[i] == 0 && b[i+1] == 0 {
				i += 2
				break
			}
			d, n, ok := fuzzBERToDER(b[i:], depth+1)
			if !ok {
				return nil, 0, false
			}
			content = append(content, d...)
			i += n
		}
	} else {
		if l > 0x80 {
			k := l & 0x7F
			if k > 4 || i+k > len(b) {
				return nil, 0, false
			}
			l = 0
			for _, c := range b[i : i+k] {
				l = l<<8 | int(c)
			}
			i += k
		}
		if l > len(b)-i {
			return nil, 0, false
		}
		if constructed {
			for j := i; j < i+l; {
				d, n, ok := fuzzBERToDER(b[j:i+l], depth+1)
				if !ok {
					return nil, 0, false
				}
				content = append(content, d...)
				j += n
			}
		} else {
			content = b[i : i+l]
		}
		i += l
	}
	out := append([]byte(nil), id...)
	switch n := len(content); {
	case n < 0x80:
		out = append(out, byte(n))
	case n < 1<<8:
		out = append(out, 0x81, byte(n))
	case n < 1<<16:
		out = append(out, 0x82, byte(n>>8), byte(n))
	case n < 1<<24:
		out = append(out, 0x83, byte(n>>16), byte(n>>8), byte(n))
	default:
		out = append(out, 0x84, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(out, content...), i, true
}

// fuzzCMSSeeds returns synthetic CMS objects: EnvelopedData and
// AuthEnvelopedData in DER (encoding/asn1), and both again in BER with
// indefinite lengths on every constructed element, as "openssl cms
// -stream" writes them.
func fuzzCMSSeeds() [][]byte {
	type algo struct {
		Algorithm asn1.ObjectIdentifier
		Params    asn1.RawValue `asn1:"optional"`
	}
	type ktri struct {
		Version int
		RID     asn1.RawValue `asn1:"tag:0"`
		Alg     algo
		Key     []byte
	}
	type eci struct {
		ContentType asn1.ObjectIdentifier
		Alg         algo
		Content     []byte `asn1:"tag:0"`
	}
	type enveloped struct {
		Version    int
		Recipients []ktri `asn1:"set"`
		Content    eci
	}
	type authEnveloped struct {
		Version    int
		Recipients []ktri `asn1:"set"`
		Content    eci
		MAC        []byte
	}
	type contentInfo struct {
		ContentType asn1.ObjectIdentifier
		Content     asn1.RawValue // [0] EXPLICIT, written out below
	}
	must := func(b []byte, err error) []byte {
		if err != nil {
			panic(err)
		}
		return b
	}
	rcpt := ktri{Version: 2, RID: asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, Bytes: []byte("subject key id")},
		Alg: algo{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 7}}, Key: bytes.Repeat([]byte{0x5A}, 256)}
	content := eci{ContentType: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1},
		Alg:     algo{Algorithm: asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}, Params: asn1.RawValue{Tag: asn1.TagOctetString, Bytes: make([]byte, 16)}},
		Content: bytes.Repeat([]byte{0xA5}, 64)}
	wrap := func(oid asn1.ObjectIdentifier, inner []byte) []byte {
		return must(asn1.Marshal(contentInfo{ContentType: oid, Content: asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: inner}}))
	}
	env := wrap(asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 3},
		must(asn1.Marshal(enveloped{Version: 2, Recipients: []ktri{rcpt}, Content: content})))
	auth := wrap(asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 1, 23},
		must(asn1.Marshal(authEnveloped{Version: 0, Recipients: []ktri{rcpt}, Content: content, MAC: make([]byte, 16)})))
	return [][]byte{env, auth, fuzzIndefinite(env), fuzzIndefinite(auth)}
}

// fuzzIndefinite re-encodes DER with indefinite lengths on every
// constructed element.
func fuzzIndefinite(der []byte) []byte {
	var out []byte
	for len(der) > 0 {
		var v asn1.RawValue
		rest, err := asn1.Unmarshal(der, &v)
		if err != nil {
			panic(err)
		}
		hdr := v.FullBytes[:len(v.FullBytes)-len(v.Bytes)]
		if v.IsCompound {
			id := hdr[:1] // the seeds use low tag numbers only
			out = append(out, id[0], 0x80)
			out = append(out, fuzzIndefinite(v.Bytes)...)
			out = append(out, 0, 0)
		} else {
			out = append(out, v.FullBytes...)
		}
		der = rest
	}
	return out
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
