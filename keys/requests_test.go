package keys

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"lacre.io/milter/internal/testkeys"
)

// TestRequests runs the same checks against both Requests implementations.
func TestRequests(t *testing.T) {
	sq, err := InitSQLite(context.Background(), filepath.Join(t.TempDir(), "k.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer sq.Close()
	for name, s := range map[string]Requests{"sqlite": sq, "memory": NewMemoryStore()} {
		t.Run(name, func(t *testing.T) { testRequests(t, s) })
	}
}

func testRequests(t *testing.T, s Requests) {
	ctx := context.Background()
	k := parseOne(t, testkeys.Curve25519, "alice@example.org")
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	add := Request{Action: ActionAdd, Address: "alice@example.org", Keys: []*Key{k}, ClientIP: "192.0.2.1", Created: now, Expires: now.Add(48 * time.Hour)}
	rm := Request{Action: ActionRemove, Address: "alice@example.org", ClientIP: "192.0.2.2", Created: now, Expires: now.Add(time.Hour)}
	old := Request{Action: ActionRemove, Address: "bob@example.org", ClientIP: "192.0.2.1", Created: now.Add(-72 * time.Hour), Expires: now.Add(-24 * time.Hour)}
	for h, r := range map[string]Request{"t-add": add, "t-rm": rm, "t-old": old} {
		if err := s.CreateRequest(ctx, []byte(h), r); err != nil {
			t.Fatal(err)
		}
	}
	a, c, err := s.CountRequests(ctx, "alice@example.org", "192.0.2.1", now.Add(-time.Hour), now.Add(-time.Hour), now)
	if err != nil || a != 2 || c != 1 {
		t.Errorf("counts: %d by address, %d by client, %v; want 2, 1", a, c, err)
	}
	// Each count has its own window.
	if a, c, _ := s.CountRequests(ctx, "alice@example.org", "192.0.2.1", now.Add(time.Minute), now.Add(-time.Hour), now); a != 0 || c != 1 {
		t.Errorf("separate windows: %d by address, %d by client; want 0, 1", a, c)
	}
	got, err := s.TakeRequest(ctx, []byte("t-add"), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if got.Action != ActionAdd || got.Address != add.Address || len(got.Keys) != 1 || !bytes.Equal(got.Keys[0].Raw, k.Raw) ||
		!got.Expires.Equal(add.Expires) || got.ClientIP != add.ClientIP {
		t.Errorf("took %+v, want %+v", got, add)
	}
	if _, err := s.TakeRequest(ctx, []byte("t-add"), now); !errors.Is(err, ErrNotFound) {
		t.Errorf("second use of a token: %v, want ErrNotFound", err)
	}
	if _, err := s.TakeRequest(ctx, []byte("t-rm"), now.Add(2*time.Hour)); !errors.Is(err, ErrExpired) {
		t.Errorf("expired token: %v, want ErrExpired", err)
	}
	if _, err := s.TakeRequest(ctx, []byte("t-rm"), now); !errors.Is(err, ErrNotFound) {
		t.Errorf("an expired token is deleted when used: %v", err)
	}
	if n, err := s.PurgeRequests(ctx, now); err != nil || n != 1 {
		t.Errorf("purge: %d, %v; want 1", n, err)
	}
	// Racing confirmations: exactly one wins.
	s.CreateRequest(ctx, []byte("t-race"), add)
	var wg sync.WaitGroup
	wins := make(chan struct{}, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.TakeRequest(ctx, []byte("t-race"), now); err == nil {
				wins <- struct{}{}
			}
		}()
	}
	wg.Wait()
	if len(wins) != 1 {
		t.Errorf("%d confirmations of one token succeeded", len(wins))
	}
}
