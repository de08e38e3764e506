package keys

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// TestRequestsMigrationDropsOldRequests: requests stored by schema v2
// could carry several keys under one token; v3 deletes them.
func TestRequestsMigrationDropsOldRequests(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "k.db")
	db, err := sql.Open("sqlite", path) // creates the file, as the first release did
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	for i, m := range sqliteMigrations[:2] {
		if _, err := db.Exec(m); err != nil {
			t.Fatal(err)
		}
		db.Exec("INSERT INTO schema_version VALUES (?, 0)", i+1)
	}
	if _, err := db.Exec(`INSERT INTO requests (token_hash, action, address, material, client_ip, created_at, expires_at)
		VALUES (x'01', 'add', 'alice@example.org', x'00', '192.0.2.1', 0, 9999999999)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err := InitSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.FindRequest(ctx, []byte{1}, time.Unix(1, 0)); !errors.Is(err, ErrNotFound) {
		t.Errorf("a v2 request survived the migration: %v", err)
	}
}
