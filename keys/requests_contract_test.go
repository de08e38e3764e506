package keys_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// TestRequests runs the same checks against both keys.Requests implementations.
func TestRequests(t *testing.T) {
	for name, open := range map[string]func(t *testing.T) keys.Requests{
		"sqlite": func(t *testing.T) keys.Requests {
			sq, err := keys.InitSQLite(context.Background(), filepath.Join(t.TempDir(), "k.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { sq.Close() })
			return sq
		},
		"memory": func(*testing.T) keys.Requests { return keystest.NewStore() },
	} {
		t.Run(name, func(t *testing.T) { testRequests(t, open(t)) })
		t.Run(name+"/limits", func(t *testing.T) { testRequestLimits(t, open(t)) })
	}
}

var lim = keys.Limits{PerAddress: 3, PerClient: 10}

func testRequests(t *testing.T, s keys.Requests) {
	ctx := context.Background()
	k := parseOne(t, testkeys.Curve25519, "alice@example.org")
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	l := lim
	l.ClientSince = now.Add(-time.Hour)
	add := keys.Request{Action: keys.ActionAdd, Address: "alice@example.org", Keys: []*keys.Key{k}, Submission: "s1", Submitted: []string{k.Fingerprint, "B"},
		State: []string{"X", "Y"}, LimitAddress: "alice@example.org", ClientIP: "192.0.2.1", Created: now, Expires: now.Add(48 * time.Hour)}
	rm := keys.Request{Action: keys.ActionRemove, Address: "alice@example.org", Submission: "s2", LimitAddress: "alice@example.org", ClientIP: "192.0.2.2", Created: now, Expires: now.Add(time.Hour)}
	old := keys.Request{Action: keys.ActionRemove, Address: "bob@example.org", Submission: "s3", LimitAddress: "bob@example.org", ClientIP: "192.0.2.1", Created: now.Add(-72 * time.Hour), Expires: now.Add(-24 * time.Hour)}
	for h, r := range map[string]keys.Request{"t-add": add, "t-rm": rm, "t-old": old} {
		if err := s.CreateRequests(ctx, now, l, [][]byte{[]byte(h)}, []keys.Request{r}); err != nil {
			t.Fatal(err)
		}
	}
	// Per address, the count is per (folded address, client).
	a, c, err := s.CountRequests(ctx, "alice@example.org", "192.0.2.1", now.Add(-time.Hour), now)
	if err != nil || a != 1 || c != 1 {
		t.Errorf("counts: %d by address, %d by client, %v; want 1, 1", a, c, err)
	}
	if a, c, _ := s.CountRequests(ctx, "alice@example.org", "192.0.2.1", now.Add(time.Minute), now); a != 1 || c != 0 {
		t.Errorf("client window: %d by address, %d by client; want 1, 0", a, c)
	}
	// Find does not use the token up.
	for range 2 {
		got, err := s.FindRequest(ctx, []byte("t-add"), now)
		if err != nil || got.Submission != "s1" {
			t.Fatalf("find: %+v, %v", got, err)
		}
	}
	got, err := s.TakeRequest(ctx, []byte("t-add"), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if got.Action != keys.ActionAdd || got.Address != add.Address || len(got.Keys) != 1 || !bytes.Equal(got.Keys[0].Raw, k.Raw) ||
		!got.Expires.Equal(add.Expires) || got.ClientIP != add.ClientIP || got.Submission != "s1" ||
		!slices.Equal(got.Submitted, add.Submitted) || !slices.Equal(got.State, add.State) || got.LimitAddress != add.LimitAddress {
		t.Errorf("took %+v, want %+v", got, add)
	}
	if _, err := s.TakeRequest(ctx, []byte("t-add"), now); !errors.Is(err, keys.ErrNotFound) {
		t.Errorf("second use of a token: %v, want keys.ErrNotFound", err)
	}
	if _, err := s.FindRequest(ctx, []byte("t-rm"), now.Add(2*time.Hour)); !errors.Is(err, keys.ErrExpired) {
		t.Errorf("find an expired token: %v, want keys.ErrExpired", err)
	}
	if _, err := s.TakeRequest(ctx, []byte("t-rm"), now.Add(2*time.Hour)); !errors.Is(err, keys.ErrExpired) {
		t.Errorf("expired token: %v, want keys.ErrExpired", err)
	}
	if _, err := s.TakeRequest(ctx, []byte("t-rm"), now); !errors.Is(err, keys.ErrNotFound) {
		t.Errorf("an expired token is deleted when used: %v", err)
	}
	if n, err := s.PurgeRequests(ctx, now); err != nil || n != 1 {
		t.Errorf("purge: %d, %v; want 1", n, err)
	}
	// A request stores one key: several keys under one token are refused.
	two := add
	two.Keys = []*keys.Key{k, parseOne(t, testkeys.Curve25519, "alice@example.org")}
	if err := s.CreateRequests(ctx, now, l, [][]byte{[]byte("t-two")}, []keys.Request{two}); err == nil {
		t.Error("a request with two keys was stored")
	}
	// Drop: the requests of other submissions for the address go.
	s1b, s2 := add, add
	s2.Submission = "s2"
	other := add
	other.Address, other.LimitAddress = "alice+x@example.org", "alice@example.org"
	if err := s.CreateRequests(ctx, now, l, [][]byte{[]byte("d1"), []byte("d2"), []byte("d3")}, []keys.Request{s1b, s2, other}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.DropRequests(ctx, "alice@example.org", "s1"); err != nil || n != 1 {
		t.Errorf("drop: %d, %v; want 1", n, err)
	}
	for h, want := range map[string]bool{"d1": true, "d2": false, "d3": true} {
		if _, err := s.FindRequest(ctx, []byte(h), now); (err == nil) != want {
			t.Errorf("after drop, %s: %v", h, err)
		}
	}
	if err := s.DeleteRequests(ctx, [][]byte{[]byte("d1"), []byte("d3")}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FindRequest(ctx, []byte("d1"), now); !errors.Is(err, keys.ErrNotFound) {
		t.Errorf("deleted request: %v", err)
	}
	// Racing confirmations: exactly one wins.
	s.CreateRequests(ctx, now, l, [][]byte{[]byte("t-race")}, []keys.Request{add})
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

// testRequestLimits: the limits hold under concurrent submissions (the
// count and the insert are one transaction), count per source, and a
// batch is stored all or none.
func testRequestLimits(t *testing.T, s keys.Requests) {
	ctx := context.Background()
	k := parseOne(t, testkeys.Curve25519, "alice@example.org")
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	l := keys.Limits{PerAddress: 3, PerClient: 1000, ClientSince: now.Add(-time.Hour)}
	req := func(client string) keys.Request {
		return keys.Request{Action: keys.ActionAdd, Address: "alice@example.org", Keys: []*keys.Key{k}, LimitAddress: "alice@example.org",
			ClientIP: client, Created: now, Expires: now.Add(48 * time.Hour)}
	}
	// Several rounds, each for its own address, so that a check made
	// outside the insert's transaction is caught reliably.
	for round := range 5 {
		var wg sync.WaitGroup
		var mu sync.Mutex
		accepted, limited := 0, 0
		for i := range 60 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := req("192.0.2.66")
				r.LimitAddress = fmt.Sprintf("round%d@example.org", round)
				err := s.CreateRequests(ctx, now, l, [][]byte{fmt.Appendf(nil, "race-%d-%d", round, i)}, []keys.Request{r})
				mu.Lock()
				defer mu.Unlock()
				var le *keys.LimitError
				switch {
				case err == nil:
					accepted++
				case errors.As(err, &le) && le.PerAddress && errors.Is(err, keys.ErrLimited):
					limited++
				default:
					t.Errorf("submission %d: %v", i, err)
				}
			}()
		}
		wg.Wait()
		if accepted != 3 || limited != 57 {
			t.Errorf("round %d, 60 concurrent submissions: %d accepted, %d limited; want 3, 57", round, accepted, limited)
		}
	}
	for i := range 3 {
		if err := s.CreateRequests(ctx, now, l, [][]byte{fmt.Appendf(nil, "squat-%d", i)}, []keys.Request{req("192.0.2.66")}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateRequests(ctx, now, l, [][]byte{[]byte("squat-4")}, []keys.Request{req("192.0.2.66")}); !errors.Is(err, keys.ErrLimited) {
		t.Fatalf("a fourth pending request from one source: %v", err)
	}
	// Another source is not blocked by the first one's pending requests.
	if err := s.CreateRequests(ctx, now, l, [][]byte{[]byte("owner")}, []keys.Request{req("198.51.100.7")}); err != nil {
		t.Errorf("the owner's request after somebody else's three: %v", err)
	}
	// A batch that would exceed the limit stores nothing.
	err := s.CreateRequests(ctx, now, l, [][]byte{[]byte("b1"), []byte("b2"), []byte("b3")},
		[]keys.Request{req("198.51.100.7"), req("198.51.100.7"), req("198.51.100.7")})
	if !errors.Is(err, keys.ErrLimited) {
		t.Fatalf("batch over the limit: %v", err)
	}
	if _, err := s.FindRequest(ctx, []byte("b1"), now); !errors.Is(err, keys.ErrNotFound) {
		t.Errorf("part of a refused batch was stored: %v", err)
	}
	// The per-client limit counts every request of the client.
	l2 := keys.Limits{PerAddress: 100, PerClient: 2, ClientSince: now.Add(-time.Hour)}
	r := req("203.0.113.9")
	for i, want := range []bool{true, true, false} {
		r.LimitAddress = fmt.Sprintf("u%d@example.org", i)
		err := s.CreateRequests(ctx, now, l2, [][]byte{fmt.Appendf(nil, "c%d", i)}, []keys.Request{r})
		var le *keys.LimitError
		if (err == nil) != want || (!want && (!errors.As(err, &le) || le.PerAddress)) {
			t.Errorf("client request %d: %v", i, err)
		}
	}
}
