package keys

import (
	"bytes"
	"encoding/hex"
	"errors"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/testkeys"
)

var testPolicy = Policy{MinRSABits: 2048, Normalizer: Normalizer{FoldLocalPartCase: true, SubaddressSeparator: "+"}}

// corruptArmour flips one base64 character in the middle of the body of
// an armoured block, so the CRC-24 (or the packet parser) notices.
func corruptArmour(t *testing.T, armoured []byte) []byte {
	t.Helper()
	lines := bytes.Split(bytes.Clone(armoured), []byte("\n"))
	// Line 0 is BEGIN, line 1 the blank line after (no headers); pick a
	// full-length body line.
	for i := 2; i < len(lines); i++ {
		if len(lines[i]) >= 60 {
			c := lines[i][30]
			if c == 'A' {
				lines[i][30] = 'B'
			} else {
				lines[i][30] = 'A'
			}
			return bytes.Join(lines, []byte("\n"))
		}
	}
	t.Fatal("no body line to corrupt")
	return nil
}

func TestParseAndValidate(t *testing.T) {
	const alice = "alice@example.org"

	type tc struct {
		name    string
		data    func(t *testing.T) []byte
		address string // as registered, before normalisation; default alice
		policy  *Policy
		// want: "" = accepted by Parse and Validate; otherwise the rule that
		// must fail, from Parse or from Validate.
		want     Rule
		wantKeys int      // number of keys Parse must return (default 1)
		msg      []string // substrings the error message must contain
	}
	pub := func(kind testkeys.Kind, addr string) func(t *testing.T) []byte {
		return func(t *testing.T) []byte { return testkeys.Public(t, testkeys.Generate(t, kind, addr)) }
	}
	arm := func(kind testkeys.Kind, addr string) func(t *testing.T) []byte {
		return func(t *testing.T) []byte { return testkeys.ArmoredPublic(t, testkeys.Generate(t, kind, addr)) }
	}
	noFold := Policy{MinRSABits: 2048, Normalizer: Normalizer{SubaddressSeparator: "+"}}
	expiry := testkeys.ExpiredSubkeyExpiry.Format("2006-01-02")

	cases := []tc{
		{name: "RSA-3072 armoured OK", data: arm(testkeys.RSA3072, alice)},
		{name: "RSA-3072 binary OK", data: pub(testkeys.RSA3072, alice)},
		{name: "Curve25519 OK", data: arm(testkeys.Curve25519, alice)},
		{name: "v6 OK", data: arm(testkeys.V6, alice)},
		{
			name: "only encryption subkey expired", data: arm(testkeys.ExpiredSubkey, alice),
			want: RuleEncryption, msg: []string{"expired on " + expiry, "no valid encryption subkey"},
		},
		{
			name: "revoked", data: arm(testkeys.Revoked, alice),
			want: RuleRevoked, msg: []string{"revoked", `"test"`},
		},
		{
			name: "secret key armoured",
			data: func(t *testing.T) []byte {
				return testkeys.ArmoredSecret(t, testkeys.Generate(t, testkeys.Curve25519, alice))
			},
			want: RuleSecret, msg: []string{"secret", "public key"},
		},
		{
			name: "secret key binary",
			data: func(t *testing.T) []byte { return testkeys.Secret(t, testkeys.Generate(t, testkeys.Curve25519, alice)) },
			want: RuleSecret, msg: []string{"secret key material"},
		},
		{
			name: "secret key in a PUBLIC KEY armour block",
			data: func(t *testing.T) []byte {
				s := testkeys.ArmoredSecret(t, testkeys.Generate(t, testkeys.Curve25519, alice))
				return bytes.ReplaceAll(s, []byte("PRIVATE KEY"), []byte("PUBLIC KEY"))
			},
			want: RuleSecret, msg: []string{"secret key material"},
		},
		{
			name: "RSA-1024", data: arm(testkeys.RSA1024, alice),
			want: RuleStrength, msg: []string{"RSA 1024 bits", "minimum of 2048"},
		},
		{
			name: "sign-only", data: arm(testkeys.SignOnly, alice),
			want: RuleEncryption, msg: []string{"can only sign"},
		},
		{
			name: "User ID names another address", data: arm(testkeys.Curve25519, "mallory@example.net"),
			want: RuleUserID, msg: []string{alice, "the key has: mallory@example.net"},
		},
		{
			name: "registered subaddress is not the key's address", data: arm(testkeys.Curve25519, alice),
			address: "alice+lists@example.org",
			want:    RuleUserID, msg: []string{"alice+lists@example.org", "the key has: " + alice},
		},
		{
			name: "User ID case differs from registered address", data: arm(testkeys.Curve25519, "Alice@Example.ORG"),
			address: "alice@example.org",
		},
		{
			name: "registered address case differs from User ID", data: arm(testkeys.Curve25519, alice),
			address: "<ALICE@EXAMPLE.ORG>",
		},
		{
			name: "IDN User ID matches punycode registration", data: arm(testkeys.Curve25519, "user@Bücher.example"),
			address: "user@xn--bcher-kva.example",
		},
		{
			name: "local-part case matters without folding", data: arm(testkeys.Curve25519, "Alice@Example.ORG"),
			address: "alice@example.org", policy: &noFold,
			want: RuleUserID, msg: []string{"the key has: Alice@example.org"},
		},
		{
			name: "garbage", data: func(*testing.T) []byte { return []byte("this is not a key\x00\x01\x02") },
			want: RuleFormat, msg: []string{"not a valid OpenPGP public key"},
		},
		{
			name: "empty", data: func(*testing.T) []byte { return nil },
			want: RuleFormat,
		},
		{
			name: "damaged armour (flipped character)",
			data: func(t *testing.T) []byte {
				return corruptArmour(t, testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.Curve25519, alice)))
			},
			want: RuleFormat,
		},
		{
			name: "damaged armour (truncated)",
			data: func(t *testing.T) []byte {
				a := testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.Curve25519, alice))
				return a[:len(a)/2]
			},
			want: RuleFormat,
		},
		{
			name: "damaged armour (invalid base64)",
			data: func(t *testing.T) []byte {
				a := testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.Curve25519, alice))
				i := bytes.Index(a, []byte("\n\n")) + 10
				return append(append(bytes.Clone(a[:i]), '!', '*'), a[i:]...)
			},
			want: RuleFormat, msg: []string{"armour is damaged"},
		},
		{
			name: "armour of a message, not a key",
			data: func(*testing.T) []byte {
				return []byte("-----BEGIN PGP MESSAGE-----\n\nwy4ECQMIqVdXRjyY\n=abcd\n-----END PGP MESSAGE-----\n")
			},
			want: RuleFormat,
		},
		{
			name: "oversize",
			data: func(*testing.T) []byte { return make([]byte, MaxKeyBytes+1) },
			want: RuleTooLarge, msg: []string{"more than the 1048576 allowed"},
		},
		{
			name: "two armour blocks in one file",
			data: func(t *testing.T) []byte {
				a := testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.Curve25519, alice))
				b := testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.V6, alice))
				return append(append(bytes.Clone(a), '\n'), b...)
			},
			wantKeys: 2,
		},
		{
			name: "binary keyring of two keys",
			data: func(t *testing.T) []byte {
				a := testkeys.Public(t, testkeys.Generate(t, testkeys.RSA3072, alice))
				b := testkeys.Public(t, testkeys.Generate(t, testkeys.Curve25519, alice))
				return append(bytes.Clone(a), b...)
			},
			wantKeys: 2,
		},
		{
			name: "armour with text around it",
			data: func(t *testing.T) []byte {
				a := testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.Curve25519, alice))
				return []byte("Hi, here is my key:\r\n\r\n" + string(a) + "\r\nCheers,\r\nAlice\r\n")
			},
		},
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			policy := testPolicy
			if c.policy != nil {
				policy = *c.policy
			}
			addr := c.address
			if addr == "" {
				addr = alice
			}
			norm, err := policy.Normalizer.Normalize(addr)
			if err != nil {
				t.Fatalf("Normalize(%q): %v", addr, err)
			}

			data := c.data(t)
			// After generating: a key created after now is not valid now.
			now := time.Now()
			ks, err := Parse(data)
			if err == nil {
				for _, k := range ks {
					if err = policy.Validate(k, norm, now); err != nil {
						break
					}
				}
			}

			if c.want == "" {
				if err != nil {
					t.Fatalf("want accepted, got %v", err)
				}
				want := c.wantKeys
				if want == 0 {
					want = 1
				}
				if len(ks) != want {
					t.Fatalf("Parse returned %d keys, want %d", len(ks), want)
				}
				checkKeys(t, ks)
				for _, k := range ks {
					if err := policy.Usable(k, now); err != nil {
						t.Errorf("Usable(%s) = %v", k.KeyID(), err)
					}
				}
				return
			}

			var rej *RejectError
			if !errors.As(err, &rej) {
				t.Fatalf("want *RejectError with rule %q, got %T %v", c.want, err, err)
			}
			t.Logf("rule %-17s %s", rej.Rule, rej.Error())
			if rej.Rule != c.want {
				t.Errorf("rule = %q, want %q (%v)", rej.Rule, c.want, err)
			}
			for _, s := range c.msg {
				if !strings.Contains(rej.Error(), s) {
					t.Errorf("message %q lacks %q", rej.Error(), s)
				}
			}
			// Messages are shown to people as they are: one line, no Go
			// syntax leaking out.
			if msg := rej.Error(); strings.ContainsAny(msg, "\n\r") || strings.Contains(msg, "%!") || strings.Contains(msg, "<nil>") {
				t.Errorf("message does not read well: %q", msg)
			}
			if len(ks) > 0 && rej.Key == "" {
				t.Errorf("rejected a parsed key without naming it: %v", err)
			}
		})
	}
}

// checkKeys checks what Parse fills in besides the entity.
func checkKeys(t *testing.T, ks []*Key) {
	t.Helper()
	for _, k := range ks {
		fp := strings.ToUpper(hex.EncodeToString(k.entity.PrimaryKey.Fingerprint))
		if k.Fingerprint != fp {
			t.Errorf("Fingerprint = %s, want %s", k.Fingerprint, fp)
		}
		if want := map[int]int{4: 40, 6: 64}[k.entity.PrimaryKey.Version]; len(k.Fingerprint) != want {
			t.Errorf("v%d fingerprint %s has %d digits, want %d", k.entity.PrimaryKey.Version, k.Fingerprint, len(k.Fingerprint), want)
		}
		if !strings.HasPrefix(k.KeyID(), "0x") || len(k.KeyID()) != 18 {
			t.Errorf("KeyID() = %q", k.KeyID())
		}
		// Raw and Armored must round-trip to the same public key.
		for name, data := range map[string][]byte{"Raw": k.Raw, "Armored": k.Armored()} {
			again, err := Parse(data)
			if err != nil || len(again) != 1 || again[0].Fingerprint != k.Fingerprint {
				t.Errorf("Parse(%s) = %v, %v; want the key %s back", name, again, err, k.Fingerprint)
			}
		}
	}
}

// TestV6AdvertisesSEIPDv2 makes sure the V6 test key is what interop tests
// expect: a v6 key whose direct-key signature advertises SEIPDv2.
func TestV6AdvertisesSEIPDv2(t *testing.T) {
	ks, err := Parse(testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.V6, "alice@example.org")))
	if err != nil {
		t.Fatal(err)
	}
	e := ks[0].entity
	if e.PrimaryKey.Version != 6 {
		t.Fatalf("version %d, want 6", e.PrimaryKey.Version)
	}
	sig, err := e.PrimarySelfSignature(time.Time{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !sig.SEIPDv2 {
		t.Error("the v6 key does not advertise SEIPDv2")
	}
	if _, ok := e.EncryptionKey(time.Now(), nil); !ok {
		t.Error("the v6 key has no encryption key")
	}
}

// TestUsableOverTime checks that Usable judges at the time it is given:
// the ExpiredSubkey key was fine before its subkey expired.
func TestUsableOverTime(t *testing.T) {
	k := parseOne(t, testkeys.ExpiredSubkey, "alice@example.org")
	before := testkeys.ExpiredSubkeyCreated.Add(24 * time.Hour)
	if err := testPolicy.Validate(k, "alice@example.org", before); err != nil {
		t.Errorf("Validate before the subkey expired: %v", err)
	}
	after := testkeys.ExpiredSubkeyExpiry.Add(time.Hour)
	var rej *RejectError
	if err := testPolicy.Usable(k, after); !errors.As(err, &rej) || rej.Rule != RuleEncryption {
		t.Errorf("Usable after the subkey expired = %v, want rule %q", err, RuleEncryption)
	}
	if got := k.Created(); !got.Equal(testkeys.ExpiredSubkeyCreated) {
		t.Errorf("Created() = %v, want %v", got, testkeys.ExpiredSubkeyCreated)
	}
	if got := k.Expires(); !got.IsZero() {
		t.Errorf("Expires() = %v, want zero (the primary never expires)", got)
	}
}

// TestKeyFromTheFuture: a key made on a computer whose clock is ahead is
// refused until its creation time; the message should say why.
func TestKeyFromTheFuture(t *testing.T) {
	k := parseOne(t, testkeys.Curve25519, "alice@example.org")
	now := k.Created().Add(-10 * time.Minute)
	err := testPolicy.Validate(k, "alice@example.org", now)
	var rej *RejectError
	if !errors.As(err, &rej) {
		t.Fatalf("Validate 10 minutes before the key was made = %v, want a *RejectError", err)
	}
	t.Logf("rule %s: %v", rej.Rule, rej)
	if !strings.Contains(rej.Msg, "future") {
		t.Errorf("the message does not say the key was created in the future (clock skew): %q", rej.Msg)
	}
}

// TestParseRawIsStable: the same submitted bytes must give the same Raw,
// or a store cannot tell "unchanged" from "refreshed" and exports differ
// from run to run.
func TestParseRawIsStable(t *testing.T) {
	// A private entity (not the shared testkeys one, which must stay
	// untouched) with several User IDs.
	e, err := openpgp.NewEntity("Alice", "", "alice@example.org", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"alice@example.net", "alice@example.com", "a@example.org"} {
		if err := e.AddUserId("Alice", "", a, nil); err != nil {
			t.Fatal(err)
		}
	}
	data := testkeys.Public(t, e)
	first, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		again, err := Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again[0].Raw, first[0].Raw) {
			t.Fatal("the same input gave different Raw bytes")
		}
	}
}

// TestParseKeepsNoSecrets checks that a parsed public key exports as
// public only (the testkeys entity has its private key).
func TestParseKeepsNoSecrets(t *testing.T) {
	e := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	ks, err := Parse(testkeys.Public(t, e))
	if err != nil {
		t.Fatal(err)
	}
	if ks[0].entity.PrivateKey != nil {
		t.Error("parsed key has a private key")
	}
	if got := ks[0].UserIDs(); !reflect.DeepEqual(got, []string{testkeys.UserID("alice@example.org")}) {
		t.Errorf("UserIDs() = %q", got)
	}
	// Decrypting needs the original entity; the keyring helper must work
	// with openpgp's API.
	if len(testkeys.Keyring(e).KeysById(e.Subkeys[0].PublicKey.KeyId)) != 1 {
		t.Error("Keyring does not find the encryption subkey")
	}
}

func TestNormalize(t *testing.T) {
	fold := Normalizer{FoldLocalPartCase: true, SubaddressSeparator: "+"}
	keep := Normalizer{SubaddressSeparator: "+"}
	cases := []struct {
		name string
		n    Normalizer
		in   string
		want string // "" = error expected
	}{
		{"plain", fold, "user@example.org", "user@example.org"},
		{"IDNA U-label", fold, "user@Bücher.example", "user@xn--bcher-kva.example"},
		{"IDNA A-label unchanged", fold, "user@xn--bcher-kva.example", "user@xn--bcher-kva.example"},
		{"IDNA upper-case U-label", fold, "user@BÜCHER.example", "user@xn--bcher-kva.example"},
		{"trailing dot", fold, "user@example.org.", "user@example.org"},
		{"angle brackets", fold, "<user@example.org>", "user@example.org"},
		{"space and brackets", fold, "  <User@Example.ORG>  ", "user@example.org"},
		{"fold on", fold, "User.Name@EXAMPLE.org", "user.name@example.org"},
		{"fold off keeps local part", keep, "User.Name@EXAMPLE.org", "User.Name@example.org"},
		{"subaddress kept by Normalize", fold, "User+Tag@example.org", "user+tag@example.org"},
		{"quoted local part with space", keep, `"John Doe"@example.org`, `"John Doe"@example.org`},
		{"quoted local part with @", keep, `"a@b"@example.org`, `"a@b"@example.org`},
		{"address literal", fold, "user@[192.0.2.1]", "user@[192.0.2.1]"},
		{"IPv6 literal lower-cased", fold, "user@[IPv6:2001:DB8::1]", "user@[ipv6:2001:db8::1]"},
		{"empty", fold, "", ""},
		{"no @", fold, "user.example.org", ""},
		{"empty local part", fold, "@example.org", ""},
		{"empty domain", fold, "user@", ""},
		{"only a dot as domain", fold, "user@.", ""},
		{"space in local part", fold, "us er@example.org", ""},
		{"display name form", fold, "User <user@example.org>", ""},
		{"bracket inside", fold, "user@exa<mple.org", ""},
		{"space in domain after quoted local part", fold, `"x"@exa mple.org`, ""},
		{"bracket in domain after quoted local part", fold, `"x"@<example.org>`, ""},
		{"empty label", fold, "user@example..org", ""},
		{"text after the quoted local part", fold, `"x" y@example.org`, ""},
		{"invalid IDNA (hyphens in 3rd/4th position)", fold, "user@ab--cd.example", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.n.Normalize(c.in)
			fail := t.Errorf
			if c.want == "" {
				if err == nil {
					fail("Normalize(%q) = %q, want an error", c.in, got)
					return
				}
				t.Logf("Normalize(%q): %v", c.in, err)
				if strings.Contains(err.Error(), "<nil>") || strings.Contains(err.Error(), "%!") {
					fail("message does not read well: %q", err)
				}
				return
			}
			if err != nil || got != c.want {
				fail("Normalize(%q) = %q, %v; want %q", c.in, got, err, c.want)
			}
		})
	}
}

func TestCandidates(t *testing.T) {
	plus := Normalizer{FoldLocalPartCase: true, SubaddressSeparator: "+"}
	cases := []struct {
		name string
		n    Normalizer
		in   string
		want []string // nil = error expected
	}{
		{"no subaddress", plus, "user@example.org", []string{"user@example.org"}},
		{"subaddress falls back", plus, "user+tag@example.org", []string{"user+tag@example.org", "user@example.org"}},
		{"folded and IDNA", plus, "<User+Tag@Bücher.example>", []string{"user+tag@xn--bcher-kva.example", "user@xn--bcher-kva.example"}},
		{"fold off", Normalizer{SubaddressSeparator: "+"}, "User+Tag@example.org", []string{"User+Tag@example.org", "User@example.org"}},
		{"first separator wins", plus, "user+a+b@example.org", []string{"user+a+b@example.org", "user@example.org"}},
		{"separator off", Normalizer{FoldLocalPartCase: true}, "user+tag@example.org", []string{"user+tag@example.org"}},
		{"other separator", Normalizer{SubaddressSeparator: "-"}, "user-tag@example.org", []string{"user-tag@example.org", "user@example.org"}},
		{"other separator ignores +", Normalizer{SubaddressSeparator: "-"}, "user+tag@example.org", []string{"user+tag@example.org"}},
		{"leading separator", plus, "+tag@example.org", []string{"+tag@example.org"}},
		// Needless quotes are dropped: "user+tag"@ is user+tag@.
		{"quoted local part", plus, `"user+tag"@example.org`, []string{"user+tag@example.org", "user@example.org"}},
		{"quoted local part that needs its quotes", plus, `"user tag"@example.org`, []string{`"user tag"@example.org`}},
		{"source route", plus, `<@relay.example:Alice@example.org>`, []string{"alice@example.org"}},
		{"invalid", plus, "user+tag", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.n.Candidates(c.in)
			if c.want == nil {
				if err == nil {
					t.Fatalf("Candidates(%q) = %q, want an error", c.in, got)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, c.want) {
				t.Errorf("Candidates(%q) = %q, %v; want %q", c.in, got, err, c.want)
			}
		})
	}
}

func TestDomain(t *testing.T) {
	if got := Domain("user@xn--bcher-kva.example"); got != "xn--bcher-kva.example" {
		t.Errorf("Domain = %q", got)
	}
}

func TestNormalizeDomain(t *testing.T) {
	n := Normalizer{FoldLocalPartCase: true}
	for in, want := range map[string]string{"Example.ORG.": "example.org", "Bücher.example": "xn--bcher-kva.example", "a@b": "", "exa mple.org": "", "": ""} {
		got, err := n.NormalizeDomain(in)
		if got != want || (want == "") != (err != nil) {
			t.Errorf("NormalizeDomain(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// TestWithEntitiesOrder: callers that lock the same keys given in
// different orders never deadlock (WithEntities sorts by fingerprint), f
// gets the entities in the order given, and a list with one fingerprint
// twice is refused.
func TestWithEntitiesOrder(t *testing.T) {
	a := parseOne(t, testkeys.Curve25519, "a@example.org")
	b := parseOne(t, testkeys.Curve25519, "b@example.org")
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for _, order := range [][]*Key{{a, b}, {b, a}} {
			wg.Go(func() {
				for range 20000 {
					WithEntities(order, func(es []*openpgp.Entity) error {
						if es[0] != order[0].entity || es[1] != order[1].entity {
							t.Error("entities not in the order of the keys")
						}
						runtime.Gosched()
						return nil
					})
				}
			})
		}
		wg.Wait()
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("WithEntities deadlocked")
	}
	// The locks are held while f runs, and only then.
	WithEntities([]*Key{a}, func([]*openpgp.Entity) error {
		if a.mu.TryLock() {
			t.Error("the key is not locked inside WithEntities")
		}
		return nil
	})
	if !a.mu.TryLock() {
		t.Fatal("the key is still locked after WithEntities")
	}
	a.mu.Unlock()
	defer func() {
		if recover() == nil {
			t.Error("two keys with one fingerprint were accepted")
		}
	}()
	WithEntities([]*Key{a, {Fingerprint: a.Fingerprint}}, func([]*openpgp.Entity) error { return nil })
}
