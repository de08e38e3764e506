package smimetest

// Decrypt is a small CMS reader for the tests: it reads exactly what
// smime.Encrypt writes (and what RFC 5652/5083/5753 allow of it) and
// decrypts it with a recipient's private key, so that the unit tests and
// the fuzz targets (of crypto/smime and of package crypto's EncryptSMIME)
// check the structure without an external tool. It is not a general CMS
// parser: the interoperability tests leave that to OpenSSL, GnuPG and
// NSS. It shares no code with package smime (which cannot be imported
// here: smime's own tests import this package), so the X9.63 KDF and the
// key unwrap below are written again, from the RFCs.

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"slices"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

var errCMS = errors.New("malformed CMS")

// Parsed is what Decrypt found, for the tests to check.
type Parsed struct {
	Auth      bool // AuthEnvelopedData
	Version   int64
	RICount   int
	RIVersion []int64                 // of each RecipientInfo, in order
	KeyAlg    []asn1.ObjectIdentifier // key transport or agreement algorithm of each RecipientInfo
}

// Object identifiers (the same as package smime's, written again).
var (
	oidData                 = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidEnvelopedData        = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 3}
	oidAuthEnvelopedData    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 1, 23}
	oidAES256CBC            = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
	oidAES256Wrap           = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 45}
	oidAES256GCM            = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 46}
	oidRSAEncryption        = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidRSAESOAEP            = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 7}
	oidStdDHSHA256KDFScheme = asn1.ObjectIdentifier{1, 3, 132, 1, 11, 1}
)

// Decrypt decrypts a DER CMS ContentInfo (EnvelopedData or
// AuthEnvelopedData) with cert's private key and returns the content and
// what it found on the way.
func Decrypt(der []byte, cert *x509.Certificate, key crypto.PrivateKey) ([]byte, *Parsed, error) {
	p := &Parsed{}
	in := cryptobyte.String(der)
	var ci, content cryptobyte.String
	var ctype asn1.ObjectIdentifier
	if !in.ReadASN1(&ci, cbasn1.SEQUENCE) || !in.Empty() ||
		!ci.ReadASN1ObjectIdentifier(&ctype) ||
		!ci.ReadASN1(&content, cbasn1.Tag(0).Constructed().ContextSpecific()) || !ci.Empty() {
		return nil, nil, fmt.Errorf("%w: ContentInfo", errCMS)
	}
	switch {
	case ctype.Equal(oidEnvelopedData):
	case ctype.Equal(oidAuthEnvelopedData):
		p.Auth = true
	default:
		return nil, nil, fmt.Errorf("%w: content type %v", errCMS, ctype)
	}
	var ed, ris, eci cryptobyte.String
	if !content.ReadASN1(&ed, cbasn1.SEQUENCE) || !content.Empty() ||
		!ed.ReadASN1Int64WithTag(&p.Version, cbasn1.INTEGER) ||
		!ed.ReadASN1(&ris, cbasn1.SET) || !ed.ReadASN1(&eci, cbasn1.SEQUENCE) {
		return nil, nil, fmt.Errorf("%w: EnvelopedData", errCMS)
	}
	var mac []byte
	if p.Auth {
		var m cryptobyte.String
		if !ed.ReadASN1(&m, cbasn1.OCTET_STRING) {
			return nil, nil, fmt.Errorf("%w: mac", errCMS)
		}
		mac = m
	}
	if !ed.Empty() {
		return nil, nil, fmt.Errorf("%w: trailing fields", errCMS)
	}
	var cek []byte
	var prev []byte
	for !ris.Empty() {
		var ri cryptobyte.String
		var tag cbasn1.Tag
		if !ris.ReadAnyASN1Element(&ri, &tag) {
			return nil, nil, fmt.Errorf("%w: RecipientInfo", errCMS)
		}
		if prev != nil && bytes.Compare(prev, ri) > 0 {
			return nil, nil, fmt.Errorf("%w: SET OF RecipientInfo not in DER order", errCMS)
		}
		prev = ri
		p.RICount++
		var k []byte
		var err error
		switch tag {
		case cbasn1.SEQUENCE:
			k, err = readKTRI(ri, cert, key, p)
		case cbasn1.Tag(1).Constructed().ContextSpecific():
			k, err = readKARI(ri, cert, key, p)
		default:
			err = fmt.Errorf("%w: RecipientInfo tag %v", errCMS, tag)
		}
		if err != nil {
			return nil, nil, err
		}
		if k != nil && cek == nil {
			cek = k
		}
	}
	if cek == nil {
		return nil, nil, errors.New("no RecipientInfo for the certificate")
	}
	var dataType asn1.ObjectIdentifier
	var alg, ct cryptobyte.String
	if !eci.ReadASN1ObjectIdentifier(&dataType) || !dataType.Equal(oidData) ||
		!eci.ReadASN1(&alg, cbasn1.SEQUENCE) ||
		!eci.ReadASN1(&ct, cbasn1.Tag(0).ContextSpecific()) || !eci.Empty() {
		return nil, nil, fmt.Errorf("%w: EncryptedContentInfo", errCMS)
	}
	var encAlg asn1.ObjectIdentifier
	if !alg.ReadASN1ObjectIdentifier(&encAlg) {
		return nil, nil, fmt.Errorf("%w: content algorithm", errCMS)
	}
	if len(cek) != 32 {
		return nil, nil, errors.New("content-encryption key is not 32 bytes")
	}
	block, _ := aes.NewCipher(cek)
	switch {
	case !p.Auth && encAlg.Equal(oidAES256CBC):
		var iv cryptobyte.String
		if !alg.ReadASN1(&iv, cbasn1.OCTET_STRING) || !alg.Empty() || len(iv) != 16 {
			return nil, nil, fmt.Errorf("%w: CBC IV", errCMS)
		}
		if len(ct) == 0 || len(ct)%16 != 0 {
			return nil, nil, errors.New("CBC ciphertext not a whole number of blocks")
		}
		pt := make([]byte, len(ct))
		cipher.NewCBCDecrypter(block, iv).CryptBlocks(pt, ct)
		pad := int(pt[len(pt)-1])
		if pad < 1 || pad > 16 {
			return nil, nil, errors.New("bad CBC padding")
		}
		for _, c := range pt[len(pt)-pad:] {
			if int(c) != pad {
				return nil, nil, errors.New("bad CBC padding")
			}
		}
		return pt[:len(pt)-pad], p, nil
	case p.Auth && encAlg.Equal(oidAES256GCM):
		var params, nonce cryptobyte.String
		var icv int64 = 12
		if !alg.ReadASN1(&params, cbasn1.SEQUENCE) || !alg.Empty() || !params.ReadASN1(&nonce, cbasn1.OCTET_STRING) {
			return nil, nil, fmt.Errorf("%w: GCMParameters", errCMS)
		}
		if !params.Empty() && (!params.ReadASN1Int64WithTag(&icv, cbasn1.INTEGER) || !params.Empty()) {
			return nil, nil, fmt.Errorf("%w: GCMParameters ICV length", errCMS)
		}
		if len(nonce) != 12 || icv != int64(len(mac)) || icv < 12 || icv > 16 {
			return nil, nil, errors.New("unexpected GCM nonce or tag size")
		}
		aead, err := cipher.NewGCMWithTagSize(block, int(icv))
		if err != nil {
			return nil, nil, err
		}
		pt, err := aead.Open(nil, nonce, append(slices.Clone([]byte(ct)), mac...), nil)
		return pt, p, err
	}
	return nil, nil, fmt.Errorf("unexpected content algorithm %v (auth %v)", encAlg, p.Auth)
}

// readRID reads an IssuerAndSerialNumber or a [0] subject key identifier
// (primitive in ktri, constructed RecipientKeyIdentifier in kari) and
// reports whether it names cert.
func readRID(s *cryptobyte.String, cert *x509.Certificate, skiTag cbasn1.Tag) (bool, error) {
	if s.PeekASN1Tag(cbasn1.SEQUENCE) {
		var ias, issuer cryptobyte.String
		serial := new(big.Int)
		if !s.ReadASN1(&ias, cbasn1.SEQUENCE) || !ias.ReadASN1Element(&issuer, cbasn1.SEQUENCE) ||
			!ias.ReadASN1Integer(serial) || !ias.Empty() {
			return false, fmt.Errorf("%w: IssuerAndSerialNumber", errCMS)
		}
		return bytes.Equal(issuer, cert.RawIssuer) && serial.Cmp(cert.SerialNumber) == 0, nil
	}
	var ski cryptobyte.String
	if !s.ReadASN1(&ski, skiTag) {
		return false, fmt.Errorf("%w: recipient identifier", errCMS)
	}
	if skiTag.Constructed() == skiTag {
		var inner cryptobyte.String
		if !ski.ReadASN1(&inner, cbasn1.OCTET_STRING) || !ski.Empty() {
			return false, fmt.Errorf("%w: RecipientKeyIdentifier", errCMS)
		}
		ski = inner
	}
	return len(cert.SubjectKeyId) > 0 && bytes.Equal(ski, cert.SubjectKeyId), nil
}

func readKTRI(ri cryptobyte.String, cert *x509.Certificate, key crypto.PrivateKey, p *Parsed) ([]byte, error) {
	var body, alg, ek cryptobyte.String
	var v int64
	var oid asn1.ObjectIdentifier
	if !ri.ReadASN1(&body, cbasn1.SEQUENCE) || !body.ReadASN1Int64WithTag(&v, cbasn1.INTEGER) {
		return nil, fmt.Errorf("%w: KeyTransRecipientInfo", errCMS)
	}
	p.RIVersion = append(p.RIVersion, v)
	mine, err := readRID(&body, cert, cbasn1.Tag(0).ContextSpecific())
	if err != nil {
		return nil, err
	}
	if !body.ReadASN1(&alg, cbasn1.SEQUENCE) || !alg.ReadASN1ObjectIdentifier(&oid) ||
		!body.ReadASN1(&ek, cbasn1.OCTET_STRING) || !body.Empty() {
		return nil, fmt.Errorf("%w: KeyTransRecipientInfo fields", errCMS)
	}
	p.KeyAlg = append(p.KeyAlg, oid)
	if !mine {
		return nil, nil
	}
	rk, ok := key.(*rsa.PrivateKey)
	if !ok {
		return nil, errors.New("key transport to a non-RSA key")
	}
	switch {
	case oid.Equal(oidRSAEncryption):
		cek := make([]byte, 32)
		if err := rsa.DecryptPKCS1v15SessionKey(rand.Reader, rk, ek, cek); err != nil {
			return nil, err
		}
		return cek, nil
	case oid.Equal(oidRSAESOAEP):
		want := []byte{0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00} // sha256 with NULL
		var params, h, m cryptobyte.String
		if !alg.ReadASN1(&params, cbasn1.SEQUENCE) || !params.ReadASN1(&h, cbasn1.Tag(0).Constructed().ContextSpecific()) ||
			!params.ReadASN1(&m, cbasn1.Tag(1).Constructed().ContextSpecific()) || !params.Empty() || !bytes.Equal(h, want) {
			return nil, fmt.Errorf("%w: RSAES-OAEP-params", errCMS)
		}
		return rsa.DecryptOAEP(sha256.New(), nil, rk, ek, nil)
	}
	return nil, fmt.Errorf("unexpected key transport algorithm %v", oid)
}

func readKARI(ri cryptobyte.String, cert *x509.Certificate, key crypto.PrivateKey, p *Parsed) ([]byte, error) {
	var body, orig, origKey, origAlg, kea, reks cryptobyte.String
	var v int64
	var pubBits asn1.BitString
	var oid, wrapOID asn1.ObjectIdentifier
	if !ri.ReadASN1(&body, cbasn1.Tag(1).Constructed().ContextSpecific()) || !body.ReadASN1Int64WithTag(&v, cbasn1.INTEGER) ||
		!body.ReadASN1(&orig, cbasn1.Tag(0).Constructed().ContextSpecific()) ||
		!orig.ReadASN1(&origKey, cbasn1.Tag(1).Constructed().ContextSpecific()) || !orig.Empty() ||
		!origKey.ReadASN1(&origAlg, cbasn1.SEQUENCE) || !origKey.ReadASN1BitString(&pubBits) || !origKey.Empty() {
		return nil, fmt.Errorf("%w: KeyAgreeRecipientInfo originator", errCMS)
	}
	p.RIVersion = append(p.RIVersion, v)
	var kea2 cryptobyte.String
	if !body.ReadASN1(&kea, cbasn1.SEQUENCE) || !kea.ReadASN1ObjectIdentifier(&oid) ||
		!kea.ReadASN1(&kea2, cbasn1.SEQUENCE) || !kea.Empty() || !kea2.ReadASN1ObjectIdentifier(&wrapOID) || !kea2.Empty() ||
		!body.ReadASN1(&reks, cbasn1.SEQUENCE) || !body.Empty() {
		return nil, fmt.Errorf("%w: KeyAgreeRecipientInfo fields", errCMS)
	}
	p.KeyAlg = append(p.KeyAlg, oid)
	if !oid.Equal(oidStdDHSHA256KDFScheme) || !wrapOID.Equal(oidAES256Wrap) {
		return nil, fmt.Errorf("unexpected key agreement %v / %v", oid, wrapOID)
	}
	var found []byte
	for !reks.Empty() {
		var rek, ek cryptobyte.String
		if !reks.ReadASN1(&rek, cbasn1.SEQUENCE) {
			return nil, fmt.Errorf("%w: RecipientEncryptedKey", errCMS)
		}
		mine, err := readRID(&rek, cert, cbasn1.Tag(0).Constructed().ContextSpecific())
		if err != nil {
			return nil, err
		}
		if !rek.ReadASN1(&ek, cbasn1.OCTET_STRING) || !rek.Empty() {
			return nil, fmt.Errorf("%w: RecipientEncryptedKey", errCMS)
		}
		if mine {
			found = ek
		}
	}
	if found == nil {
		return nil, nil
	}
	ek, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("key agreement to a non-EC key")
	}
	priv, err := ek.ECDH()
	if err != nil {
		return nil, err
	}
	pub, err := priv.Curve().NewPublicKey(pubBits.RightAlign())
	if err != nil {
		return nil, err
	}
	z, err := priv.ECDH(pub)
	if err != nil {
		return nil, err
	}
	return KeyUnwrap(x963KDF(z), found)
}

// x963KDF is the ANSI X9.63 KDF with SHA-256 for a 256-bit AES key wrap
// key and no ukm (RFC 5753 §7.2): SHA-256(Z || counter 1 ||
// ECC-CMS-SharedInfo), the SharedInfo being SEQUENCE { keyInfo
// id-aes256-wrap, suppPubInfo [2] OCTET STRING 00 00 01 00 }.
func x963KDF(z []byte) []byte {
	sharedInfo := []byte{0x30, 0x15,
		0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2d, // id-aes256-wrap
		0xa2, 0x06, 0x04, 0x04, 0x00, 0x00, 0x01, 0x00} // [2] 256 bits
	h := sha256.New()
	h.Write(z)
	h.Write([]byte{0, 0, 0, 1})
	h.Write(sharedInfo)
	return h.Sum(nil)
}

// kwIV is the default initial value of RFC 3394 §2.2.3.1.
var kwIV = [8]byte{0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6}

// KeyUnwrap undoes the AES key wrap of RFC 3394 (§2.2.2) and checks the
// integrity value.
func KeyUnwrap(kek, wrapped []byte) ([]byte, error) {
	if len(wrapped)%8 != 0 || len(wrapped) < 24 {
		return nil, errors.New("wrapped key must be a multiple of 8 bytes, at least 24")
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	n := len(wrapped)/8 - 1
	r := slices.Clone(wrapped[8:])
	var a [8]byte
	copy(a[:], wrapped[:8])
	var b [16]byte
	for j := 5; j >= 0; j-- {
		for i := n; i >= 1; i-- {
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(b[:8], binary.BigEndian.Uint64(a[:])^t)
			copy(b[8:], r[8*(i-1):8*i])
			block.Decrypt(b[:], b[:])
			copy(a[:], b[:8])
			copy(r[8*(i-1):], b[8:])
		}
	}
	if subtle.ConstantTimeCompare(a[:], kwIV[:]) != 1 {
		return nil, errors.New("key unwrap integrity check failed")
	}
	return r, nil
}
