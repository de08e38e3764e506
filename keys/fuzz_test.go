package keys

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/internal/testkeys"
)

// Fuzz targets of the keys package. Seed inputs live in the f.Add calls
// and in testdata/fuzz/<target>/ (public keys only: no secret key material
// is ever committed; secret keys are generated at run time by testkeys).
// Run one target at a time, e.g.
//
//	go test ./keys -run '^$' -fuzz '^FuzzParse$' -fuzztime 60s

// fuzzPolicy is the policy of the default configuration.
var fuzzPolicy = Policy{MinRSABits: 2048, Normalizer: Normalizer{FoldLocalPartCase: true, SubaddressSeparator: "+"}}

// fuzzTimeout bounds one input; a hang is reported instead of stalling
// the fuzzer.
const fuzzTimeout = 10 * time.Second

// FuzzParse feeds arbitrary bytes to Parse and each key it returns to
// Validate, as the key submission path does. Nothing may panic or hang,
// every error must be a *RejectError (whose rule the CLI and web service
// show), and a key Parse accepts must come back unchanged from its own Raw
// form, which is what the store keeps.
func FuzzParse(f *testing.F) {
	const addr = "alice@example.org"
	var pub [][]byte
	for _, kind := range []testkeys.Kind{testkeys.Curve25519, testkeys.V6, testkeys.ExpiredSubkey, testkeys.Revoked, testkeys.SignOnly, testkeys.RSA1024} {
		e := testkeys.Generate(f, kind, addr)
		bin, arm := testkeys.Public(f, e), testkeys.ArmoredPublic(f, e)
		pub = append(pub, bin)
		f.Add(bin)
		f.Add(arm)
		f.Add(bin[:len(bin)/2])
		f.Add(arm[:len(arm)*2/3])
		f.Add(arm[:len(arm)-len("-----END PGP PUBLIC KEY BLOCK-----\n")])
		// Secret keys must be refused, binary or armoured. They are
		// generated here and never written to testdata.
		f.Add(testkeys.Secret(f, e))
		f.Add(testkeys.ArmoredSecret(f, e))
	}
	other := testkeys.ArmoredPublic(f, testkeys.Generate(f, testkeys.Curve25519, "bob@example.org"))
	f.Add(append(append([]byte("text before\n"), testkeys.ArmoredPublic(f, testkeys.Generate(f, testkeys.Curve25519, addr))...), other...))
	f.Add(append(append([]byte(nil), pub[0]...), pub[1]...))
	for _, s := range []string{
		"",
		"\x00",
		"\x99\x00\x00",
		"\xc6\xff\xff\xff\xff\xff",
		"-----BEGIN PGP",
		"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n-----END PGP PUBLIC KEY BLOCK-----\n",
		"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBF\n=AAAA\n-----END PGP PUBLIC KEY BLOCK-----\n",
		"-----BEGIN PGP MESSAGE-----\n\nwy4=\n-----END PGP MESSAGE-----\n",
		"-----BEGIN PGP PUBLIC KEY BLOCK-----\n-----BEGIN PGP PUBLIC KEY BLOCK-----\n",
		"not a key at all",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			fuzzParseOne(t, data, addr)
		}()
		select {
		case <-done:
		case <-time.After(fuzzTimeout):
			t.Fatalf("Parse/Validate did not return within %v for %d bytes", fuzzTimeout, len(data))
		}
	})
}

func fuzzParseOne(t *testing.T, data []byte, addr string) {
	ks, err := Parse(data)
	if err != nil {
		var re *RejectError
		if !errors.As(err, &re) {
			t.Errorf("Parse error %T %v is not a *RejectError", err, err)
		} else if re.Rule == "" || re.Error() == "" {
			t.Errorf("Parse rejection without a rule or message: %#v", re)
		}
		if len(ks) != 0 {
			t.Errorf("Parse returned %d keys and an error", len(ks))
		}
		return
	}
	if len(ks) == 0 {
		t.Errorf("Parse returned no key and no error")
		return
	}
	now := time.Now()
	for _, k := range ks {
		if err := fuzzPolicy.Validate(k, addr, now); err != nil {
			var re *RejectError
			if !errors.As(err, &re) {
				t.Errorf("Validate error %T %v is not a *RejectError", err, err)
			} else if re.Rule == "" || re.Key == "" {
				t.Errorf("Validate rejection without a rule or key ID: %#v", re)
			}
		}
		// What the CLI shows and the store keeps must not panic either.
		_, _, _, _ = k.KeyID(), k.Created(), k.Expires(), k.UserIDs()
		_ = k.ExportFor(addr, fuzzPolicy.Normalizer)
		if len(k.Fingerprint) != 40 && len(k.Fingerprint) != 64 {
			t.Errorf("fingerprint %q", k.Fingerprint)
		}
		// The stored form reads back as the same key, byte for byte.
		again, err := Parse(k.Raw)
		if err != nil {
			t.Errorf("key %s: its Raw form does not parse: %v", k.Fingerprint, err)
			continue
		}
		if len(again) != 1 || again[0].Fingerprint != k.Fingerprint || !bytes.Equal(again[0].Raw, k.Raw) {
			t.Errorf("key %s: Raw parses as %d key(s), not the same key", k.Fingerprint, len(again))
		}
		if armored, err := Parse(k.Armored()); err != nil || len(armored) != 1 || !bytes.Equal(armored[0].Raw, k.Raw) {
			t.Errorf("key %s: its armoured form does not parse back: %v", k.Fingerprint, err)
		}
	}
}

// FuzzNormalize checks that Normalize never panics, is idempotent (a
// stored address normalised again is the same key of the store), fails
// only with *AddressError, and agrees with Candidates, whose first
// candidate is the normalised address itself.
func FuzzNormalize(f *testing.F) {
	for _, s := range []string{
		"alice@example.org",
		"<Alice@EXAMPLE.org>",
		" <alice+tag@example.org> ",
		"Alice+Tag+More@Example.Org.",
		"@relay1.example,@relay2.example:bob@example.org",
		"<@relay:carol@example.org>",
		"\"alice\"@example.org",
		"\"a b\"@example.org",
		"\"a@b\"@example.org",
		"\"\"@example.org",
		"user@[192.0.2.1]",
		"user@[IPv6:2001:DB8::1]",
		"user@bücher.example",
		"user@xn--bcher-kva.example",
		"user@BÜCHER.example",
		"üser@example.org",
		"ÄLICE@example.org",
		"user@example..org",
		"user@-example.org",
		"user@" + strings.Repeat("a", 64) + ".org",
		"postmaster",
		"<>",
		"@",
		"a@",
		"@b",
		"a@b@c",
		"a@b c",
		"a b@c",
		"+tag@example.org",
		"a+@example.org",
		"a\x00@example.org",
		"a@exa\xffmple.org",
		"\xff@example.org",
	} {
		f.Add(s)
	}
	normalizers := []Normalizer{fuzzPolicy.Normalizer, {}, {SubaddressSeparator: "-"}}
	f.Fuzz(func(t *testing.T, addr string) {
		for _, n := range normalizers {
			norm, err := n.Normalize(addr)
			cands, cerr := n.Candidates(addr)
			if err != nil {
				var ae *AddressError
				if !errors.As(err, &ae) {
					t.Fatalf("%+v: Normalize(%q) error %T %v is not an *AddressError", n, addr, err, err)
				}
				if cerr == nil {
					t.Fatalf("%+v: Normalize(%q) failed (%v) but Candidates gave %q", n, addr, err, cands)
				}
				continue
			}
			if cerr != nil || len(cands) == 0 || cands[0] != norm {
				t.Fatalf("%+v: Candidates(%q) = %q, %v; Normalize = %q", n, addr, cands, cerr, norm)
			}
			again, err := n.Normalize(norm)
			if err != nil || again != norm {
				t.Fatalf("%+v: not idempotent: Normalize(%q) = %q, then Normalize(%q) = %q, %v", n, addr, norm, norm, again, err)
			}
			if strings.Count(norm, "@") > strings.Count(addr, "@") {
				t.Fatalf("%+v: Normalize(%q) = %q has more @ than the address", n, addr, norm)
			}
			if d := Domain(norm); d == "" || strings.ContainsAny(d, " \t\r\n<>\"") {
				t.Fatalf("%+v: Normalize(%q) = %q, domain %q", n, addr, norm, d)
			}
		}
	})
}
