package milter

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/keys"
)

// slowResolver answers after a fixed time whatever the context says, as
// the SQLite store does while it waits for a lock another process holds
// (about 10 s of retries for a WAL read lock, with a 1 s context).
type slowResolver struct{ d time.Duration }

func (r slowResolver) Resolve(context.Context, string) (*keys.Recipient, error) {
	time.Sleep(r.d)
	return nil, errors.New("too late")
}

// TestLookupTimeoutBoundsASlowStore: milter.lookup_timeout bounds the
// RCPT reply even when the store does not heed the context: the MTA gets
// 451 4.3.0 in time (Sendmail waits 10 s by default), not when the store
// gives up.
func TestLookupTimeoutBoundsASlowStore(t *testing.T) {
	f := newFixture(t, nil)
	f.srv.Reload(Options{Keys: slowResolver{3 * time.Second}, LookupTimeout: 200 * time.Millisecond, MaxMessageSize: 1 << 20})
	m := f.connect(t, false)
	start := time.Now()
	r := m.send("Q40", []string{"alice@example.org"}, []byte(plainMsg))
	took := time.Since(start)
	if a := r.rcptReplies["alice@example.org"]; a == nil || a.SMTPCode != 451 || !strings.HasPrefix(a.SMTPText, "4.3.0 ") {
		t.Fatalf("reply %+v, want 451 4.3.0", a)
	}
	if took > 1500*time.Millisecond {
		t.Errorf("the RCPT reply took %v with lookup_timeout 200ms", took)
	}
	if !strings.Contains(f.logs.String(), "context deadline exceeded") {
		t.Errorf("the log does not say the lookup timed out:\n%s", f.logs.String())
	}
}

// cachedOnlyResolver answers from its "cache" at once and would block on
// the store for ever.
type cachedOnlyResolver struct{ l *keys.Recipient }

func (r cachedOnlyResolver) Resolve(ctx context.Context, _ string) (*keys.Recipient, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (r cachedOnlyResolver) Cached(string) (*keys.Recipient, bool) { return r.l, true }

// TestCachedAnswerNeedsNoLookup: a recipient whose answer is cached is
// answered from the cache (*keys.Resolver.Cached) without a Lookup, so
// the RCPT path starts no goroutine for it.
func TestCachedAnswerNeedsNoLookup(t *testing.T) {
	f := newFixture(t, nil)
	clear := &keys.Recipient{Address: "nobody@example.org", Source: keys.SourceNone}
	f.srv.Reload(Options{Keys: cachedOnlyResolver{clear}, LookupTimeout: 5 * time.Second, MaxMessageSize: 1 << 20})
	m := f.connect(t, false)
	start := time.Now()
	r := m.send("Q41", []string{"nobody@example.org"}, []byte(plainMsg))
	if len(r.rcptReplies) != 0 || r.endedAt != "data" || r.final.Code != 'a' {
		t.Fatalf("replies %v, ended at %s with %+v", r.rcptReplies, r.endedAt, r.final)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("took %v: the blocking Lookup was used", took)
	}
}
