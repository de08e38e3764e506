package keys

// S/MIME recipient certificates (issue 18): parsing a submitted X.509
// certificate file, telling it apart from OpenPGP data, and the admission
// rules a certificate must pass before mail is encrypted to it. The rules
// mirror Policy's for OpenPGP keys and fail with the same *RejectError.

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Rules only certificates have. The others a certificate can fail are
// shared with OpenPGP keys: RuleFormat, RuleTooLarge, RuleSecret,
// RuleExpired and RuleStrength.
const (
	RuleNotYetValid Rule = "not-yet-valid" // now is before NotBefore
	RuleKeyUsage    Rule = "key-usage"     // the key may not encrypt (key usage, extended key usage)
	RuleAddress     Rule = "address"       // the address is not in the certificate
	RuleTrustChain  Rule = "trust-chain"   // no chain to the configured trust anchors
)

// MaxCertificates bounds the certificates in one submitted file (the
// end-entity certificate and its issuers; real chains have two to four).
const MaxCertificates = 16

// oidEmailAddress is PKCS #9 emailAddress (RFC 5280 §4.1.2.6), the subject
// attribute older certificates carry instead of an rfc822Name.
var oidEmailAddress = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}

// oidKeyUsage is the key usage extension (RFC 5280 §4.2.1.3).
var oidKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 15}

// Certificate is one parsed S/MIME recipient certificate: the end-entity
// certificate mail is encrypted to, with the other certificates of the
// submitted file (its issuers, when the file held a chain).
//
// A Certificate is immutable once parsed and may be shared between
// goroutines (crypto/x509 certificates are read-only).
type Certificate struct {
	// Cert is the end-entity certificate.
	Cert *x509.Certificate
	// Chain holds the file's other certificates, in file order; they are
	// offered as intermediates when the policy verifies a chain.
	Chain []*x509.Certificate
	// Fingerprint is the SHA-256 of Cert's DER encoding, 64 upper-case
	// hex digits: the certificate's identity in the store.
	Fingerprint string
}

// Raw returns the DER encoding of the end-entity certificate followed by
// those of the chain: what the store keeps, and what ParseCertificate
// reads back into the same Certificate.
func (c *Certificate) Raw() []byte {
	var b []byte
	b = append(b, c.Cert.Raw...)
	for _, x := range c.Chain {
		b = append(b, x.Raw...)
	}
	return b
}

// NextChange returns the first instant after now at which the
// certificate's validity changes with time alone: notBefore when it is
// not yet valid, else the instant after notAfter (RFC 5280 §4.1.2.5
// counts notAfter itself as valid); zero when it has expired. The lookup cache
// keeps an answer no longer than this.
func (c *Certificate) NextChange(now time.Time) time.Time {
	switch x := c.Cert; {
	case now.Before(x.NotBefore):
		return x.NotBefore
	case !now.After(x.NotAfter):
		return x.NotAfter.Add(time.Nanosecond)
	}
	return time.Time{}
}

// IsCertificate reports whether data looks like X.509 certificate data
// (PEM or DER) rather than OpenPGP, so that "keys add" can hand a file to
// the right parser without being told. It decides on the framing only:
// a file it recognises may still be refused by ParseCertificate, which
// then says why in the certificate's terms.
//
//   - PEM: a "-----BEGIN CERTIFICATE-----" (or "X509 CERTIFICATE", or
//     "PKCS7" for a certificate bundle) line that comes before any
//     "-----BEGIN PGP " armour line.
//   - DER: a first byte 0x30 (an ASN.1 SEQUENCE). No OpenPGP packet can
//     start so: an OpenPGP packet header always has bit 7 set (RFC 9580
//     §4.2). PKCS #12 files also start so; ParseCertificate refuses them
//     for the private key they hold.
func IsCertificate(data []byte) bool {
	if len(data) > 0 && data[0] == 0x30 {
		return true
	}
	cert := -1
	for _, h := range []string{"-----BEGIN CERTIFICATE-----", "-----BEGIN X509 CERTIFICATE-----", "-----BEGIN PKCS7-----"} {
		if i := bytes.Index(data, []byte(h)); i >= 0 && (cert < 0 || i < cert) {
			cert = i
		}
	}
	// A PEM private key ("PRIVATE KEY", "RSA PRIVATE KEY", "ENCRYPTED
	// PRIVATE KEY", …) is X.509 framing too: ParseCertificate refuses it
	// as secret material, where the OpenPGP parser could only call it
	// malformed. (OpenPGP's own is "PGP PRIVATE KEY BLOCK".)
	if i := bytes.Index(data, []byte("PRIVATE KEY-----")); i >= 0 {
		if b := bytes.LastIndex(data[:i], []byte("-----BEGIN ")); b >= 0 && !bytes.ContainsAny(data[b:i], "\r\n") && (cert < 0 || b < cert) {
			cert = b
		}
	}
	if cert < 0 {
		return false
	}
	pgp := bytes.Index(data, []byte("-----BEGIN PGP "))
	return pgp < 0 || cert < pgp
}

// certReject is reject for certificates: Key names the certificate by the
// first 16 digits of its SHA-256 fingerprint.
func certReject(c *x509.Certificate, rule Rule, format string, args ...any) *RejectError {
	id := ""
	if c != nil {
		sum := sha256.Sum256(c.Raw)
		id = "sha256:" + strings.ToUpper(hex.EncodeToString(sum[:8]))
	}
	return &RejectError{Rule: rule, Key: id, Msg: fmt.Sprintf(format, args...)}
}

// ParseCertificate reads a certificate file: PEM (any number of
// CERTIFICATE blocks; text around them, as "openssl x509 -text" writes
// it, is ignored) or DER (one or more concatenated certificates), and in
// either a PKCS #7 certificate bundle (.p7b, .p7c) in place of a
// certificate. A file
// with private key material (a PRIVATE KEY block, a DER private key, a
// PKCS #12 file) is refused with RuleSecret, anything else that is not a
// certificate with RuleFormat.
//
// Which certificate is the end-entity one: of the certificates whose
// address (see CertificateAddresses) normalises with n to address, the
// first that is not a CA certificate, else the first at all; when none
// carries the address (or address is ""), the first non-CA certificate,
// else the first. The others form Chain. Choosing by address lets a user
// submit a bundle exported by a mail client; a self-signed certificate
// made with "openssl req -x509" is marked CA and still works alone.
// ParseCertificate checks no admission rule but the secret one: see
// CertificatePolicy.Validate.
func ParseCertificate(data []byte, address string, n Normalizer) (*Certificate, error) {
	if len(data) > MaxKeyBytes {
		return nil, certReject(nil, RuleTooLarge, "the certificate file is %d bytes, more than the limit of %d", len(data), MaxKeyBytes)
	}
	var ders [][]byte
	var err error
	if len(data) > 0 && data[0] == 0x30 {
		ders, err = splitDER(data)
	} else {
		ders, err = splitPEM(data)
	}
	if err != nil {
		return nil, err
	}
	if len(ders) == 0 {
		return nil, certReject(nil, RuleFormat, "no X.509 certificate found")
	}
	if len(ders) > MaxCertificates {
		return nil, certReject(nil, RuleFormat, "the file holds %d certificates, more than the limit of %d", len(ders), MaxCertificates)
	}
	certs := make([]*x509.Certificate, len(ders))
	seen := map[[32]byte]bool{}
	for i, der := range ders {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, certReject(nil, RuleFormat, "certificate %d of the file is not a valid X.509 certificate: %v", i+1, err)
		}
		sum := sha256.Sum256(c.Raw)
		if seen[sum] {
			return nil, certReject(c, RuleFormat, "certificate %d of the file appears twice", i+1)
		}
		seen[sum] = true
		certs[i] = c
	}
	leaf := pickEndEntity(certs, address, n)
	sum := sha256.Sum256(certs[leaf].Raw)
	return &Certificate{
		Cert:        certs[leaf],
		Chain:       slices.Delete(slices.Clone(certs), leaf, leaf+1),
		Fingerprint: strings.ToUpper(hex.EncodeToString(sum[:])),
	}, nil
}

// parseStoredCertificate reads what Certificate.Raw wrote: DER
// certificates, the end-entity one first. The order is what the store
// kept, so no choosing by address is needed (or wanted: a stored
// certificate read without its address must come back the same).
func parseStoredCertificate(material []byte) (*Certificate, error) {
	ders, err := splitDER(material)
	if err != nil {
		return nil, err
	}
	if len(ders) == 0 || len(ders) > MaxCertificates {
		return nil, certReject(nil, RuleFormat, "stored material holds %d certificates", len(ders))
	}
	certs := make([]*x509.Certificate, len(ders))
	for i, der := range ders {
		if certs[i], err = x509.ParseCertificate(der); err != nil {
			return nil, certReject(nil, RuleFormat, "stored certificate %d does not parse: %v", i+1, err)
		}
	}
	sum := sha256.Sum256(certs[0].Raw)
	return &Certificate{Cert: certs[0], Chain: certs[1:], Fingerprint: strings.ToUpper(hex.EncodeToString(sum[:]))}, nil
}

// pickEndEntity returns the index of the end-entity certificate (see
// ParseCertificate).
func pickEndEntity(certs []*x509.Certificate, address string, n Normalizer) int {
	first := func(ok func(*x509.Certificate) bool) int {
		for i, c := range certs {
			if ok(c) {
				return i
			}
		}
		return -1
	}
	matches := func(c *x509.Certificate) bool {
		return address != "" && slices.Contains(normalizedAddresses(c, n), address)
	}
	for _, ok := range []func(*x509.Certificate) bool{
		func(c *x509.Certificate) bool { return matches(c) && !c.IsCA },
		matches,
		func(c *x509.Certificate) bool { return !c.IsCA },
	} {
		if i := first(ok); i >= 0 {
			return i
		}
	}
	return 0
}

// splitPEM returns the DER of each certificate in the PEM blocks. PEM
// decoding skips text between blocks; every block must be a certificate
// or a PKCS #7 certificate bundle.
func splitPEM(data []byte) ([][]byte, error) {
	var ders [][]byte
	blocks := 0
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		blocks++
		switch {
		case strings.Contains(b.Type, "PRIVATE KEY"):
			return nil, certReject(nil, RuleSecret, "the file contains a private key (%s); submit only the certificate", b.Type)
		case b.Type == "CERTIFICATE" || b.Type == "X509 CERTIFICATE":
			ders = append(ders, b.Bytes)
		case b.Type == "PKCS7" || b.Type == "CMS":
			certs, ok := pkcs7Certificates(b.Bytes)
			if !ok {
				return nil, certReject(nil, RuleFormat, "the %s PEM block is not a certificate bundle (PKCS #7 SignedData)", b.Type)
			}
			ders = append(ders, certs...)
		default:
			return nil, certReject(nil, RuleFormat, "the file contains a %q PEM block; submit only the certificate (BEGIN CERTIFICATE)", b.Type)
		}
		if len(ders) > MaxCertificates {
			break
		}
	}
	// pem.Decode skips a block it cannot read without saying so (which
	// could hide a private key or a certificate): every BEGIN line must
	// have become a block.
	if len(ders) <= MaxCertificates && bytes.Count(data, []byte("-----BEGIN ")) != blocks {
		return nil, certReject(nil, RuleFormat, "the file contains a PEM block that cannot be read")
	}
	return ders, nil
}

// splitDER splits concatenated DER elements. Each must be a certificate
// or a PKCS #7 certificate bundle; a private key (PKCS #8, PKCS #1, SEC 1) or a PKCS #12 file is refused
// with RuleSecret.
func splitDER(data []byte) ([][]byte, error) {
	var ders [][]byte
	s := cryptobyte.String(data)
	for !s.Empty() {
		var elem cryptobyte.String
		if !s.ReadASN1Element(&elem, cbasn1.SEQUENCE) {
			return nil, certReject(nil, RuleFormat, "not a DER-encoded X.509 certificate (bytes %d of %d are not a DER SEQUENCE)", len(data)-len(s)+1, len(data))
		}
		if secretDER(elem) {
			return nil, certReject(nil, RuleSecret, "the file contains private key material (a private key or a PKCS #12 file); submit only the certificate")
		}
		if certs, ok := pkcs7Certificates(elem); ok {
			ders = append(ders, certs...)
		} else {
			ders = append(ders, elem)
		}
		if len(ders) > MaxCertificates {
			break
		}
	}
	return ders, nil
}

// secretDER reports whether der is a private key or a PKCS #12 PFX. All
// start with a small INTEGER where a certificate starts with a SEQUENCE
// (the TBSCertificate): PKCS #8 and PKCS #1 with version 0 or 1, SEC 1
// with 1, PKCS #12 with 3 (RFC 7292 §4). Any leading INTEGER is treated as
// key material, so a new private key format is refused, not parsed.
func secretDER(der cryptobyte.String) bool {
	var inner cryptobyte.String
	if !der.ReadASN1(&inner, cbasn1.SEQUENCE) {
		return false
	}
	return inner.PeekASN1Tag(cbasn1.INTEGER)
}

// oidSignedData is the CMS/PKCS #7 SignedData content type (RFC 5652 §5).
var oidSignedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}

// pkcs7Certificates returns the certificates of a PKCS #7 certificate
// bundle (".p7b", ".p7c": a ContentInfo with a SignedData, RFC 5652 §5.1,
// usually with no content and no signers, as Windows and "openssl
// crl2pkcs7" write it). ok is false when der is not a ContentInfo with a
// SignedData whose certificates can be read; the certificates themselves
// are parsed by the caller. The signatures, if any, are not looked at:
// the bundle is only a container.
func pkcs7Certificates(der []byte) (certs [][]byte, ok bool) {
	s := cryptobyte.String(der)
	var ci, content, sd, set cryptobyte.String
	var ctype asn1.ObjectIdentifier
	var version int64
	if !s.ReadASN1(&ci, cbasn1.SEQUENCE) || !s.Empty() ||
		!ci.ReadASN1ObjectIdentifier(&ctype) || !ctype.Equal(oidSignedData) ||
		!ci.ReadASN1(&content, cbasn1.Tag(0).Constructed().ContextSpecific()) || !ci.Empty() ||
		!content.ReadASN1(&sd, cbasn1.SEQUENCE) || !content.Empty() ||
		!sd.ReadASN1Int64WithTag(&version, cbasn1.INTEGER) ||
		!sd.SkipASN1(cbasn1.SET) || // digestAlgorithms
		!sd.SkipASN1(cbasn1.SEQUENCE) || // encapContentInfo
		!sd.ReadASN1(&set, cbasn1.Tag(0).Constructed().ContextSpecific()) { // certificates [0] IMPLICIT
		return nil, false
	}
	for !set.Empty() {
		var c cryptobyte.String
		// CertificateChoices: only a plain certificate (a SEQUENCE); the
		// obsolete extended and attribute certificates are refused.
		if !set.ReadASN1Element(&c, cbasn1.SEQUENCE) {
			return nil, false
		}
		certs = append(certs, c)
	}
	return certs, true
}

// CertificateAddresses returns the e-mail addresses a certificate is
// for, as written in it: the subjectAltName rfc822Names, or, only when
// there is none, the subject's emailAddress attributes (RFC 8550 §3).
func CertificateAddresses(c *x509.Certificate) []string {
	if len(c.EmailAddresses) > 0 {
		return slices.Clone(c.EmailAddresses)
	}
	var out []string
	for _, atv := range c.Subject.Names {
		if atv.Type.Equal(oidEmailAddress) {
			if s, ok := atv.Value.(string); ok {
				out = append(out, s)
			}
		}
	}
	return out
}

// normalizedAddresses is CertificateAddresses normalised with n; an
// address that does not normalise is left out.
func normalizedAddresses(c *x509.Certificate, n Normalizer) []string {
	var out []string
	for _, a := range CertificateAddresses(c) {
		if norm, err := n.Normalize(a); err == nil {
			out = append(out, norm)
		}
	}
	return out
}

// CertificatePolicy is the set of rules a certificate must pass to be
// stored or used. It embeds the OpenPGP Policy for the shared settings
// ([keys] min_rsa_bits and the address normalisation).
type CertificatePolicy struct {
	Policy
	// TrustAnchors, when not nil, requires a chain from the certificate
	// (through the certificates of its file) to one of these roots, valid
	// for e-mail protection ([smime] trust_anchors). Nil, the default,
	// accepts self-issued and private-CA certificates: the confirmation
	// mail encrypted to the certificate is the proof of possession.
	TrustAnchors *x509.CertPool
}

// Validate checks that c may encrypt mail for address at time now. The
// address must already be normalised with p.Normalizer. The error is a
// *RejectError naming the first rule that failed, checked in this order:
// RuleNotYetValid, RuleExpired, RuleStrength, RuleKeyUsage, RuleAddress,
// RuleTrustChain. (RuleSecret and RuleFormat are ParseCertificate's.)
func (p CertificatePolicy) Validate(c *Certificate, address string, now time.Time) error {
	if err := p.usable(c, now); err != nil {
		return err
	}
	if err := p.checkAddress(c.Cert, address); err != nil {
		return err
	}
	return p.checkChain(c, now)
}

// Usable checks the rules that can change over time or with the
// configuration (validity period, strength, key usage, trust chain)
// without the address rule: the milter asks it before encrypting.
func (p CertificatePolicy) Usable(c *Certificate, now time.Time) error {
	if err := p.usable(c, now); err != nil {
		return err
	}
	return p.checkChain(c, now)
}

func (p CertificatePolicy) usable(c *Certificate, now time.Time) error {
	x := c.Cert
	// RFC 5280 §4.1.2.5: the validity period includes both ends.
	if now.Before(x.NotBefore) {
		return certReject(x, RuleNotYetValid, "the certificate is not valid before %s; check the clock of the computer that issued it",
			x.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(x.NotAfter) {
		return certReject(x, RuleExpired, "the certificate expired on %s", x.NotAfter.UTC().Format("2006-01-02"))
	}
	if err := p.checkCertStrength(x); err != nil {
		return err
	}
	return checkKeyUsage(x)
}

// checkCertStrength allows RSA of at least MinRSABits and ECDH-capable
// keys on the NIST curves P-256, P-384 and P-521 (RFC 5753, and what mail
// clients implement); everything else is refused.
func (p CertificatePolicy) checkCertStrength(x *x509.Certificate) error {
	minBits := p.MinRSABits
	if minBits == 0 {
		minBits = 2048
	}
	switch k := x.PublicKey.(type) {
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < minBits {
			return certReject(x, RuleStrength, "the certificate's key is RSA %d bits, below the minimum of %d", bits, minBits)
		}
		return nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return certReject(x, RuleStrength, "the certificate's key is on the curve %s, which is not accepted; use P-256, P-384, P-521 or RSA ≥ %d bits", k.Curve.Params().Name, minBits)
	case *ecdh.PublicKey:
		return certReject(x, RuleStrength, "the certificate's key is X25519/X448, which S/MIME clients do not yet read; use P-256, P-384, P-521 or RSA ≥ %d bits", minBits)
	}
	return certReject(x, RuleStrength, "the certificate's key is %s, which cannot encrypt mail; use RSA ≥ %d bits or P-256, P-384, P-521", x.PublicKeyAlgorithm, minBits)
}

// checkKeyUsage requires, when the key usage extension is present, the
// bit the key's encryption needs: keyEncipherment for RSA key transport,
// keyAgreement for ECDH (RFC 8550 §4.4.2, RFC 5753 §7). When extended key
// usage is present it must include emailProtection or
// anyExtendedKeyUsage (RFC 8550 §4.4.4).
func checkKeyUsage(x *x509.Certificate) error {
	present := slices.ContainsFunc(x.Extensions, func(e pkix.Extension) bool { return e.Id.Equal(oidKeyUsage) })
	if present {
		if _, ec := x.PublicKey.(*ecdsa.PublicKey); ec {
			if x.KeyUsage&x509.KeyUsageKeyAgreement == 0 {
				return certReject(x, RuleKeyUsage, "the certificate's key usage does not allow key agreement, which an EC key needs to receive encrypted mail")
			}
		} else if x.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
			return certReject(x, RuleKeyUsage, "the certificate's key usage does not allow key encipherment, which an RSA key needs to receive encrypted mail")
		}
	}
	if len(x.ExtKeyUsage) > 0 || len(x.UnknownExtKeyUsage) > 0 {
		if !slices.Contains(x.ExtKeyUsage, x509.ExtKeyUsageEmailProtection) && !slices.Contains(x.ExtKeyUsage, x509.ExtKeyUsageAny) {
			return certReject(x, RuleKeyUsage, "the certificate's extended key usage does not include e-mail protection")
		}
	}
	return nil
}

// checkAddress requires address among the certificate's addresses,
// compared after normalisation as OpenPGP User IDs are.
func (p CertificatePolicy) checkAddress(x *x509.Certificate, address string) error {
	norm := normalizedAddresses(x, p.Normalizer)
	if slices.Contains(norm, address) {
		return nil
	}
	has := "no e-mail address at all"
	if len(norm) > 0 {
		slices.Sort(norm)
		has = strings.Join(slices.Compact(norm), ", ")
	}
	return certReject(x, RuleAddress, "the certificate is not for %s (it names: %s)", address, has)
}

// checkChain verifies a chain to the trust anchors, when configured,
// with the file's other certificates as intermediates.
func (p CertificatePolicy) checkChain(c *Certificate, now time.Time) error {
	if p.TrustAnchors == nil {
		return nil
	}
	inter := x509.NewCertPool()
	for _, x := range c.Chain {
		inter.AddCert(x)
	}
	_, err := c.Cert.Verify(x509.VerifyOptions{
		Roots:         p.TrustAnchors,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
	})
	if err != nil {
		var unknown x509.UnknownAuthorityError
		if errors.As(err, &unknown) {
			return certReject(c.Cert, RuleTrustChain, "the certificate was not issued by a trusted authority (issuer: %s); include the intermediate certificates in the file, or ask the administrator to trust the issuer", c.Cert.Issuer)
		}
		return certReject(c.Cert, RuleTrustChain, "the certificate's chain to a trusted authority is not valid: %v", err)
	}
	return nil
}

// CertificateSummary is what "keys list" and "keys show" display.
type CertificateSummary struct {
	Subject     string // RFC 2253 form
	Issuer      string
	Serial      string // upper-case hex, colon-separated, as openssl and mail clients show it
	NotBefore   time.Time
	NotAfter    time.Time
	Fingerprint string // SHA-256, upper-case hex
	Addresses   []string
	Key         string // "RSA 3072", "EC P-256"
}

// Summary returns the display summary of c's end-entity certificate.
func (c *Certificate) Summary() CertificateSummary {
	x := c.Cert
	serial := strings.ToUpper(hex.EncodeToString(x.SerialNumber.Bytes()))
	if serial == "" {
		serial = "00"
	}
	var pairs []string
	for i := 0; i < len(serial); i += 2 {
		pairs = append(pairs, serial[i:min(i+2, len(serial))])
	}
	if x.SerialNumber.Sign() < 0 {
		pairs[0] = "-" + pairs[0] // invalid (RFC 5280 §4.1.2.2) but parsed by crypto/x509
	}
	return CertificateSummary{
		Subject:     readableName(x.Subject),
		Issuer:      readableName(x.Issuer),
		Serial:      strings.Join(pairs, ":"),
		NotBefore:   x.NotBefore.UTC(),
		NotAfter:    x.NotAfter.UTC(),
		Fingerprint: c.Fingerprint,
		Addresses:   CertificateAddresses(x),
		Key:         keyDescription(x),
	}
}

// readableName is n.String() (RFC 2253) with the PKCS #9 emailAddress
// attributes written "emailAddress=…", as openssl and mail clients show
// them, instead of crypto/x509's "1.2.840.113549.1.9.1=#0c…" (the DER of
// the value in hex): S/MIME certificates of older CAs carry the address
// there, and the CLI and the registration pages show it.
func readableName(n pkix.Name) string {
	s := n.String()
	for _, atv := range n.Names {
		v, ok := atv.Value.(string)
		if !atv.Type.Equal(oidEmailAddress) || !ok {
			continue
		}
		der, err := asn1.Marshal(atv.Value)
		if err != nil {
			continue
		}
		esc := strings.NewReplacer(`\`, `\\`, `,`, `\,`, `+`, `\+`, `"`, `\"`, `<`, `\<`, `>`, `\>`, `;`, `\;`).Replace(v)
		s = strings.Replace(s, atv.Type.String()+"=#"+hex.EncodeToString(der), "emailAddress="+esc, 1)
	}
	return s
}

// String formats the summary on a few lines, as "keys show" prints it.
func (s CertificateSummary) String() string {
	return fmt.Sprintf("subject:     %s\nissuer:      %s\nserial:      %s\nvalid:       %s to %s\naddresses:   %s\nkey:         %s\nsha256:      %s\n",
		s.Subject, s.Issuer, s.Serial, s.NotBefore.Format(time.RFC3339), s.NotAfter.Format(time.RFC3339),
		strings.Join(s.Addresses, ", "), s.Key, s.Fingerprint)
}

func keyDescription(x *x509.Certificate) string {
	switch k := x.PublicKey.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "EC " + k.Curve.Params().Name
	}
	return x.PublicKeyAlgorithm.String()
}
