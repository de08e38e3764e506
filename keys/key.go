// Package keys knows whose OpenPGP keys to use: it parses and validates
// submitted public keys, normalises addresses, stores address→key
// bindings (SQLite) and answers "which keys encrypt mail to this address?"
// fast enough to be asked at RCPT time.
package keys

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	pgperrors "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

// MaxKeyBytes bounds one submitted key file. Real certificates with many
// signatures stay well below 1 MiB; anything larger is an attack or a mistake.
const MaxKeyBytes = 1 << 20

// Key is one parsed OpenPGP certificate (a transferable public key), or
// one S/MIME recipient certificate (X.509, see Certificate): the store,
// the admission rules and the resolver handle both kinds through Key, and
// the milter encrypts to each kind in its own format (Kind).
//
// One Key may be shared by concurrent sessions (the lookup cache hands the
// same Key to every message for its address). go-crypto checks a
// certificate's signatures lazily, when a question needs them, and stores
// the result in the signature (packet.VerifiableSignature.Valid): asking
// the entity about validity writes to it. So the entity is not exported:
// every question goes through the key's lock, which the methods of Key
// and Policy take, and code that hands the entity to go-crypto itself
// (crypto.Encrypt) gets it only inside WithEntities, which holds the lock.
type Key struct {
	Fingerprint string // upper-case hex, 40 (v4) or 64 (v6) digits
	// Raw is the binary certificate as stored and exported.
	Raw []byte

	mu     sync.Mutex      // see above
	entity *openpgp.Entity // guarded by mu, except for what parsing fixed (packets, maps); nil for X.509
	cert   *Certificate    // the S/MIME certificate; nil for OpenPGP (immutable, no lock needed)
}

// Kind is what sort of public key a Key holds, and so which formats can
// encrypt to it.
type Kind string

const (
	KindOpenPGP Kind = "openpgp" // PGP/MIME or PGP/inline
	KindX509    Kind = "x509"    // S/MIME
)

// Kind returns the key's kind.
func (k *Key) Kind() Kind {
	if k.cert != nil {
		return KindX509
	}
	return KindOpenPGP
}

// Certificate returns the S/MIME certificate of an X.509 key, nil for an
// OpenPGP key.
func (k *Key) Certificate() *Certificate { return k.cert }

// FromCertificate wraps a parsed certificate as a Key. Its Raw is what
// the store keeps (the DER of the end-entity certificate, then its chain).
func FromCertificate(c *Certificate) *Key {
	return &Key{Fingerprint: c.Fingerprint, Raw: c.Raw(), cert: c}
}

// ParseAny reads a submitted key file of either kind, recognised by its
// framing (IsCertificate): X.509 certificates (PEM, DER, PKCS #7 bundle;
// address picks the end-entity certificate of a chain, see
// ParseCertificate) or OpenPGP keys (Parse).
func ParseAny(data []byte, address string, n Normalizer) ([]*Key, error) {
	if IsCertificate(data) {
		c, err := ParseCertificate(data, address, n)
		if err != nil {
			return nil, err
		}
		return []*Key{FromCertificate(c)}, nil
	}
	return Parse(data)
}

// ParseStored reads a key back from the material a store holds (Key.Raw):
// DER certificates (end-entity first), or binary OpenPGP. The two cannot
// be confused: DER starts with 0x30, an OpenPGP packet with bit 7 set.
func ParseStored(material []byte) ([]*Key, error) {
	if len(material) > 0 && material[0] == 0x30 {
		c, err := parseStoredCertificate(material)
		if err != nil {
			return nil, err
		}
		return []*Key{FromCertificate(c)}, nil
	}
	return Parse(material)
}

// WithEntities runs f with the go-crypto entities of ks, in the order of
// ks, while it holds their locks, and returns what f returns. f must not
// keep the entities, nor anything that reads them, once it returns: do
// the key work there (choosing the subkeys, wrapping the session key),
// not the encryption of the message. The keys must have distinct
// fingerprints; they are locked in fingerprint order, so two callers
// never wait for each other in a cycle.
func WithEntities(ks []*Key, f func(entities []*openpgp.Entity) error) error {
	sorted := slices.Clone(ks)
	slices.SortFunc(sorted, func(a, b *Key) int { return strings.Compare(a.Fingerprint, b.Fingerprint) })
	for i, k := range sorted {
		if k.cert != nil {
			panic("keys.WithEntities: " + k.Fingerprint + " is an X.509 certificate, not an OpenPGP key")
		}
		if i > 0 && sorted[i-1].Fingerprint == k.Fingerprint {
			panic("keys.WithEntities: two keys with fingerprint " + k.Fingerprint)
		}
	}
	for _, k := range sorted {
		k.mu.Lock()
		defer k.mu.Unlock()
	}
	es := make([]*openpgp.Entity, len(ks))
	for i, k := range ks {
		es[i] = k.entity
	}
	return f(es)
}

// NumSubkeys returns how many subkeys the key has (0 for X.509).
func (k *Key) NumSubkeys() int {
	if k.cert != nil {
		return 0
	}
	return len(k.entity.Subkeys)
}

// KeyID returns the 64-bit key ID in the "0x…" form operators know from
// gpg; for a certificate, "sha256:" and the first 16 digits of its
// fingerprint (as refusals name it).
func (k *Key) KeyID() string {
	if k.cert != nil {
		return "sha256:" + k.Fingerprint[:16]
	}
	return "0x" + strings.ToUpper(k.entity.PrimaryKey.KeyIdString())
}

// Created returns the primary key's creation time (a certificate's
// notBefore).
func (k *Key) Created() time.Time {
	if k.cert != nil {
		return k.cert.Cert.NotBefore
	}
	return k.entity.PrimaryKey.CreationTime
}

// Expires returns when the primary key expires, or the zero time if never
// (a certificate's notAfter).
func (k *Key) Expires() time.Time {
	if k.cert != nil {
		return k.cert.Cert.NotAfter
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.expires()
}

func (k *Key) expires() time.Time {
	sig, err := k.entity.PrimarySelfSignature(time.Time{}, nil)
	if err != nil || sig.KeyLifetimeSecs == nil || *sig.KeyLifetimeSecs == 0 {
		return time.Time{}
	}
	return k.Created().Add(time.Duration(*sig.KeyLifetimeSecs) * time.Second)
}

// NextChange returns the first instant after now at which the key's
// usability can change with time alone: the primary key, a subkey or a
// self-signature expiring, or a signature dated in the future becoming
// valid. It is zero when nothing is due. It errs on the early side (any
// signature's expiry counts), which only costs a fresh lookup.
//
// go-crypto compares whole Unix seconds (expired when now.Unix() >
// expiry.Unix()), so an expiry takes effect one second after its second.
func (k *Key) NextChange(now time.Time) time.Time {
	if k.cert != nil {
		return k.cert.NextChange(now)
	}
	var next time.Time
	consider := func(t time.Time) {
		if t.After(now) && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	expiry := func(created time.Time, secs *uint32) {
		if secs != nil && *secs != 0 {
			consider(time.Unix(created.Add(time.Duration(*secs)*time.Second).Unix()+1, 0))
		}
	}
	sig := func(vs *packet.VerifiableSignature, keyCreated time.Time) {
		if vs == nil || vs.Packet == nil {
			return
		}
		p := vs.Packet
		consider(time.Unix(p.CreationTime.Unix(), 0))
		expiry(p.CreationTime, p.SigLifetimeSecs)
		expiry(keyCreated, p.KeyLifetimeSecs)
	}
	e := k.entity
	primary := e.PrimaryKey.CreationTime
	consider(time.Unix(primary.Unix(), 0)) // a key made "in the future"
	for _, vs := range e.DirectSignatures {
		sig(vs, primary)
	}
	for _, vs := range e.Revocations {
		sig(vs, primary)
	}
	for _, id := range e.Identities {
		for _, vs := range id.SelfCertifications {
			sig(vs, primary)
		}
		for _, vs := range id.Revocations {
			sig(vs, primary)
		}
	}
	for _, sk := range e.Subkeys {
		consider(time.Unix(sk.PublicKey.CreationTime.Unix(), 0))
		for _, vs := range sk.Bindings {
			sig(vs, sk.PublicKey.CreationTime)
			if vs != nil && vs.Packet != nil && vs.Packet.EmbeddedSignature != nil {
				es := vs.Packet.EmbeddedSignature
				consider(time.Unix(es.CreationTime.Unix(), 0))
				expiry(es.CreationTime, es.SigLifetimeSecs)
			}
		}
		for _, vs := range sk.Revocations {
			sig(vs, sk.PublicKey.CreationTime)
		}
	}
	return next
}

// UserIDs returns the names of the key's User IDs, sorted; for a
// certificate, the addresses it is issued to (CertificateAddresses).
func (k *Key) UserIDs() []string {
	if k.cert != nil {
		return CertificateAddresses(k.cert.Cert)
	}
	var out []string
	for name := range k.entity.Identities {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// Parse reads one or more certificates from data: binary, or ASCII armour
// with one or several blocks (text around the blocks is ignored, as gpg
// does). Secret keys are refused outright: a gateway must never hold them.
func Parse(data []byte) ([]*Key, error) {
	if len(data) > MaxKeyBytes {
		return nil, &RejectError{Rule: RuleTooLarge, Msg: fmt.Sprintf("key data is %d bytes, more than the %d allowed", len(data), MaxKeyBytes)}
	}
	var binaries [][]byte
	if bytes.Contains(data, []byte("-----BEGIN PGP")) {
		rest := data
		for {
			i := bytes.Index(rest, []byte("-----BEGIN PGP"))
			if i < 0 {
				break
			}
			block, err := armor.Decode(bytes.NewReader(rest[i:]))
			if err != nil {
				return nil, &RejectError{Rule: RuleFormat, Msg: "the ASCII armour is damaged: " + err.Error()}
			}
			if block.Type == openpgp.PrivateKeyType {
				return nil, &RejectError{Rule: RuleSecret, Msg: "this is a secret (private) key; submit only the public key (gpg --export --armor, not --export-secret-keys)"}
			}
			if block.Type != openpgp.PublicKeyType {
				return nil, &RejectError{Rule: RuleFormat, Msg: fmt.Sprintf("the armour block is a %q, not a %q", block.Type, openpgp.PublicKeyType)}
			}
			b, err := io.ReadAll(block.Body)
			if err != nil {
				return nil, &RejectError{Rule: RuleFormat, Msg: "the ASCII armour is damaged: " + err.Error()}
			}
			binaries = append(binaries, b)
			end := bytes.Index(rest[i:], []byte("-----END PGP"))
			if end < 0 {
				break
			}
			rest = rest[i+end+len("-----END PGP"):]
		}
	} else {
		binaries = [][]byte{data}
	}
	var out []*Key
	for _, b := range binaries {
		el, err := openpgp.ReadKeyRing(bytes.NewReader(b))
		if err != nil {
			return nil, &RejectError{Rule: RuleFormat, Msg: "not a valid OpenPGP public key: " + describePGPError(err)}
		}
		for _, e := range el {
			if e.PrivateKey != nil || hasSecretSubkey(e) {
				return nil, reject(e, RuleSecret, "contains secret key material; submit only the public key (gpg --export --armor, not --export-secret-keys)")
			}
			var raw bytes.Buffer
			if err := serialize(&raw, e); err != nil {
				return nil, reject(e, RuleFormat, "cannot be re-encoded: %v", err)
			}
			// Re-encoding can lengthen packets (old one-byte lengths become
			// two); what is stored must stay readable by Parse.
			if raw.Len() > MaxKeyBytes {
				return nil, reject(e, RuleTooLarge, "the key is %d bytes once re-encoded, more than the %d allowed (too many signatures?)", raw.Len(), MaxKeyBytes)
			}
			out = append(out, &Key{
				entity:      e,
				Fingerprint: strings.ToUpper(hex.EncodeToString(e.PrimaryKey.Fingerprint)),
				Raw:         raw.Bytes(),
			})
		}
	}
	if len(out) == 0 {
		return nil, &RejectError{Rule: RuleFormat, Msg: "no OpenPGP public key found in the data"}
	}
	return out, nil
}

// serialize writes the public certificate like Entity.Serialize, but with
// the User IDs in a fixed order (Entity.Serialize follows Go's random map
// order), so the same key always yields the same bytes and a store can tell
// an unchanged key from a refreshed one.
func hasSecretSubkey(e *openpgp.Entity) bool {
	for _, s := range e.Subkeys {
		if s.PrivateKey != nil {
			return true
		}
	}
	return false
}

func describePGPError(err error) string {
	var unsupported pgperrors.UnsupportedError
	if errors.As(err, &unsupported) {
		return "unsupported feature: " + string(unsupported)
	}
	return err.Error()
}
