package keys_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// TestAdmit: all keys or none; Keep survives Replace; a store that cannot
// answer is an error, never a refusal and never "no stored copy".
// (TestAdmitFrontEnds in cmd/lacre-milter runs the refusals through both
// front ends.)
func TestAdmit(t *testing.T) {
	ctx := context.Background()
	p := defaultOptions().Policy
	const addr = "alice@example.org"
	a1, _ := keystest.Key(t, testkeys.Curve25519, addr)
	a2, _ := keystest.Key(t, testkeys.RSA3072, addr)
	a3, _ := keystest.Key(t, testkeys.V6, addr)
	expired, _ := keystest.Key(t, testkeys.ExpiredSubkey, addr)
	bound := func(s *keystest.Store) []string {
		t.Helper()
		ks, err := s.KeysFor(ctx, addr)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, k := range ks {
			out = append(out, k.Fingerprint)
		}
		slices.Sort(out)
		return out
	}
	fprs := func(ks ...*keys.Key) []string {
		var out []string
		for _, k := range ks {
			out = append(out, k.Fingerprint)
		}
		slices.Sort(out)
		return out
	}

	s := keystest.NewStore()
	// One refused key refuses the whole admission.
	err := keys.Admit(ctx, s, p, keys.Admission{Address: addr, Keys: []*keys.Key{a1, expired}}, time.Now())
	var rej *keys.RejectError
	if !errors.As(err, &rej) || rej.Rule != keys.RuleEncryption || errors.Is(err, keys.ErrStaleCopy) {
		t.Fatalf("a valid and an unusable key: %v, want a refusal by rule %q", err, keys.RuleEncryption)
	}
	if got := bound(s); len(got) != 0 {
		t.Fatalf("a refused admission bound %v", got)
	}

	if err := keys.Admit(ctx, s, p, keys.Admission{Address: addr, Keys: []*keys.Key{a1, a2}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	// Replace drops every other key but the ones kept.
	if err := keys.Admit(ctx, s, p, keys.Admission{Address: addr, Keys: []*keys.Key{a3}, Replace: true, Keep: []*keys.Key{a1}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got, want := bound(s), fprs(a1, a3); !slices.Equal(got, want) {
		t.Fatalf("after Replace with Keep: %v, want %v", got, want)
	}

	// A store that cannot tell whether it holds a copy fails the admission.
	s.SetFail(errors.New("disk on fire"))
	err = keys.Admit(ctx, s, p, keys.Admission{Address: addr, Keys: []*keys.Key{a2}}, time.Now())
	s.SetFail(nil)
	if !errors.Is(err, keys.ErrUnavailable) || errors.As(err, &rej) {
		t.Fatalf("store down: %v, want ErrUnavailable and no refusal", err)
	}
	if got, want := bound(s), fprs(a1, a3); !slices.Equal(got, want) {
		t.Fatalf("a failed admission changed the bindings: %v, want %v", got, want)
	}
}
