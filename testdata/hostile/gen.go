//go:build ignore

// Command gen writes the hostile input corpus of this directory (see
// README.md). Run it from the repository root:
//
//	go run testdata/hostile/gen.go                 # rewrite mime/ (deterministic)
//	go run testdata/hostile/gen.go -check          # exit 1 if mime/ is not what gen writes
//	go run testdata/hostile/gen.go -keys           # new random hostile keys in keys/ (public only)
//	go run testdata/hostile/gen.go -keys -secrets -dir DIR
//	                                               # the same key cases, plus DIR/secret/NAME.pgp
//	                                               # holding each case's secret key (tests only;
//	                                               # never commit those)
//
// The MIME files are fully determined by this program: crypto's tests run
// it with -check, so the committed files cannot drift from it. The keys
// are random, so they are not compared byte for byte; keys' tests run it
// with -keys -secrets into a temporary directory and check that each
// freshly made case gets the same outcome as the committed one, and that
// the accepted ones decrypt with their secret keys.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

// Address is the address every hostile key is made for.
const Address = "hostile@example.org"

func main() {
	dir := flag.String("dir", "testdata/hostile", "the corpus directory")
	check := flag.Bool("check", false, "compare mime/ with what would be written; change nothing")
	doKeys := flag.Bool("keys", false, "write new random keys to keys/ instead of the MIME files")
	secrets := flag.Bool("secrets", false, "with -keys: also write each case's secret key to secret/ (tests only)")
	flag.Parse()
	var err error
	switch {
	case *doKeys:
		err = writeKeys(*dir, *secrets)
	case *check:
		err = checkMIME(*dir)
	default:
		err = writeMIME(*dir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

// ---------------------------------------------------------------- MIME

func writeMIME(dir string) error {
	d := filepath.Join(dir, "mime")
	if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	for name, data := range mimeCases() {
		if err := os.WriteFile(filepath.Join(d, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func checkMIME(dir string) error {
	var bad []string
	for name, data := range mimeCases() {
		got, err := os.ReadFile(filepath.Join(dir, "mime", name))
		switch {
		case errors.Is(err, os.ErrNotExist):
			bad = append(bad, name+": missing")
		case err != nil:
			return err
		case !bytes.Equal(got, data):
			bad = append(bad, fmt.Sprintf("%s: differs (%d bytes on disk, %d generated)", name, len(got), len(data)))
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return fmt.Errorf("mime/ is not what gen.go writes; run 'go run testdata/hostile/gen.go' from the repository root:\n  %s",
			strings.Join(bad, "\n  "))
	}
	return nil
}

// std is an ordinary transport header; every case that has a header
// starts with it unless the case is about the header's first line.
func std(name string) string {
	return "Received: from client.example (client.example [192.0.2.1])\r\n" +
		"\tby mx.example.org (Postfix) with ESMTP id 4HOSTILE;\r\n" +
		"\tThu, 26 Nov 2026 10:00:00 +0000 (UTC)\r\n" +
		"From: Mallory <mallory@example.net>\r\n" +
		"To: Alice <alice@example.org>\r\n" +
		"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n" +
		"Message-ID: <" + name + "@hostile.example.net>\r\n"
}

// filler returns n printable bytes that do not compress to nothing and
// contain no line break, colon or dash run (deterministic).
func filler(n int, seed uint64) []byte {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,"
	r := mrand.New(mrand.NewPCG(seed, seed^0x9E3779B97F4A7C15))
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[r.IntN(len(alphabet))]
	}
	return b
}

func crlf(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

func mimeCases() map[string][]byte {
	m := map[string]string{}

	m["no-boundary-param.eml"] = std("no-boundary-param") + crlf("Subject: multipart without a boundary parameter\n"+
		"MIME-Version: 1.0\nContent-Type: multipart/mixed\n\n"+
		"This is a multipart message whose Content-Type names no boundary.\n"+
		"--\nContent-Type: text/plain\n\nsecret part one\n"+
		"--frontier\nContent-Type: text/plain\n\nsecret part two\n--frontier--\n")

	m["unterminated-multipart.eml"] = std("unterminated-multipart") + crlf("Subject: multipart without its closing boundary\n"+
		"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n\n"+
		"--b1\nContent-Type: text/plain; charset=us-ascii\n\nsecret part one\n"+
		"--b1\nContent-Type: multipart/alternative; boundary=\"b2\"\n\n--b2\nContent-Type: text/plain\n\n"+
		"nested part, never closed either\n--b2\nContent-Type: text/html\n\n<p>cut off") // no closing boundary, no final line end

	m["boundary-never-appears.eml"] = std("boundary-never-appears") + crlf("Subject: the declared boundary never appears\n"+
		"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"declared-but-never-used\"\n\n"+
		"--declared-but-never-use\nContent-Type: text/plain\n\nclose, but not the boundary\n"+
		"--declared-but-never-used-\n--Declared-But-Never-Used\n---declared-but-never-used\nsecret text\n")

	m["bad-base64.eml"] = std("bad-base64") + crlf("Subject: base64 that is not base64\n"+
		"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b\"\n\n"+
		"--b\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"+
		"U2VjcmV0IHRleHQ=\n!!!not*base64 at all***\nA===\n=\n====\nU2VjcmV0\x80\xff\n"+strings.Repeat("QUJD", 600)+"Q\n"+
		"--b\nContent-Type: application/octet-stream; name=\"x.bin\"\nContent-Transfer-Encoding: base64\n\n"+
		"////\n@@@@\n\x00\x00\x00\x00\nAAAA=AAAA\n--b--\n")
	// The top level itself claims base64 too, on a body that is not.
	m["bad-base64-toplevel.eml"] = std("bad-base64-toplevel") + crlf("Subject: top-level base64 that is not base64\n"+
		"MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: base64\n\n"+
		"This is plain secret text, not base64.\n-----BEGIN PGP MESSAGE-----\n\n=AAAA\n")

	m["nul-in-headers-and-body.eml"] = std("nul-in-headers-and-body") +
		"Subject: a NUL\x00in the subject\r\n" +
		"X-Nul: \x00\x00\x00\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=us-ascii\r\n" +
		"Content-Description: desc\x00ription after a NUL\r\n" +
		"\r\n" +
		"secret line\x00one\r\n\x00\x00\x00\r\n\x00\r\nlast\x00"
	m["nul-in-header-name.eml"] = std("nul-in-header-name") +
		"Subject: a NUL in a field name\r\n" +
		"X-Bad\x00Name: value\r\n" +
		"Content-Type: text/plain\r\n" +
		"\r\nsecret body\r\n"

	m["10000-header-fields.eml"] = tenThousandFields()

	// One header line of exactly 1,000,000 bytes (CRLF not counted). It is
	// the Subject, so header protection copies it twice into the
	// ciphertext. (Postfix cuts header lines at header_size_limit, 100 KiB
	// by default; the milter must cope with whatever an MTA passes on.)
	{
		const line = 1_000_000
		prefix := "Subject: "
		m["1mb-header-line.eml"] = std("1mb-header-line") + prefix + string(filler(line-len(prefix), 1)) + "\r\n" +
			"Content-Type: text/plain\r\n\r\nsecret body after a 1 MB header line\r\n"
	}

	m["bare-cr-lf-crlf-mix.eml"] = "Received: from client.example\n\tby mx.example.org;\r\n\tThu, 26 Nov 2026 10:00:00 +0000\r\n" +
		"From: Mallory <mallory@example.net>\n" +
		"To: alice@example.org\r\n" +
		"Subject: mixed\rline\rends\r\r\n" +
		"X-Bare-CR: a\rb\r\n" +
		"MIME-Version: 1.0\n" +
		"Content-Type: text/plain;\r\n\tcharset=us-ascii\n" +
		"Content-Transfer-Encoding: 7bit\r\r\n" +
		"\n" +
		"crlf line\r\nlf line\nbare cr\rtwo crs\r\r\nlf cr\n\rcr lf cr\r\n\r\r\rend without a line end\r"
	m["bare-cr-only.eml"] = strings.ReplaceAll(strings.ReplaceAll(std("bare-cr-only"), "\r\n", "\r")+
		"Subject: only bare CR line ends\rContent-Type: text/plain\r\rsecret body\rline two\r", "\n", "")
	m["bare-lf-only.eml"] = strings.ReplaceAll(std("bare-lf-only")+crlf("Subject: only LF line ends\n"+
		"MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=\"lf\"\n\n"+
		"--lf\nContent-Type: text/plain\n\nsecret text\n--lf\nContent-Type: text/html\n\n<p>secret</p>\n--lf--\n"), "\r\n", "\n")

	m["8bit-header-values.eml"] = std("8bit-header-values") +
		"Subject: Gr\xfc\xdfe aus K\xf6ln (Latin-1), Gr\xc3\xbc\xc3\x9fe (UTF-8), \xe6\x97\xa5\xe6\x9c\xac\r\n" +
		"Cc: J\xc3\xbcrgen <juergen@example.org>, \xff\xfe <x@example.org>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=\"utf-8\"; name=\"f\xc3\xbcr \xe9t\xe9.txt\"\r\n" +
		"Content-Description: invalid UTF-8 \xc3\x28 \xa0\xa1 \xe2\x82 \xf0\x28\x8c\xbc \xc0\xaf\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n" +
		"X-Mixed: \xe6\x97\xa5\xe6\x9c\xac \x80\x81\x7f\r\n" +
		"\r\nGr\xc3\xbc\xc3\x9fe, secret 8-bit body \xff\xfe\r\n"
	m["8bit-header-name.eml"] = std("8bit-header-name") +
		"Subject: 8-bit bytes in field names\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"X-Caf\xe9: a Latin-1 byte in the name\r\n" +
		"X-Gr\xc3\xbc\xc3\x9fe: UTF-8 in the name\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n" +
		"\r\nsecret body\r\n"

	m["header-without-colon.eml"] = std("header-without-colon") +
		"Subject: a header line without a colon follows\r\n" +
		"This line has no colon and is not a header field\r\n" +
		"Content-Type: text/html\r\n" +
		"\r\nsecret body\r\n"
	m["continuation-first-line.eml"] = " starts with a continuation line\r\n\tand another\r\n" +
		"From: Mallory <mallory@example.net>\r\nContent-Type: text/plain\r\n\r\nsecret body\r\n"

	m["empty.eml"] = ""
	m["only-blank-line.eml"] = "\r\n"
	m["headers-only-no-body.eml"] = std("headers-only-no-body") +
		"Subject: a header section that never ends\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\nX-Last: no blank line, no body"

	m["nested-1000-multipart.eml"] = nested(1000)

	m["long-body-line.eml"] = std("long-body-line") +
		"Subject: one body line of 600 kB without a line end\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n" +
		string(filler(600_000, 2))

	m["fake-inline-pgp.eml"] = std("fake-inline-pgp") +
		"Subject: looks like inline PGP, is clear text\r\nContent-Type: text/plain\r\n\r\n" +
		"-----BEGIN PGP MESSAGE-----\r\n\r\nthis secret text is not ciphertext !!!\r\n=AAAA\r\n-----END PGP MESSAGE-----\r\n"
	m["lookalike-multipart-encrypted.eml"] = std("lookalike-multipart-encrypted") +
		"Subject: multipart/encrypted spelt with a dotted capital I\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: mult\xc4\xb0part/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"x\"\r\n" +
		"\r\n--x\r\nContent-Type: text/plain\r\n\r\nsecret text in the clear\r\n--x--\r\n"
	m["garbage-content-type.eml"] = std("garbage-content-type") +
		"Subject: unparseable MIME fields\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"unterminated; ;;; ==; =;\r\n\tboundary*0*=utf-8''x; boundary*1=\"\r\n" +
		"Content-Type: text/html\r\n" +
		"Content-Transfer-Encoding: x-unknown; ===\r\n" +
		"Content-: a field called Content- with nothing after the dash\r\n" +
		"\r\n--unterminated\r\nsecret body\r\n"

	lookalikes(m)

	out := make(map[string][]byte, len(m))
	for k, v := range m {
		out[k] = []byte(v)
	}
	return out
}

// lookalikes adds mail that only looks encrypted (issue 11): each case
// differs from a genuine PGP/MIME, inline or S/MIME message in one
// point, and must be encrypted like clear text.
func lookalikes(m map[string]string) {
	const secret = "The launch code is 1234.\r\n"
	pkesk := pkt(1, append([]byte{3}, bytes.Repeat([]byte{0x42}, 60)...))  // v3 PKESK of filler
	seipd := pkt(18, append([]byte{1}, bytes.Repeat([]byte{0x17}, 80)...)) // v1 SEIPD of filler
	literal := pkt(11, []byte("b\x00\x00\x00\x00\x00"+secret))             // literal data: readable
	good := append(append([]byte(nil), pkesk...), seipd...)                // what a genuine message frames
	pgpMIME := func(name, subject, extraHeader, armour, version string) {
		m[name] = std(strings.TrimSuffix(name, ".eml")) + "Subject: " + subject + "\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"b\"\r\n" + extraHeader +
			"\r\nThis is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n" +
			"--b\r\nContent-Type: application/pgp-encrypted\r\n\r\n" + version + "\r\n\r\n" +
			"--b\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\r\n" + armour + "\r\n--b--\r\n"
	}
	inline := func(name, subject, body string) {
		m[name] = std(strings.TrimSuffix(name, ".eml")) + "Subject: " + subject + "\r\nContent-Type: text/plain\r\n\r\n" + body
	}
	clear := func(name, subject, contentType string) {
		m[name] = std(strings.TrimSuffix(name, ".eml")) + "Subject: " + subject + "\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: " + contentType + "\r\n\r\n" + secret
	}
	clear("lookalike-plain-multipart-encrypted.eml", "clear text under multipart/encrypted with protocol=",
		"multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"b\"")
	clear("lookalike-plain-multipart-encrypted-no-protocol.eml", "clear text under multipart/encrypted without protocol=",
		"multipart/encrypted; boundary=\"b\"")
	clear("lookalike-plain-pkcs7-mime.eml", "clear text under application/pkcs7-mime without smime-type",
		"application/pkcs7-mime; name=\"smime.p7m\"")
	clear("lookalike-plain-octet-stream-p7m.eml", "clear text in an octet-stream named letter.p7m",
		"application/octet-stream; name=\"letter.p7m\"")
	pgpMIME("lookalike-second-content-type.eml", "a genuine-looking PGP/MIME body and a second Content-Type",
		"Content-Type: text/plain\r\n", fakeArmour(good, true), "Version: 1")
	pgpMIME("lookalike-version-2.eml", "PGP/MIME with Version: 2", "", fakeArmour(good, true), "Version: 2")
	inline("lookalike-pkesk-then-literal.eml", "armour of a session-key packet, then literal data",
		fakeArmour(append(append([]byte(nil), pkesk...), literal...), true))
	badCRC := fakeArmour(good, true)
	i := strings.Index(badCRC, "\r\n=") + 3
	badCRC = badCRC[:i] + string(badCRC[i]^1) + badCRC[i+1:]
	inline("lookalike-bad-armour-crc.eml", "armour whose checksum does not match", badCRC)
	inline("lookalike-seipd-not-spanning.eml", "encrypted data followed by literal data",
		fakeArmour(append(append([]byte(nil), good...), literal...), true))
	inline("lookalike-trailing-cleartext.eml", "clear text after a genuine-looking armour block",
		fakeArmour(good, true)+"\r\n-- \r\n"+secret)
}

// fakeArmour armours data as a "PGP MESSAGE" (RFC 9580 §6.2), with the
// CRC24 checksum line (§6.1.1) if withCRC.
func fakeArmour(data []byte, withCRC bool) string {
	var b strings.Builder
	b.WriteString("-----BEGIN PGP MESSAGE-----\r\n\r\n")
	enc := base64.StdEncoding.EncodeToString(data)
	for len(enc) > 64 {
		b.WriteString(enc[:64] + "\r\n")
		enc = enc[64:]
	}
	b.WriteString(enc + "\r\n")
	if withCRC {
		crc := uint32(0xB704CE)
		for _, c := range data {
			crc ^= uint32(c) << 16
			for range 8 {
				crc <<= 1
				if crc&0x1000000 != 0 {
					crc ^= 0x1864CFB
				}
			}
		}
		b.WriteString("=" + base64.StdEncoding.EncodeToString([]byte{byte(crc >> 16), byte(crc >> 8), byte(crc)}) + "\r\n")
	}
	b.WriteString("-----END PGP MESSAGE-----\r\n")
	return b.String()
}

// tenThousandFields is a header section of exactly 10,000 fields: the
// transport header, Received lines, 100 Content-Description fields (each
// must move into the ciphertext and be deleted outside), and filler.
func tenThousandFields() string {
	var b strings.Builder
	b.WriteString(std("10000-header-fields"))
	n := 5 // fields in std (Received is one field)
	b.WriteString("Subject: 10,000 header fields\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n")
	n += 3
	for i := 0; n < 10_000; i++ {
		switch {
		case i%100 == 0:
			fmt.Fprintf(&b, "Content-Description: part %d\r\n", i/100)
		case i%10 == 0:
			fmt.Fprintf(&b, "Received: from relay%d.example.net\r\n\tby relay%d.example.net; Thu, 26 Nov 2026 10:00:00 +0000\r\n", i, i+1)
		default:
			fmt.Fprintf(&b, "X-Filler-%05d: %d\r\n", i, i)
		}
		n++
	}
	b.WriteString("\r\nsecret body after 10,000 header fields\r\n")
	return b.String()
}

// nested is a message of depth multipart/mixed levels, each holding the
// next, with a text part at the bottom.
func nested(depth int) string {
	var b strings.Builder
	b.WriteString(std("nested-1000-multipart"))
	fmt.Fprintf(&b, "Subject: %d nested multipart levels\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"n0\"\r\n\r\n", depth)
	for i := 0; i < depth-1; i++ {
		fmt.Fprintf(&b, "--n%d\r\nContent-Type: multipart/mixed; boundary=\"n%d\"\r\n\r\n", i, i+1)
	}
	fmt.Fprintf(&b, "--n%d\r\nContent-Type: text/plain\r\n\r\nsecret text at the bottom\r\n", depth-1)
	for i := depth - 1; i >= 0; i-- {
		fmt.Fprintf(&b, "--n%d--\r\n", i)
	}
	return b.String()
}

// ---------------------------------------------------------------- keys

// keyCase is one hostile key: the public file, and the secret key of the
// entity it was made from, if it has one (for the tests' decryption).
type keyCase struct {
	name   string
	public []byte
	secret *openpgp.Entity
}

func writeKeys(dir string, secrets bool) error {
	cases, err := keyCases()
	if err != nil {
		return err
	}
	kd := filepath.Join(dir, "keys")
	if err := os.MkdirAll(kd, 0o755); err != nil {
		return err
	}
	for _, c := range cases {
		if err := os.WriteFile(filepath.Join(kd, c.name), c.public, 0o644); err != nil {
			return err
		}
		if secrets && c.secret != nil {
			sd := filepath.Join(dir, "secret")
			if err := os.MkdirAll(sd, 0o700); err != nil {
				return err
			}
			var b bytes.Buffer
			if err := c.secret.SerializePrivateWithoutSigning(&b, nil); err != nil {
				return fmt.Errorf("%s: %v", c.name, err)
			}
			if err := os.WriteFile(filepath.Join(sd, strings.TrimSuffix(c.name, filepath.Ext(c.name))+".pgp"), b.Bytes(), 0o600); err != nil {
				return err
			}
		}
	}
	return nil
}

func v4Config() *packet.Config {
	return &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, Curve: packet.Curve25519, DefaultCipher: packet.CipherAES256}
}

func newKey(cfg *packet.Config) (*openpgp.Entity, error) {
	return openpgp.NewEntity("Hostile Test", "", Address, cfg)
}

func public(e *openpgp.Entity) []byte {
	var b bytes.Buffer
	if err := e.Serialize(&b); err != nil {
		panic(err)
	}
	return b.Bytes()
}

func armored(data []byte) []byte {
	var b bytes.Buffer
	w, _ := armor.Encode(&b, openpgp.PublicKeyType, nil)
	w.Write(data)
	w.Close()
	b.WriteByte('\n')
	return b.Bytes()
}

// pkt is an OpenPGP packet in the new format (RFC 9580 §4.2.1).
func pkt(tag byte, body []byte) []byte {
	b := []byte{0xC0 | tag}
	switch n := len(body); {
	case n < 192:
		b = append(b, byte(n))
	case n < 8384:
		n -= 192
		b = append(b, byte(n>>8)+192, byte(n))
	default:
		b = append(b, 0xFF, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, body...)
}

// packets splits a binary key into its packets (new or old format
// headers, no partial lengths: what go-crypto writes).
func packets(data []byte) [][]byte {
	var out [][]byte
	for len(data) > 0 {
		h := data[0]
		var hl, n int
		if h&0x40 != 0 {
			switch l := int(data[1]); {
			case l < 192:
				hl, n = 2, l
			case l < 224:
				hl, n = 3, (l-192)<<8+int(data[2])+192
			default:
				hl, n = 6, int(data[2])<<24|int(data[3])<<16|int(data[4])<<8|int(data[5])
			}
		} else {
			switch h & 3 {
			case 0:
				hl, n = 2, int(data[1])
			case 1:
				hl, n = 3, int(data[1])<<8|int(data[2])
			default:
				hl, n = 5, int(data[1])<<24|int(data[2])<<16|int(data[3])<<8|int(data[4])
			}
		}
		out = append(out, data[:hl+n])
		data = data[hl+n:]
	}
	return out
}

func tagOf(p []byte) byte {
	if p[0]&0x40 != 0 {
		return p[0] & 0x3F
	}
	return (p[0] >> 2) & 0x0F
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	io.ReadFull(rand.Reader, b)
	return b
}

// mpi encodes b (big-endian, top bit set) as an OpenPGP MPI.
func mpi(b []byte) []byte {
	b[0] |= 0x80
	bits := len(b) * 8
	return append([]byte{byte(bits >> 8), byte(bits)}, b...)
}

func keyCases() ([]keyCase, error) {
	var cases []keyCase
	add := func(name string, public []byte, secret *openpgp.Entity) {
		cases = append(cases, keyCase{name, public, secret})
	}

	// A v6 key (RFC 9580): Ed25519 primary, X25519 subkey, SEIPDv2.
	v6, err := newKey(&packet.Config{V6Keys: true, Algorithm: packet.PubKeyAlgoEd25519, AEADConfig: &packet.AEADConfig{}, DefaultCipher: packet.CipherAES256})
	if err != nil {
		return nil, err
	}
	add("v6.asc", armored(public(v6)), v6)

	// Thousands of User IDs, each self-signed; one carries the address.
	uids, err := newKey(v4Config())
	if err != nil {
		return nil, err
	}
	for i := range 2000 {
		if err := uids.AddUserId(fmt.Sprintf("Flood %04d", i), "", fmt.Sprintf("flood%04d@example.net", i), v4Config()); err != nil {
			return nil, err
		}
	}
	add("thousands-of-user-ids.pgp", public(uids), uids)

	// Certificate flooding (as on the SKS key servers in 2019): thousands
	// of third-party certifications on the User ID.
	flood, err := newKey(v4Config())
	if err != nil {
		return nil, err
	}
	signer, err := openpgp.NewEntity("Flooder", "", "flooder@example.net", v4Config())
	if err != nil {
		return nil, err
	}
	for _, id := range flood.Identities {
		for range 1000 {
			if err := id.SignIdentity(signer, v4Config()); err != nil {
				return nil, err
			}
		}
	}
	add("certification-flood.pgp", public(flood), flood)

	// A large key under the size limit: 1,000 encryption subkeys.
	many, err := newKey(v4Config())
	if err != nil {
		return nil, err
	}
	for range 1000 {
		if err := many.AddEncryptionSubkey(v4Config()); err != nil {
			return nil, err
		}
	}
	add("many-subkeys.pgp", public(many), many)

	// Over the size limit (keys.MaxKeyBytes, 1 MiB): a real key with a
	// 1.05 MB User Attribute (an "image" subpacket of noise).
	big, err := newKey(v4Config())
	if err != nil {
		return nil, err
	}
	{
		const size = 1_050_000
		img := append([]byte{0x10, 0x00, 0x01, 0x01}, make([]byte, 12)...) // image header v1, JPEG
		img = append(img, randBytes(size)...)
		sub := append([]byte{0xFF, byte((len(img) + 1) >> 24), byte((len(img) + 1) >> 16), byte((len(img) + 1) >> 8), byte(len(img) + 1), 1}, img...)
		pub := public(big)
		ps := packets(pub)
		var out []byte
		for i, p := range ps {
			out = append(out, p...)
			if i == 2 { // after the primary key, the User ID and its self-signature
				out = append(out, pkt(17, sub)...)
			}
		}
		add("too-large-user-attribute.pgp", out, big)
	}

	// Unknown packet types between the packets of a valid key: 60–63
	// are private/experimental, 40 is unassigned.
	unk, err := newKey(v4Config())
	if err != nil {
		return nil, err
	}
	{
		var out []byte
		for i, p := range packets(public(unk)) {
			out = append(out, p...)
			out = append(out, pkt(byte(60+i%4), randBytes(100+i))...)
			if i == 1 {
				out = append(out, pkt(40, []byte("unassigned tag"))...)
			}
		}
		add("unknown-packet-types.pgp", out, unk)
	}

	// A primary key of an unknown public-key algorithm (99).
	{
		body := []byte{4, 0x65, 0x00, 0x00, 0x00, 99}
		body = append(body, mpi(randBytes(32))...)
		sig := []byte{4, 0x13, 99, 8, 0, 0, 0, 0, 0xAB, 0xCD}
		sig = append(sig, mpi(randBytes(64))...)
		var out []byte
		out = append(out, pkt(6, body)...)
		out = append(out, pkt(13, []byte("Hostile Test <"+Address+">"))...)
		out = append(out, pkt(2, sig)...)
		add("unknown-primary-algorithm.pgp", out, nil)
	}

	// A valid primary whose only encryption subkey has an unknown
	// algorithm (99), bound by a signature copied from another subkey.
	only, err := newKey(v4Config())
	if err != nil {
		return nil, err
	}
	{
		ps := packets(public(only))
		var out []byte
		for _, p := range ps {
			if tagOf(p) == 14 {
				break // the real subkey and its binding: dropped
			}
			out = append(out, p...)
		}
		body := []byte{4, 0x65, 0x00, 0x00, 0x00, 99}
		body = append(body, mpi(randBytes(32))...)
		out = append(out, pkt(14, body)...)
		out = append(out, ps[len(ps)-1]...) // the real subkey's binding signature
		add("unknown-algorithm-encryption-subkey.pgp", out, nil)
	}

	// A User ID whose only self-signature uses an unknown hash (99) and
	// an unknown public-key algorithm (100).
	{
		ps := packets(public(only))
		sig := []byte{4, 0x13, 100, 99, 0, 0, 0, 0, 0xAB, 0xCD}
		sig = append(sig, mpi(randBytes(64))...)
		var out []byte
		out = append(out, ps[0]...) // primary key
		out = append(out, ps[1]...) // User ID
		out = append(out, pkt(2, sig)...)
		add("unknown-signature-algorithm.pgp", out, nil)
	}

	// An RSA primary key with a 20,000-bit modulus of noise and a bogus
	// self-signature the size of such a modulus.
	{
		body := []byte{4, 0x65, 0x00, 0x00, 0x00, 1}
		body = append(body, mpi(randBytes(2500))...)
		body = append(body, 0, 17, 0x01, 0x00, 0x01) // e = 65537
		// A well-formed v4 positive certification (creation time hashed,
		// issuer unhashed) whose RSA value is noise: it is read, and its
		// verification fails.
		p, err := packet.Read(bytes.NewReader(pkt(6, body)))
		if err != nil {
			return nil, fmt.Errorf("rsa-20000-bit-noise: %v", err)
		}
		id := p.(*packet.PublicKey).KeyId
		sig := []byte{4, 0x13, 1, 8, 0, 6, 5, 2, 0x65, 0x00, 0x00, 0x00, 0, 10, 9, 16}
		sig = append(sig, byte(id>>56), byte(id>>48), byte(id>>40), byte(id>>32), byte(id>>24), byte(id>>16), byte(id>>8), byte(id))
		sig = append(sig, 0xAB, 0xCD)
		sig = append(sig, mpi(randBytes(2500))...)
		var out []byte
		out = append(out, pkt(6, body)...)
		out = append(out, pkt(13, []byte("Hostile Test <"+Address+">"))...)
		out = append(out, pkt(2, sig)...)
		add("rsa-20000-bit-noise.pgp", out, nil)
	}

	// Malformed packets cut from a valid key.
	base, err := newKey(v4Config())
	if err != nil {
		return nil, err
	}
	bin := public(base)
	add("truncated.pgp", bin[:len(bin)*3/5], base)
	arm := armored(bin)
	add("truncated-armor.asc", arm[:len(arm)/2], base)
	{
		bad := append([]byte(nil), arm...)
		i := bytes.LastIndex(bad, []byte("\n="))
		bad[i+2] ^= 0x01 // the CRC24 line
		if bad[i+2] == '\n' || bad[i+2] == '-' {
			bad[i+2] = 'A'
		}
		add("bad-armor-checksum.asc", bad, base)
	}
	{
		// The primary key packet claims 4 GiB.
		ps := packets(bin)
		p0 := ps[0]
		out := append([]byte{0xC6, 0xFF, 0xFF, 0xFF, 0xFF, 0xF0}, p0[2:]...)
		for _, p := range ps[1:] {
			out = append(out, p...)
		}
		add("huge-packet-length.pgp", out, base)
		// The User ID packet claims 4 GiB: it swallows the rest.
		out = append([]byte(nil), ps[0]...)
		out = append(out, 0xCD, 0xFF, 0xFF, 0xFF, 0xFF, 0xF0)
		out = append(out, ps[1][2:]...)
		for _, p := range ps[2:] {
			out = append(out, p...)
		}
		add("huge-user-id-length.pgp", out, base)
	}
	{
		// Partial body lengths, which key packets must not use.
		ps := packets(bin)
		body := ps[0][2:]
		out := []byte{0xC6, 0xE0 | 4} // a 16-byte partial chunk
		out = append(out, body[:16]...)
		out = append(out, byte(len(body)-16))
		out = append(out, body[16:]...)
		for _, p := range ps[1:] {
			out = append(out, p...)
		}
		add("partial-length-key-packet.pgp", out, base)
	}
	// A valid key, then bytes that are no packet.
	garbage, err := newKey(v4Config())
	if err != nil {
		return nil, err
	}
	{
		junk := randBytes(512)
		junk[0] = 0x3F // MSB clear: not a packet header
		add("garbage-after-key.pgp", append(public(garbage), junk...), garbage)
		add("garbage-around-armor.asc", append(append([]byte("garbage before\x00\xff\r\n"), armored(public(garbage))...),
			[]byte("\x00\xff\xfe garbage after the armour\n-----END PGP\n")...), garbage)
	}
	add("empty.pgp", nil, nil)
	add("wrong-armor-type.asc", bytes.Replace(armored(bin), []byte("PUBLIC KEY BLOCK"), []byte("MESSAGE"), 2), base)
	return cases, nil
}
