package keys_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// benchStores are the two stores the lookup benchmarks compare, each
// filled with benchAddresses addresses, every other one bound to one of
// eight keys (so half the lookups find a key and read its preferences,
// half find none).
const benchAddresses = 10_000

func benchStores(b *testing.B) map[string]keys.Store {
	b.Helper()
	ctx := context.Background()
	var ks []*keys.Key
	for i := range 8 {
		ks = append(ks, parseOne(b, testkeys.Curve25519, fmt.Sprintf("bench%d@example.org", i)))
	}
	sq, err := keys.InitSQLite(ctx, filepath.Join(b.TempDir(), "k.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sq.Close() })
	srv := sharedPG(b)
	pg, err := keys.OpenPostgres(ctx, srv.NewStore(b), srv.Options())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pg.Close() })
	out := map[string]keys.Store{"sqlite": sq, "postgres": pg}
	for _, s := range out {
		for i := 0; i < benchAddresses; i += 2 {
			if err := s.Add(ctx, benchAddress(i), []*keys.Key{ks[i%len(ks)]}, false); err != nil {
				b.Fatal(err)
			}
		}
	}
	return out
}

func benchAddress(i int) string { return fmt.Sprintf("user%05d@example.org", i) }

// BenchmarkStoreLookup: a resolver lookup over SQLite and PostgreSQL
// (private cluster on loopback). "cached" is a hit of the resolver's
// cache; "uncached" has no cache (cache_ttl 0, as a cold cache) and walks
// the 10,000 addresses in order, so every lookup is a query (two for an
// address with a key: its keys and its preferences) plus the key's
// usability check.
func BenchmarkStoreLookup(b *testing.B) {
	ctx := context.Background()
	stores := benchStores(b)
	for _, name := range []string{"sqlite", "postgres"} {
		s := stores[name]
		b.Run(name+"/cached", func(b *testing.B) {
			r, _ := keys.NewResolver(s, defaultOptions())
			if _, err := r.Resolve(ctx, benchAddress(0)); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.Resolve(ctx, benchAddress(0)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/uncached", func(b *testing.B) {
			opt := defaultOptions()
			opt.CacheTTL = 0
			r, _ := keys.NewResolver(s, opt)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				l, err := r.Resolve(ctx, benchAddress(i%benchAddresses))
				if err != nil {
					b.Fatal(err)
				}
				if l.Encrypt() != (i%benchAddresses%2 == 0) {
					b.Fatalf("%s: Encrypt %v", benchAddress(i), l.Encrypt())
				}
				i++
			}
		})
		// The clear-mail case of bench/throughput.sh: an address with no
		// key, not cached (one KeysFor query, no key to check).
		b.Run(name+"/uncached-nokey", func(b *testing.B) {
			opt := defaultOptions()
			opt.CacheTTL = 0
			r, _ := keys.NewResolver(s, opt)
			b.ReportAllocs()
			i := 1
			for b.Loop() {
				l, err := r.Resolve(ctx, benchAddress(i%benchAddresses))
				if err != nil {
					b.Fatal(err)
				}
				if l.Encrypt() {
					b.Fatalf("%s: has a key", benchAddress(i))
				}
				i += 2
			}
		})
		// The same through Resolver.Quick, as the milter asks first: the
		// SQLite store answers from its keyed-address set (one
		// PRAGMA data_version on its checker goroutine), PostgreSQL
		// cannot and leaves it to Resolve.
		b.Run(name+"/quick-nokey", func(b *testing.B) {
			opt := defaultOptions()
			opt.CacheTTL = 0
			r, _ := keys.NewResolver(s, opt)
			b.ReportAllocs()
			i := 1
			for b.Loop() {
				l, ok := r.Quick(ctx, benchAddress(i%benchAddresses))
				if name == "postgres" {
					if ok {
						b.Fatal("Quick answered over PostgreSQL")
					}
					continue
				}
				if !ok || l.Encrypt() {
					b.Fatalf("%s: Quick = %v, %v", benchAddress(i), l, ok)
				}
				i += 2
			}
		})
		b.Run(name+"/parallel-uncached", func(b *testing.B) {
			opt := defaultOptions()
			opt.CacheTTL = 0
			r, _ := keys.NewResolver(s, opt)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if _, err := r.Resolve(ctx, benchAddress(i%benchAddresses)); err != nil {
						b.Fatal(err)
					}
					i += 7
				}
			})
		})
	}
}
