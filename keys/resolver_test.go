package keys_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

func parseOne(t testing.TB, kind testkeys.Kind, address string) *keys.Key {
	t.Helper()
	k, _ := keystest.Key(t, kind, address)
	return k
}

// defaultOptions are the resolver options of the default configuration
// (cmd/lacre-milter builds them from lacre.toml).
func defaultOptions() keys.ResolverOptions {
	return keys.ResolverOptions{
		Policy:   keys.Policy{MinRSABits: 2048, Normalizer: keys.Normalizer{FoldLocalPartCase: true, SubaddressSeparator: "+"}},
		CacheTTL: 30 * time.Second,
	}
}

// resolverFixture builds a store and config that exercise every rule of
// the lookup order.
func resolverFixture(t *testing.T) (*keystest.Store, keys.ResolverOptions, map[string]*keys.Key) {
	ctx := context.Background()
	k := map[string]*keys.Key{
		"alice":   parseOne(t, testkeys.Curve25519, "alice@example.org"),
		"bob":     parseOne(t, testkeys.Curve25519, "bob@example.org"),
		"expired": parseOne(t, testkeys.ExpiredSubkey, "old@example.org"),
		"archive": parseOne(t, testkeys.Curve25519, "archive@example.net"),
		"team":    parseOne(t, testkeys.Curve25519, "team@example.org"),
	}
	s := keystest.NewStore()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.Add(ctx, "alice@example.org", []*keys.Key{k["alice"]}, false))
	must(s.Add(ctx, "bob@example.org", []*keys.Key{k["bob"]}, false))
	must(s.Add(ctx, "bob+lists@example.org", []*keys.Key{k["alice"]}, false))
	must(s.Add(ctx, "old@example.org", []*keys.Key{k["expired"]}, false))
	must(s.Add(ctx, "archive@example.net", []*keys.Key{k["archive"]}, false))
	must(s.Add(ctx, "team@example.org", []*keys.Key{k["team"]}, false))
	on := true
	must(s.SetPrefs(ctx, "bob@example.org", keys.Prefs{ProtectHeaders: &on}))

	c := defaultOptions()
	c.NeverEncrypt = []string{"Postmaster@Example.org", "alice+public@example.org"}
	c.Addresses = map[string][]string{
		"carol@example.org": {k["team"].Fingerprint, strings.ToLower(k["archive"].Fingerprint)},
	}
	c.Domains = map[string][]string{"example.net": {k["archive"].Fingerprint}}
	return s, c, k
}

func TestResolverLookupOrder(t *testing.T) {
	s, c, k := resolverFixture(t)
	r, err := keys.NewResolver(s, c)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		addr     string
		source   keys.Source
		matched  string
		keys     []*keys.Key
		unusable int
		protect  bool
	}{
		{"alice@example.org", keys.SourceStore, "alice@example.org", []*keys.Key{k["alice"]}, 0, false},
		{"<ALICE@Example.ORG>", keys.SourceStore, "alice@example.org", []*keys.Key{k["alice"]}, 0, false},
		{"alice+news@example.org", keys.SourceStore, "alice@example.org", []*keys.Key{k["alice"]}, 0, false},
		{"alice+public@example.org", keys.SourceNever, "alice+public@example.org", nil, 0, false},
		{"bob@example.org", keys.SourceStore, "bob@example.org", []*keys.Key{k["bob"]}, 0, true},
		// A subaddress with its own binding wins over the base address.
		{"bob+lists@example.org", keys.SourceStore, "bob+lists@example.org", []*keys.Key{k["alice"]}, 0, false},
		{"postmaster@example.org", keys.SourceNever, "postmaster@example.org", nil, 0, false},
		{"carol@example.org", keys.SourceStaticAddress, "carol@example.org", []*keys.Key{k["team"], k["archive"]}, 0, false},
		{"old@example.org", keys.SourceStore, "old@example.org", nil, 1, false},
		// The store's own entry for an address beats the domain mapping.
		{"archive@example.net", keys.SourceStore, "archive@example.net", []*keys.Key{k["archive"]}, 0, false},
		{"anyone@Example.NET", keys.SourceStaticDomain, "example.net", []*keys.Key{k["archive"]}, 0, false},
		{"nobody@example.org", keys.SourceNone, "", nil, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.addr, func(t *testing.T) {
			l, err := r.Resolve(context.Background(), tc.addr)
			if err != nil {
				t.Fatal(err)
			}
			if l.Source != tc.source || l.Matched != tc.matched {
				t.Errorf("source %s matched %q, want %s %q", l.Source, l.Matched, tc.source, tc.matched)
			}
			if fmt.Sprint(fprs(l.Keys)) != fmt.Sprint(fprs(tc.keys)) {
				t.Errorf("keys %v, want %v", fprs(l.Keys), fprs(tc.keys))
			}
			if len(l.Unusable) != tc.unusable || l.AllUnusable() != (tc.unusable > 0) {
				t.Errorf("unusable %v, want %d", l.Unusable, tc.unusable)
			}
			for _, u := range l.Unusable {
				t.Logf("unusable: %v", u)
			}
			if l.ProtectHeaders != tc.protect {
				t.Errorf("protect headers %v, want %v", l.ProtectHeaders, tc.protect)
			}
			if l.Encrypt() != (len(tc.keys) > 0) {
				t.Errorf("Encrypt() = %v", l.Encrypt())
			}
		})
	}
	// An address that does not normalise is an error, never "no key":
	// the MTA may understand it and deliver it to a keyed mailbox.
	for _, a := range []string{"postmaster", "<>", "user@-bad-.example", "alice(c)@example.org"} {
		l, err := r.Resolve(context.Background(), a)
		var ae *keys.AddressError
		if !errors.As(err, &ae) || l != nil {
			t.Errorf("Lookup(%q) = %+v, %v; want an keys.AddressError", a, l, err)
		}
	}
}

func fprs(ks []*keys.Key) []string {
	var out []string
	for _, k := range ks {
		out = append(out, k.Fingerprint[:8])
	}
	return out
}

func TestResolverCache(t *testing.T) {
	s, c, k := resolverFixture(t)
	now := time.Now()
	clock := func() time.Time { return now }
	c.CacheTTL = 30 * time.Second
	c.Now = clock
	r, err := keys.NewResolver(s, c)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	lookup := func(addr string) *keys.Recipient {
		t.Helper()
		l, err := r.Resolve(ctx, addr)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	lookup("nobody@example.org")
	lookup("alice@example.org")
	calls := s.Calls
	for range 100 {
		lookup("nobody@example.org")
		lookup("Alice@example.org")
	}
	if s.Calls != calls {
		t.Errorf("cached lookups reached the store %d times", s.Calls-calls)
	}

	// A key added elsewhere shows up once the TTL has passed…
	if err := s.Add(ctx, "nobody@example.org", []*keys.Key{k["bob"]}, false); err != nil {
		t.Fatal(err)
	}
	if lookup("nobody@example.org").Encrypt() {
		t.Error("cache expired early")
	}
	now = now.Add(31 * time.Second)
	if !lookup("nobody@example.org").Encrypt() {
		t.Error("new key not seen after the TTL")
	}
	// …and at once after an explicit invalidation.
	if _, err := s.Remove(ctx, "nobody@example.org", ""); err != nil {
		t.Fatal(err)
	}
	r.Invalidate("nobody@example.org")
	if lookup("nobody@example.org").Encrypt() {
		t.Error("removed key still used after Invalidate")
	}
	// Invalidating a base address also drops its subaddresses' answers.
	lookup("alice+x@example.org")
	if _, err := s.Remove(ctx, "alice@example.org", ""); err != nil {
		t.Fatal(err)
	}
	r.Invalidate("alice@example.org")
	if lookup("alice+x@example.org").Encrypt() {
		t.Error("subaddress answer survived the invalidation of its base address")
	}
	s.Add(ctx, "alice@example.org", []*keys.Key{k["alice"]}, false)
	r.InvalidateAll()
	if !lookup("alice+x@example.org").Encrypt() {
		t.Error("InvalidateAll kept a stale answer")
	}
}

// TestResolverCached: Cached answers what is in the cache, exactly as
// Lookup would, and never reaches the store.
func TestResolverCached(t *testing.T) {
	s, c, _ := resolverFixture(t)
	now := time.Now()
	c.CacheTTL = 30 * time.Second
	c.Now = func() time.Time { return now }
	r, err := keys.NewResolver(s, c)
	if err != nil {
		t.Fatal(err)
	}
	calls := s.Calls
	if l, ok := r.Cached("alice@example.org"); ok || l != nil {
		t.Fatalf("empty cache answered %+v", l)
	}
	if l, ok := r.Cached("postmaster"); ok || l != nil {
		t.Errorf("an address without a domain: %+v, %v; want no answer (Lookup says why)", l, ok)
	}
	if s.Calls != calls {
		t.Fatalf("Cached reached the store")
	}
	want, err := r.Resolve(context.Background(), "alice@example.org")
	if err != nil {
		t.Fatal(err)
	}
	if l, ok := r.Cached("Alice@EXAMPLE.org"); !ok || l != want {
		t.Errorf("after Lookup: %+v, %v; want the cached answer", l, ok)
	}
	if _, ok := r.Cached("alice+tag@example.org"); ok {
		t.Error("a subaddress was answered from its base address's entry")
	}
	calls = s.Calls
	now = now.Add(31 * time.Second)
	if _, ok := r.Cached("alice@example.org"); ok {
		t.Error("an expired entry was answered")
	}
	if s.Calls != calls {
		t.Errorf("Cached reached the store")
	}
}

func TestResolverFailsClosed(t *testing.T) {
	s, c, _ := resolverFixture(t)
	r, err := keys.NewResolver(s, c)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s.SetFail(errors.New("disk on fire"))
	_, err = r.Resolve(ctx, "alice@example.org")
	if !errors.Is(err, keys.ErrUnavailable) {
		t.Fatalf("store down: err = %v, want keys.ErrUnavailable", err)
	}
	// Errors are not cached: the store coming back is seen at once.
	s.SetFail(nil)
	if l, err := r.Resolve(ctx, "alice@example.org"); err != nil || !l.Encrypt() {
		t.Fatalf("after recovery: %v, %v", l, err)
	}

	// A static mapping to a key that is not in the store is an error, not "no key".
	c.Addresses = map[string][]string{"dave@example.org": {strings.Repeat("AB", 20)}}
	r, err = keys.NewResolver(s, c)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Resolve(ctx, "dave@example.org")
	if !errors.Is(err, keys.ErrStaticKeyMissing) {
		t.Fatalf("missing static key: err = %v", err)
	}
	t.Log(err)
}

func TestResolverRejectsBadStatic(t *testing.T) {
	fpr := strings.Repeat("AB", 20)
	for name, tweak := range map[string]func(*keys.ResolverOptions){
		"bad never_encrypt": func(c *keys.ResolverOptions) { c.NeverEncrypt = []string{"no-at-sign"} },
		"duplicate address": func(c *keys.ResolverOptions) {
			c.Addresses = map[string][]string{"Alice@example.org": {fpr}, "alice@EXAMPLE.org": {fpr}}
		},
		"address also never": func(c *keys.ResolverOptions) {
			c.NeverEncrypt = []string{"alice@example.org"}
			c.Addresses = map[string][]string{"Alice@example.org": {fpr}}
		},
		"duplicate domain": func(c *keys.ResolverOptions) {
			c.Domains = map[string][]string{"Bücher.example": {fpr}, "xn--bcher-kva.example": {fpr}}
		},
	} {
		c := defaultOptions()
		tweak(&c)
		_, err := keys.NewResolver(keystest.NewStore(), c)
		if err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

func BenchmarkResolverCached(b *testing.B) {
	s := keystest.NewStore()
	k := parseOne(b, testkeys.Curve25519, "alice@example.org")
	s.Add(context.Background(), "alice@example.org", []*keys.Key{k}, false)
	r, _ := keys.NewResolver(s, defaultOptions())
	ctx := context.Background()
	r.Resolve(ctx, "alice@example.org")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Resolve(ctx, "Alice@Example.org"); err != nil {
			b.Fatal(err)
		}
	}
}
