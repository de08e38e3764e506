package aliases

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestQuick: Quick answers exactly as Expand does when the tables are in
// memory and fresh, and leaves everything else to Expand: tables not read
// yet, tables due for their check, errors.
func TestQuick(t *testing.T) {
	e := newEnv(t, "")
	var mu sync.Mutex
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	p := e.open(PostfixOptions{CacheTTL: time.Minute, now: clock})
	p.cache = newTTLCache[Expansion](0, 1, clock) // no expansion cache: every Quick expands
	ref := e.open(PostfixOptions{})
	ctx := context.Background()
	inputs := []string{"info@example.com", "sales@example.com", "INFO@Example.Com", "chain1@example.com",
		"self@example.com", "joe+special@example.com", "joe+foo@example.com", "o1+ext@order.example",
		"o4+ext@order.example", "webmaster@example.org", "webmaster@[127.0.0.1]", "webmaster@example.com",
		"anyone@catch.example", "fwd@example.com", "re-zoe@example.com", "RX@EXAMPLE.COM", "pc.yan@example.com",
		"old.name@example.com", "root@example.org", "root", "team@example.org", "tagged+x@example.org",
		"localalias@example.com", "nobody@example.net", "alice@example.org"}
	failing := []string{"loopa@example.com", "big@example.com", "aloop1@example.org"}

	if got, ok := p.Quick("info@example.com"); ok {
		t.Fatalf("Quick before any table was read: %+v", got)
	}
	for _, in := range append(inputs, failing...) {
		p.Expand(ctx, in) // reads the tables
	}
	for _, in := range inputs {
		want, err := ref.Expand(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := p.Quick(in)
		if !ok {
			t.Errorf("Quick(%q): not answered with every table in memory", in)
			continue
		}
		if got.Input != want.Input || got.Expanded != want.Expanded || !slices.Equal(got.Targets, want.Targets) {
			t.Errorf("Quick(%q) = %+v; Expand says %+v", in, got, want)
		}
	}
	for _, in := range failing {
		if got, ok := p.Quick(in); ok {
			t.Errorf("Quick(%q) = %+v; Expand fails", in, got)
		}
	}
	// Past the tables' check interval, only Expand (which stats them)
	// may answer.
	mu.Lock()
	now = now.Add(2 * time.Second)
	mu.Unlock()
	for _, in := range inputs {
		if got, ok := p.Quick(in); ok {
			t.Fatalf("Quick(%q) = %+v with the tables due for their check", in, got)
		}
	}
	// Expand checks them; then Quick answers again.
	for _, in := range inputs {
		p.Expand(ctx, in)
	}
	if _, ok := p.Quick("info@example.com"); !ok {
		t.Error("Quick does not answer after Expand checked the tables")
	}
}

// TestQuickCaches: a Quick expansion is cached like Expand's.
func TestQuickCaches(t *testing.T) {
	e := newEnv(t, "")
	p := e.open(PostfixOptions{CacheTTL: time.Minute})
	if _, err := p.Expand(context.Background(), "sales@example.com"); err != nil {
		t.Fatal(err)
	}
	got, ok := p.Quick("info@example.com")
	if !ok || !slices.Equal(got.Targets, mb("alice@example.net")) {
		t.Fatalf("Quick = %+v, %v", got, ok)
	}
	got.Targets[0].Addr = "mallory@example.net"
	if c, ok := p.Cached("info@example.com"); !ok || !slices.Equal(c.Targets, mb("alice@example.net")) {
		t.Fatalf("Cached after Quick = %+v, %v", c, ok)
	}
}

// TestLookupNoWait: each kind of table answers from memory only while
// fresh, and never when it is in error.
func TestLookupNoWait(t *testing.T) {
	e := newEnv(t, "")
	var mu sync.Mutex
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	p := e.open(PostfixOptions{CacheTTL: time.Minute, now: clock})
	ctx := context.Background()
	kinds := map[string]bool{}
	for _, tb := range p.tables.tables {
		if _, _, err := tb.lookupNoWait("nobody@example.net"); err != errWouldWait {
			t.Errorf("%s (%s): answered before it was read: %v", tb.name, tb.method, err)
		}
		if _, _, err := tb.lookup(ctx, "nobody@example.net", nil); err != nil {
			t.Fatal(err)
		}
		_, _, err := tb.lookupNoWait("nobody@example.net")
		switch tb.method {
		case MethodMemory, MethodPattern:
			if err != nil {
				t.Errorf("%s (%s): not answered when fresh: %v", tb.name, tb.method, err)
			}
		case MethodQuery:
			if err != nil {
				t.Errorf("%s (%s): cached answer not given: %v", tb.name, tb.method, err)
			}
			if _, _, err := tb.lookupNoWait("other@example.net"); err != errWouldWait {
				t.Errorf("%s (%s): uncached key answered: %v", tb.name, tb.method, err)
			}
		}
		kinds[tb.method] = true
	}
	if !kinds[MethodMemory] || !kinds[MethodPattern] {
		t.Fatalf("the test tables cover %v, want memory and pattern", kinds)
	}
	mu.Lock()
	now = now.Add(2 * time.Second)
	mu.Unlock()
	for _, tb := range p.tables.tables {
		if tb.method == MethodQuery {
			continue
		}
		if _, _, err := tb.lookupNoWait("nobody@example.net"); err != errWouldWait {
			t.Errorf("%s (%s): answered past its check interval: %v", tb.name, tb.method, err)
		}
	}
}
