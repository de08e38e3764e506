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
