package keys

import (
	"testing"

	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/testkeys"
)

// The tests of this package cannot use internal/keystest (it imports
// keys); these two are its Key and Parse, for the in-package tests.

// parseOne returns a key of kind for address as Parse reads it.
func parseOne(t testing.TB, kind testkeys.Kind, address string) *Key {
	t.Helper()
	return parsePublic(t, testkeys.Generate(t, kind, address))
}

// parsePublic returns the public part of e as Parse reads it.
func parsePublic(t testing.TB, e *openpgp.Entity) *Key {
	t.Helper()
	ks, err := Parse(testkeys.Public(t, e))
	if err != nil {
		t.Fatal(err)
	}
	if len(ks) != 1 {
		t.Fatalf("Parse returned %d keys, want 1", len(ks))
	}
	return ks[0]
}
