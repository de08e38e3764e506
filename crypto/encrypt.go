// Package crypto turns a message (header fields and raw body) into an
// RFC 3156 PGP/MIME message encrypted to a set of keys, and recognises
// mail that is already encrypted. It knows nothing of the milter protocol:
// it returns header changes and a new body, and the caller applies them.
package crypto

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/crypto/smime"
	"lacre.io/milter/keys"
)

// Options change how a message is encrypted.
type Options struct {
	// HideRecipients writes wildcard key IDs (RFC 9580 §5.1.1) so that
	// recipients cannot see each other's keys. Off by default: Mailvelope,
	// OpenKeychain and RNP without --allow-hidden cannot decrypt such mail.
	HideRecipients bool
	// ProtectHeaders copies the message's identifying fields into the
	// ciphertext (RFC 9788 hp="cipher", plus protected-headers="v1" for
	// Thunderbird) and replaces the outer Subject with "[...]".
	ProtectHeaders bool
	// MinRSABits is the smallest RSA key accepted; 0 means 2048.
	MinRSABits int
	// Now selects which (sub)keys are valid; the zero time means time.Now().
	Now time.Time
	// Rand is the randomness source; nil means crypto/rand. S/MIME
	// (EncryptSMIME) always uses crypto/rand.
	Rand io.Reader
	// SMIME is the content cipher, RSA padding and recipient naming for
	// S/MIME (EncryptSMIME); the zero value is AES-256-CBC with RSA
	// PKCS #1 v1.5, what every S/MIME reader opens.
	SMIME smime.Options
}

// Result is an encrypted message: edits to the outer header section, to
// be applied in order, and the complete new body (CRLF line ends).
type Result struct {
	Changes []Change
	Body    []byte
	// Unprotected, when header protection was asked for but not applied,
	// says why (the caller logs it); "" otherwise.
	Unprotected string
}

// protectedFields are copied into the encrypted payload when headers are
// protected (RFC 9788 §2.2: the fields a reader uses to identify a message),
// followed by the concealedFields.
var protectedFields = [...]string{"Subject", "From", "To", "Cc", "Date", "Message-ID", "References", "In-Reply-To",
	"Thread-Topic", "X-Original-Subject", "Original-Subject", "X-Spam-Prev-Subject", "Keywords", "Comments", "Summary"}

// concealedFields are the protected fields, other than the Subject, that
// carry what the author wrote (a copy of the Subject, or the author's own
// text): when headers are protected they are removed from the outer header
// and kept only inside the ciphertext, or they would give away what the
// obscured Subject hides. docs/encryption.md says who writes each and why.
//
//   - Thread-Topic: Outlook and Exchange, the Subject without "Re:".
//   - X-Original-Subject, Original-Subject: list managers, gateways and
//     Exchange transport rules that rewrite a Subject keep the old one.
//   - X-Spam-Prev-Subject: SpamAssassin's rewrite_header Subject.
//   - Keywords, Comments (RFC 5322 §3.6.5), Summary (RFC 5536, written by
//     news-capable mailers such as Gnus): free text of the author's.
var concealedFields = [...]string{"Thread-Topic", "X-Original-Subject", "Original-Subject", "X-Spam-Prev-Subject",
	"Keywords", "Comments", "Summary"}

// ProtectedFields returns (a copy of) the names of the fields copied into
// the encrypted payload when headers are protected.
func ProtectedFields() []string { return slices.Clone(protectedFields[:]) }

// ConcealedFields returns (a copy of) the names of the protected fields
// that are removed from the outer header when headers are protected.
func ConcealedFields() []string { return slices.Clone(concealedFields[:]) }

// isConcealed reports whether name is one of the concealedFields.
func isConcealed(name string) bool {
	for _, c := range concealedFields {
		if strings.EqualFold(name, c) {
			return true
		}
	}
	return false
}

// UnprotectedSigned is Result.Unprotected for a message whose body is
// already signed (multipart/signed, or S/MIME application/pkcs7-mime with
// smime-type=signed-data). RFC 9788 puts the protected fields on the
// cryptographic payload, which for signed mail is inside the signature,
// where nothing may change; on the signed layer instead, readers (notmuch,
// NeoMutt) do not find them and show the obscured "[...]" as the Subject.
// Wrapping the signed entity in a new payload would keep it verifiable but
// make it a nested part, which readers should not present as the
// message's signature (RFC 9787: an errant cryptographic layer). So such
// mail keeps its header as it is, and the Subject stays readable, as it
// already was on its way here.
const UnprotectedSigned = "the body is signed: header protection would hide the Subject from readers or the signature"

// signedBody reports whether the message body is a signed cryptographic
// layer that header protection cannot enter: multipart/signed (RFC 1847,
// 3156, 8551) or application/pkcs7-mime with smime-type=signed-data
// (RFC 8551 §3.5.2, opaque-signed S/MIME).
func signedBody(fields []Field) bool {
	v, ok := get(fields, "Content-Type")
	if !ok {
		return false
	}
	switch asciiMediaType(v) {
	case "multipart/signed":
		return true
	case "application/pkcs7-mime", "application/x-pkcs7-mime":
		// Only what says it is signed: without smime-type, or with another
		// one, the readers do not verify a signature either.
		_, params := mediaType(v)
		return strings.EqualFold(params["smime-type"], "signed-data")
	}
	return false
}

// ObscuredSubject replaces the outer Subject when headers are protected
// (RFC 9788 §2.3 recommends exactly this string).
const ObscuredSubject = "[...]"

// writeChunk is the size of the plaintext writes into go-crypto.
const writeChunk = 32 << 10

// ErrNoKeys is returned when Encrypt is given no recipient key.
var ErrNoKeys = errors.New("no recipient key to encrypt to")

// Encrypt encrypts the message (fields, body) to every key in to, per
// RFC 3156. The inner entity is the original Content-* fields followed by
// body byte for byte: the body is never decoded or re-encoded, so
// charsets, 8-bit text, attachments and signatures decrypt to exactly what
// was sent. Encrypt does not modify fields or body; the caller keeps them.
//
// Memory use is the size of the result (about 1.37 × the body) plus
// go-crypto's fixed-size buffers.
func Encrypt(fields []Field, body []byte, to []*keys.Key, opt Options) (*Result, error) {
	if len(to) == 0 {
		return nil, ErrNoKeys
	}
	cfg := opt.packetConfig()
	used := distinctKeys(to)
	boundary, err := newBoundary(cfg.Rand)
	if err != nil {
		return nil, err
	}
	protect, unprotected := opt.ProtectHeaders, ""
	if protect && signedBody(fields) {
		protect, unprotected = false, UnprotectedSigned
	}
	inner := innerHeader(fields, body, protect)
	var out bytes.Buffer
	// One allocation for the whole result: a session-key packet is at most
	// ~600 bytes (RSA-4096), the packet framing well under 1 KiB.
	out.Grow(armoredLen(len(inner)+len(body)+600*len(used)+1024) + 512)
	writeBodyHead(&out, boundary)
	armor, finish, err := startMessage(&out, used, opt.HideRecipients, cfg)
	if err != nil {
		return nil, err
	}
	if err := finish(inner, body); err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	armor.Close()
	writeBodyTail(&out, boundary)
	return &Result{
		Changes:     outerChanges(fields, boundary, protect),
		Body:        out.Bytes(),
		Unprotected: unprotected,
	}, nil
}

// packetConfig is go-crypto's configuration for one message.
func (opt Options) packetConfig() *packet.Config {
	now := opt.Now
	if now.IsZero() {
		now = time.Now()
	}
	rnd := opt.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	minBits := opt.MinRSABits
	if minBits == 0 {
		minBits = 2048
	}
	return &packet.Config{
		// AES-256 whenever every key's preferences allow it (RFC 9580 §5.2.3.14).
		DefaultCipher: packet.CipherAES256,
		// No compression: it costs CPU, and compressing secrets next to
		// attacker-chosen text is a known side channel.
		DefaultCompressionAlgo: packet.CompressionNone,
		MinRSABits:             uint16(minBits),
		Time:                   func() time.Time { return now },
		Rand:                   rnd,
	}
}

// distinctKeys drops repeated keys: recipients may share a key (a static
// mapping, a team key), and one session-key packet per key is enough.
func distinctKeys(to []*keys.Key) []*keys.Key {
	used := make([]*keys.Key, 0, len(to))
	seen := make(map[string]bool, len(to))
	for _, k := range to {
		if !seen[k.Fingerprint] {
			seen[k.Fingerprint] = true
			used = append(used, k)
		}
	}
	return used
}

// startMessage chooses the message's format and writes its session-key
// packets into an armour writer on out; finish then encrypts the inner
// entity. go-crypto writes into a key's signatures while it checks them,
// and the keys are shared with concurrent sessions: the key work (the
// version choice, the session-key packets) runs inside keys.WithEntities,
// which holds the keys' locks; the message is encrypted after it.
func startMessage(out *bytes.Buffer, used []*keys.Key, hide bool, cfg *packet.Config) (armor *armorWriter, finish func(inner, body []byte) error, err error) {
	err = keys.WithEntities(used, func(entities []*openpgp.Entity) error {
		seipdV2 := true
		for i, e := range entities {
			sig, err := e.PrimarySelfSignature(cfg.Now(), cfg)
			if err != nil {
				return fmt.Errorf("key %s: no valid self-signature: %w", used[i].Fingerprint, err)
			}
			// go-crypto uses SEIPDv2 exactly when every key advertises it.
			seipdV2 = seipdV2 && sig.SEIPDv2
		}
		// RFC 9580 §6.2.2.3: no CRC24 after a v2 SEIPD packet; for v1 keep it,
		// because GnuPG 2.2 rejects CRC-less armour.
		armor = newArmorWriter(out, !seipdV2)
		var err error
		if seipdV2 {
			finish, err = startV2(armor, entities, hide, cfg)
		} else {
			finish, err = startV1(armor, entities, hide, cfg)
		}
		if err != nil {
			return fmt.Errorf("encrypt: %w", err)
		}
		return nil
	})
	return armor, finish, err
}

// innerHeader builds the header section of the encrypted entity: the
// original Content-* fields in their order, with an explicit Content-Type
// when there was none (defaultContentType), then the protected fields.
func innerHeader(fields []Field, body []byte, protect bool) []byte {
	var b bytes.Buffer
	hasType := false
	for _, f := range fields {
		if !isContentField(f.Name) {
			continue
		}
		v := f.Value
		if strings.EqualFold(f.Name, "Content-Type") {
			if hasType {
				continue // a second Content-Type is malformed; the first one wins, as in most readers
			}
			hasType = true
			if protect {
				v = protectedContentType(v)
			}
		}
		writeField(&b, f.Name, v)
	}
	if !hasType {
		v := defaultContentType(body)
		if protect {
			v += `; protected-headers="v1"; hp="cipher"`
		}
		writeField(&b, "Content-Type", v)
	}
	if protect {
		for _, name := range protectedFields {
			for _, f := range fields {
				if strings.EqualFold(f.Name, name) {
					writeField(&b, f.Name, f.Value)
				}
			}
		}
		// RFC 9788 §2.2.1: HP-Outer records the outer fields as delivered,
		// so a reader can tell which outer values were obscured.
		for _, name := range protectedFields {
			if isConcealed(name) {
				continue // removed outside: no HP-Outer record (RFC 9788 §2.2.1)
			}
			for _, f := range fields {
				if !strings.EqualFold(f.Name, name) {
					continue
				}
				v := f.Value
				if strings.EqualFold(name, "Subject") {
					v = ObscuredSubject
				}
				writeField(&b, "HP-Outer", f.Name+": "+v)
			}
		}
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

// defaultContentType is the Content-Type of a body that had none. RFC 2045
// §5.2 makes that text/plain; charset=us-ascii, but mail without MIME
// header fields (cron, scripts, old mailers) often carries 8-bit text, and
// readers that are told us-ascii drop or replace its non-ASCII bytes. So
// the label says what the body really is: us-ascii for 7-bit, utf-8 for
// valid UTF-8, and no charset claim for anything else (a reader then
// guesses, as it would have for the original).
func defaultContentType(body []byte) string {
	ascii := true
	for _, c := range body {
		if c >= 0x80 {
			ascii = false
			break
		}
	}
	switch {
	case ascii:
		return "text/plain; charset=us-ascii"
	case utf8.Valid(body):
		return "text/plain; charset=utf-8"
	}
	return "text/plain"
}

// protectedContentType adds the header-protection parameters to an inner
// Content-Type. A trailing folded blank line or ';' is trimmed first, or
// the added parameters would start an unindented line and end the header
// section early. If the value already carries hp= or protected-headers=,
// it is rebuilt without them, so no parameter appears twice.
func protectedContentType(v string) string {
	const params = `; protected-headers="v1"; hp="cipher"`
	low := strings.ToLower(v)
	if strings.Contains(low, "hp=") || strings.Contains(low, "protected-headers") {
		if mt, ps, err := mime.ParseMediaType(unfold(v)); err == nil {
			delete(ps, "hp")
			delete(ps, "protected-headers")
			if rebuilt := mime.FormatMediaType(mt, ps); rebuilt != "" {
				return rebuilt + params
			}
		}
		// Unparseable: keep only the media type; the body is unchanged.
		t, _, _ := strings.Cut(unfold(v), ";")
		return strings.TrimSpace(t) + params
	}
	return strings.TrimRight(v, " \t\r\n;") + params
}

// outerChanges turns the original header into the outer header of the
// PGP/MIME message: Content-Type replaced, other Content-* fields removed
// (they now live inside the ciphertext), MIME-Version added when absent,
// and the Subject obscured when headers are protected.
func outerChanges(fields []Field, boundary string, protect bool) []Change {
	// One line (about 100 characters, well under RFC 5322's 998): MTAs
	// differ in how they take folded values through the milter protocol.
	newType := `multipart/encrypted; protocol="application/pgp-encrypted"; boundary="` + boundary + `"`
	return replaceContent(fields, []Field{{Name: "Content-Type", Value: newType}}, protect)
}

// replaceContent returns the changes that make the original header the
// outer header of an encrypted message whose own MIME fields are content
// (PGP/MIME: a Content-Type; S/MIME: smime.Fields). The first field of
// each name in content is set to its new value in place, every other
// Content-* field is removed (they now live inside the ciphertext), the
// fields of content the message lacked and MIME-Version are added, and
// when headers are protected the Subject is obscured and the
// concealedFields removed.
func replaceContent(fields []Field, content []Field, protect bool) []Change {
	var changes []Change
	seen := map[string]int{}
	var deletes []Change
	hasVersion := false
	set := make([]bool, len(content))
	newValue := func(name string) int {
		for i, c := range content {
			if !set[i] && strings.EqualFold(c.Name, name) {
				return i
			}
		}
		return -1
	}
	for _, f := range fields {
		key := strings.ToLower(f.Name)
		seen[key]++
		idx := seen[key]
		switch i := newValue(f.Name); {
		case i >= 0 && isContentField(f.Name):
			set[i] = true
			changes = append(changes, Change{Op: Set, Name: f.Name, Index: idx, Value: content[i].Value})
		case isContentField(f.Name):
			deletes = append(deletes, Change{Op: Delete, Name: f.Name, Index: idx})
		case key == "mime-version":
			hasVersion = true
		case key == "subject" && protect:
			// Every Subject field: a second one would stay readable outside.
			changes = append(changes, Change{Op: Set, Name: f.Name, Index: idx, Value: ObscuredSubject})
		case protect && isConcealed(f.Name):
			deletes = append(deletes, Change{Op: Delete, Name: f.Name, Index: idx})
		}
	}
	// Highest index first, so each deletion leaves the others' indexes valid.
	for i := len(deletes) - 1; i >= 0; i-- {
		changes = append(changes, deletes[i])
	}
	if !hasVersion {
		changes = append(changes, Change{Op: Add, Name: "MIME-Version", Value: "1.0"})
	}
	for i, c := range content {
		if !set[i] {
			changes = append(changes, Change{Op: Add, Name: c.Name, Value: c.Value})
		}
	}
	return changes
}

// startV2 uses go-crypto for recipients who all support SEIPDv2
// (RFC 9580 §5.13.2): AEAD with the best cipher suite they share. It
// writes the session-key packets; finish writes the data, without the
// entities (no signing: the writer does not go back to the keys).
func startV2(w io.Writer, to []*openpgp.Entity, hide bool, cfg *packet.Config) (finish func(inner, body []byte) error, err error) {
	var toVisible, toHidden []*openpgp.Entity
	if hide {
		toHidden = to
	} else {
		toVisible = to
	}
	pt, err := openpgp.EncryptWithParams(w, toVisible, toHidden, &openpgp.EncryptParams{Config: cfg})
	if err != nil {
		return nil, err
	}
	return func(inner, body []byte) error {
		if _, err := pt.Write(inner); err != nil {
			return err
		}
		// Feed the body in chunks: go-crypto's partial-length writer keeps
		// everything of one Write call in memory and flushes one power-of-two
		// packet per call, so a single large Write would be buffered whole.
		for p := body; len(p) > 0; {
			n := min(len(p), writeChunk)
			if _, err := pt.Write(p[:n]); err != nil {
				return err
			}
			p = p[n:]
		}
		return pt.Close()
	}, nil
}

// startV1 writes one session-key packet per recipient with go-crypto
// (v3 PKESK, RFC 9580 §5.1); finish writes the data with writeSEIPDv1.
// The cipher is AES-256 unless a key's preferences exclude it (then
// AES-128, which every implementation must support, RFC 9580 §9.3).
func startV1(w io.Writer, to []*openpgp.Entity, hide bool, cfg *packet.Config) (finish func(inner, body []byte) error, err error) {
	sessionKey, err := writeV1SessionKeys(w, to, hide, cfg)
	if err != nil {
		return nil, err
	}
	return func(inner, body []byte) error {
		defer clear(sessionKey)
		return writeSEIPDv1(w, sessionKey, cfg.Random(), inner, body)
	}, nil
}

// writeV1SessionKeys chooses the cipher, makes a session key and writes
// one session-key packet per recipient for it; the caller clears the key.
func writeV1SessionKeys(w io.Writer, to []*openpgp.Entity, hide bool, cfg *packet.Config) (sessionKey []byte, err error) {
	now := cfg.Now()
	cipherFunc := packet.CipherAES256
	for _, e := range to {
		sig, err := e.PrimarySelfSignature(now, cfg)
		if err != nil {
			return nil, err
		}
		if len(sig.PreferredSymmetric) > 0 && !slices.Contains(sig.PreferredSymmetric, uint8(packet.CipherAES256)) {
			cipherFunc = packet.CipherAES128
		}
	}
	sessionKey = make([]byte, cipherFunc.KeySize())
	if _, err := io.ReadFull(cfg.Random(), sessionKey); err != nil {
		return nil, err
	}
	for _, e := range to {
		k, err := e.EncryptionKeyWithError(now, cfg)
		if err != nil {
			clear(sessionKey)
			return nil, err
		}
		// go-crypto does not check RSA encrypt-only (algorithm 2) sizes.
		if k.PublicKey.PubKeyAlgo == packet.PubKeyAlgoRSAEncryptOnly {
			if bits, err := k.PublicKey.BitLength(); err != nil || int(bits) < int(cfg.MinimumRSABits()) {
				clear(sessionKey)
				return nil, fmt.Errorf("key %X: RSA encryption subkey of %d bits is below the minimum of %d", e.PrimaryKey.Fingerprint, bits, cfg.MinimumRSABits())
			}
		}
		if err := packet.SerializeEncryptedKeyAEADwithHiddenOption(w, k.PublicKey, cipherFunc, false, sessionKey, hide, cfg); err != nil {
			clear(sessionKey)
			return nil, err
		}
	}
	return sessionKey, nil
}

// writeBodyHead writes the preamble, the version part (RFC 3156 §4) and
// the headers of the part that carries the armoured ciphertext.
func writeBodyHead(b *bytes.Buffer, boundary string) {
	b.WriteString("This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n--")
	b.WriteString(boundary)
	b.WriteString("\r\nContent-Type: application/pgp-encrypted\r\n" +
		"Content-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n\r\n--")
	b.WriteString(boundary)
	b.WriteString("\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\n" +
		"Content-Description: OpenPGP encrypted message\r\n" +
		"Content-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n")
}

func writeBodyTail(b *bytes.Buffer, boundary string) {
	b.WriteString("\r\n--")
	b.WriteString(boundary)
	b.WriteString("--\r\n")
}

// newBoundary returns a random MIME boundary. It contains "=_", which can
// never occur in base64 armour lines (RFC 2045 §6.8), so it cannot collide
// with the ciphertext (RFC 2046 §5.1.1).
func newBoundary(r io.Reader) (string, error) {
	var b [12]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", fmt.Errorf("boundary: %w", err)
	}
	return "=_lacre_" + hex.EncodeToString(b[:]), nil
}
