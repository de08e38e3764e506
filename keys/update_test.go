package keys

import (
	"errors"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

// TestCheckUpdate: an older export of a key must not replace a newer copy
// in the store, and a copy without a revocation must not replace a revoked one.
func TestCheckUpdate(t *testing.T) {
	created := time.Now().Add(-48 * time.Hour)
	cfg := &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, Time: func() time.Time { return created }}
	e, err := openpgp.NewEntity("Alice", "", "alice@example.org", cfg)
	if err != nil {
		t.Fatal(err)
	}
	old := parsePublic(t, e)
	later := &packet.Config{Time: func() time.Time { return created.Add(24 * time.Hour) }}
	if err := e.AddUserId("Alice", "", "alice@example.net", later); err != nil {
		t.Fatal(err)
	}
	newer := parsePublic(t, e)
	if err := e.Revoke(packet.KeySuperseded, "moved on", &packet.Config{Time: func() time.Time { return created.Add(36 * time.Hour) }}); err != nil {
		t.Fatal(err)
	}
	revoked := parsePublic(t, e)

	p := Policy{MinRSABits: 2048}
	now := time.Now()
	for _, tc := range []struct {
		name              string
		stored, submitted *Key
		rule              Rule
	}{
		{"same copy", newer, newer, ""},
		{"newer replaces older", old, newer, ""},
		{"revocation replaces", newer, revoked, ""},
		{"older cannot replace newer", newer, old, RuleSelfSig},
		{"unrevoked cannot replace revoked", revoked, newer, RuleRevoked},
	} {
		err := p.checkUpdate(tc.stored, tc.submitted, now)
		var rule Rule
		if rej, ok := err.(*RejectError); ok {
			rule = rej.Rule
			t.Logf("%s: %v", tc.name, err)
		} else if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if rule != tc.rule {
			t.Errorf("%s: rule %q, want %q", tc.name, rule, tc.rule)
		}
		if errors.Is(err, ErrStaleCopy) != (tc.rule != "") {
			t.Errorf("%s: errors.Is(%v, ErrStaleCopy) = %v", tc.name, err, errors.Is(err, ErrStaleCopy))
		}
	}
}
