package crypto

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"strings"
	"unicode/utf8"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/keys"
)

// PGP/inline (docs/encryption.md, "PGP/inline"): for readers that cannot
// open PGP/MIME, each part of the message is encrypted on its own. Unlike
// Encrypt, this decodes part contents (quoted-printable, base64): a reader
// of inline PGP decrypts the armour it sees in a text part, or a .pgp file,
// and expects the text or the file itself, not its transfer encoding. It
// is the one place where the design's "never decode" does not hold.

// Bounds of the MIME walk: nesting depth (Postfix's mime_nesting_limit
// default is 100) and parts in all (each part is an OpenPGP message of
// its own, and with v6 keys costs a public-key operation per key).
const (
	maxInlineDepth = 100
	maxInlineParts = 1000
)

// ErrInlineMIME wraps every error about the message's MIME structure or
// encodings (as opposed to errors of encryption): the caller temp-fails
// with it, and the sender's MTA keeps the mail.
var ErrInlineMIME = errors.New("PGP/inline: cannot convert the message")

// InlineNote is the clear text/plain part put before the encrypted
// attachment when the message has no text/plain part to carry the armour
// (HTML-only mail, a single attachment). It says nothing of the content.
const InlineNote = "This message is encrypted with OpenPGP (PGP/inline).\r\n" +
	"Its content is in the attached file %s: open it with your OpenPGP software.\r\n"

func mimeErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInlineMIME}, args...)...)
}

// EncryptInline encrypts the message (fields, body) to every key in to as
// PGP/inline: a text/plain body becomes one ASCII-armoured OpenPGP message
// in text/plain (7bit, with the original charset declared) whose plaintext
// is the decoded text; in a multipart message every text/plain part is
// treated so, and every other leaf part (HTML, attachments, images,
// message/rfc822) becomes an application/octet-stream attachment called
// NAME.pgp whose content, base64-encoded, is a binary OpenPGP message of
// the decoded part. Multiparts keep their structure (with new boundaries);
// preambles and epilogues are dropped. A message whose only leaf is not
// text/plain becomes multipart/mixed: the InlineNote in clear, then the
// .pgp attachment. Each part is its own OpenPGP message, encrypted to all
// keys (for SEIPDv1 with one session key for the whole message: see
// start). opt.ProtectHeaders does not apply: Result.Unprotected says so
// when it was asked for.
//
// Malformed MIME (a Content-Type that does not parse, a multipart without
// boundary or closing delimiter, an unknown transfer encoding, a bad
// quoted-printable or base64 body, more than maxInlineDepth levels or
// maxInlineParts parts) is an error wrapping ErrInlineMIME.
func EncryptInline(fields []Field, body []byte, to []*keys.Key, opt Options) (*Result, error) {
	if len(to) == 0 {
		return nil, ErrNoKeys
	}
	c := &inlineConv{used: distinctKeys(to), hide: opt.HideRecipients, cfg: opt.packetConfig()}
	defer func() { clear(c.sessionKey) }()
	if duplicateMIMEField(fields) {
		return nil, mimeErr("a MIME header field appears twice")
	}
	hdr, newBody, err := c.entity(fields, body, 0, "text/plain", true)
	if err != nil {
		return nil, err
	}
	res := &Result{Changes: inlineChanges(fields, hdr), Body: newBody}
	if opt.ProtectHeaders {
		res.Unprotected = UnprotectedInline
	}
	return res, nil
}

// UnprotectedInline is Result.Unprotected of EncryptInline when header
// protection was asked for: inline PGP has no encrypted entity to carry
// the header fields.
const UnprotectedInline = "PGP/inline cannot protect header fields"

type inlineConv struct {
	used  []*keys.Key
	hide  bool
	cfg   *packet.Config
	parts int
	// Set by start: whether the parts are SEIPDv2 messages; for SEIPDv1,
	// the message's session key and its session-key packets.
	started    bool
	v2         bool
	sessionKey []byte
	pkesk      []byte
}

// entity converts one entity (the message, or a body part) and returns
// its new Content-* fields and body. defType is the media type when there
// is no Content-Type (text/plain; message/rfc822 inside multipart/digest).
func (c *inlineConv) entity(fields []Field, body []byte, depth int, defType string, top bool) ([]Field, []byte, error) {
	if depth > maxInlineDepth {
		return nil, nil, mimeErr("more than %d nested multiparts", maxInlineDepth)
	}
	if c.parts++; c.parts > maxInlineParts {
		return nil, nil, mimeErr("more than %d MIME parts", maxInlineParts)
	}
	mt, params := defType, map[string]string{}
	if ct, ok := getASCII(fields, "content-type"); ok {
		var good bool
		if mt, params, good = strictMediaType(ct); !good {
			return nil, nil, mimeErr("Content-Type %q does not parse", truncate(ct))
		}
	}
	cte := transferEncoding(fields)
	if strings.HasPrefix(mt, "multipart/") {
		if !identityEncoding(cte) {
			return nil, nil, mimeErr("multipart with Content-Transfer-Encoding %q", truncate(cte))
		}
		return c.multipart(mt, params, body, depth)
	}
	data, err := decodeBody(cte, body)
	if err != nil {
		return nil, nil, err
	}
	disp, dparams := "", map[string]string{}
	if v, ok := getASCII(fields, "content-disposition"); ok {
		d, ps, err := mime.ParseMediaType(unfold(v))
		if err != nil {
			return nil, nil, mimeErr("Content-Disposition %q does not parse", truncate(v))
		}
		disp, dparams = d, ps
	}
	name := dparams["filename"]
	if name == "" {
		name = params["name"]
	}
	if mt == "text/plain" && disp != "attachment" && name == "" {
		return c.text(params["charset"], data)
	}
	hdr, out, err := c.attachment(mt, name, data)
	if err != nil || !top {
		return hdr, out, err
	}
	// A message of one non-text part: a note readers show, then the file.
	return c.withNote(hdr, out)
}

// text encrypts decoded text as an armoured message in text/plain.
func (c *inlineConv) text(charset string, data []byte) ([]Field, []byte, error) {
	ct := defaultContentType(data)
	if charset != "" {
		if ct = mime.FormatMediaType("text/plain", map[string]string{"charset": charset}); ct == "" {
			return nil, nil, mimeErr("charset %q cannot be written back", truncate(charset))
		}
	}
	out, err := c.seal(data, true)
	if err != nil {
		return nil, nil, err
	}
	return []Field{{"Content-Type", ct}, {"Content-Transfer-Encoding", "7bit"}}, out, nil
}

// attachment encrypts decoded content as a binary OpenPGP message in a
// base64 application/octet-stream attachment called name + ".pgp".
func (c *inlineConv) attachment(mt, name string, data []byte) ([]Field, []byte, error) {
	bin, err := c.seal(data, false)
	if err != nil {
		return nil, nil, err
	}
	file := attachmentName(mt, name) + ".pgp"
	ct := mime.FormatMediaType("application/octet-stream", map[string]string{"name": file})
	cd := mime.FormatMediaType("attachment", map[string]string{"filename": file})
	hdr := []Field{{"Content-Type", ct}, {"Content-Disposition", cd}, {"Content-Transfer-Encoding", "base64"}}
	return hdr, inlineBase64(bin), nil
}

// withNote wraps a single encrypted attachment in multipart/mixed after
// the InlineNote.
func (c *inlineConv) withNote(hdr []Field, body []byte) ([]Field, []byte, error) {
	boundary, err := newBoundary(c.cfg.Random())
	if err != nil {
		return nil, nil, err
	}
	_, ps, _ := mime.ParseMediaType(hdr[1].Value)
	var b bytes.Buffer
	b.WriteString("--" + boundary + "\r\n")
	writeField(&b, "Content-Type", "text/plain; charset=us-ascii")
	writeField(&b, "Content-Transfer-Encoding", "7bit")
	b.WriteString("\r\n")
	fmt.Fprintf(&b, InlineNote, asciiOnly(ps["filename"]))
	b.WriteString("\r\n--" + boundary + "\r\n")
	writeEntity(&b, hdr, body)
	b.WriteString("\r\n--" + boundary + "--\r\n")
	ct := mime.FormatMediaType("multipart/mixed", map[string]string{"boundary": boundary})
	return []Field{{"Content-Type", ct}, {"Content-Transfer-Encoding", "7bit"}}, b.Bytes(), nil
}

// multipart converts every part of a multipart body and writes them under
// a new boundary, which contains "=_" and so cannot occur in armour or
// base64 lines (an old boundary could, and the new parts' content is
// different from the old).
func (c *inlineConv) multipart(mt string, params map[string]string, body []byte, depth int) ([]Field, []byte, error) {
	boundary := params["boundary"]
	if boundary == "" {
		return nil, nil, mimeErr("%s without boundary", mt)
	}
	parts, err := splitAllParts(body, boundary, maxInlineParts-c.parts+1)
	if err != nil {
		return nil, nil, err
	}
	defType := "text/plain"
	if mt == "multipart/digest" {
		defType = "message/rfc822" // RFC 2046 §5.1.5
	}
	nb, err := newBoundary(c.cfg.Random())
	if err != nil {
		return nil, nil, err
	}
	type converted struct {
		hdr  []Field
		body []byte
	}
	conv := make([]converted, 0, len(parts))
	size := len(nb) + 8
	for _, p := range parts {
		pf, pb, ok := splitInlinePart(p)
		if !ok {
			return nil, nil, mimeErr("a part of %s has a malformed header", mt)
		}
		if duplicateMIMEField(pf) {
			return nil, nil, mimeErr("a MIME header field of a part appears twice")
		}
		hdr, out, err := c.entity(pf, pb, depth+1, defType, false)
		if err != nil {
			return nil, nil, err
		}
		conv = append(conv, converted{hdr, out})
		size += len(nb) + 8 + len(out) + 256
	}
	// One allocation for the whole body: large attachments are copied once.
	var b bytes.Buffer
	b.Grow(size)
	for _, p := range conv {
		b.WriteString("--" + nb + "\r\n")
		writeEntity(&b, p.hdr, p.body)
		b.WriteString("\r\n")
	}
	b.WriteString("--" + nb + "--\r\n")
	params["boundary"] = nb
	if mt == "multipart/signed" {
		// The parts no longer are what was signed: as multipart/signed
		// readers would report a bad signature. The signature stays, as a
		// file.
		mt, params = "multipart/mixed", map[string]string{"boundary": nb}
	}
	ct := mime.FormatMediaType(mt, params)
	if ct == "" {
		return nil, nil, mimeErr("the Content-Type of %s cannot be written back", mt)
	}
	return []Field{{"Content-Type", ct}, {"Content-Transfer-Encoding", "7bit"}}, b.Bytes(), nil
}

// splitInlinePart is splitPart, also for a part without header fields
// (its content starts with the blank line: text/plain by default).
func splitInlinePart(p []byte) ([]Field, []byte, bool) {
	switch {
	case bytes.HasPrefix(p, []byte("\r\n")):
		return nil, p[2:], true
	case bytes.HasPrefix(p, []byte("\n")):
		return nil, p[1:], true
	}
	return splitPart(p)
}

// writeEntity writes a part's header fields, the blank line and its body,
// without a line end after the body (the delimiter's line end follows).
func writeEntity(b *bytes.Buffer, hdr []Field, body []byte) {
	for _, f := range hdr {
		writeField(b, f.Name, f.Value)
	}
	b.WriteString("\r\n")
	b.Write(bytes.TrimSuffix(body, []byte("\r\n")))
}

// decodeBody undoes a part's transfer encoding.
func decodeBody(cte string, body []byte) ([]byte, error) {
	switch {
	case identityEncoding(cte):
		return body, nil
	case cte == "quoted-printable":
		dec, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(body)))
		if err != nil {
			return nil, mimeErr("quoted-printable: %v", err)
		}
		return dec, nil
	case cte == "base64":
		// The common case: CRLF lines, padded (the decoder skips CR and LF).
		// dec is large enough for both decoders: unpadded input needs more
		// than StdEncoding.DecodedLen, and Decode panics on a short dst
		// (found by FuzzEncryptInline with "00").
		dec := make([]byte, base64.RawStdEncoding.DecodedLen(len(body)))
		if n, err := base64.StdEncoding.Decode(dec, body); err == nil {
			return dec[:n], nil
		}
		// Other white space is not data either (RFC 2045 §6.8); padding is
		// accepted but not required, as readers do.
		clean := make([]byte, 0, len(body))
		for _, ch := range body {
			if !isASCIISpace(ch) {
				clean = append(clean, ch)
			}
		}
		clean = bytes.TrimRight(clean, "=")
		n, err := base64.RawStdEncoding.Decode(dec, clean)
		if err != nil {
			return nil, mimeErr("base64: %v", err)
		}
		return dec[:n], nil
	}
	return nil, mimeErr("unknown Content-Transfer-Encoding %q", truncate(cte))
}

// splitAllParts splits a multipart body into its parts at its delimiter
// lines (RFC 2046 §5.1.1), as splitMultipart does, without its limit of
// three parts: at most limit. Mixed delimiter line ends, a missing closing
// delimiter and no part at all are errors.
func splitAllParts(body []byte, boundary string, limit int) ([][]byte, error) {
	dash := []byte("--" + boundary)
	var parts [][]byte
	start := -1 // start of the current part's content; -1 in the preamble
	crlf := -1  // whether delimiters end in CRLF; -1 before the first one
	for pos := 0; pos < len(body); {
		lineEnd, next := len(body), len(body)
		if i := bytes.IndexByte(body[pos:], '\n'); i >= 0 {
			lineEnd, next = pos+i, pos+i+1
		}
		line := body[pos:lineEnd]
		if !bytes.HasPrefix(line, dash) {
			pos = next
			continue
		}
		rest := line[len(dash):]
		own := -1 // no line end: the body's last line
		if next > lineEnd {
			own = 0
			if len(rest) > 0 && rest[len(rest)-1] == '\r' {
				own, rest = 1, rest[:len(rest)-1]
			}
		}
		closing := bytes.HasPrefix(rest, []byte("--"))
		if closing {
			rest = rest[2:]
		}
		if len(bytes.Trim(rest, " \t")) != 0 {
			pos = next
			continue // a line that starts like the boundary: content
		}
		end, prev := pos, -1
		if end > 0 {
			end--
			prev = 0
			if end > 0 && body[end-1] == '\r' {
				end--
				prev = 1
			}
		}
		if crlf < 0 {
			crlf = own
		}
		if (own >= 0 && own != crlf) || (prev >= 0 && crlf >= 0 && prev != crlf) {
			return nil, mimeErr("multipart delimiters with mixed line ends")
		}
		if start >= 0 {
			parts = append(parts, body[start:max(end, start)])
			if len(parts) > limit {
				return nil, mimeErr("more than %d MIME parts", maxInlineParts)
			}
		}
		if closing {
			if len(parts) == 0 {
				return nil, mimeErr("multipart without parts")
			}
			return parts, nil
		}
		start = next
		pos = next
	}
	return nil, mimeErr("multipart without closing delimiter %q", truncate("--"+boundary+"--"))
}

// attachmentName is the name of the decrypted file: the original's last
// path element without control characters, or one chosen by media type.
func attachmentName(mt, name string) string {
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	name = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7F || r == utf8.RuneError {
			return -1
		}
		return r
	}, name)
	if name = strings.TrimSpace(name); name != "" && name != "." && name != ".." {
		return name
	}
	switch {
	case mt == "text/html":
		return "message.html"
	case mt == "message/rfc822" || mt == "message/global":
		return "message.eml"
	case strings.HasPrefix(mt, "text/"):
		return "part.txt"
	case mt == "image/png":
		return "image.png"
	case mt == "image/jpeg":
		return "image.jpg"
	case mt == "application/pdf":
		return "document.pdf"
	}
	return "attachment.bin"
}

// asciiOnly replaces non-ASCII and control characters (for the note).
func asciiOnly(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7E {
			return '_'
		}
		return r
	}, s)
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// inlineBase64 encodes b in base64 lines of 76 characters with CRLF ends
// (RFC 2045 §6.8), the last line ended too.
func inlineBase64(b []byte) []byte {
	const lineBytes = 57 // 76 characters
	n := base64.StdEncoding.EncodedLen(len(b))
	out := make([]byte, 0, n+2*(n/76+1))
	for len(b) > 0 {
		k := min(len(b), lineBytes)
		out = base64.StdEncoding.AppendEncode(out, b[:k])
		out = append(out, '\r', '\n')
		b = b[k:]
	}
	return out
}

// start makes the choices of the whole message once, under the keys'
// locks: SEIPDv2 when every key advertises it, else SEIPDv1 (as Encrypt
// chooses). For SEIPDv1 it also makes one session key and its session-key
// packets, which every part then carries: one public-key operation per
// key and message, not per part, as for PGP/MIME. Reusing the key across
// parts is safe: each SEIPDv1 packet starts with its own random prefix,
// which makes its CFB encryption independent of the others'; and a reader
// who has one part's session key has every part, as with PGP/MIME's one
// message. (go-crypto writes SEIPDv2 messages whole, so there each part
// has its own session key.)
func (c *inlineConv) start() error {
	if c.started {
		return nil
	}
	err := keys.WithEntities(c.used, func(entities []*openpgp.Entity) error {
		v2 := true
		for i, e := range entities {
			sig, err := e.PrimarySelfSignature(c.cfg.Now(), c.cfg)
			if err != nil {
				return fmt.Errorf("key %s: no valid self-signature: %w", c.used[i].Fingerprint, err)
			}
			v2 = v2 && sig.SEIPDv2
		}
		if v2 {
			c.v2 = true
			return nil
		}
		var b bytes.Buffer
		key, err := writeV1SessionKeys(&b, entities, c.hide, c.cfg)
		if err != nil {
			return fmt.Errorf("encrypt: %w", err)
		}
		c.sessionKey, c.pkesk = key, b.Bytes()
		return nil
	})
	c.started = err == nil
	return err
}

// seal encrypts data to the keys as one OpenPGP message, armoured (CRLF
// lines, for a text part) or binary.
func (c *inlineConv) seal(data []byte, armored bool) ([]byte, error) {
	if err := c.start(); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	size := len(data) + 600*len(c.used) + 1024
	if armored {
		out.Grow(armoredLen(size))
	} else {
		out.Grow(size)
	}
	if !c.v2 {
		var w io.Writer = &out
		var armor *armorWriter
		if armored {
			// With the CRC24 line: GnuPG 2.2 rejects v1 armour without it.
			armor = newArmorWriter(&out, true)
			w = armor
		}
		w.Write(c.pkesk)
		if err := writeSEIPDv1(w, c.sessionKey, c.cfg.Random(), data); err != nil {
			return nil, fmt.Errorf("encrypt: %w", err)
		}
		if armor != nil {
			armor.Close()
		}
		return out.Bytes(), nil
	}
	if armored {
		armor, finish, err := startMessage(&out, c.used, c.hide, c.cfg)
		if err != nil {
			return nil, err
		}
		if err := finish(nil, data); err != nil {
			return nil, fmt.Errorf("encrypt: %w", err)
		}
		armor.Close()
		return out.Bytes(), nil
	}
	var finish func(inner, body []byte) error
	err := keys.WithEntities(c.used, func(entities []*openpgp.Entity) error {
		var err error
		if finish, err = startV2(&out, entities, c.hide, c.cfg); err != nil {
			return fmt.Errorf("encrypt: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := finish(nil, data); err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	return out.Bytes(), nil
}

// inlineChanges turns the original header into the outer header of the
// inline message: the first Content-Type and Content-Transfer-Encoding
// set to the new values (added when absent), every other Content-* field
// removed (a Content-Description or a file name would be clear text),
// MIME-Version added when absent.
func inlineChanges(fields []Field, hdr []Field) []Change {
	var changes, deletes []Change
	seen := map[string]int{}
	done := map[string]bool{}
	hasVersion := false
	for _, f := range fields {
		key := strings.ToLower(f.Name) // as Apply and outerChanges count
		seen[key]++
		switch {
		case key == "mime-version":
			hasVersion = true
		case isContentField(f.Name):
			set := false
			for _, h := range hdr {
				if strings.ToLower(h.Name) == key && !done[key] {
					done[key] = true
					set = true
					changes = append(changes, Change{Op: Set, Name: f.Name, Index: seen[key], Value: h.Value})
				}
			}
			if !set {
				deletes = append(deletes, Change{Op: Delete, Name: f.Name, Index: seen[key]})
			}
		}
	}
	for i := len(deletes) - 1; i >= 0; i-- {
		changes = append(changes, deletes[i])
	}
	if !hasVersion {
		changes = append(changes, Change{Op: Add, Name: "MIME-Version", Value: "1.0"})
	}
	for _, h := range hdr {
		if !done[strings.ToLower(h.Name)] {
			changes = append(changes, Change{Op: Add, Name: h.Name, Value: h.Value})
		}
	}
	return changes
}
