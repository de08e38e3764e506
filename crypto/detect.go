package crypto

import (
	"bytes"
	"encoding/base64"
	"io"
	"mime"
	"mime/quotedprintable"
	"strings"
)

// AlreadyEncrypted reports whether a message must pass unchanged because
// its content is already encrypted. The decision is made from the body,
// structurally; header fields only say which structure to look for, and
// a field that says "encrypted" over a body that is not proves nothing.
// Exactly three forms pass:
//
//   - PGP/MIME (RFC 3156 §4): multipart/encrypted with
//     protocol="application/pgp-encrypted", exactly two parts, the first
//     application/pgp-encrypted holding "Version: 1", the second
//     application/octet-stream holding one armoured OpenPGP message that
//     passes encryptedPackets. Before the first part at most one short
//     line (the "This is an OpenPGP/MIME encrypted message" notice that
//     clients write); after the closing delimiter only white space.
//   - Inline OpenPGP: a text/plain (or untyped) body, after decoding its
//     quoted-printable transfer encoding if it has one, that is one
//     armoured OpenPGP message and nothing else but white space around
//     it, the message passing encryptedPackets.
//   - S/MIME (RFC 8551 §3.2): application/pkcs7-mime,
//     application/x-pkcs7-mime or application/octet-stream, base64
//     encoded, whose content is exactly one CMS ContentInfo holding
//     EnvelopedData (RFC 5652 §6.1) or AuthEnvelopedData (RFC 5083 §2.1),
//     in DER or BER (indefinite lengths included, as NSS and
//     "openssl cms -stream" write it); see cmsEnveloped. Neither
//     smime-type nor a ".p7m" name is believed; an smime-type that names
//     anything else makes the message doubtful.
//
// Anything else is encrypted: a Content-Type or transfer encoding that
// does not parse strictly, a MIME field (MIME-Version or Content-*) that
// appears twice at any level looked at, a media type outside ASCII, text
// outside the armour block, an armour checksum that does not match, a
// packet sequence or CMS structure that is not exactly the encrypted
// form. Encrypting twice costs a recipient a click; a wrong "already
// encrypted" delivers the text in clear.
//
// All work is linear in the size of the body, and the BER walker is
// bounded in depth and element count, so hostile input cannot make it
// expensive.
func AlreadyEncrypted(fields []Field, body []byte) bool {
	if duplicateMIMEField(fields) {
		return false
	}
	ct, ok := getASCII(fields, "content-type")
	if !ok {
		// No Content-Type: text/plain (RFC 2045 §5.2).
		return inlineEncrypted(fields, body)
	}
	mt, params, ok := strictMediaType(ct)
	if !ok {
		return false
	}
	switch mt {
	case "text/plain":
		return inlineEncrypted(fields, body)
	case "multipart/encrypted":
		return pgpMIMEEncrypted(params, body)
	case "application/pkcs7-mime", "application/x-pkcs7-mime", "application/octet-stream":
		return smimeEncrypted(fields, params, body)
	}
	return false
}

// asciiLower lower-cases ASCII letters only: Unicode case folding would
// turn "İ" or the Kelvin sign into ASCII letters no mail reader matches.
func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// getASCII returns the value of the first field whose name is lowerName
// in ASCII case-insensitive comparison.
func getASCII(fields []Field, lowerName string) (string, bool) {
	for _, f := range fields {
		if len(f.Name) == len(lowerName) && asciiLower(f.Name) == lowerName {
			return f.Value, true
		}
	}
	return "", false
}

// duplicateMIMEField reports whether MIME-Version or any Content-* field
// appears more than once. Readers disagree on which one counts, so two of
// them are doubt.
func duplicateMIMEField(fields []Field) bool {
	var seen []string
	for _, f := range fields {
		name := asciiLower(f.Name)
		if name != "mime-version" && !strings.HasPrefix(name, "content-") {
			continue
		}
		for _, s := range seen {
			if s == name {
				return true
			}
		}
		seen = append(seen, name)
	}
	return false
}

// strictMediaType parses a Content-Type value strictly: the media type in
// ASCII, the parameters as mime.ParseMediaType reads them (it refuses a
// repeated parameter and a broken quote). ok is false for anything else.
func strictMediaType(value string) (mt string, params map[string]string, ok bool) {
	v := unfold(value)
	if asciiMediaType(v) == "" {
		return "", nil, false
	}
	mt, params, err := mime.ParseMediaType(v)
	if err != nil {
		return "", nil, false
	}
	return mt, params, true
}

// transferEncoding returns the Content-Transfer-Encoding, lower-cased
// ASCII and trimmed; "7bit" when there is none (RFC 2045 §6.1).
func transferEncoding(fields []Field) string {
	cte, ok := getASCII(fields, "content-transfer-encoding")
	if !ok {
		return "7bit"
	}
	return asciiLower(strings.Trim(unfold(cte), " \t"))
}

// identityEncoding reports whether a transfer encoding leaves the bytes
// as they are (RFC 2045 §6.2).
func identityEncoding(cte string) bool {
	return cte == "7bit" || cte == "8bit" || cte == "binary"
}

// isASCIISpace: the white space allowed around an armour block, a part's
// body and the base64 lines of S/MIME.
func isASCIISpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

func trimASCIISpace(b []byte) []byte {
	for len(b) > 0 && isASCIISpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isASCIISpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

func onlyASCIISpace(b []byte) bool { return len(trimASCIISpace(b)) == 0 }

// inlineEncrypted: a text/plain body that is one armoured OpenPGP message.
func inlineEncrypted(fields []Field, body []byte) bool {
	switch cte := transferEncoding(fields); {
	case identityEncoding(cte):
	case cte == "quoted-printable":
		// A reader sees the decoded text; an escape that does not decode
		// is doubt.
		dec, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(body)))
		if err != nil {
			return false
		}
		body = dec
	default:
		// base64 and anything unknown: the rare base64-encoded inline
		// message is encrypted again.
		return false
	}
	return armouredEncrypted(body)
}

// PGP/MIME: RFC 3156 §4.

// maxPreambleLine is the longest non-blank preamble line of a PGP/MIME
// message that still counts as the clients' notice ("This is an
// OpenPGP/MIME encrypted message (RFC 4880 and 3156)", 62 bytes).
const maxPreambleLine = 200

func pgpMIMEEncrypted(params map[string]string, body []byte) bool {
	if asciiLower(params["protocol"]) != "application/pgp-encrypted" {
		return false
	}
	boundary := params["boundary"]
	if boundary == "" || len(boundary) > 70 { // RFC 2046 §5.1.1
		return false
	}
	preamble, parts, epilogue, ok := splitMultipart(body, boundary)
	if !ok || len(parts) != 2 || !onlyASCIISpace(epilogue) {
		return false
	}
	notice := 0
	for line := range bytes.SplitSeq(preamble, []byte("\n")) {
		if onlyASCIISpace(line) {
			continue
		}
		notice++
		if notice > 1 || len(line) > maxPreambleLine {
			return false
		}
	}
	// The control part: "Version: 1" (RFC 3156 §4).
	vf, vb, ok := splitPart(parts[0])
	if !ok || !partIs(vf, "application/pgp-encrypted") || string(trimASCIISpace(vb)) != "Version: 1" {
		return false
	}
	// The encrypted part: the armoured OpenPGP message.
	df, db, ok := splitPart(parts[1])
	return ok && partIs(df, "application/octet-stream") && armouredEncrypted(db)
}

// partIs reports whether a body part's header is exactly what RFC 3156
// asks for: one Content-Type of the given media type, no MIME field
// twice, a transfer encoding that leaves the bytes as they are.
func partIs(fields []Field, mediaType string) bool {
	if duplicateMIMEField(fields) {
		return false
	}
	// A header line that common MIME parsers refuse (Go's net/textproto,
	// RFC 7230 §3.2) is doubt: a name that is not a token, a control
	// character in a value (found by FuzzAlreadyEncrypted: NULs in a
	// part's Content-Disposition).
	for _, f := range fields {
		if !tokenName(f.Name) || hasControl(unfold(f.Value)) {
			return false
		}
	}
	ct, ok := getASCII(fields, "content-type")
	if !ok {
		return false
	}
	mt, _, ok := strictMediaType(ct)
	return ok && mt == mediaType && identityEncoding(transferEncoding(fields))
}

// tokenName reports whether a field name is an RFC 7230 §3.2.6 token.
func tokenName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// hasControl reports whether an unfolded value holds an ASCII control
// character other than horizontal tab.
func hasControl(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7F {
			return true
		}
	}
	return false
}

// splitMultipart splits a multipart body at its boundary delimiter lines
// (RFC 2046 §5.1.1): "--" boundary, optional spaces and tabs, line end;
// the closing one with "--" after the boundary. The line end before a
// delimiter belongs to the delimiter. ok is false without a closing
// delimiter, and when the delimiters' line ends differ (CRLF here, LF
// there: readers that take the first delimiter's line end, like Go's
// mime/multipart, would see other parts). At most three parts are
// collected: more already fail the caller.
func splitMultipart(body []byte, boundary string) (preamble []byte, parts [][]byte, epilogue []byte, ok bool) {
	const (
		endNone = iota // the body's last line: no line end
		endCRLF
		endLF
	)
	dash := "--" + boundary
	start := -1 // start of the current part's content; -1 in the preamble
	nl := endNone
	for pos := 0; pos <= len(body); {
		lineEnd, next := len(body), len(body)+1
		if i := bytes.IndexByte(body[pos:], '\n'); i >= 0 {
			lineEnd, next = pos+i, pos+i+1
		}
		line := body[pos:lineEnd]
		if bytes.HasPrefix(line, []byte(dash)) {
			rest := line[len(dash):]
			own := endNone
			if next <= len(body) {
				own = endLF
				if len(rest) > 0 && rest[len(rest)-1] == '\r' {
					own, rest = endCRLF, rest[:len(rest)-1]
				}
			}
			closing := bytes.HasPrefix(rest, []byte("--"))
			if closing {
				rest = rest[2:]
			}
			if len(bytes.Trim(rest, " \t")) == 0 {
				// The content before ends before the line end that
				// precedes this line.
				end, prev := pos, endNone
				if end > 0 {
					end-- // '\n'
					prev = endLF
					if end > 0 && body[end-1] == '\r' {
						end--
						prev = endCRLF
					}
				}
				if nl == endNone {
					nl = own
				}
				if (own != endNone && own != nl) || (prev != endNone && prev != nl) {
					return nil, nil, nil, false
				}
				if start < 0 {
					preamble = body[:end]
				} else {
					if end < start { // "--b\r\n--b": an empty part
						end = start
					}
					parts = append(parts, body[start:end])
					if len(parts) > 2 {
						return nil, nil, nil, false
					}
				}
				if closing {
					if next > len(body) {
						return preamble, parts, nil, true
					}
					return preamble, parts, body[next:], true
				}
				start = min(next, len(body))
			}
		}
		pos = next
	}
	return nil, nil, nil, false
}

// splitPart splits a body part into its header fields and body, and
// reports whether its header section is one that MIME parsers read the
// same way: every line a field ("token:") or a continuation, ended by an
// empty line. Split is lenient (a line that is no field ends the header
// section), which net/textproto, for one, refuses.
func splitPart(p []byte) ([]Field, []byte, bool) {
	fields, body := Split(p)
	h := p[:len(p)-len(body)]
	if !bytes.HasSuffix(h, []byte("\n\n")) && !bytes.HasSuffix(h, []byte("\n\r\n")) {
		return nil, nil, false
	}
	// (Split already makes a part that starts with a continuation line
	// all body.)
	for line := range bytes.SplitSeq(h, []byte("\n")) {
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 || line[0] == ' ' || line[0] == '\t' {
			continue // the end of the header section, or a continuation
		}
		if i := bytes.IndexByte(line, ':'); i <= 0 || !tokenName(string(line[:i])) {
			return nil, nil, false
		}
	}
	return fields, body, true
}

// OpenPGP armour: RFC 9580 §6.

var (
	pgpBegin = []byte("-----BEGIN PGP MESSAGE-----")
	pgpEnd   = []byte("-----END PGP MESSAGE-----")
)

// armourHeaderKeys are the armour header keys of RFC 9580 §6.2.2 that
// may head a "PGP MESSAGE" (Hash belongs to cleartext signatures). An
// unknown key is doubt: its value is text next to the ciphertext.
var armourHeaderKeys = []string{"Version", "Comment", "Charset", "MessageID"}

// maxArmourHeaders bounds the armour header lines; maxArmourLine is the
// longest base64 line (RFC 9580 §6.3: 76 characters).
const (
	maxArmourHeaders = 16
	maxArmourLine    = 76
)

// armouredEncrypted reports whether b, without the ASCII white space
// around it, is exactly one "PGP MESSAGE" armour block (RFC 9580 §6.2):
// the BEGIN line, armour header lines of known keys, a blank line, base64
// lines, an optional checksum line that must match the data (CRC24,
// RFC 9580 §6.1.1), the END line, nothing after it; and whether the
// decoded OpenPGP data passes encryptedPackets. Trailing white space on
// a line is ignored (RFC 9580 §6.2); nothing else is.
func armouredEncrypted(b []byte) bool {
	// Lines are read one at a time: a body of millions of short lines
	// must not become millions of slice headers.
	rest := trimASCIISpace(b)
	more := true
	next := func() []byte {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			l := rest
			rest, more = nil, false
			return bytes.TrimRight(l, " \t\r")
		}
		l := rest[:i]
		rest = rest[i+1:]
		return bytes.TrimRight(l, " \t\r")
	}
	if !bytes.Equal(next(), pgpBegin) {
		return false
	}
	// Armour headers up to the blank line.
	for n := 0; ; n++ {
		if !more {
			return false // no blank line
		}
		l := next()
		if len(l) == 0 {
			break
		}
		key, _, ok := bytes.Cut(l, []byte(": "))
		if !ok || n >= maxArmourHeaders || !knownArmourKey(string(key)) {
			return false
		}
	}
	// Base64 lines, an optional checksum line, the END line last.
	var enc, sum []byte
	for {
		if !more {
			return false // no END line
		}
		l := next()
		switch {
		case bytes.Equal(l, pgpEnd):
			if more {
				return false // something after the END line
			}
			data := make([]byte, base64.StdEncoding.DecodedLen(len(enc)))
			n, err := base64.StdEncoding.Decode(data, enc)
			if err != nil {
				return false
			}
			data = data[:n]
			if sum != nil {
				crc := crc24Update(crc24Init, data)
				if sum[0] != byte(crc>>16) || sum[1] != byte(crc>>8) || sum[2] != byte(crc) {
					return false
				}
			}
			return encryptedPackets(data)
		case sum != nil || len(l) == 0 || len(l) > maxArmourLine:
			// A line after the checksum, a blank line in the data, or a
			// line longer than RFC 9580 §6.3 allows (found by
			// FuzzAlreadyEncrypted: go-crypto refuses lines over 96).
			return false
		case l[0] == '=':
			if len(l) != 5 {
				return false
			}
			s, err := base64.StdEncoding.DecodeString(string(l[1:]))
			if err != nil || len(s) != 3 {
				return false
			}
			sum = s
		default:
			if enc == nil {
				// One buffer for all lines: what is left is an upper bound.
				enc = make([]byte, 0, len(l)+len(rest))
			}
			enc = append(enc, l...)
		}
	}
}

func knownArmourKey(k string) bool {
	for _, known := range armourHeaderKeys {
		if k == known {
			return true
		}
	}
	return false
}

// OpenPGP packet framing: RFC 9580 §4.2.

const (
	tagPKESK  = 1  // RFC 9580 §5.1
	tagSKESK  = 3  // RFC 9580 §5.3
	tagMarker = 10 // RFC 9580 §5.8
	tagOCB    = 20 // reserved in RFC 9580 (§5, table 3): LibrePGP's OCB Encrypted Data, written by GnuPG 2.3 and later
)

// maxSessionKeyPackets bounds the packets before the encrypted data (one
// per recipient key, plus markers).
const maxSessionKeyPackets = 10000

// encryptedPackets reports whether data is an encrypted OpenPGP message
// and nothing else: one or more session-key packets (PKESK, tag 1;
// SKESK, tag 3), Marker packets (tag 10, body "PGP") allowed among them,
// then exactly one encrypted-data packet (SEIPD, tag 18; OCB, tag 20)
// that ends exactly where the data ends. Only the framing and each
// packet's version octet are read; nothing is decrypted. Partial body
// lengths are allowed only on the encrypted-data packet (RFC 9580
// §4.2.1.4).
func encryptedPackets(data []byte) bool {
	sessionKeys := 0
	for count := 0; count <= maxSessionKeyPackets; count++ {
		tag, body, rest, ok := nextPacket(data)
		if !ok || len(body) == 0 {
			return false
		}
		switch tag {
		case tagPKESK:
			if v := body[0]; v != 3 && v != 5 && v != 6 {
				return false
			}
			sessionKeys++
		case tagSKESK:
			if v := body[0]; v != 4 && v != 5 && v != 6 {
				return false
			}
			sessionKeys++
		case tagMarker:
			if string(body) != "PGP" {
				return false
			}
		case tagSEIPD:
			v := body[0]
			return (v == 1 || v == 2) && len(rest) == 0 && sessionKeys > 0
		case tagOCB:
			return body[0] == 1 && len(rest) == 0 && sessionKeys > 0
		default:
			return false
		}
		data = rest
	}
	return false
}

// nextPacket reads one packet from data (RFC 9580 §4.2): its tag, its
// first body octets (enough for the version; for partial lengths the
// first chunk), and the data after it. Partial lengths are followed to
// the end of the packet, and only tags 18 and 20 may use them here.
func nextPacket(data []byte) (tag byte, body, rest []byte, ok bool) {
	if len(data) < 2 || data[0]&0x80 == 0 {
		return 0, nil, nil, false
	}
	h := data[0]
	if h&0x40 == 0 {
		// Legacy format (RFC 9580 §4.2.2): tags 0 to 15 only, so never
		// an encrypted-data packet this function accepts partial lengths
		// for. Indeterminate length (type 3) runs to the end of the data.
		tag = (h >> 2) & 0x0F
		var n int
		switch h & 3 {
		case 0:
			n = 1
		case 1:
			n = 2
		case 2:
			n = 4
		default:
			return tag, data[1:], nil, true
		}
		if len(data) < 1+n {
			return 0, nil, nil, false
		}
		length := 0
		for _, c := range data[1 : 1+n] {
			length = length<<8 | int(c)
			if length > len(data) {
				return 0, nil, nil, false
			}
		}
		data = data[1+n:]
		if length > len(data) {
			return 0, nil, nil, false
		}
		return tag, data[:length], data[length:], true
	}
	// New format (RFC 9580 §4.2.1).
	tag = h & 0x3F
	data = data[1:]
	var first []byte
	for {
		length, partial, hdr, ok := newLength(data)
		if !ok {
			return 0, nil, nil, false
		}
		if partial && tag != tagSEIPD && tag != tagOCB {
			return 0, nil, nil, false
		}
		data = data[hdr:]
		if length > len(data) {
			return 0, nil, nil, false
		}
		if first == nil {
			first = data[:length]
		}
		data = data[length:]
		if !partial {
			return tag, first, data, true
		}
	}
}

// newLength decodes a new-format packet length (RFC 9580 §4.2.1): the
// length, whether it is a partial body length, and the octets it took.
func newLength(data []byte) (length int, partial bool, n int, ok bool) {
	if len(data) < 1 {
		return 0, false, 0, false
	}
	switch o := int(data[0]); {
	case o < 192:
		return o, false, 1, true
	case o < 224:
		if len(data) < 2 {
			return 0, false, 0, false
		}
		return (o-192)<<8 + int(data[1]) + 192, false, 2, true
	case o < 255:
		return 1 << (o & 0x1F), true, 1, true
	default:
		if len(data) < 5 {
			return 0, false, 0, false
		}
		l := uint64(data[1])<<24 | uint64(data[2])<<16 | uint64(data[3])<<8 | uint64(data[4])
		if l > uint64(len(data)) {
			return 0, false, 0, false
		}
		return int(l), false, 5, true
	}
}

// S/MIME: RFC 8551 §3.2, CMS (RFC 5652).

func smimeEncrypted(fields []Field, params map[string]string, body []byte) bool {
	if transferEncoding(fields) != "base64" {
		return false
	}
	// Strict base64: white space (line ends) is dropped, anything else
	// that is not base64 fails.
	enc := make([]byte, 0, len(body))
	for _, c := range body {
		if !isASCIISpace(c) {
			enc = append(enc, c)
		}
	}
	data := make([]byte, base64.StdEncoding.DecodedLen(len(enc)))
	n, err := base64.StdEncoding.Decode(data, enc)
	if err != nil {
		return false
	}
	kind, ok := cmsEnveloped(data[:n])
	if !ok {
		return false
	}
	// The smime-type is not believed, but one that contradicts the
	// content is doubt.
	if st, has := params["smime-type"]; has && asciiLower(st) != kind {
		return false
	}
	return true
}

// DER encodings of the content types (RFC 5652 §6.1, RFC 5083 §1).
var (
	oidEnvelopedData     = []byte{0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x03}             // 1.2.840.113549.1.7.3
	oidAuthEnvelopedData = []byte{0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x10, 0x01, 0x17} // 1.2.840.113549.1.9.16.1.23
)

// BER identifiers (X.690 §8.1.2) used below.
const (
	berUniversal   = 0
	berContext     = 2
	berInteger     = 2
	berOctetString = 4
	berOID         = 6
	berSequence    = 16
	berSet         = 17
)

// Bounds of the BER walker: nesting depth (CMS needs about a dozen
// levels) and elements read in one decision (each is at least two
// octets, and the structure check reads the outer levels a few times).
const (
	berMaxDepth    = 64
	berMaxElements = 1 << 22
)

// berElem is one BER element: its identifier and its content octets
// (for an indefinite length, without the end-of-contents octets).
type berElem struct {
	class       int
	constructed bool
	tag         int
	content     []byte
}

func (e berElem) is(class, tag int, constructed bool) bool {
	return e.class == class && e.tag == tag && e.constructed == constructed
}

// berReader reads BER elements (X.690 §8.1) under a shared budget.
type berReader struct {
	budget int
}

// next reads the element at the start of b, checks that the whole of it
// is well-formed BER (recursively, for a constructed one), and returns it
// with the number of octets it took.
func (r *berReader) next(b []byte, depth int) (berElem, int, bool) {
	var e berElem
	r.budget--
	if r.budget < 0 || depth > berMaxDepth || len(b) < 2 {
		return e, 0, false
	}
	e.class, e.constructed, e.tag = int(b[0]>>6), b[0]&0x20 != 0, int(b[0]&0x1F)
	p := 1
	if e.tag == 0x1F { // high tag number form (X.690 §8.1.2.4)
		e.tag = 0
		for {
			if p >= len(b) || p > 4 {
				return e, 0, false
			}
			c := b[p]
			p++
			e.tag = e.tag<<7 | int(c&0x7F)
			if c&0x80 == 0 {
				break
			}
		}
	}
	if e.class == berUniversal && e.tag == 0 {
		return e, 0, false // end-of-contents is not an element
	}
	if p >= len(b) {
		return e, 0, false
	}
	l := int(b[p])
	p++
	switch {
	case l < 0x80: // short form
	case l == 0x80: // indefinite form: constructed only (X.690 §8.1.3.6)
		if !e.constructed {
			return e, 0, false
		}
		start := p
		for {
			if len(b)-p >= 2 && b[p] == 0 && b[p+1] == 0 {
				e.content = b[start:p]
				return e, p + 2, true
			}
			_, n, ok := r.next(b[p:], depth+1)
			if !ok {
				return e, 0, false
			}
			p += n
		}
	case l == 0xFF:
		return e, 0, false
	default: // long form
		k := l & 0x7F
		if k > 4 || len(b)-p < k {
			return e, 0, false
		}
		l = 0
		for _, c := range b[p : p+k] {
			l = l<<8 | int(c)
			if l > len(b) {
				return e, 0, false
			}
		}
		p += k
	}
	if l > len(b)-p {
		return e, 0, false
	}
	e.content = b[p : p+l]
	if e.constructed {
		for q := 0; q < l; {
			_, n, ok := r.next(e.content[q:], depth+1)
			if !ok {
				return e, 0, false
			}
			q += n
		}
	}
	return e, p + l, true
}

// children returns the elements inside a constructed element, at most
// max of them: the structure check needs only the first levels, and a
// hostile SEQUENCE of millions of elements must not become a slice of
// millions.
func (r *berReader) children(e berElem, depth, max int) ([]berElem, bool) {
	if !e.constructed {
		return nil, false
	}
	var out []berElem
	for b := e.content; len(b) > 0; {
		if len(out) == max {
			return nil, false
		}
		c, n, ok := r.next(b, depth+1)
		if !ok {
			return nil, false
		}
		out = append(out, c)
		b = b[n:]
	}
	return out, true
}

// cmsEnveloped reports whether data is exactly one CMS ContentInfo
// (RFC 5652 §3) holding EnvelopedData (§6.1) or AuthEnvelopedData
// (RFC 5083 §2.1), well-formed BER throughout, and says which
// ("enveloped-data" or "authenveloped-data", as smime-type writes it):
//
//	ContentInfo ::= SEQUENCE { contentType OID, content [0] EXPLICIT ANY }
//	EnvelopedData ::= SEQUENCE { version INTEGER, originatorInfo [0] OPTIONAL,
//	    recipientInfos SET (at least one), encryptedContentInfo,
//	    unprotectedAttrs [1] OPTIONAL }
//	AuthEnvelopedData ::= SEQUENCE { version INTEGER, originatorInfo [0] OPTIONAL,
//	    recipientInfos SET, authEncryptedContentInfo, authAttrs [1] OPTIONAL,
//	    mac OCTET STRING, unauthAttrs [2] OPTIONAL }
//	EncryptedContentInfo ::= SEQUENCE { contentType OID,
//	    contentEncryptionAlgorithm SEQUENCE, encryptedContent [0] }
//
// The encrypted content must be present (S/MIME never detaches it).
func cmsEnveloped(data []byte) (string, bool) {
	r := &berReader{budget: berMaxElements}
	top, n, ok := r.next(data, 0)
	if !ok || n != len(data) || !top.is(berUniversal, berSequence, true) {
		return "", false
	}
	ci, ok := r.children(top, 0, 2)
	if !ok || len(ci) != 2 || !ci[0].is(berUniversal, berOID, false) || !ci[1].is(berContext, 0, true) {
		return "", false
	}
	var kind string
	switch {
	case bytes.Equal(ci[0].content, oidEnvelopedData):
		kind = "enveloped-data"
	case bytes.Equal(ci[0].content, oidAuthEnvelopedData):
		kind = "authenveloped-data"
	default:
		return "", false
	}
	wrap, ok := r.children(ci[1], 1, 1)
	if !ok || len(wrap) != 1 || !wrap[0].is(berUniversal, berSequence, true) {
		return "", false
	}
	f, ok := r.children(wrap[0], 2, 8)
	if !ok || len(f) == 0 || !f[0].is(berUniversal, berInteger, false) || len(f[0].content) == 0 {
		return "", false
	}
	f = f[1:]
	if len(f) > 0 && f[0].is(berContext, 0, true) { // originatorInfo
		f = f[1:]
	}
	if len(f) < 2 || !f[0].is(berUniversal, berSet, true) || !recipientInfos(r, f[0]) || !encryptedContentInfo(r, f[1]) {
		return "", false
	}
	f = f[2:]
	if kind == "enveloped-data" {
		if len(f) > 0 && f[0].is(berContext, 1, true) { // unprotectedAttrs
			f = f[1:]
		}
		return kind, len(f) == 0
	}
	if len(f) > 0 && f[0].is(berContext, 1, true) { // authAttrs
		f = f[1:]
	}
	if len(f) == 0 || f[0].class != berUniversal || f[0].tag != berOctetString { // mac
		return "", false
	}
	f = f[1:]
	if len(f) > 0 && f[0].is(berContext, 2, true) { // unauthAttrs
		f = f[1:]
	}
	return kind, len(f) == 0
}

// recipientInfos: a SET of at least one RecipientInfo (RFC 5652 §6.2):
// ktri is a SEQUENCE; kari [1], kekri [2], pwri [3] and ori [4] are
// constructed context-specific elements.
func recipientInfos(r *berReader, set berElem) bool {
	if !set.constructed || len(set.content) == 0 {
		return false
	}
	for b := set.content; len(b) > 0; {
		ri, n, ok := r.next(b, 4)
		if !ok || !ri.is(berUniversal, berSequence, true) && !(ri.class == berContext && ri.constructed && ri.tag >= 1 && ri.tag <= 4) {
			return false
		}
		b = b[n:]
	}
	return true
}

// encryptedContentInfo: SEQUENCE { OID, AlgorithmIdentifier, [0] content }
// (RFC 5652 §6.1). The content may be primitive or, in BER, constructed
// of OCTET STRING chunks.
func encryptedContentInfo(r *berReader, e berElem) bool {
	if !e.is(berUniversal, berSequence, true) {
		return false
	}
	f, ok := r.children(e, 3, 3)
	return ok && len(f) == 3 && f[0].is(berUniversal, berOID, false) &&
		f[1].is(berUniversal, berSequence, true) && f[2].class == berContext && f[2].tag == 0
}
