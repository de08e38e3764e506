// Package smime encrypts a MIME entity to X.509 certificates as S/MIME
// (RFC 8551): a CMS (RFC 5652) EnvelopedData, or with AES-GCM an RFC 5083
// AuthEnvelopedData, with one RecipientInfo per certificate and one
// ciphertext for all.
//
// Key management per certificate key:
//
//   - RSA: key transport (RFC 8017), PKCS #1 v1.5 by default, read by
//     every S/MIME client; RSAES-OAEP with SHA-256 and MGF1-SHA-256
//     (RFC 4055, RFC 8551 §2.3) as an option.
//   - EC on P-256, P-384, P-521: ephemeral-static ECDH (RFC 5753 §3.1),
//     dhSinglePass-stdDH-sha256kdf-scheme, the ANSI X9.63 KDF with
//     SHA-256, AES-256 key wrap (RFC 3394).
//
// Content encryption: AES-256-CBC by default (RFC 3565), AES-256-GCM with
// a 16-byte tag (RFC 5084) in AuthEnvelopedData as an option.
//
// Every choice is a field of Options, passed per call: the package has no
// mutable state, so concurrent messages for recipients with different
// formats cannot affect each other (github.com/smallstep/pkcs7 keeps its
// algorithm choices in package variables, and has neither ECDH nor
// AuthEnvelopedData). The encoding is DER, written with cryptobyte.
package smime

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Cipher is the content encryption algorithm.
type Cipher int

const (
	// AES256CBC is AES-256 in CBC mode with PKCS #7 padding in an
	// EnvelopedData (RFC 3565): what every S/MIME client reads.
	AES256CBC Cipher = iota
	// AES256GCM is AES-256-GCM with a 12-byte nonce and a 16-byte tag in
	// an AuthEnvelopedData (RFC 5083, RFC 5084): authenticated, but not
	// read by every client (see docs/smime.md).
	AES256GCM
)

func (c Cipher) String() string {
	switch c {
	case AES256CBC:
		return "AES-256-CBC"
	case AES256GCM:
		return "AES-256-GCM"
	}
	return fmt.Sprintf("Cipher(%d)", int(c))
}

// RSAPadding is the RSA key transport scheme.
type RSAPadding int

const (
	// PKCS1v15 is RSAES-PKCS1-v1_5 (RFC 8017 §7.2), read by every client.
	PKCS1v15 RSAPadding = iota
	// OAEP is RSAES-OAEP with SHA-256 and MGF1 with SHA-256 (RFC 4055 §4).
	OAEP
)

func (p RSAPadding) String() string {
	switch p {
	case PKCS1v15:
		return "PKCS#1 v1.5"
	case OAEP:
		return "RSAES-OAEP"
	}
	return fmt.Sprintf("RSAPadding(%d)", int(p))
}

// Options are the choices of one encryption. The zero value is the most
// widely readable form: AES-256-CBC, RSA PKCS #1 v1.5, recipients named
// by issuer and serial number.
type Options struct {
	Cipher     Cipher
	RSAPadding RSAPadding
	// SubjectKeyID names a recipient by the certificate's subject key
	// identifier instead of its issuer and serial number, when the
	// certificate has one. Off by default: RFC 5652 readers must accept
	// both, but issuer and serial is what every client matches
	// (docs/smime.md says which readers were tried).
	SubjectKeyID bool
}

// Object identifiers.
var (
	oidData                 = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidEnvelopedData        = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 3}
	oidAuthEnvelopedData    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 1, 23}
	oidAES256CBC            = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
	oidAES256Wrap           = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 45}
	oidAES256GCM            = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 46}
	oidRSAEncryption        = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidRSAESOAEP            = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 7}
	oidMGF1                 = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 8}
	oidSHA256               = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidECPublicKey          = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidStdDHSHA256KDFScheme = asn1.ObjectIdentifier{1, 3, 132, 1, 11, 1}
)

const (
	keySize   = 32 // AES-256
	gcmNonce  = 12 // RFC 5084 §3.2: 12 octets recommended
	gcmTagLen = 16
)

// Errors Encrypt returns for unusable input.
var (
	ErrNoRecipients = errors.New("smime: no recipient certificates")
	ErrKeyType      = errors.New("smime: the certificate's key cannot receive encrypted mail (want RSA or EC on P-256, P-384, P-521)")
)

// Encrypt encrypts inner, the MIME entity to protect (header fields, blank
// line, body, byte for byte), to every certificate in certs and returns
// the DER-encoded CMS ContentInfo. Certificates are not checked here
// (validity, key usage, address): that is keys.CertificatePolicy's job.
// A certificate given twice (the same DER) gets one RecipientInfo.
func Encrypt(inner []byte, certs []*x509.Certificate, opts Options) ([]byte, error) {
	return EncryptParts(nil, inner, certs, opts)
}

// EncryptParts is Encrypt of head followed by body (an entity's header
// section and its body), without joining them first: the two are copied
// once, straight into the output, where they are encrypted in place.
func EncryptParts(head, body []byte, certs []*x509.Certificate, opts Options) ([]byte, error) {
	innerLen := len(head) + len(body)
	if len(certs) == 0 {
		return nil, ErrNoRecipients
	}
	if opts.Cipher != AES256CBC && opts.Cipher != AES256GCM {
		return nil, fmt.Errorf("smime: unknown cipher %v", opts.Cipher)
	}
	if opts.RSAPadding != PKCS1v15 && opts.RSAPadding != OAEP {
		return nil, fmt.Errorf("smime: unknown RSA padding %v", opts.RSAPadding)
	}
	cek := make([]byte, keySize)
	if _, err := rand.Read(cek); err != nil {
		return nil, err
	}
	defer clear(cek)

	// RecipientInfos, checked before any content is encrypted.
	var ris [][]byte
	allV0 := true
	seen := map[string]bool{}
	for i, c := range certs {
		if c == nil {
			return nil, fmt.Errorf("smime: certificate %d is nil", i)
		}
		if seen[string(c.Raw)] {
			continue
		}
		seen[string(c.Raw)] = true
		ri, v0, err := recipientInfo(c, cek, opts)
		if err != nil {
			return nil, fmt.Errorf("smime: recipient %q (serial %x): %w", c.Subject.String(), c.SerialNumber, err)
		}
		allV0 = allV0 && v0
		ris = append(ris, ri)
	}

	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, err
	}
	ctype, version := oidEnvelopedData, int64(0)
	switch {
	case opts.Cipher == AES256GCM:
		// RFC 5083 §2.1: the version is always 0.
		ctype = oidAuthEnvelopedData
	case !allV0:
		// RFC 5652 §6.1: 0 when every RecipientInfo is version 0
		// (issuer and serial key transport), else 2 (there is no
		// originatorInfo and there are no attributes).
		version = 2
	}
	ctypeDER := build(func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(ctype) })
	versionDER := build(func(b *cryptobyte.Builder) { b.AddASN1Int64(version) })
	risDER := build(func(b *cryptobyte.Builder) { addSet(b, ris) })

	// The content is encrypted in place into the output, after headers
	// whose lengths are known in advance: building it with nested
	// cryptobyte calls would move the ciphertext once per level.
	var algDER []byte // contentEncryptionAlgorithm
	var ctLen, macLen int
	var nonce, iv []byte
	switch opts.Cipher {
	case AES256GCM:
		nonce = make([]byte, gcmNonce)
		if _, err := rand.Read(nonce); err != nil {
			return nil, err
		}
		// RFC 5084 §3.2: GCMParameters; aes-ICVlen DEFAULT 12, so 16
		// must be written.
		algDER = build(func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(alg *cryptobyte.Builder) {
				alg.AddASN1ObjectIdentifier(oidAES256GCM)
				alg.AddASN1(cbasn1.SEQUENCE, func(p *cryptobyte.Builder) {
					p.AddASN1OctetString(nonce)
					p.AddASN1Int64(gcmTagLen)
				})
			})
		})
		ctLen, macLen = innerLen, gcmTagLen
	default:
		iv = make([]byte, aes.BlockSize)
		if _, err := rand.Read(iv); err != nil {
			return nil, err
		}
		// RFC 3565 §2.1: the parameter is the IV.
		algDER = build(func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(alg *cryptobyte.Builder) {
				alg.AddASN1ObjectIdentifier(oidAES256CBC)
				alg.AddASN1OctetString(iv)
			})
		})
		// PKCS #7 padding (RFC 5652 §6.3): always 1 to 16 bytes.
		ctLen = innerLen + aes.BlockSize - innerLen%aes.BlockSize
	}
	dataDER := build(func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidData) })

	// EncryptedContentInfo (RFC 5652 §6.1), the mac of an
	// AuthEnvelopedData (RFC 5083 §2.1), and the layers around them.
	eciLen := len(dataDER) + len(algDER) + tlvLen(ctLen)
	edLen := len(versionDER) + len(risDER) + tlvLen(eciLen)
	if macLen > 0 {
		edLen += tlvLen(macLen)
	}
	explicitLen := tlvLen(edLen)
	ciLen := len(ctypeDER) + tlvLen(explicitLen)
	out := make([]byte, 0, tlvLen(ciLen))
	out = appendTL(out, 0x30, ciLen) // ContentInfo SEQUENCE (RFC 5652 §3)
	out = append(out, ctypeDER...)
	out = appendTL(out, 0xa0, explicitLen) // content [0] EXPLICIT
	out = appendTL(out, 0x30, edLen)       // (Auth)EnvelopedData SEQUENCE
	out = append(out, versionDER...)
	out = append(out, risDER...)
	out = appendTL(out, 0x30, eciLen) // EncryptedContentInfo SEQUENCE
	out = append(out, dataDER...)
	out = append(out, algDER...)
	out = appendTL(out, 0x80, ctLen) // encryptedContent [0] IMPLICIT OCTET STRING
	start := len(out)
	out = append(append(out, head...), body...)
	switch opts.Cipher {
	case AES256GCM:
		// No authenticated attributes, so the AAD is empty (RFC 5083 §2.2).
		aead, err := cipher.NewGCMWithTagSize(block, gcmTagLen)
		if err != nil {
			return nil, err
		}
		// In place; the tag goes into the room left for the mac.
		sealed := aead.Seal(out[start:start], nonce, out[start:], nil)
		out = out[:start+len(sealed)]
		var tag [gcmTagLen]byte
		copy(tag[:], out[len(out)-gcmTagLen:])
		out = appendTL(out[:len(out)-gcmTagLen], 0x04, gcmTagLen) // mac OCTET STRING
		out = append(out, tag[:]...)
	default:
		pad := byte(ctLen - innerLen)
		for range pad {
			out = append(out, pad)
		}
		cipher.NewCBCEncrypter(block, iv).CryptBlocks(out[start:], out[start:])
	}
	if len(out) != cap(out) {
		return nil, fmt.Errorf("smime: internal error: %d bytes written, %d computed", len(out), cap(out))
	}
	return out, nil
}

// build returns the DER f adds to a cryptobyte.Builder. It is used for
// small, well-formed pieces only, so an error is a bug.
func build(f func(*cryptobyte.Builder)) []byte {
	var b cryptobyte.Builder
	f(&b)
	return b.BytesOrPanic()
}

// tlvLen is the length of a DER element with n content bytes and a
// one-byte tag.
func tlvLen(n int) int {
	l := 1 + 1 + n
	if n >= 0x80 {
		for v := n; v > 0; v >>= 8 {
			l++
		}
	}
	return l
}

// appendTL appends a one-byte tag and the DER definite length n (X.690
// §8.1.3: short form below 128, else the minimal long form).
func appendTL(b []byte, tag byte, n int) []byte {
	b = append(b, tag)
	if n < 0x80 {
		return append(b, byte(n))
	}
	var tmp [8]byte
	i := len(tmp)
	for v := n; v > 0; v >>= 8 {
		i--
		tmp[i] = byte(v)
	}
	b = append(b, 0x80|byte(len(tmp)-i))
	return append(b, tmp[i:]...)
}

// addSet adds a SET OF with the given DER elements, sorted as DER requires
// (X.690 §11.6).
func addSet(b *cryptobyte.Builder, elems [][]byte) {
	b.AddASN1(cbasn1.SET, func(s *cryptobyte.Builder) {
		for _, e := range sortedDER(elems) {
			s.AddBytes(e)
		}
	})
}

// recipientInfo returns the DER RecipientInfo (RFC 5652 §6.2) that gives
// c's key the content-encryption key, and whether its version is 0.
func recipientInfo(c *x509.Certificate, cek []byte, opts Options) (der []byte, v0 bool, err error) {
	switch k := c.PublicKey.(type) {
	case *rsa.PublicKey:
		return ktri(c, k, cek, opts)
	case *ecdsa.PublicKey:
		der, err := kari(c, k, cek, opts)
		return der, false, err
	}
	return nil, false, ErrKeyType
}

// ktri is a KeyTransRecipientInfo (RFC 5652 §6.2.1): version 0 with
// issuerAndSerialNumber, 2 with subjectKeyIdentifier.
func ktri(c *x509.Certificate, k *rsa.PublicKey, cek []byte, opts Options) ([]byte, bool, error) {
	var ek []byte
	var err error
	if opts.RSAPadding == OAEP {
		ek, err = rsa.EncryptOAEP(sha256.New(), rand.Reader, k, cek, nil)
	} else {
		ek, err = rsa.EncryptPKCS1v15(rand.Reader, k, cek)
	}
	if err != nil {
		return nil, false, err
	}
	useSKI := opts.SubjectKeyID && len(c.SubjectKeyId) > 0
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(ri *cryptobyte.Builder) {
		if useSKI {
			ri.AddASN1Int64(2)
			ri.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(s *cryptobyte.Builder) { s.AddBytes(c.SubjectKeyId) })
		} else {
			ri.AddASN1Int64(0)
			addIssuerAndSerial(ri, c)
		}
		ri.AddASN1(cbasn1.SEQUENCE, func(alg *cryptobyte.Builder) {
			if opts.RSAPadding == OAEP {
				alg.AddASN1ObjectIdentifier(oidRSAESOAEP)
				// RSAES-OAEP-params (RFC 4055 §4.1); pSourceFunc is the
				// default (empty label) and so omitted. The SHA-256
				// identifier carries NULL parameters (RFC 4055 §2.1).
				alg.AddASN1(cbasn1.SEQUENCE, func(p *cryptobyte.Builder) {
					p.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), addSHA256)
					p.AddASN1(cbasn1.Tag(1).Constructed().ContextSpecific(), func(m *cryptobyte.Builder) {
						m.AddASN1(cbasn1.SEQUENCE, func(mgf *cryptobyte.Builder) {
							mgf.AddASN1ObjectIdentifier(oidMGF1)
							addSHA256(mgf)
						})
					})
				})
			} else {
				alg.AddASN1ObjectIdentifier(oidRSAEncryption)
				alg.AddASN1NULL()
			}
		})
		ri.AddASN1OctetString(ek)
	})
	der, err := b.Bytes()
	return der, !useSKI, err
}

func addSHA256(b *cryptobyte.Builder) {
	b.AddASN1(cbasn1.SEQUENCE, func(a *cryptobyte.Builder) {
		a.AddASN1ObjectIdentifier(oidSHA256)
		a.AddASN1NULL()
	})
}

// addIssuerAndSerial adds the IssuerAndSerialNumber (RFC 5652 §10.2.4) of
// c, the issuer exactly as encoded in the certificate.
func addIssuerAndSerial(b *cryptobyte.Builder, c *x509.Certificate) {
	b.AddASN1(cbasn1.SEQUENCE, func(is *cryptobyte.Builder) {
		is.AddBytes(c.RawIssuer)
		is.AddASN1BigInt(c.SerialNumber)
	})
}

// kari is a KeyAgreeRecipientInfo (RFC 5652 §6.2.2) for ephemeral-static
// ECDH as RFC 5753 §3.1.1 specifies it.
func kari(c *x509.Certificate, k *ecdsa.PublicKey, cek []byte, opts Options) ([]byte, error) {
	var curve ecdh.Curve
	switch k.Curve {
	case elliptic.P256():
		curve = ecdh.P256()
	case elliptic.P384():
		curve = ecdh.P384()
	case elliptic.P521():
		curve = ecdh.P521()
	default:
		return nil, ErrKeyType
	}
	pub, err := k.ECDH()
	if err != nil {
		return nil, err
	}
	eph, err := curve.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	z, err := eph.ECDH(pub)
	if err != nil {
		return nil, err
	}
	defer clear(z)
	kek, err := x963KDF(z, nil)
	if err != nil {
		return nil, err
	}
	defer clear(kek)
	wrapped, err := keyWrap(kek, cek)
	if err != nil {
		return nil, err
	}
	useSKI := opts.SubjectKeyID && len(c.SubjectKeyId) > 0
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.Tag(1).Constructed().ContextSpecific(), func(ri *cryptobyte.Builder) { // [1] IMPLICIT SEQUENCE
		ri.AddASN1Int64(3) // RFC 5652 §6.2.2: always 3
		// originator [0] EXPLICIT OriginatorIdentifierOrKey, the
		// originatorKey [1] alternative (RFC 5753 §3.1.1); the ephemeral
		// key's curve is the recipient's, so the algorithm parameters
		// are absent.
		ri.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(o *cryptobyte.Builder) {
			o.AddASN1(cbasn1.Tag(1).Constructed().ContextSpecific(), func(ok *cryptobyte.Builder) {
				ok.AddASN1(cbasn1.SEQUENCE, func(alg *cryptobyte.Builder) { alg.AddASN1ObjectIdentifier(oidECPublicKey) })
				ok.AddASN1BitString(eph.PublicKey().Bytes()) // uncompressed point
			})
		})
		ri.AddASN1(cbasn1.SEQUENCE, func(alg *cryptobyte.Builder) {
			alg.AddASN1ObjectIdentifier(oidStdDHSHA256KDFScheme)
			alg.AddASN1(cbasn1.SEQUENCE, addAES256Wrap) // KeyWrapAlgorithm
		})
		ri.AddASN1(cbasn1.SEQUENCE, func(reks *cryptobyte.Builder) { // RecipientEncryptedKeys
			reks.AddASN1(cbasn1.SEQUENCE, func(rek *cryptobyte.Builder) {
				if useSKI {
					// rKeyId [0] IMPLICIT RecipientKeyIdentifier
					rek.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(r *cryptobyte.Builder) {
						r.AddASN1OctetString(c.SubjectKeyId)
					})
				} else {
					addIssuerAndSerial(rek, c)
				}
				rek.AddASN1OctetString(wrapped)
			})
		})
	})
	return b.Bytes()
}

// addAES256Wrap adds the contents of the id-aes256-wrap AlgorithmIdentifier:
// RFC 3565 §2.3.2 says the parameters are absent.
func addAES256Wrap(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidAES256Wrap) }

// x963KDF derives the 32-byte AES-256 key-encryption key from the shared
// secret z: the ANSI X9.63 KDF with SHA-256 (RFC 5753 §7.2, SEC 1 §3.6.1),
// whose SharedInfo is the DER ECC-CMS-SharedInfo (RFC 5753 §7.2). One
// SHA-256 block is exactly the key, so the counter is only ever 1.
func x963KDF(z, ukm []byte) ([]byte, error) {
	var si cryptobyte.Builder
	si.AddASN1(cbasn1.SEQUENCE, func(s *cryptobyte.Builder) {
		s.AddASN1(cbasn1.SEQUENCE, addAES256Wrap) // keyInfo
		if ukm != nil {
			s.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(e *cryptobyte.Builder) { e.AddASN1OctetString(ukm) })
		}
		// suppPubInfo [2]: the key length in bits, 32-bit big-endian.
		s.AddASN1(cbasn1.Tag(2).Constructed().ContextSpecific(), func(e *cryptobyte.Builder) {
			e.AddASN1OctetString([]byte{0, 0, keySize * 8 >> 8, keySize * 8 & 0xff})
		})
	})
	sharedInfo, err := si.Bytes()
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write(z)
	h.Write([]byte{0, 0, 0, 1})
	h.Write(sharedInfo)
	return h.Sum(nil), nil
}

// MediaType returns the Content-Type field value of an S/MIME entity
// holding what Encrypt returned with opts (RFC 8551 §3.2.2).
func MediaType(opts Options) string {
	kind := "enveloped-data"
	if opts.Cipher == AES256GCM {
		kind = "authEnveloped-data"
	}
	return "application/pkcs7-mime; smime-type=" + kind + "; name=smime.p7m"
}

// Field is one header field of the S/MIME entity.
type Field struct{ Name, Value string }

// Fields returns the MIME header fields of the S/MIME entity for opts, in
// the order they are written (RFC 8551 §3.2, §3.3).
func Fields(opts Options) []Field {
	return []Field{
		{"Content-Type", MediaType(opts)},
		{"Content-Transfer-Encoding", "base64"},
		{"Content-Disposition", "attachment; filename=smime.p7m"},
		{"Content-Description", "S/MIME Encrypted Message"},
	}
}

// Body returns der in base64, 76 characters a line (RFC 2045 §6.8), each
// line ended by CRLF.
func Body(der []byte) []byte { return appendBody(make([]byte, 0, bodyLen(len(der))), der) }

// bodyLen is the length of Body's result for n bytes.
func bodyLen(n int) int {
	lines := (n + 56) / 57
	return base64.StdEncoding.EncodedLen(n) + 2*lines
}

func appendBody(out, der []byte) []byte {
	enc := base64.StdEncoding
	n := len(out)
	out = slices.Grow(out, bodyLen(len(der)))[:n+bodyLen(len(der))]
	for len(der) > 0 {
		chunk := min(len(der), 57) // 57 bytes are 76 characters
		enc.Encode(out[n:], der[:chunk])
		n += enc.EncodedLen(chunk)
		out[n], out[n+1] = '\r', '\n'
		n += 2
		der = der[chunk:]
	}
	return out
}

// Entity returns the complete S/MIME MIME entity (header fields, blank
// line, base64 body, CRLF line ends) for der, what Encrypt returned with
// opts.
func Entity(der []byte, opts Options) []byte {
	fields := Fields(opts)
	n := 2 + bodyLen(len(der))
	for _, f := range fields {
		n += len(f.Name) + 2 + len(f.Value) + 2
	}
	out := make([]byte, 0, n)
	for _, f := range fields {
		out = append(out, f.Name...)
		out = append(out, ": "...)
		out = append(out, f.Value...)
		out = append(out, "\r\n"...)
	}
	out = append(out, "\r\n"...)
	return appendBody(out, der)
}

// EncryptEntity is Encrypt followed by Entity.
func EncryptEntity(inner []byte, certs []*x509.Certificate, opts Options) ([]byte, error) {
	der, err := Encrypt(inner, certs, opts)
	if err != nil {
		return nil, err
	}
	return Entity(der, opts), nil
}
