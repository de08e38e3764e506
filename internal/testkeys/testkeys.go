// Package testkeys generates real OpenPGP keys for tests, so that no
// private key material is ever committed to the repository.
//
// Keys are generated on first use and cached per (Kind, address) for the
// life of the test binary, because RSA generation is slow. The returned
// entities are shared: treat them as read-only.
//
// This package must not import lacre.io/milter/keys (the keys tests use it).
package testkeys

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

// Kind selects what sort of key Generate makes.
type Kind int

const (
	RSA3072       Kind = iota // RSA-3072 primary + RSA-3072 encryption subkey, v4
	Curve25519                // v4 EdDSA primary + ECDH Curve25519 encryption subkey (legacy v4 25519)
	V6                        // v6 key: Ed25519 primary + X25519 subkey, advertises SEIPDv2
	ExpiredSubkey             // valid primary whose only encryption subkey expired on ExpiredSubkeyExpiry
	Revoked                   // key with a key revocation signature (reason: key compromised)
	RSA1024                   // weak RSA-1024 primary + RSA-1024 subkey (for the strength rule)
	SignOnly                  // primary can sign, no encryption subkey at all
)

func (k Kind) String() string {
	switch k {
	case RSA3072:
		return "RSA3072"
	case Curve25519:
		return "Curve25519"
	case V6:
		return "V6"
	case ExpiredSubkey:
		return "ExpiredSubkey"
	case Revoked:
		return "Revoked"
	case RSA1024:
		return "RSA1024"
	case SignOnly:
		return "SignOnly"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Fixed dates of the ExpiredSubkey kind: the key (primary and its only
// encryption subkey) is created at ExpiredSubkeyCreated; the primary never
// expires, the subkey expires at ExpiredSubkeyExpiry.
var (
	ExpiredSubkeyCreated = time.Date(2025, 10, 1, 0, 0, 0, 0, time.UTC)
	ExpiredSubkeyExpiry  = time.Date(2025, 11, 1, 0, 0, 0, 0, time.UTC)
)

// UserID returns the User ID Generate gives a key for address.
func UserID(address string) string { return "Test User <" + address + ">" }

type cacheKey struct {
	kind    Kind
	address string
}

// entry lets one goroutine generate a key while others wait for that key
// only, not for every other key being generated.
type entry struct {
	once sync.Once
	e    *openpgp.Entity
	err  error
}

var (
	mu    sync.Mutex
	cache = map[cacheKey]*entry{}
)

// Generate returns a key of kind with the User ID "Test User <address>",
// including its private key. Results are cached per (kind, address).
func Generate(t testing.TB, kind Kind, address string) *openpgp.Entity {
	t.Helper()
	mu.Lock()
	ent, ok := cache[cacheKey{kind, address}]
	if !ok {
		ent = &entry{}
		cache[cacheKey{kind, address}] = ent
	}
	mu.Unlock()
	ent.once.Do(func() { ent.e, ent.err = generate(kind, address) })
	if ent.err != nil {
		t.Fatalf("testkeys: generating %v key for %s: %v", kind, address, ent.err)
	}
	return ent.e
}

// Expiring returns a new (not cached) Curve25519 key for address, created
// at created (whole seconds), whose primary key expires life later.
func Expiring(t testing.TB, address string, created time.Time, life time.Duration) *openpgp.Entity {
	t.Helper()
	cfg := curve25519Config(func() time.Time { return created })
	cfg.KeyLifetimeSecs = uint32(life / time.Second)
	e, err := newEntity(address, cfg)
	if err != nil {
		t.Fatalf("testkeys: generating an expiring key for %s: %v", address, err)
	}
	return e
}

func generate(kind Kind, address string) (*openpgp.Entity, error) {
	switch kind {
	case RSA3072:
		return newEntity(address, &packet.Config{Algorithm: packet.PubKeyAlgoRSA, RSABits: 3072})
	case Curve25519:
		return newEntity(address, curve25519Config(time.Now))
	case V6:
		// The AEADConfig makes the self-signature advertise SEIPDv2 and
		// AEAD cipher suites.
		return newEntity(address, &packet.Config{V6Keys: true, Algorithm: packet.PubKeyAlgoEd25519, AEADConfig: &packet.AEADConfig{}})
	case ExpiredSubkey:
		return expiredSubkey(address)
	case Revoked:
		return revoked(address)
	case RSA1024:
		// go-crypto generates RSA keys down to 1024 bits; only verification
		// applies a minimum (packet.Config.MinRSABits).
		return newEntity(address, &packet.Config{Algorithm: packet.PubKeyAlgoRSA, RSABits: 1024})
	case SignOnly:
		e, err := newEntity(address, curve25519Config(time.Now))
		if err != nil {
			return nil, err
		}
		e.Subkeys = nil // drop the encryption subkey NewEntity made
		return e, nil
	}
	return nil, fmt.Errorf("unknown kind %d", int(kind))
}

func curve25519Config(now func() time.Time) *packet.Config {
	return &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, Curve: packet.Curve25519, Time: now}
}

// newEntity generates a key like the ones users bring: GnuPG and Sequoia
// keys advertise AES-256 first, so the test keys do too (go-crypto's
// default would advertise AES-128 only).
func newEntity(address string, cfg *packet.Config) (*openpgp.Entity, error) {
	cfg.DefaultCipher = packet.CipherAES256
	return openpgp.NewEntity("Test User", "", address, cfg)
}

// expiredSubkey makes a Curve25519 key created at ExpiredSubkeyCreated with
// a primary that never expires, and replaces the encryption subkey that
// NewEntity made with one that expires at ExpiredSubkeyExpiry.
func expiredSubkey(address string) (*openpgp.Entity, error) {
	cfg := curve25519Config(func() time.Time { return ExpiredSubkeyCreated })
	e, err := newEntity(address, cfg)
	if err != nil {
		return nil, err
	}
	e.Subkeys = nil
	cfg.KeyLifetimeSecs = uint32(ExpiredSubkeyExpiry.Sub(ExpiredSubkeyCreated) / time.Second)
	if err := e.AddEncryptionSubkey(cfg); err != nil {
		return nil, err
	}
	if _, ok := e.EncryptionKey(time.Now(), nil); ok {
		return nil, fmt.Errorf("the encryption subkey is still usable")
	}
	if _, ok := e.EncryptionKey(ExpiredSubkeyCreated.Add(time.Hour), nil); !ok {
		return nil, fmt.Errorf("the encryption subkey was never usable")
	}
	return e, nil
}

// revoked makes a Curve25519 key with a key revocation signature.
func revoked(address string) (*openpgp.Entity, error) {
	cfg := curve25519Config(time.Now)
	e, err := newEntity(address, cfg)
	if err != nil {
		return nil, err
	}
	if err := e.Revoke(packet.KeyCompromised, "test", cfg); err != nil {
		return nil, err
	}
	// Check the revocation signature itself, not the cached Valid flag
	// Revoke sets.
	if err := e.PrimaryKey.VerifyRevocationSignature(e.Revocations[0].Packet); err != nil {
		return nil, fmt.Errorf("bad revocation signature: %v", err)
	}
	return e, nil
}

// Public returns the binary transferable public key (no secret material).
func Public(t testing.TB, e *openpgp.Entity) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := e.Serialize(&b); err != nil {
		t.Fatalf("testkeys: serializing public key: %v", err)
	}
	return b.Bytes()
}

// ArmoredPublic returns the public key ASCII-armoured ("PGP PUBLIC KEY BLOCK").
func ArmoredPublic(t testing.TB, e *openpgp.Entity) []byte {
	t.Helper()
	return armored(t, openpgp.PublicKeyType, Public(t, e))
}

// ArmoredSecret returns the secret key ASCII-armoured ("PGP PRIVATE KEY
// BLOCK"), unencrypted, for feeding to gpg/sq/rnp in interop tests and for
// the "secret key submitted" case.
func ArmoredSecret(t testing.TB, e *openpgp.Entity) []byte {
	t.Helper()
	return armored(t, openpgp.PrivateKeyType, Secret(t, e))
}

// Secret returns the binary transferable secret key, unencrypted.
func Secret(t testing.TB, e *openpgp.Entity) []byte {
	t.Helper()
	var b bytes.Buffer
	// WithoutSigning: SerializePrivate would re-sign the (shared, cached)
	// entity's self-signatures in place.
	if err := e.SerializePrivateWithoutSigning(&b, nil); err != nil {
		t.Fatalf("testkeys: serializing secret key: %v", err)
	}
	return b.Bytes()
}

func armored(t testing.TB, blockType string, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := armor.Encode(&b, blockType, nil)
	if err != nil {
		t.Fatalf("testkeys: armour: %v", err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatalf("testkeys: armour: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("testkeys: armour: %v", err)
	}
	b.WriteByte('\n')
	return b.Bytes()
}

// Keyring returns an openpgp.EntityList with the given entities, for
// openpgp.ReadMessage in tests.
func Keyring(es ...*openpgp.Entity) openpgp.EntityList {
	return openpgp.EntityList(es)
}
