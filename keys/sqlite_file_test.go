package keys

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The store's file identity: nothing but InitSQLite creates or migrates a
// store, and a store whose file goes away, is emptied or is replaced while
// in use never answers "no key".

func wantUnavailable(t *testing.T, what string, err error, says ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error", what)
	}
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("%s: %v is not ErrUnavailable", what, err)
	}
	for _, s := range says {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%s: error %q does not say %q", what, err, s)
		}
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func TestOpenSQLiteNeverCreates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	_, err := OpenSQLite(context.Background(), path)
	wantUnavailable(t, "OpenSQLite of a missing file", err, "does not exist", "lacre-milter store init", "backup")
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("OpenSQLite created %s (stat: %v)", path, err)
	}
	for _, f := range []string{path + "-wal", path + "-shm", path + "-journal"} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("OpenSQLite created %s", f)
		}
	}
}

func TestEmptyFileIsNeverAStore(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "keys.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := OpenSQLite(ctx, path)
	wantUnavailable(t, "OpenSQLite of an empty file", err, "is empty", "backup")
	_, err = InitSQLite(ctx, path)
	wantUnavailable(t, "InitSQLite of an empty file", err, "is empty")
	if n := fileSize(t, path); n != 0 {
		t.Fatalf("the empty file now has %d bytes: it was initialised", n)
	}
}

func TestOpenSQLiteForeignFiles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.db")
	if err := os.WriteFile(junk, []byte(strings.Repeat("not a database ", 300)), 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other.db")
	db, err := sql.Open("sqlite", other)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("CREATE TABLE mail (id INTEGER)"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	for _, tt := range []struct{ name, path, says string }{
		{"junk", junk, "not an SQLite database"},
		{"another application's database", other, "not a lacre key store"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := fileSize(t, tt.path)
			_, err := OpenSQLite(ctx, tt.path)
			wantUnavailable(t, "OpenSQLite", err, tt.says)
			_, err = InitSQLite(ctx, tt.path)
			wantUnavailable(t, "InitSQLite", err, tt.says)
			if after := fileSize(t, tt.path); after != before {
				t.Errorf("file changed from %d to %d bytes", before, after)
			}
		})
	}
}

// TestOlderSchemaNeedsExplicitMigration: serving or reading never
// migrates; InitSQLite ("store migrate") does.
func TestOlderSchemaNeedsExplicitMigration(t *testing.T) {
	ctx := context.Background()
	s, _, path := sqltOpen(t)
	k := sqltNewKey(t, "alice@example.org")
	if err := s.Add(ctx, "alice@example.org", []*Key{k}, false); err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	// Back to version 1: as written by the first release.
	if _, err := db.Exec("DROP TABLE requests; ALTER TABLE prefs DROP COLUMN format; DELETE FROM schema_version WHERE version > 1"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = OpenSQLite(ctx, path)
	wantUnavailable(t, "OpenSQLite of a version 1 store", err, "version 1 is older", "lacre-milter store migrate")
	if n, _ := sqltSchemaRows(t, path); n != 1 {
		t.Fatalf("OpenSQLite migrated the store: %d schema rows", n)
	}
	s2, err := InitSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got, err := s2.KeysFor(ctx, "alice@example.org"); err != nil || len(got) != 1 {
		t.Fatalf("after migration KeysFor = %v, %v", got, err)
	}
	if n, _ := sqltSchemaRows(t, path); n != len(sqliteMigrations) {
		t.Fatalf("after InitSQLite %d schema rows, want %d", n, len(sqliteMigrations))
	}
}

func TestInitSQLiteRefusesOrphanedWAL(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	if err := os.WriteFile(path+"-wal", []byte("frames of a deleted store"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := InitSQLite(context.Background(), path)
	wantUnavailable(t, "InitSQLite beside an orphaned -wal", err, "-wal is there without its database")
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Error("InitSQLite created the store beside the orphaned -wal")
	}
}

// TestStoreFileGoneWhileRunning is the reproduction: the file is
// deleted under a running store; nothing may answer "no key", and no
// operation, reading or writing, may bring back an empty file.
func TestStoreFileGoneWhileRunning(t *testing.T) {
	ctx := context.Background()
	s, _, path := sqltOpen(t)
	k := sqltNewKey(t, "alice@example.org")
	if err := s.Add(ctx, "alice@example.org", []*Key{k}, false); err != nil {
		t.Fatal(err)
	}
	// The read path's statements are prepared now, and must not answer
	// from the deleted file's pool.
	readPath(t, s, "alice@example.org", k.Fingerprint, 1)
	for _, f := range []string{path, path + "-wal", path + "-shm"} {
		os.Remove(f)
	}
	_, err := s.KeysFor(ctx, "alice@example.org")
	wantUnavailable(t, "KeysFor after the file was deleted", err, "does not exist")
	_, err = s.KeyByFingerprint(ctx, k.Fingerprint)
	wantUnavailable(t, "KeyByFingerprint after the file was deleted", err, "does not exist")
	_, err = s.Prefs(ctx, "alice@example.org")
	wantUnavailable(t, "Prefs after the file was deleted", err, "does not exist")
	_, err = s.List(ctx)
	wantUnavailable(t, "List", err)
	err = s.Add(ctx, "bob@example.org", []*Key{sqltNewKey(t, "bob@example.org")}, false)
	wantUnavailable(t, "Add", err)
	wantUnavailable(t, "Check", s.Check(ctx))
	// A second process (the CLI) must not recreate it either.
	_, err = OpenSQLite(ctx, path)
	wantUnavailable(t, "OpenSQLite", err)
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the deleted store is back (stat: %v)", err)
	}
}

func TestStoreFileEmptiedWhileRunning(t *testing.T) {
	ctx := context.Background()
	s, _, path := sqltOpen(t)
	k := sqltNewKey(t, "alice@example.org")
	if err := s.Add(ctx, "alice@example.org", []*Key{k}, false); err != nil {
		t.Fatal(err)
	}
	readPath(t, s, "alice@example.org", k.Fingerprint, 1)
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	_, err := s.KeysFor(ctx, "alice@example.org")
	wantUnavailable(t, "KeysFor after the file was emptied", err, "is empty")
	wantUnavailable(t, "Check", s.Check(ctx))
	if n := fileSize(t, path); n != 0 {
		t.Fatalf("the emptied file was written to (%d bytes)", n)
	}
}

// TestStoreFileReplacedWhileRunning: a valid lacre store moved into place
// (a restore) is used from the next query; a foreign or old file is not.
func TestStoreFileReplacedWhileRunning(t *testing.T) {
	ctx := context.Background()
	s, _, path := sqltOpen(t)
	alice := sqltNewKey(t, "alice@example.org")
	if err := s.Add(ctx, "alice@example.org", []*Key{alice}, false); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()

	// A restored store that has bob too.
	restored := filepath.Join(dir, "restored.db")
	r, err := InitSQLite(ctx, restored)
	if err != nil {
		t.Fatal(err)
	}
	bob := sqltNewKey(t, "bob@example.org")
	if err := r.Add(ctx, "alice@example.org", []*Key{alice}, false); err != nil {
		t.Fatal(err)
	}
	if err := r.Add(ctx, "bob@example.org", []*Key{bob}, false); err != nil {
		t.Fatal(err)
	}
	r.Close() // checkpoints the WAL into the file
	// The old file has no bob; this prepares the read path's statements
	// on the old file's pool, which must not answer after the restore.
	readPath(t, s, "bob@example.org", bob.Fingerprint, 0)
	// Junk first: unavailable, not "no key".
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, []byte(strings.Repeat("x", 8192)), 0o600)
	if err := os.Rename(junk, path); err != nil {
		t.Fatal(err)
	}
	_, err = s.KeysFor(ctx, "bob@example.org")
	wantUnavailable(t, "KeysFor with junk in place", err, "not an SQLite database")
	wantUnavailable(t, "Check with junk in place", s.Check(ctx))

	if err := os.Rename(restored, path); err != nil {
		t.Fatal(err)
	}
	got, err := s.KeysFor(ctx, "bob@example.org")
	if err != nil || len(got) != 1 || got[0].Fingerprint != bob.Fingerprint {
		t.Fatalf("KeysFor(bob) after the restore = %v, %v; want bob's key from the new file", got, err)
	}
	readPath(t, s, "bob@example.org", bob.Fingerprint, 1)
	if err := s.Check(ctx); err != nil {
		t.Fatalf("Check after the restore: %v", err)
	}
	// Writes go to the new file as well.
	carol := sqltNewKey(t, "carol@example.org")
	if err := s.Add(ctx, "carol@example.org", []*Key{carol}, false); err != nil {
		t.Fatal(err)
	}
	o, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if got, err := o.KeysFor(ctx, "carol@example.org"); err != nil || len(got) != 1 {
		t.Fatalf("carol's key is not in the file at the path: %v, %v", got, err)
	}
}

// TestReadOnlyPoolHeals: a connection SQLite opened read-only stays so;
// the store must drop it and write again once the file is writable, and
// Check must fail in between. (Tests run as root, to whom file modes mean
// nothing, so read-only connections come from PRAGMA query_only, which
// fails writes with the same SQLITE_READONLY.)
func TestReadOnlyPoolHeals(t *testing.T) {
	ctx := context.Background()
	s, _, _ := sqltOpen(t)
	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
	s.db.mu.Lock()
	s.db.pragmas = []string{"query_only(1)"}
	s.db.stale = true
	s.db.mu.Unlock()
	k := sqltNewKey(t, "alice@example.org")
	err := s.Add(ctx, "alice@example.org", []*Key{k}, false)
	wantUnavailable(t, "Add on a read-only connection", err, "readonly")
	wantUnavailable(t, "Check while writes fail", s.Check(ctx), "writes fail")

	s.db.mu.Lock()
	s.db.pragmas = nil // the file is writable again
	s.db.mu.Unlock()
	if err := s.Check(ctx); err != nil {
		t.Fatalf("Check once the file is writable again: %v", err)
	}
	if err := s.Add(ctx, "alice@example.org", []*Key{k}, false); err != nil {
		t.Fatalf("Add once the file is writable again: %v", err)
	}
}

// TestInitSQLiteAsRootGivesTheDirectoryOwner: a store made by root in the
// service user's directory belongs to the service user, and so do the
// -wal and -shm files SQLite creates later.
func TestInitSQLiteAsRootGivesTheDirectoryOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files away")
	}
	ctx := context.Background()
	dir := t.TempDir()
	const uid, gid = 64123, 64124
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "keys.db")
	s, err := InitSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Add(ctx, "alice@example.org", []*Key{sqltNewKey(t, "alice@example.org")}, false); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{path, path + "-wal", path + "-shm"} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		u, g, _ := fileOwner(st)
		if u != uid || g != gid {
			t.Errorf("%s belongs to %d:%d, want the directory's %d:%d", filepath.Base(f), u, g, uid, gid)
		}
		if f == path && st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, st.Mode().Perm())
		}
	}
}

// TestStoreReplacedWhileOldLogInUse: while another process (the CLI or
// the registration service) still uses the replaced file's write-ahead
// log, the new file must not be opened, since SQLite would pair it with
// that log; once the other process lets go, it is. The other process is
// this test binary again (TestHelperHoldStore): within one process,
// SQLite's POSIX locks cannot stand for another process's.
func TestStoreReplacedWhileOldLogInUse(t *testing.T) {
	ctx := context.Background()
	s, _, path := sqltOpen(t)
	alice := sqltNewKey(t, "alice@example.org")
	if err := s.Add(ctx, "alice@example.org", []*Key{alice}, false); err != nil {
		t.Fatal(err)
	}
	holder := exec.Command(os.Args[0], "-test.run=^TestHelperHoldStore$")
	holder.Env = append(os.Environ(), "LACRE_TEST_HOLD_STORE="+path)
	stdin, _ := holder.StdinPipe()
	stdout, _ := holder.StdoutPipe()
	holder.Stderr = os.Stderr
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer holder.Process.Kill()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "holding\n" {
		t.Fatalf("helper process: %q, %v", line, err)
	}

	restored := filepath.Join(t.TempDir(), "restored.db")
	r, err := InitSQLite(ctx, restored)
	if err != nil {
		t.Fatal(err)
	}
	bob := sqltNewKey(t, "bob@example.org")
	if err := r.Add(ctx, "bob@example.org", []*Key{bob}, false); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := os.Rename(restored, path); err != nil {
		t.Fatal(err)
	}
	_, err = s.KeysFor(ctx, "bob@example.org")
	wantUnavailable(t, "KeysFor while the old log is in use", err, "still in use", ".restore")
	wantUnavailable(t, "Check while the old log is in use", s.Check(ctx), "still in use")

	stdin.Close() // the helper lets go and exits
	if err := holder.Wait(); err != nil {
		t.Fatalf("helper process: %v", err)
	}
	got, err := s.KeysFor(ctx, "bob@example.org")
	if err != nil || len(got) != 1 || got[0].Fingerprint != bob.Fingerprint {
		t.Fatalf("KeysFor(bob) once the old log is free = %v, %v", got, err)
	}
	if got, err := s.KeysFor(ctx, "alice@example.org"); err != nil || len(got) != 0 {
		t.Fatalf("KeysFor(alice) = %v, %v: the restored store has no alice", got, err)
	}
	// The old log was set aside, not deleted.
	if aside, _ := filepath.Glob(path + "-wal.replaced-*"); len(aside) != 1 {
		t.Errorf("set-aside logs: %v, want one", aside)
	}
}

// TestHelperHoldStore is the other process of the test above: it opens the
// store, holds a connection in a transaction and says so, then waits for
// its standard input to close.
func TestHelperHoldStore(t *testing.T) {
	path := os.Getenv("LACRE_TEST_HOLD_STORE")
	if path == "" {
		t.Skip("helper process of TestStoreReplacedWhileOldLogInUse")
	}
	ctx := context.Background()
	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM bindings").Scan(&n); err != nil {
		t.Fatal(err)
	}
	fmt.Println("holding")
	io.Copy(io.Discard, os.Stdin)
	tx.Rollback()
	s.Close()
}

// TestInitSQLiteConcurrently: processes creating the store at once (the
// demo's milter and web containers) all get the one store; none sees a
// half-made, empty file.
func TestInitSQLiteConcurrently(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.db")
	const n = 8
	errs := make(chan error, n)
	for range n {
		go func() {
			s, err := InitSQLite(ctx, path)
			if err == nil {
				err = s.Check(ctx)
				s.Close()
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*.init-*"))
	if len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// readPath runs the milter's read path (KeysFor, KeyByFingerprint, Prefs)
// for address, which must have want (0 or 1) keys, fp if 1.
func readPath(t *testing.T, s *SQLiteStore, address, fp string, want int) {
	t.Helper()
	ctx := context.Background()
	got, err := s.KeysFor(ctx, address)
	if err != nil || len(got) != want || (want == 1 && got[0].Fingerprint != fp) {
		t.Fatalf("KeysFor(%s) = %v, %v; want %d key(s)", address, got, err, want)
	}
	k, err := s.KeyByFingerprint(ctx, fp)
	switch {
	case want == 1 && (err != nil || k.Fingerprint != fp):
		t.Fatalf("KeyByFingerprint(%s) = %v, %v", fp, k, err)
	case want == 0 && !errors.Is(err, ErrNotFound):
		t.Fatalf("KeyByFingerprint(%s) = %v, %v; want ErrNotFound", fp, k, err)
	}
	if _, err := s.Prefs(ctx, address); err != nil {
		t.Fatalf("Prefs(%s): %v", address, err)
	}
}
