package keys

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/config"
	"lacre.io/milter/internal/testkeys"
)

func parseOne(t testing.TB, kind testkeys.Kind, address string) *Key {
	t.Helper()
	ks, err := Parse(testkeys.Public(t, testkeys.Generate(t, kind, address)))
	if err != nil {
		t.Fatal(err)
	}
	return ks[0]
}

// resolverFixture builds a store and config that exercise every rule of
// the lookup order.
func resolverFixture(t *testing.T) (*MemoryStore, *config.Config, map[string]*Key) {
	ctx := context.Background()
	k := map[string]*Key{
		"alice":   parseOne(t, testkeys.Curve25519, "alice@example.org"),
		"bob":     parseOne(t, testkeys.Curve25519, "bob@example.org"),
		"expired": parseOne(t, testkeys.ExpiredSubkey, "old@example.org"),
		"archive": parseOne(t, testkeys.Curve25519, "archive@example.net"),
		"team":    parseOne(t, testkeys.Curve25519, "team@example.org"),
	}
	s := NewMemoryStore()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.Add(ctx, "alice@example.org", []*Key{k["alice"]}, false))
	must(s.Add(ctx, "bob@example.org", []*Key{k["bob"]}, false))
	must(s.Add(ctx, "bob+lists@example.org", []*Key{k["alice"]}, false))
	must(s.Add(ctx, "old@example.org", []*Key{k["expired"]}, false))
	must(s.Add(ctx, "archive@example.net", []*Key{k["archive"]}, false))
	must(s.Add(ctx, "team@example.org", []*Key{k["team"]}, false))
	on := true
	must(s.SetPrefs(ctx, "bob@example.org", Prefs{ProtectHeaders: &on}))

	c := config.Default()
	c.Static.NeverEncrypt = []string{"Postmaster@Example.org", "alice+public@example.org"}
	c.Static.Addresses = map[string][]string{
		"carol@example.org": {k["team"].Fingerprint, strings.ToLower(k["archive"].Fingerprint)},
	}
	c.Static.Domains = map[string][]string{"example.net": {k["archive"].Fingerprint}}
	return s, c, k
}

func TestResolverLookupOrder(t *testing.T) {
	s, c, k := resolverFixture(t)
	r, err := NewResolver(s, c, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		addr     string
		source   Source
		matched  string
		keys     []*Key
		unusable int
		protect  bool
	}{
		{"alice@example.org", SourceStore, "alice@example.org", []*Key{k["alice"]}, 0, false},
		{"<ALICE@Example.ORG>", SourceStore, "alice@example.org", []*Key{k["alice"]}, 0, false},
		{"alice+news@example.org", SourceStore, "alice@example.org", []*Key{k["alice"]}, 0, false},
		{"alice+public@example.org", SourceNever, "alice+public@example.org", nil, 0, false},
		{"bob@example.org", SourceStore, "bob@example.org", []*Key{k["bob"]}, 0, true},
		// A subaddress with its own binding wins over the base address.
		{"bob+lists@example.org", SourceStore, "bob+lists@example.org", []*Key{k["alice"]}, 0, false},
		{"postmaster@example.org", SourceNever, "postmaster@example.org", nil, 0, false},
		{"carol@example.org", SourceStaticAddress, "carol@example.org", []*Key{k["team"], k["archive"]}, 0, false},
		{"old@example.org", SourceStore, "old@example.org", nil, 1, false},
		// The store's own entry for an address beats the domain mapping.
		{"archive@example.net", SourceStore, "archive@example.net", []*Key{k["archive"]}, 0, false},
		{"anyone@Example.NET", SourceStaticDomain, "example.net", []*Key{k["archive"]}, 0, false},
		{"nobody@example.org", SourceNone, "", nil, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.addr, func(t *testing.T) {
			l, err := r.Lookup(context.Background(), tc.addr)
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
		l, err := r.Lookup(context.Background(), a)
		var ae *AddressError
		if !errors.As(err, &ae) || l != nil {
			t.Errorf("Lookup(%q) = %+v, %v; want an AddressError", a, l, err)
		}
	}
}

func fprs(ks []*Key) []string {
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
	c.Store.CacheTTL = config.Duration(30 * time.Second)
	r, err := NewResolver(s, c, clock)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	lookup := func(addr string) *Lookup {
		t.Helper()
		l, err := r.Lookup(ctx, addr)
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
	if err := s.Add(ctx, "nobody@example.org", []*Key{k["bob"]}, false); err != nil {
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
	s.Add(ctx, "alice@example.org", []*Key{k["alice"]}, false)
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
	c.Store.CacheTTL = config.Duration(30 * time.Second)
	r, err := NewResolver(s, c, func() time.Time { return now })
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
	want, err := r.Lookup(context.Background(), "alice@example.org")
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
	r, err := NewResolver(s, c, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s.SetFail(errors.New("disk on fire"))
	_, err = r.Lookup(ctx, "alice@example.org")
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("store down: err = %v, want ErrUnavailable", err)
	}
	// Errors are not cached: the store coming back is seen at once.
	s.SetFail(nil)
	if l, err := r.Lookup(ctx, "alice@example.org"); err != nil || !l.Encrypt() {
		t.Fatalf("after recovery: %v, %v", l, err)
	}

	// A static mapping to a key that is not in the store is an error, not "no key".
	c.Static.Addresses = map[string][]string{"dave@example.org": {strings.Repeat("AB", 20)}}
	r, err = NewResolver(s, c, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Lookup(ctx, "dave@example.org")
	if !errors.Is(err, ErrStaticKeyMissing) {
		t.Fatalf("missing static key: err = %v", err)
	}
	t.Log(err)
}

func TestResolverRejectsBadStatic(t *testing.T) {
	fpr := strings.Repeat("AB", 20)
	for name, tweak := range map[string]func(*config.Config){
		"bad never_encrypt": func(c *config.Config) { c.Static.NeverEncrypt = []string{"no-at-sign"} },
		"duplicate address": func(c *config.Config) {
			c.Static.Addresses = map[string][]string{"Alice@example.org": {fpr}, "alice@EXAMPLE.org": {fpr}}
		},
		"address also never": func(c *config.Config) {
			c.Static.NeverEncrypt = []string{"alice@example.org"}
			c.Static.Addresses = map[string][]string{"Alice@example.org": {fpr}}
		},
		"duplicate domain": func(c *config.Config) {
			c.Static.Domains = map[string][]string{"Bücher.example": {fpr}, "xn--bcher-kva.example": {fpr}}
		},
	} {
		c := config.Default()
		tweak(c)
		_, err := NewResolver(NewMemoryStore(), c, nil)
		if err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

func BenchmarkResolverCached(b *testing.B) {
	s := NewMemoryStore()
	k := parseOne(b, testkeys.Curve25519, "alice@example.org")
	s.Add(context.Background(), "alice@example.org", []*Key{k}, false)
	r, _ := NewResolver(s, config.Default(), nil)
	ctx := context.Background()
	r.Lookup(ctx, "alice@example.org")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Lookup(ctx, "Alice@Example.org"); err != nil {
			b.Fatal(err)
		}
	}
}
