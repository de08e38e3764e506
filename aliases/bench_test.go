package aliases

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// benchEnv is a configuration with a 10,000-entry lmdb virtual table
// (user<i>@example.com -> mbox<i>@example.net) and the test's other
// tables (regexp, pcre, canonical, aliases).
func benchEnv(b *testing.B) *pfEnv {
	e := newEnv(b, "")
	var sb strings.Builder
	sb.WriteString(mustRead(b, e.path("virtual")))
	for i := range 10000 {
		fmt.Fprintf(&sb, "user%d@example.com\tmbox%d@example.net\n", i, i)
	}
	e.table("postmap", "lmdb", "virtual", sb.String())
	return e
}

// spread is recipient i of n, spread over the 10,000 entries.
func spread(i int) string { return fmt.Sprintf("user%d@example.com", (i*7919)%10000) }

// BenchmarkExpandColdStart: a new expander (nothing loaded, nothing
// cached) expands 10,000 distinct recipients spread over the table; the
// figure is per recipient and includes the postconf runs, the one
// postmap -s dump of each table, and the regexp and pcre tables
// (evaluated in process; they see every address).
func BenchmarkExpandColdStart(b *testing.B) {
	e := benchEnv(b)
	ctx := context.Background()
	const n = 10000
	b.ResetTimer()
	for range b.N {
		p := e.open(PostfixOptions{})
		for i := range n {
			if _, err := p.Expand(ctx, spread(i)); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/recipient")
}

// BenchmarkExpandColdStartMemoryOnly: as above with only in-memory tables
// (virtual_alias_maps = the lmdb table alone), 10,000 recipients.
func BenchmarkExpandColdStartMemoryOnly(b *testing.B) {
	e := benchEnv(b)
	main := mustRead(b, e.path("main.cf"))
	i := strings.Index(main, "virtual_alias_maps =")
	j := strings.Index(main[i:], "\n")
	e.write("main.cf", main[:i]+"virtual_alias_maps = lmdb:"+e.path("virtual")+main[i+j:])
	ctx := context.Background()
	const n = 10000
	b.ResetTimer()
	for range b.N {
		p := e.open(PostfixOptions{})
		for i := range n {
			if _, err := p.Expand(ctx, spread(i)); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/recipient")
}

// BenchmarkExpandCached: the same recipient again (expansion cache hit).
func BenchmarkExpandCached(b *testing.B) {
	e := benchEnv(b)
	p := e.open(PostfixOptions{CacheTTL: time.Hour})
	ctx := context.Background()
	if _, err := p.Expand(ctx, "user42@example.com"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := p.Expand(ctx, "user42@example.com"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExpandUncachedMemory: no expansion cache, tables in memory
// (loaded before the timer): the full search order, canonical, virtual
// and the local-domain check for each recipient, with only the lmdb table
// in virtual_alias_maps (no postmap run).
func BenchmarkExpandUncachedMemory(b *testing.B) {
	e := benchEnv(b)
	main := mustRead(b, e.path("main.cf"))
	i := strings.Index(main, "virtual_alias_maps =")
	j := strings.Index(main[i:], "\n")
	e.write("main.cf", main[:i]+"virtual_alias_maps = lmdb:"+e.path("virtual")+main[i+j:])
	p := e.open(PostfixOptions{})
	p.cache = newTTLCache[Expansion](0, 1, time.Now) // no expansion cache
	ctx := context.Background()
	if err := p.Check(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := p.Expand(ctx, spread(i)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExpandUncachedQuery: a fresh recipient each time through the
// regexp and pcre tables asked through postmap (NoPatternInProcess: one
// postmap -q run per table per address).
func BenchmarkExpandUncachedQuery(b *testing.B) {
	e := benchEnv(b)
	p := e.open(PostfixOptions{NoPatternInProcess: true})
	ctx := context.Background()
	if err := p.Check(ctx); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		if _, err := p.Expand(ctx, fmt.Sprintf("fresh%d@example.net", i)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExpandUncachedPattern: a fresh recipient each time through the
// lmdb table and the regexp and pcre tables evaluated in process.
func BenchmarkExpandUncachedPattern(b *testing.B) {
	e := benchEnv(b)
	p := e.open(PostfixOptions{})
	p.cache = newTTLCache[Expansion](0, 1, time.Now) // no expansion cache
	ctx := context.Background()
	if err := p.Check(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := p.Expand(ctx, spread(i)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExpandCachedProbe: the milter's first question on the RCPT
// path, Cached (no goroutine, no context), for a cached recipient.
func BenchmarkExpandCachedProbe(b *testing.B) {
	e := benchEnv(b)
	p := e.open(PostfixOptions{CacheTTL: time.Hour})
	if _, err := p.Expand(context.Background(), "user42@example.com"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := p.Cached("user42@example.com"); !ok {
			b.Fatal("not cached")
		}
	}
}
