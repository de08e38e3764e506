package main

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"testing"

	_ "modernc.org/sqlite"

	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// TestNoCommandButInitCreatesAStore: a store that is missing or empty is
// an error for every command that reads or serves, never a new store.
func TestNoCommandButInitCreatesAStore(t *testing.T) {
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	for _, state := range []string{"missing", "empty"} {
		t.Run(state, func(t *testing.T) {
			for _, args := range [][]string{
				{"keys", "list"},
				{"keys", "show", "alice@example.org"},
				{"keys", "add", "alice@example.org", "-"},
				{"keys", "remove", "alice@example.org"},
				{"keys", "set", "alice@example.org", "protect-headers", "on"},
				{"store", "migrate"},
				{"serve"},
			} {
				f := newFixtureNoStore(t, false, "[milter]\nlisten = \"inet:127.0.0.1:0\"\n")
				if state == "empty" {
					f.file("keys.db", nil)
				}
				r := f.run(testkeys.ArmoredPublic(t, alice), args...)
				if r.code == 0 {
					t.Errorf("%v with a %s store: exit 0\n%s", args, state, r)
				}
				switch state {
				case "missing":
					if _, err := os.Stat(f.db()); !errors.Is(err, os.ErrNotExist) {
						t.Errorf("%v created the store", args)
					}
					if args[0] != "store" {
						wantContains(t, "stderr", r.stderr, "does not exist", "lacre-milter store init")
					}
				case "empty":
					if st, err := os.Stat(f.db()); err != nil || st.Size() != 0 {
						t.Errorf("%v wrote to the empty store (%v)", args, err)
					}
					wantContains(t, "stderr", r.stderr, "is empty")
				}
			}
		})
	}
}

func TestStoreInit(t *testing.T) {
	f := newFixtureNoStore(t, false, "")
	r := f.must(nil, "store", "init")
	wantContains(t, "stdout", r.stdout, "key store "+f.db()+" created")
	st, err := os.Stat(f.db())
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("new store has mode %v, want 0600", st.Mode().Perm())
	}
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	f.add("alice@example.org", alice)
	// A second init changes nothing and says so.
	r = f.must(nil, "store", "init")
	wantContains(t, "stdout", r.stdout, "exists already; nothing changed")
	if rows, _ := f.list(); len(rows) != 1 {
		t.Fatalf("after a second store init: %v", rows)
	}
	// init refuses an empty file rather than making it a store.
	g := newFixtureNoStore(t, false, "")
	g.file("keys.db", nil)
	r = g.run(nil, "store", "init")
	wantCode(t, r, 1)
	wantContains(t, "stderr", r.stderr, "is empty")
}

// TestStoreMigrate: an older store is refused by the commands that use
// it, with the command to run; "store migrate" brings it up to date
// without losing its keys.
func TestStoreMigrate(t *testing.T) {
	f := newFixture(t, false, "")
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	f.add("alice@example.org", alice)
	db, err := sql.Open("sqlite", f.db())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("DROP TABLE requests; ALTER TABLE prefs DROP COLUMN format; DELETE FROM schema_version WHERE version > 1"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	r := f.run(nil, "keys", "list")
	wantCode(t, r, 1)
	wantContains(t, "stderr", r.stderr, "version 1 is older", "lacre-milter store migrate")
	r = f.must(nil, "store", "migrate")
	wantContains(t, "stdout", r.stdout, "migrated")
	r = f.must(nil, "store", "migrate")
	wantContains(t, "stdout", r.stdout, "up to date")
	if rows, _ := f.list(); len(rows) != 1 {
		t.Fatalf("keys after migration: %v", rows)
	}
	s, err := keys.OpenSQLite(context.Background(), f.db())
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// TestStoreBackup: the copy is a whole store, with the keys added last.
func TestStoreBackup(t *testing.T) {
	f := newFixture(t, false, "")
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	f.add("alice@example.org", alice)
	dst := filepath.Join(t.TempDir(), "copy.db")
	f.must(nil, "store", "backup", dst)
	st, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("backup has mode %v, want 0600", st.Mode().Perm())
	}
	b, err := keys.OpenSQLite(context.Background(), dst)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got, err := b.KeysFor(context.Background(), "alice@example.org"); err != nil || len(got) != 1 {
		t.Fatalf("alice in the backup: %v, %v", got, err)
	}
	// Never over an existing file.
	r := f.run(nil, "store", "backup", dst)
	wantCode(t, r, 1)
	wantContains(t, "stderr", r.stderr, "file exists")
}
