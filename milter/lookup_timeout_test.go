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

func (r slowResolver) Lookup(context.Context, string) (*keys.Lookup, error) {
	time.Sleep(r.d)
	return nil, errors.New("too late")
}

// TestLookupTimeoutBoundsASlowStore: milter.lookup_timeout bounds the
// RCPT reply even when the store does not heed the context: the MTA gets
// 451 4.3.0 in time (Sendmail waits 10 s by default), not when the store
// gives up.
func TestLookupTimeoutBoundsASlowStore(t *testing.T) {
	f := newFixture(t, nil)
	f.srv.Reload(&Settings{Resolver: slowResolver{3 * time.Second}, LookupTimeout: 200 * time.Millisecond, MaxMessageSize: 1 << 20})
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
