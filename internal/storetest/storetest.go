// Package storetest is the conformance suite of keys.Store and
// keys.Requests: every store lacre can use (SQLite, PostgreSQL) must pass
// it, so that the milter, the CLI and the registration service cannot
// tell them apart. keys/sqlite_test.go and keys/postgres_test.go run it.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/smimetest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// Store is what the suite tests.
type Store interface {
	keys.Store
	keys.Requests
	// SetClock replaces the clock that dates bindings.
	SetClock(now func() time.Time)
}

// New returns two handles on one fresh, empty store (as the milter and
// the CLI have: two processes, or two hosts), closed when t ends.
type New func(t *testing.T) (s, other Store)

// Run runs the whole suite.
func Run(t *testing.T, newStore New) {
	t.Run("Bindings", func(t *testing.T) { testBindings(t, newStore) })
	t.Run("AddUpdatesMaterial", func(t *testing.T) { testAddUpdatesMaterial(t, newStore) })
	t.Run("AddRefusesNoKeys", func(t *testing.T) { testAddRefusesNoKeys(t, newStore) })
	t.Run("List", func(t *testing.T) { testList(t, newStore) })
	t.Run("Prefs", func(t *testing.T) { testPrefs(t, newStore) })
	t.Run("PrefsFormat", func(t *testing.T) { testPrefsFormat(t, newStore) })
	t.Run("Certificates", func(t *testing.T) { testCertificates(t, newStore) })
	t.Run("Closed", func(t *testing.T) { testClosed(t, newStore) })
	t.Run("CanceledContext", func(t *testing.T) { testCanceled(t, newStore) })
	t.Run("ConcurrentReaders", func(t *testing.T) { testConcurrentReaders(t, newStore) })
	t.Run("ConcurrentWriters", func(t *testing.T) { testConcurrentWriters(t, newStore) })
	t.Run("Requests", func(t *testing.T) { s, _ := newStore(t); testRequests(t, s) })
	t.Run("RequestLimits", func(t *testing.T) { s, _ := newStore(t); testRequestLimits(t, s) })
}

// RunRequests runs the part of the suite about keys.Requests, for stores
// that hold only requests (internal/keystest's memory store).
func RunRequests(t *testing.T, newStore func(t *testing.T) keys.Requests) {
	t.Run("Requests", func(t *testing.T) { testRequests(t, newStore(t)) })
	t.Run("RequestLimits", func(t *testing.T) { testRequestLimits(t, newStore(t)) })
}

// freshKey generates a new key for email (not shared with other tests,
// unlike testkeys.Generate: the suite needs several keys per address).
func freshKey(t *testing.T, email string) (*keys.Key, *openpgp.Entity) {
	t.Helper()
	e, err := openpgp.NewEntity("Test", "", email, &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
		t.Fatal(err)
	}
	return keystest.Parse(t, e), e
}

func newKey(t *testing.T, _ testkeys.Kind, email string) *keys.Key {
	k, _ := freshKey(t, email)
	return k
}

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

var base = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) tick() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Second)
}

func withClock(s Store) *clock {
	c := &clock{t: base}
	s.SetClock(c.now)
	return c
}

func fingerprints(ks []*keys.Key) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = k.Fingerprint
	}
	return out
}

func testBindings(t *testing.T, newStore New) {
	ctx := context.Background()
	const alice, bob = "alice@example.org", "bob@example.org"
	ka1, _ := freshKey(t, alice)
	ka2, _ := freshKey(t, alice)
	kb, _ := freshKey(t, bob)
	kshared, _ := freshKey(t, "team@example.org")

	type step func(t *testing.T, s Store, clk *clock)
	add := func(addr string, replace bool, ks ...*keys.Key) step {
		return func(t *testing.T, s Store, clk *clock) {
			t.Helper()
			if err := s.Add(ctx, addr, ks, replace); err != nil {
				t.Fatalf("Add(%s): %v", addr, err)
			}
			clk.tick()
		}
	}
	want := func(addr string, ks ...*keys.Key) step {
		return func(t *testing.T, s Store, clk *clock) {
			t.Helper()
			got, err := s.KeysFor(ctx, addr)
			if err != nil {
				t.Fatalf("KeysFor(%s): %v", addr, err)
			}
			if got == nil {
				t.Fatalf("KeysFor(%s) = nil, want a non-nil slice", addr)
			}
			if !slices.Equal(fingerprints(got), fingerprints(ks)) {
				t.Fatalf("KeysFor(%s) = %v, want %v", addr, fingerprints(got), fingerprints(ks))
			}
			for i := range got {
				if !bytes.Equal(got[i].Raw, ks[i].Raw) {
					t.Fatalf("KeysFor(%s)[%d]: material differs from what was added", addr, i)
				}
				if len(got[i].UserIDs()) == 0 {
					t.Fatalf("KeysFor(%s)[%d]: not parsed (no User IDs)", addr, i)
				}
			}
		}
	}
	remove := func(addr, fp string, n int, wantErr error) step {
		return func(t *testing.T, s Store, clk *clock) {
			t.Helper()
			got, err := s.Remove(ctx, addr, fp)
			if !errors.Is(err, wantErr) || (wantErr == nil) != (err == nil) {
				t.Fatalf("Remove(%s, %q) error = %v, want %v", addr, fp, err, wantErr)
			}
			if err != nil && errors.Is(err, keys.ErrUnavailable) {
				t.Fatalf("Remove(%s, %q) error %v is ErrUnavailable", addr, fp, err)
			}
			if got != n {
				t.Fatalf("Remove(%s, %q) = %d, want %d", addr, fp, got, n)
			}
		}
	}
	stored := func(k *keys.Key, present bool) step {
		return func(t *testing.T, s Store, clk *clock) {
			t.Helper()
			got, err := s.KeyByFingerprint(ctx, k.Fingerprint)
			switch {
			case present && err != nil:
				t.Fatalf("KeyByFingerprint(%s): %v", k.Fingerprint, err)
			case present && !bytes.Equal(got.Raw, k.Raw):
				t.Fatalf("KeyByFingerprint(%s): material differs", k.Fingerprint)
			case !present && !errors.Is(err, keys.ErrNotFound):
				t.Fatalf("KeyByFingerprint(%s) error = %v, want ErrNotFound", k.Fingerprint, err)
			case !present && errors.Is(err, keys.ErrUnavailable):
				t.Fatalf("KeyByFingerprint(%s) error %v is ErrUnavailable", k.Fingerprint, err)
			}
		}
	}
	// sameSecond adds without ticking: the order must still be the order
	// of the Adds.
	sameSecond := func(addr string, ks ...*keys.Key) step {
		return func(t *testing.T, s Store, clk *clock) {
			t.Helper()
			if err := s.Add(ctx, addr, ks, false); err != nil {
				t.Fatalf("Add(%s): %v", addr, err)
			}
		}
	}

	tests := []struct {
		name  string
		steps []step
	}{
		{"empty address", []step{want(alice)}},
		{"round trip", []step{add(alice, false, ka1), want(alice, ka1), stored(ka1, true)}},
		{"two keys oldest first", []step{
			add(alice, false, ka2), add(alice, false, ka1), want(alice, ka2, ka1),
		}},
		{"two keys in one Add keep their order", []step{
			add(alice, false, ka2, ka1), want(alice, ka2, ka1),
		}},
		{"two Adds in the same second keep their order", []step{
			sameSecond(alice, ka2), sameSecond(alice, ka1), want(alice, ka2, ka1),
		}},
		{"re-adding keeps the binding's place", []step{
			add(alice, false, ka1), add(alice, false, ka2), add(alice, false, ka1), want(alice, ka1, ka2),
		}},
		{"same key on two addresses", []step{
			add(alice, false, kshared), add(bob, false, kshared, kb),
			want(alice, kshared), want(bob, kshared, kb),
			remove(alice, kshared.Fingerprint, 1, nil),
			want(alice), want(bob, kshared, kb), stored(kshared, true),
		}},
		{"replace", []step{
			add(alice, false, ka1, kshared), add(bob, false, kshared),
			add(alice, true, ka2, kshared), want(alice, kshared, ka2),
			stored(ka1, false), stored(kshared, true), want(bob, kshared),
		}},
		{"replace with the same key", []step{
			add(alice, false, ka1), add(alice, true, ka1), want(alice, ka1), stored(ka1, true),
		}},
		{"remove one", []step{
			add(alice, false, ka1, ka2), remove(alice, ka1.Fingerprint, 1, nil), want(alice, ka2),
		}},
		{"remove all", []step{
			add(alice, false, ka1, ka2), add(bob, false, kb),
			remove(alice, "", 2, nil), want(alice), want(bob, kb),
		}},
		{"remove missing", []step{
			remove(alice, "", 0, keys.ErrNotFound),
			remove(alice, ka1.Fingerprint, 0, keys.ErrNotFound),
			add(bob, false, ka1),
			remove(alice, ka1.Fingerprint, 0, keys.ErrNotFound),
			want(bob, ka1),
		}},
		{"unbound keys are collected", []step{
			add(alice, false, ka1, ka2),
			remove(alice, ka1.Fingerprint, 1, nil), stored(ka1, false), stored(ka2, true),
			remove(alice, "", 1, nil), stored(ka2, false),
		}},
		{"missing fingerprint", []step{stored(kb, false)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newStore(t)
			clk := withClock(s)
			for _, st := range tt.steps {
				st(t, s, clk)
			}
		})
	}
}

func testAddUpdatesMaterial(t *testing.T, newStore New) {
	ctx := context.Background()
	s, other := newStore(t)
	clk := withClock(s)
	old, e := freshKey(t, "alice@example.org")
	if err := s.Add(ctx, "alice@example.org", []*keys.Key{old}, false); err != nil {
		t.Fatal(err)
	}
	clk.tick()
	if err := e.AddUserId("Alice", "", "alice@example.net", nil); err != nil {
		t.Fatal(err)
	}
	refreshed := keystest.Parse(t, e)
	if refreshed.Fingerprint != old.Fingerprint || bytes.Equal(refreshed.Raw, old.Raw) {
		t.Fatal("test setup: want the same key with other material")
	}
	if err := s.Add(ctx, "alice@example.net", []*keys.Key{refreshed}, false); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"alice@example.org", "alice@example.net"} {
		got, err := other.KeysFor(ctx, addr)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || !bytes.Equal(got[0].Raw, refreshed.Raw) {
			t.Fatalf("KeysFor(%s): want the refreshed material", addr)
		}
		if len(got[0].UserIDs()) != 2 {
			t.Fatalf("KeysFor(%s): User IDs %v, want two", addr, got[0].UserIDs())
		}
	}
	// The first binding keeps its time.
	bs, err := other.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 2 || bs[1].Address != "alice@example.org" || !bs[1].Added.Equal(base) {
		t.Fatalf("List = %+v", bs)
	}
}

func testAddRefusesNoKeys(t *testing.T, newStore New) {
	ctx := context.Background()
	s, _ := newStore(t)
	k, _ := freshKey(t, "alice@example.org")
	if err := s.Add(ctx, "alice@example.org", []*keys.Key{k}, false); err != nil {
		t.Fatal(err)
	}
	for _, ks := range [][]*keys.Key{nil, {nil}, {{Fingerprint: "AB"}}} {
		if err := s.Add(ctx, "alice@example.org", ks, true); err == nil {
			t.Fatalf("Add(%v, replace) succeeded", ks)
		}
	}
	if got, err := s.KeysFor(ctx, "alice@example.org"); err != nil || len(got) != 1 {
		t.Fatalf("KeysFor after refused Add = %v, %v; want the old key", got, err)
	}
}

func testList(t *testing.T, newStore New) {
	ctx := context.Background()
	s, other := newStore(t)
	clk := withClock(s)
	shared, _ := freshKey(t, "shared@example.org")
	kz, _ := freshKey(t, "zoe@example.org")
	ka, _ := freshKey(t, "anna@example.org")
	if bs, err := other.List(ctx); err != nil || len(bs) != 0 {
		t.Fatalf("List of an empty store = %v, %v", bs, err)
	}
	for _, st := range []struct {
		addr string
		k    *keys.Key
	}{
		{"zoe@example.org", kz},
		{"anna@example.org", shared},
		{"zoe@example.org", shared},
		{"anna@example.org", ka},
	} {
		if err := s.Add(ctx, st.addr, []*keys.Key{st.k}, false); err != nil {
			t.Fatal(err)
		}
		clk.tick()
	}
	bs, err := other.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		addr  string
		k     *keys.Key
		added time.Time
	}{
		{"anna@example.org", shared, base.Add(1 * time.Second)},
		{"anna@example.org", ka, base.Add(3 * time.Second)},
		{"zoe@example.org", kz, base},
		{"zoe@example.org", shared, base.Add(2 * time.Second)},
	}
	if len(bs) != len(want) {
		t.Fatalf("List returned %d bindings, want %d", len(bs), len(want))
	}
	for i, w := range want {
		b := bs[i]
		if b.Address != w.addr || b.Key.Fingerprint != w.k.Fingerprint || !b.Added.Equal(w.added) || b.Added.Location() != time.UTC {
			t.Errorf("List[%d] = %s %s %v, want %s %s %v", i, b.Address, b.Key.Fingerprint, b.Added, w.addr, w.k.Fingerprint, w.added)
		}
	}
	if bs[0].Key != bs[3].Key {
		t.Error("List: a key bound to two addresses is parsed twice (want one shared *Key)")
	}
}

func testPrefs(t *testing.T, newStore New) {
	ctx := context.Background()
	s, other := newStore(t)
	yes, no := true, false
	const addr = "alice@example.org"
	if p, err := s.Prefs(ctx, addr); err != nil || p.ProtectHeaders != nil {
		t.Fatalf("Prefs of an unknown address = %+v, %v; want zero", p, err)
	}
	for _, tt := range []struct {
		name string
		in   *bool
	}{{"true", &yes}, {"false", &no}, {"nil", nil}, {"true again", &yes}} {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.SetPrefs(ctx, addr, keys.Prefs{ProtectHeaders: tt.in}); err != nil {
				t.Fatal(err)
			}
			p, err := other.Prefs(ctx, addr)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tt.in == nil && p.ProtectHeaders != nil:
				t.Fatalf("ProtectHeaders = %v, want nil", *p.ProtectHeaders)
			case tt.in != nil && (p.ProtectHeaders == nil || *p.ProtectHeaders != *tt.in):
				t.Fatalf("ProtectHeaders = %v, want %v", p.ProtectHeaders, *tt.in)
			}
		})
	}
	if p, err := s.Prefs(ctx, "bob@example.org"); err != nil || p.ProtectHeaders != nil {
		t.Fatalf("Prefs of another address = %+v, %v; want zero", p, err)
	}
}

// testPrefsFormat: the format and header protection are stored
// independently of each other, and an unknown format is refused by the
// store itself (its CHECK constraint), not stored for the milter to meet.
func testPrefsFormat(t *testing.T, newStore New) {
	ctx := context.Background()
	s, other := newStore(t)
	const addr = "alice@example.org"
	yes := true
	for _, f := range []keys.Format{keys.FormatSMIME, keys.FormatPGPInline, keys.FormatPGPMIME, keys.FormatDefault} {
		if err := s.SetPrefs(ctx, addr, keys.Prefs{ProtectHeaders: &yes, Format: f}); err != nil {
			t.Fatal(err)
		}
		p, err := other.Prefs(ctx, addr)
		if err != nil || p.Format != f || p.ProtectHeaders == nil || !*p.ProtectHeaders {
			t.Fatalf("after SetPrefs(format %s) Prefs = %+v, %v", f, p, err)
		}
	}
	if err := s.SetPrefs(ctx, addr, keys.Prefs{Format: "pgp-mime; DROP TABLE keys"}); err == nil {
		t.Fatal("SetPrefs stored an unknown format")
	}
	if p, err := other.Prefs(ctx, addr); err != nil || p.Format != keys.FormatDefault {
		t.Fatalf("after a refused format Prefs = %+v, %v", p, err)
	}
}

func testClosed(t *testing.T, newStore New) {
	ctx := context.Background()
	s, _ := newStore(t)
	k, _ := freshKey(t, "alice@example.org")
	if err := s.Add(ctx, "alice@example.org", []*keys.Key{k}, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, errKeysFor := s.KeysFor(ctx, "alice@example.org")
	_, errByFP := s.KeyByFingerprint(ctx, k.Fingerprint)
	errAdd := s.Add(ctx, "alice@example.org", []*keys.Key{k}, false)
	_, errRemove := s.Remove(ctx, "alice@example.org", "")
	_, errList := s.List(ctx)
	_, errPrefs := s.Prefs(ctx, "alice@example.org")
	errSetPrefs := s.SetPrefs(ctx, "alice@example.org", keys.Prefs{})
	_, errFind := s.FindRequest(ctx, []byte("x"), time.Now())
	_, _, errCount := s.CountRequests(ctx, "a@example.org", "192.0.2.1", time.Now(), time.Now())
	for name, err := range map[string]error{
		"KeysFor": errKeysFor, "KeyByFingerprint": errByFP, "Add": errAdd, "Remove": errRemove,
		"List": errList, "Prefs": errPrefs, "SetPrefs": errSetPrefs, "FindRequest": errFind, "CountRequests": errCount,
	} {
		if !errors.Is(err, keys.ErrUnavailable) || errors.Is(err, keys.ErrNotFound) {
			t.Errorf("%s on a closed store: %v; want ErrUnavailable", name, err)
		}
	}
}

func testCanceled(t *testing.T, newStore New) {
	s, _ := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.KeysFor(ctx, "alice@example.org")
	if !errors.Is(err, keys.ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("KeysFor with a cancelled context: %v; want ErrUnavailable and context.Canceled", err)
	}
	k, _ := freshKey(t, "alice@example.org")
	if err := s.Add(ctx, "alice@example.org", []*keys.Key{k}, false); !errors.Is(err, keys.ErrUnavailable) {
		t.Fatalf("Add with a cancelled context: %v; want ErrUnavailable", err)
	}
	if got, err := s.KeysFor(context.Background(), "alice@example.org"); err != nil || len(got) != 0 {
		t.Fatalf("after a cancelled Add: %v, %v; want nothing stored", got, err)
	}
}

// testConcurrentReaders runs readers on one handle (the milter) while a
// writer on the other (the CLI) keeps replacing and removing keys.
// Readers must never fail and must only ever see a whole state: both of
// alice's keys or neither, never one.
func testConcurrentReaders(t *testing.T, newStore New) {
	ctx := context.Background()
	reader, writer := newStore(t)
	const alice = "alice@example.org"
	k1, _ := freshKey(t, alice)
	k2, _ := freshKey(t, alice)
	if err := writer.Add(ctx, alice, []*keys.Key{k1, k2}, false); err != nil {
		t.Fatal(err)
	}
	const readers, reads = 4, 200
	done := make(chan struct{})
	errs := make(chan error, readers+1)
	var wg sync.WaitGroup
	var writes int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-done:
				writes = i
				return
			default:
			}
			var err error
			if i%2 == 0 {
				_, err = writer.Remove(ctx, alice, "")
			} else {
				err = writer.Add(ctx, alice, []*keys.Key{k2, k1}, true)
			}
			if err != nil {
				errs <- fmt.Errorf("writer: %w", err)
				return
			}
		}
	}()
	var rg sync.WaitGroup
	for range readers {
		rg.Add(1)
		go func() {
			defer rg.Done()
			for range reads {
				ks, err := reader.KeysFor(ctx, alice)
				if err != nil {
					errs <- fmt.Errorf("reader: %w", err)
					return
				}
				if len(ks) != 0 && len(ks) != 2 {
					errs <- fmt.Errorf("reader saw %d keys, want 0 or 2", len(ks))
					return
				}
			}
		}()
	}
	rg.Wait()
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d writes during %d reads", writes, readers*reads)
}

// testConcurrentWriters: two handles move one key between two addresses
// at once, over and over (two hosts' CLIs, or the CLI and the web
// service). No write may fail, and the key must never be collected while
// an address still holds it.
func testConcurrentWriters(t *testing.T, newStore New) {
	ctx := context.Background()
	a, b := newStore(t)
	shared, _ := freshKey(t, "team@example.org")
	own, _ := freshKey(t, "team@example.org")
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for i, s := range []Store{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr := fmt.Sprintf("w%d@example.org", i)
			for range 40 {
				if err := s.Add(ctx, addr, []*keys.Key{shared}, true); err != nil {
					errs <- err
					return
				}
				if err := s.Add(ctx, addr, []*keys.Key{own}, true); err != nil {
					errs <- err
					return
				}
			}
			if err := s.Add(ctx, addr, []*keys.Key{shared, own}, true); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, addr := range []string{"w0@example.org", "w1@example.org"} {
		ks, err := a.KeysFor(ctx, addr)
		if err != nil || !slices.Equal(fingerprints(ks), []string{shared.Fingerprint, own.Fingerprint}) &&
			!slices.Equal(fingerprints(ks), []string{own.Fingerprint, shared.Fingerprint}) {
			t.Errorf("KeysFor(%s) = %v, %v; want both keys", addr, fingerprints(ks), err)
		}
	}
	bs, err := b.List(ctx)
	if err != nil || len(bs) != 4 {
		t.Errorf("List: %d bindings, %v; want 4", len(bs), err)
	}
}

var lim = keys.Limits{PerAddress: 3, PerClient: 10}

func testRequests(t *testing.T, s keys.Requests) {
	ctx := context.Background()
	k := newKey(t, testkeys.Curve25519, "alice@example.org")
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
	two.Keys = []*keys.Key{k, newKey(t, testkeys.Curve25519, "alice@example.org")}
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
	k := newKey(t, testkeys.Curve25519, "alice@example.org")
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

// testCertificates: an S/MIME certificate (with its issuer, as a chain)
// is stored beside an OpenPGP key of the same address and comes back as
// the same certificate, end-entity first, whichever handle reads it.
func testCertificates(t *testing.T, newStore New) {
	ctx := context.Background()
	s, other := newStore(t)
	const addr = "alice@example.org"
	ca := smimetest.New(t, smimetest.Spec{Key: smimetest.P256, CommonName: "Test CA", CA: true})
	leaf := smimetest.New(t, smimetest.Spec{Key: smimetest.RSA2048, Addresses: []string{addr}, Parent: ca})
	// The chain file lists the CA first: the store must keep the
	// end-entity certificate first all the same.
	pemFile := append(ca.PEM(), leaf.PEM()...)
	parsed, err := keys.ParseAny(pemFile, addr, keys.Normalizer{})
	if err != nil {
		t.Fatal(err)
	}
	cert := parsed[0]
	pgp := newKey(t, testkeys.Curve25519, addr)
	if err := s.Add(ctx, addr, []*keys.Key{pgp, cert}, false); err != nil {
		t.Fatal(err)
	}
	got, err := other.KeysFor(ctx, addr)
	if err != nil || len(got) != 2 {
		t.Fatalf("KeysFor = %v, %v; want 2 keys", got, err)
	}
	var c *keys.Key
	for _, k := range got {
		if k.Kind() == keys.KindX509 {
			c = k
		}
	}
	if c == nil {
		t.Fatalf("KeysFor kinds = %v %v; want an x509 key", got[0].Kind(), got[1].Kind())
	}
	if c.Fingerprint != cert.Fingerprint || !bytes.Equal(c.Raw, cert.Raw) {
		t.Fatalf("stored certificate %s came back as %s", cert.Fingerprint, c.Fingerprint)
	}
	if cc := c.Certificate(); !bytes.Equal(cc.Cert.Raw, leaf.Cert.Raw) || len(cc.Chain) != 1 || !bytes.Equal(cc.Chain[0].Raw, ca.Cert.Raw) {
		t.Fatalf("stored certificate came back with the wrong end entity or chain")
	}
	byFpr, err := other.KeyByFingerprint(ctx, cert.Fingerprint)
	if err != nil || byFpr.Kind() != keys.KindX509 || byFpr.Fingerprint != cert.Fingerprint {
		t.Fatalf("KeyByFingerprint = %v, %v", byFpr, err)
	}
	if n, err := s.Remove(ctx, addr, cert.Fingerprint); err != nil || n != 1 {
		t.Fatalf("Remove of the certificate = %d, %v", n, err)
	}
	if got, err := other.KeysFor(ctx, addr); err != nil || len(got) != 1 || got[0].Kind() != keys.KindOpenPGP {
		t.Fatalf("after removing the certificate KeysFor = %v, %v; want the OpenPGP key alone", got, err)
	}
}
