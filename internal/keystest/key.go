package keystest

import (
	"testing"

	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// Key returns a key of kind for address (testkeys.Generate: generated on
// first use, then shared) as the store holds it, parsed by keys.Parse
// from its public part, and the entity with the private key that
// decrypts what is encrypted to it. Each call parses anew: the *keys.Key
// is the caller's own.
func Key(t testing.TB, kind testkeys.Kind, address string) (*keys.Key, *openpgp.Entity) {
	t.Helper()
	e := testkeys.Generate(t, kind, address)
	return Parse(t, e), e
}

// Parse returns the public part of e as a *keys.Key, for keys a test
// builds itself (chosen dates, extra User IDs).
func Parse(t testing.TB, e *openpgp.Entity) *keys.Key {
	t.Helper()
	ks, err := keys.Parse(testkeys.Public(t, e))
	if err != nil {
		t.Fatalf("keystest: parsing the key of %s: %v", e.PrimaryKey.KeyIdString(), err)
	}
	if len(ks) != 1 {
		t.Fatalf("keystest: %d keys parsed, want 1", len(ks))
	}
	return ks[0]
}
