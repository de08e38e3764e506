package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

func userErr(t *testing.T, err error) *Error {
	t.Helper()
	var ue *Error
	if !errors.As(err, &ue) {
		t.Fatalf("want a user error, got %v", err)
	}
	return ue
}

// TestSquattingDoesNotLockOutOwner: three pending requests from somebody
// else fill that source's slots for the address, not the owner's.
func TestSquattingDoesNotLockOutOwner(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	pub := testkeys.ArmoredPublic(t, alice)
	for range 3 {
		if _, err := f.svc.RequestRemoval(ctx, "alice@example.org", "198.51.100.66"); err != nil {
			t.Fatal(err)
		}
	}
	_, err := f.svc.Submit(ctx, "alice@example.org", pub, "198.51.100.66")
	if ue := userErr(t, err); ue.Status != 429 {
		t.Fatalf("the squatter's fourth request: %v", err)
	}
	// No count and no address in the answer.
	if ue := userErr(t, err); regexp.MustCompile(`[0-9]|alice`).MatchString(ue.Msg) {
		t.Errorf("the limit's message tells too much: %q", ue.Msg)
	}
	if _, err := f.svc.Submit(ctx, "alice@example.org", pub, "203.0.113.5"); err != nil {
		t.Fatalf("the owner is locked out by somebody else's pending requests: %v", err)
	}
}

// TestSubaddressesShareTheLimit: alice+1@, alice+2@, … count as alice@.
func TestSubaddressesShareTheLimit(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for i := range 3 {
		if _, err := f.svc.RequestRemoval(ctx, fmt.Sprintf("alice+%d@example.org", i), "198.51.100.66"); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range []string{"alice+9@example.org", "alice@example.org", "ALICE+x@example.org"} {
		if _, err := f.svc.RequestRemoval(ctx, a, "198.51.100.66"); userErr(t, err).Status != 429 {
			t.Errorf("%s after three subaddresses: %v", a, err)
		}
	}
}

// ctxStore honours contexts like the SQLite store does, which the
// memory store does not.
type ctxStore struct{ *keystest.Store }

func (s ctxStore) CreateRequests(ctx context.Context, now time.Time, lim keys.Limits, h [][]byte, rs []keys.Request) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", keys.ErrUnavailable, err)
	}
	return s.Store.CreateRequests(ctx, now, lim, h, rs)
}

func (s ctxStore) DeleteRequests(ctx context.Context, h [][]byte) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", keys.ErrUnavailable, err)
	}
	return s.Store.DeleteRequests(ctx, h)
}

// hangUpMailer is a client that disconnects while the mail is sent.
type hangUpMailer struct {
	hangUp func()
	fail   error
	sent   int
}

func (m *hangUpMailer) Send(ctx context.Context, _ string, _ []string, _ []byte) error {
	m.hangUp()
	if m.fail != nil {
		return m.fail
	}
	if err := ctx.Err(); err != nil {
		return err // a mailer that honours its context, like SMTPMailer
	}
	m.sent++
	return nil
}

// TestClientDisconnect: the work of a submission does not run on the HTTP
// request's context. A client that goes away mid-request leaves either a
// sent mail with its pending request, or nothing.
func TestClientDisconnect(t *testing.T) {
	store := ctxStore{keystest.NewStore()}
	f := newFixtureWith(t, store, nil)
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	count := func() int {
		n, _, _ := store.CountRequests(context.Background(), "alice@example.org", "192.0.2.1", time.Time{}, f.now)
		return n
	}
	for _, tc := range []struct {
		name    string
		fail    error
		pending int
	}{{"mail sent", nil, 1}, {"mail failed", errors.New("451 try later"), 0}} {
		ctx, cancel := context.WithCancel(context.Background())
		m := &hangUpMailer{hangUp: cancel, fail: tc.fail}
		f.svc.mailer = m
		_, err := f.svc.Submit(ctx, "alice@example.org", testkeys.ArmoredPublic(t, alice), "192.0.2.1")
		if (err == nil) != (tc.fail == nil) {
			t.Errorf("%s: %v", tc.name, err)
		}
		if got := count(); got != tc.pending || m.sent != tc.pending {
			t.Errorf("%s: %d pending requests and %d mails after the client hung up; want %d", tc.name, got, m.sent, tc.pending)
		}
		store.PurgeRequests(context.Background(), f.now.Add(100*time.Hour))
	}
}

// TestLimitsBeforeParsing: a limited client gets 429 before its key is
// even parsed; parsing is bounded; keys with too many parts are refused
// by named rules.
func TestLimitsBeforeParsing(t *testing.T) {
	f := newFixtureWith(t, nil, func(o *Options) { o.MaxRequestsPerClient = 1; o.MaxParallelParses = 1 })
	ctx := context.Background()
	if _, err := f.svc.RequestRemoval(ctx, "bob@example.org", "192.0.2.9"); err != nil {
		t.Fatal(err)
	}
	// Garbage: parsing it would answer 400; the limit comes first.
	_, err := f.svc.Submit(ctx, "alice@example.org", []byte(strings.Repeat("garbage ", 1000)), "192.0.2.9")
	if ue := userErr(t, err); ue.Status != 429 {
		t.Fatalf("a limited client's submission: %d %s (the key was parsed before the limit)", ue.Status, ue.Msg)
	}
	// The HTTP handler checks the per-client limit before reading the body.
	req := httptest.NewRequest("POST", "/api/v1/submit", strings.NewReader(`{"address": "x`)) // not even JSON
	req.Header.Set("Content-Type", "application/json")
	req.RemoteAddr = "192.0.2.9:1234"
	rec := httptest.NewRecorder()
	f.svc.Handler(nil).ServeHTTP(rec, req)
	if rec.Code != 429 {
		t.Errorf("limited client, broken body: %d, want 429", rec.Code)
	}

	// One parse at a time: while the slot is taken, a submission waits,
	// then gives up with 503.
	f.svc.parseWait = 50 * time.Millisecond
	f.svc.parse <- struct{}{}
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	_, err = f.svc.Submit(ctx, "alice@example.org", testkeys.ArmoredPublic(t, alice), "192.0.2.10")
	if ue := userErr(t, err); ue.Status != 503 || ue.Code != "busy" {
		t.Fatalf("with the parse slot taken: %v", err)
	}
	<-f.svc.parse

	cfg := &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA}
	manyIDs, _ := openpgp.NewEntity("Alice", "", "alice@example.org", cfg)
	for i := range MaxUserIDsPerKey {
		if err := manyIDs.AddUserId("Alice", fmt.Sprint(i), "alice@example.org", cfg); err != nil {
			t.Fatal(err)
		}
	}
	manySubkeys, _ := openpgp.NewEntity("Alice", "", "alice@example.org", cfg)
	for range MaxSubkeysPerKey {
		if err := manySubkeys.AddEncryptionSubkey(cfg); err != nil {
			t.Fatal(err)
		}
	}
	var four []byte
	for i := range 4 {
		e, _ := openpgp.NewEntity("Alice", fmt.Sprint(i), "alice@example.org", cfg)
		four = append(four, testkeys.ArmoredPublic(t, e)...)
	}
	for i, tc := range []struct {
		key  []byte
		rule keys.Rule
	}{{testkeys.ArmoredPublic(t, manyIDs), RuleUserIDCount}, {testkeys.ArmoredPublic(t, manySubkeys), RuleSubkeyCount}, {four, RuleKeyCount}} {
		_, err := f.svc.Submit(ctx, "alice@example.org", tc.key, fmt.Sprintf("192.0.2.%d", 20+i))
		if ue := userErr(t, err); ue.Status != 400 || ue.Rule != tc.rule {
			t.Errorf("want rule %s: %d %s %s", tc.rule, ue.Status, ue.Rule, ue.Msg)
		}
	}
	if len(f.mailer.sent) != 1 { // the removal's
		t.Errorf("%d mails sent", len(f.mailer.sent))
	}
}

// failingWrites is a store whose writes fail (a read-only database) while
// broken is set; reads work.
type failingWrites struct {
	*keystest.Store
	mu     sync.Mutex
	broken bool
}

func (s *failingWrites) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken {
		return fmt.Errorf("%w: attempt to write a readonly database", keys.ErrUnavailable)
	}
	return nil
}

func (s *failingWrites) set(b bool) { s.mu.Lock(); s.broken = b; s.mu.Unlock() }

func (s *failingWrites) CreateRequests(ctx context.Context, now time.Time, lim keys.Limits, h [][]byte, rs []keys.Request) error {
	if err := s.err(); err != nil {
		return err
	}
	return s.Store.CreateRequests(ctx, now, lim, h, rs)
}

func (s *failingWrites) PurgeRequests(ctx context.Context, now time.Time) (int, error) {
	if err := s.err(); err != nil {
		return 0, err
	}
	return s.Store.PurgeRequests(ctx, now)
}

func (s *failingWrites) Add(ctx context.Context, a string, ks []*keys.Key, replace bool) error {
	if err := s.err(); err != nil {
		return err
	}
	return s.Store.Add(ctx, a, ks, replace)
}

func healthz(t *testing.T, f *fixture) int {
	t.Helper()
	resp, err := http.Get(f.srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestHealthReflectsWriteFailures: /healthz is not ok while writes fail,
// and ok again, without a restart, once they work.
func TestHealthReflectsWriteFailures(t *testing.T) {
	store := &failingWrites{Store: keystest.NewStore()}
	f := newFixtureWith(t, store, nil)
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	submit := func() int {
		status, _ := apiCall(t, f, "/api/v1/submit", map[string]string{"address": "alice@example.org", "key": string(testkeys.ArmoredPublic(t, alice))})
		return status
	}
	if healthz(t, f) != 200 {
		t.Fatal("not healthy at the start")
	}
	store.set(true)
	if s := submit(); s != 503 {
		t.Fatalf("submission while writes fail: %d", s)
	}
	if s := healthz(t, f); s != 503 {
		t.Fatalf("/healthz while writes fail: %d", s)
	}
	store.set(false)
	if s := healthz(t, f); s != 200 {
		t.Fatalf("/healthz after the store healed: %d", s)
	}
	if s := submit(); s != 202 {
		t.Fatalf("submission after the store healed: %d", s)
	}
}

// checkedStore is a store with a Check method (the SQLite store's: file
// gone, replaced, or the last write failed).
type checkedStore struct {
	*keystest.Store
	fault error
}

func (s *checkedStore) Check(context.Context) error { return s.fault }

func TestHealthCallsStoreCheck(t *testing.T) {
	store := &checkedStore{Store: keystest.NewStore()}
	f := newFixtureWith(t, store, nil)
	if healthz(t, f) != 200 {
		t.Fatal("not healthy at the start")
	}
	store.fault = fmt.Errorf("%w: the store file was deleted", keys.ErrUnavailable)
	if s := healthz(t, f); s != 503 {
		t.Fatalf("/healthz with a failing store check: %d", s)
	}
}

// TestLimitedClientCostsNothing is the measurement as a
// regression test: 160 concurrent submissions of a 930 KB key with 2,600
// User IDs from an already limited source are refused without parsing
// (before: 42 s and 3.3 GB). A parse of that key allocates ~20 MB, so
// parsing all of them would allocate over 3 GB.
func TestLimitedClientCostsNothing(t *testing.T) {
	f := newFixture(t)
	cfg := &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA}
	e, _ := openpgp.NewEntity("Alice", "", "alice@example.org", cfg)
	for i := range 2600 {
		e.AddUserId("Alice Example With A Long Name", fmt.Sprint("comment number ", i), fmt.Sprintf("alice%d@example.org", i), cfg)
	}
	body, _ := json.Marshal(map[string]string{"address": "alice@example.org", "key": string(testkeys.ArmoredPublic(t, e))})
	for i := range 10 { // use up the source's hourly requests
		if _, err := f.svc.RequestRemoval(context.Background(), fmt.Sprintf("u%d@example.org", i), "198.51.100.1"); err != nil {
			t.Fatal(err)
		}
	}
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.TotalAlloc
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for range 160 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("POST", f.srv.URL+"/api/v1/submit", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-Forwarded-For", "198.51.100.1")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			mu.Lock()
			codes[resp.StatusCode]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	runtime.ReadMemStats(&ms)
	alloc := (ms.TotalAlloc - before) >> 20
	t.Logf("160 concurrent %d-byte submissions from a limited source: %v, %v, %d MB allocated", len(body), time.Since(start), codes, alloc)
	if codes[429] != 160 {
		t.Errorf("answers %v, want 160 × 429", codes)
	}
	if alloc > 500 {
		t.Errorf("%d MB allocated: the keys were parsed", alloc)
	}
}
