package keys

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

// Helpers carry an "sqlt" prefix: other test files of this package are
// written in parallel and must not collide with these names.

// sqltEntity generates a fresh Ed25519/Curve25519 certificate for email.
func sqltEntity(t *testing.T, email string) *openpgp.Entity {
	t.Helper()
	e, err := openpgp.NewEntity("Test", "", email, &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func sqltNewKey(t *testing.T, email string) *Key {
	t.Helper()
	return parsePublic(t, sqltEntity(t, email))
}

// sqltClock is a settable clock for binding times.
type sqltClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *sqltClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *sqltClock) tick() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Second)
}

// sqltOpen opens a fresh store in a temp dir, with a clock starting at a
// fixed time.
func sqltOpen(t *testing.T) (*SQLiteStore, *sqltClock, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys.db")
	s, err := InitSQLite(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	clk := &sqltClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	s.now = clk.now
	return s, clk, path
}

func sqltFingerprints(ks []*Key) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = k.Fingerprint
	}
	return out
}

func sqltEqual(a, b []string) bool {
	return strings.Join(a, ",") == strings.Join(b, ",")
}

func TestSQLiteStore(t *testing.T) {
	ctx := context.Background()
	const alice, bob = "alice@example.org", "bob@example.org"
	ka1 := sqltNewKey(t, alice)
	ka2 := sqltNewKey(t, alice)
	kb := sqltNewKey(t, bob)
	kshared := sqltNewKey(t, "team@example.org")

	type step func(t *testing.T, s *SQLiteStore, clk *sqltClock)
	add := func(addr string, replace bool, ks ...*Key) step {
		return func(t *testing.T, s *SQLiteStore, clk *sqltClock) {
			t.Helper()
			if err := s.Add(ctx, addr, ks, replace); err != nil {
				t.Fatalf("Add(%s): %v", addr, err)
			}
			clk.tick()
		}
	}
	want := func(addr string, ks ...*Key) step {
		return func(t *testing.T, s *SQLiteStore, clk *sqltClock) {
			t.Helper()
			got, err := s.KeysFor(ctx, addr)
			if err != nil {
				t.Fatalf("KeysFor(%s): %v", addr, err)
			}
			if got == nil {
				t.Fatalf("KeysFor(%s) = nil, want a non-nil slice", addr)
			}
			if !sqltEqual(sqltFingerprints(got), sqltFingerprints(ks)) {
				t.Fatalf("KeysFor(%s) = %v, want %v", addr, sqltFingerprints(got), sqltFingerprints(ks))
			}
			for i := range got {
				if !bytes.Equal(got[i].Raw, ks[i].Raw) {
					t.Fatalf("KeysFor(%s)[%d]: material differs from what was added", addr, i)
				}
				if got[i].entity == nil {
					t.Fatalf("KeysFor(%s)[%d]: no parsed entity", addr, i)
				}
			}
		}
	}
	remove := func(addr, fp string, n int, wantErr error) step {
		return func(t *testing.T, s *SQLiteStore, clk *sqltClock) {
			t.Helper()
			got, err := s.Remove(ctx, addr, fp)
			if !errors.Is(err, wantErr) || (wantErr == nil) != (err == nil) {
				t.Fatalf("Remove(%s, %q) error = %v, want %v", addr, fp, err, wantErr)
			}
			if err != nil && errors.Is(err, ErrUnavailable) {
				t.Fatalf("Remove(%s, %q) error %v is ErrUnavailable", addr, fp, err)
			}
			if got != n {
				t.Fatalf("Remove(%s, %q) = %d, want %d", addr, fp, got, n)
			}
		}
	}
	stored := func(k *Key, present bool) step {
		return func(t *testing.T, s *SQLiteStore, clk *sqltClock) {
			t.Helper()
			got, err := s.KeyByFingerprint(ctx, k.Fingerprint)
			switch {
			case present && err != nil:
				t.Fatalf("KeyByFingerprint(%s): %v", k.Fingerprint, err)
			case present && !bytes.Equal(got.Raw, k.Raw):
				t.Fatalf("KeyByFingerprint(%s): material differs", k.Fingerprint)
			case !present && !errors.Is(err, ErrNotFound):
				t.Fatalf("KeyByFingerprint(%s) error = %v, want ErrNotFound", k.Fingerprint, err)
			case !present && errors.Is(err, ErrUnavailable):
				t.Fatalf("KeyByFingerprint(%s) error %v is ErrUnavailable", k.Fingerprint, err)
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
			remove(alice, "", 0, ErrNotFound),
			remove(alice, ka1.Fingerprint, 0, ErrNotFound),
			add(bob, false, ka1),
			remove(alice, ka1.Fingerprint, 0, ErrNotFound),
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
			s, clk, _ := sqltOpen(t)
			for _, st := range tt.steps {
				st(t, s, clk)
			}
		})
	}
}

func TestSQLiteAddUpdatesMaterial(t *testing.T) {
	ctx := context.Background()
	s, clk, _ := sqltOpen(t)
	e := sqltEntity(t, "alice@example.org")
	old := parsePublic(t, e)
	if err := s.Add(ctx, "alice@example.org", []*Key{old}, false); err != nil {
		t.Fatal(err)
	}
	clk.tick()
	if err := e.AddUserId("Alice", "", "alice@example.net", nil); err != nil {
		t.Fatal(err)
	}
	refreshed := parsePublic(t, e)
	if refreshed.Fingerprint != old.Fingerprint || bytes.Equal(refreshed.Raw, old.Raw) {
		t.Fatal("test setup: want the same key with other material")
	}
	if err := s.Add(ctx, "alice@example.net", []*Key{refreshed}, false); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"alice@example.org", "alice@example.net"} {
		got, err := s.KeysFor(ctx, addr)
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
	bs, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 2 || bs[1].Address != "alice@example.org" || !bs[1].Added.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Fatalf("List = %+v", bs)
	}
}

func TestSQLiteAddRefusesNoKeys(t *testing.T) {
	ctx := context.Background()
	s, _, _ := sqltOpen(t)
	k := sqltNewKey(t, "alice@example.org")
	if err := s.Add(ctx, "alice@example.org", []*Key{k}, false); err != nil {
		t.Fatal(err)
	}
	for _, ks := range [][]*Key{nil, {nil}, {{Fingerprint: "AB"}}} {
		if err := s.Add(ctx, "alice@example.org", ks, true); err == nil {
			t.Fatalf("Add(%v, replace) succeeded", ks)
		}
	}
	if got, err := s.KeysFor(ctx, "alice@example.org"); err != nil || len(got) != 1 {
		t.Fatalf("KeysFor after refused Add = %v, %v; want the old key", got, err)
	}
}

func TestSQLiteList(t *testing.T) {
	ctx := context.Background()
	s, clk, _ := sqltOpen(t)
	shared := sqltNewKey(t, "shared@example.org")
	kz := sqltNewKey(t, "zoe@example.org")
	ka := sqltNewKey(t, "anna@example.org")
	steps := []struct {
		addr string
		k    *Key
	}{
		{"zoe@example.org", kz},
		{"anna@example.org", shared},
		{"zoe@example.org", shared},
		{"anna@example.org", ka},
	}
	for _, st := range steps {
		if err := s.Add(ctx, st.addr, []*Key{st.k}, false); err != nil {
			t.Fatal(err)
		}
		clk.tick()
	}
	bs, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	want := []struct {
		addr  string
		k     *Key
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
	empty, _, _ := sqltOpen(t)
	if bs, err := empty.List(ctx); err != nil || len(bs) != 0 {
		t.Fatalf("List of an empty store = %v, %v", bs, err)
	}
}

func TestSQLitePrefs(t *testing.T) {
	ctx := context.Background()
	s, _, _ := sqltOpen(t)
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
			if err := s.SetPrefs(ctx, addr, Prefs{ProtectHeaders: tt.in}); err != nil {
				t.Fatal(err)
			}
			p, err := s.Prefs(ctx, addr)
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

func sqltSchemaRows(t *testing.T, path string) (n int, maxApplied int64) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.QueryRow("SELECT COUNT(*), MAX(applied_at) FROM schema_version").Scan(&n, &maxApplied); err != nil {
		t.Fatal(err)
	}
	return n, maxApplied
}

func TestSQLiteReopen(t *testing.T) {
	ctx := context.Background()
	s, _, path := sqltOpen(t)
	k := sqltNewKey(t, "alice@example.org")
	if err := s.Add(ctx, "alice@example.org", []*Key{k}, false); err != nil {
		t.Fatal(err)
	}
	yes := true
	if err := s.SetPrefs(ctx, "alice@example.org", Prefs{ProtectHeaders: &yes}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	n1, applied1 := sqltSchemaRows(t, path)
	if n1 != len(sqliteMigrations) {
		t.Fatalf("schema_version has %d rows, want %d", n1, len(sqliteMigrations))
	}

	s2, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	got, err := s2.KeysFor(ctx, "alice@example.org")
	if err != nil || len(got) != 1 || !bytes.Equal(got[0].Raw, k.Raw) {
		t.Fatalf("KeysFor after reopening = %v, %v", got, err)
	}
	if p, err := s2.Prefs(ctx, "alice@example.org"); err != nil || p.ProtectHeaders == nil || !*p.ProtectHeaders {
		t.Fatalf("Prefs after reopening = %+v, %v", p, err)
	}
	if n2, applied2 := sqltSchemaRows(t, path); n2 != n1 || applied2 != applied1 {
		t.Fatalf("reopening changed schema_version: %d rows at %d, was %d at %d", n2, applied2, n1, applied1)
	}
}

func TestSQLiteFutureSchema(t *testing.T) {
	ctx := context.Background()
	_, _, path := sqltOpen(t)
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	future := len(sqliteMigrations) + 7
	if _, err := db.Exec("INSERT INTO schema_version(version, applied_at) VALUES (?, 0)", future); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err := OpenSQLite(ctx, path)
	if err == nil {
		s.Close()
		t.Fatal("OpenSQLite accepted a database from the future")
	}
	for _, want := range []string{fmt.Sprintf("version %d is newer", future), fmt.Sprintf("knows up to %d", len(sqliteMigrations)), "upgrade"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestSQLiteOpenErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	notDB := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(notDB, bytes.Repeat([]byte("not a database "), 512), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, path, want string
	}{
		{"missing directory", filepath.Join(dir, "nope", "keys.db"), filepath.Join(dir, "nope") + " does not exist"},
		{"parent is a file", filepath.Join(notDir, "keys.db"), "not a directory"},
		{"not a database", notDB, notDB},
		{"no path", "", "no SQLite key store path"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := OpenSQLite(ctx, tt.path)
			if err == nil {
				s.Close()
				t.Fatal("OpenSQLite succeeded")
			}
			if !errors.Is(err, ErrUnavailable) {
				t.Errorf("error %v is not ErrUnavailable", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "nope")); !errors.Is(err, os.ErrNotExist) {
		t.Error("OpenSQLite created the missing directory")
	}
}

func TestSQLiteFileModeAndOddPath(t *testing.T) {
	ctx := context.Background()
	// Characters that mean something in a file: URI must stay part of the name.
	path := filepath.Join(t.TempDir(), "odd name?x=1#frag%20.db")
	s, err := InitSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	k := sqltNewKey(t, "alice@example.org")
	if err := s.Add(ctx, "alice@example.org", []*Key{k}, false); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatalf("the store is not at the given path: %v", err)
	}
	if runtime.GOOS != "windows" && st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	var mode string
	if err := s.db.QueryRowContext(context.Background(), "PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v; want wal", mode, err)
	}
	var fk, busy, syncMode int
	if err := s.db.QueryRowContext(context.Background(), "PRAGMA foreign_keys").Scan(&fk); err != nil || fk != 1 {
		t.Errorf("foreign_keys = %d, %v; want 1", fk, err)
	}
	if err := s.db.QueryRowContext(context.Background(), "PRAGMA busy_timeout").Scan(&busy); err != nil || busy != sqliteBusyTimeout {
		t.Errorf("busy_timeout = %d, %v; want %d", busy, err, sqliteBusyTimeout)
	}
	if err := s.db.QueryRowContext(context.Background(), "PRAGMA synchronous").Scan(&syncMode); err != nil || syncMode != 1 {
		t.Errorf("synchronous = %d, %v; want 1 (NORMAL)", syncMode, err)
	}
}

func TestSQLiteCorruptMaterial(t *testing.T) {
	ctx := context.Background()
	s, _, _ := sqltOpen(t)
	k := sqltNewKey(t, "alice@example.org")
	if err := s.Add(ctx, "alice@example.org", []*Key{k}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.ExecContext(context.Background(), "UPDATE keys SET material = ? WHERE fingerprint = ?", []byte("garbage"), k.Fingerprint); err != nil {
		t.Fatal(err)
	}
	_, err1 := s.KeysFor(ctx, "alice@example.org")
	_, err2 := s.KeyByFingerprint(ctx, k.Fingerprint)
	_, err3 := s.List(ctx)
	for _, err := range []error{err1, err2, err3} {
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(fmt.Sprint(err), k.Fingerprint) {
			t.Errorf("error %v: want ErrUnavailable naming %s", err, k.Fingerprint)
		}
	}
}

func TestSQLiteClosed(t *testing.T) {
	ctx := context.Background()
	s, _, _ := sqltOpen(t)
	k := sqltNewKey(t, "alice@example.org")
	if err := s.Add(ctx, "alice@example.org", []*Key{k}, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, errKeysFor := s.KeysFor(ctx, "alice@example.org")
	_, errByFP := s.KeyByFingerprint(ctx, k.Fingerprint)
	errAdd := s.Add(ctx, "alice@example.org", []*Key{k}, false)
	_, errRemove := s.Remove(ctx, "alice@example.org", "")
	_, errList := s.List(ctx)
	_, errPrefs := s.Prefs(ctx, "alice@example.org")
	errSetPrefs := s.SetPrefs(ctx, "alice@example.org", Prefs{})
	for name, err := range map[string]error{
		"KeysFor": errKeysFor, "KeyByFingerprint": errByFP, "Add": errAdd, "Remove": errRemove,
		"List": errList, "Prefs": errPrefs, "SetPrefs": errSetPrefs,
	} {
		if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrNotFound) {
			t.Errorf("%s on a closed store: %v; want ErrUnavailable", name, err)
		}
	}
}

func TestSQLiteCanceledContext(t *testing.T) {
	s, _, _ := sqltOpen(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.KeysFor(ctx, "alice@example.org")
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("KeysFor with a cancelled context: %v; want ErrUnavailable and context.Canceled", err)
	}
}

// TestSQLiteConcurrentReaders runs readers on one store (the milter) while a
// writer on a second store over the same file (the CLI) keeps replacing and
// removing keys. Readers must never fail and must only ever see a whole
// state: both of alice's keys or neither, never one.
func TestSQLiteConcurrentReaders(t *testing.T) {
	ctx := context.Background()
	reader, _, path := sqltOpen(t)
	writer, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()
	const alice = "alice@example.org"
	k1, k2 := sqltNewKey(t, alice), sqltNewKey(t, alice)
	if err := writer.Add(ctx, alice, []*Key{k1, k2}, false); err != nil {
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
				err = writer.Add(ctx, alice, []*Key{k2, k1}, true)
			}
			if err != nil {
				errs <- fmt.Errorf("writer: %w", err)
				return
			}
		}
	}()
	var rg sync.WaitGroup
	for r := 0; r < readers; r++ {
		rg.Add(1)
		go func() {
			defer rg.Done()
			for i := 0; i < reads; i++ {
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
