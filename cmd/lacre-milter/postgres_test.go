package main

import (
	"context"
	"database/sql"
	"fmt"
	"lacre.io/milter/internal/gnupgtest"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"lacre.io/milter/internal/pgtest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// pgConfig writes a config whose store is database db of srv (superuser,
// password from its file) and returns its path.
func pgConfig(t *testing.T, srv *pgtest.Server, db string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "lacre.toml")
	cfg := fmt.Sprintf("[store]\ndatabase = %q\npassword_file = %q\n", srv.AdminDSN(db), srv.PasswordFile()) + noAliases
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestPostgresStoreCommands: "store init|migrate", check-config and the
// keys commands on a PostgreSQL store: only init creates the schema,
// check-config connects and reports the schema version, backup points to
// pg_dump.
func TestPostgresStoreCommands(t *testing.T) {
	srv := pgtest.Start(t)
	db := srv.NewDB(t)
	cfg := pgConfig(t, srv, db)
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")

	r := cli(t, nil, "-config", cfg, "keys", "list")
	wantCode(t, r, 1)
	wantContains(t, "keys list before init", r.stderr, "no lacre key store", "store init")
	r = cli(t, nil, "-config", cfg, "check-config")
	wantCode(t, r, 1)
	wantContains(t, "check-config before init", r.stderr, "store init")
	r = cli(t, nil, "-config", cfg, "store", "migrate")
	wantCode(t, r, 1)
	wantContains(t, "store migrate before init", r.stderr, "never creates")
	r = cli(t, nil, "-config", cfg, "store", "init")
	wantCode(t, r, 0)
	wantContains(t, "store init", r.stdout, fmt.Sprintf("created (schema version %d)", keys.PostgresSchemaVersion))
	r = cli(t, nil, "-config", cfg, "store", "init")
	wantCode(t, r, 0)
	wantContains(t, "store init again", r.stdout, "exists already")
	r = cli(t, nil, "-config", cfg, "store", "migrate")
	wantCode(t, r, 0)
	wantContains(t, "store migrate", r.stdout, fmt.Sprintf("up to date (schema version %d)", keys.PostgresSchemaVersion))
	r = cli(t, nil, "-config", cfg, "check-config")
	wantCode(t, r, 0)
	wantContains(t, "check-config", r.stdout, "configuration OK", fmt.Sprintf("schema version %d (connected)", keys.PostgresSchemaVersion), fmt.Sprintf("127.0.0.1:%d/%s", srv.Port, db))
	r = cli(t, testkeys.ArmoredPublic(t, alice), "-config", cfg, "keys", "add", "alice@example.org", "-")
	wantCode(t, r, 0)
	r = cli(t, nil, "-config", cfg, "keys", "show", "alice@example.org")
	wantCode(t, r, 0)
	wantContains(t, "keys show", r.stdout, "encrypt to 1 key")
	r = cli(t, nil, "-config", cfg, "store", "backup", filepath.Join(t.TempDir(), "b.db"))
	wantCode(t, r, 1)
	wantContains(t, "store backup", r.stderr, "pg_dump")

	// A newer schema (a newer binary migrated it) is refused by every command.
	srv.Exec(t, db, "INSERT INTO schema_version VALUES (99, 0)")
	r = cli(t, nil, "-config", cfg, "check-config")
	wantCode(t, r, 1)
	wantContains(t, "check-config with a newer schema", r.stderr, "version 99 is newer", "upgrade the binary")

	// The server down: check-config says so.
	srv.Stop(t, "immediate")
	r = cli(t, nil, "-config", cfg, "check-config")
	wantCode(t, r, 1)
	wantContains(t, "check-config with the server down", r.stderr, "key store unavailable", "connect")
}

// TestStoreCopySQLiteToPostgres: "store copy" moves an SQLite store into
// a new PostgreSQL one: every binding with its key, order and time, and
// every preference; a second copy into the now non-empty store is refused;
// and back into a new SQLite file, the same again.
func TestStoreCopySQLiteToPostgres(t *testing.T) {
	ctx := context.Background()
	srv := pgtest.Start(t)
	db := srv.NewDB(t)
	cfg := pgConfig(t, srv, db)
	wantCode(t, cli(t, nil, "-config", cfg, "store", "init"), 0)

	dir := t.TempDir()
	src := filepath.Join(dir, "keys.db")
	sq, err := keys.InitSQLite(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	sq.SetClock(func() time.Time { return at })
	add := func(addr string, kind testkeys.Kind, who string) {
		t.Helper()
		ks, err := keys.Parse(testkeys.Public(t, testkeys.Generate(t, kind, who)))
		if err != nil {
			t.Fatal(err)
		}
		if err := sq.Add(ctx, addr, ks, false); err != nil {
			t.Fatal(err)
		}
		at = at.Add(time.Hour)
	}
	add("alice@example.org", testkeys.Curve25519, "alice@example.org")
	add("alice@example.org", testkeys.RSA3072, "alice2@example.org")
	add("team@example.org", testkeys.Curve25519, "alice@example.org") // shared with alice
	add("bob@example.org", testkeys.Curve25519, "bob@example.org")
	yes, no := true, false
	sq.SetPrefs(ctx, "alice@example.org", keys.Prefs{ProtectHeaders: &yes})
	sq.SetPrefs(ctx, "carol@example.org", keys.Prefs{ProtectHeaders: &no}) // no key
	want, err := sq.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sq.Close()

	dsn := srv.AdminDSN(db)
	r := cli(t, nil, "-config", cfg, "store", "copy", src, dsn)
	wantCode(t, r, 0)
	wantContains(t, "store copy", r.stdout, "copied 4 bindings and 2 preferences")

	pg, err := keys.OpenPostgres(ctx, dsn, srv.Options())
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	sameBindings(t, "PostgreSQL", pg, want)
	for addr, w := range map[string]*bool{"alice@example.org": &yes, "carol@example.org": &no, "bob@example.org": nil} {
		p, err := pg.Prefs(ctx, addr)
		if err != nil || (p.ProtectHeaders == nil) != (w == nil) || (w != nil && *p.ProtectHeaders != *w) {
			t.Errorf("prefs of %s after the copy: %+v, %v", addr, p, err)
		}
	}

	r = cli(t, nil, "-config", cfg, "store", "copy", src, dsn)
	wantCode(t, r, 1)
	wantContains(t, "second copy", r.stderr, "holds 4 bindings already")

	// And back, into a new SQLite store.
	back := filepath.Join(dir, "back.db")
	s2, err := keys.InitSQLite(ctx, back)
	if err != nil {
		t.Fatal(err)
	}
	s2.Close()
	wantCode(t, cli(t, nil, "-config", cfg, "store", "copy", dsn, back), 0)
	s3, err := keys.OpenSQLite(ctx, back)
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close()
	sameBindings(t, "SQLite copy of the copy", s3, want)
}

func sameBindings(t *testing.T, what string, s keys.Store, want []keys.Binding) {
	t.Helper()
	got, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%s: %d bindings, want %d", what, len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Address != w.Address || g.Key.Fingerprint != w.Key.Fingerprint || !g.Added.Equal(w.Added) || string(g.Key.Raw) != string(w.Key.Raw) {
			t.Errorf("%s: binding %d = %s %s %v, want %s %s %v", what, i, g.Address, g.Key.Fingerprint, g.Added, w.Address, w.Key.Fingerprint, w.Added)
		}
	}
}

// TestHealthzPostgres: /healthz asks PostgreSQL: 200 while it answers,
// 503 when it is stopped, 200 again when it is back (same store, no
// restart).
func TestHealthzPostgres(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewStore(t)
	opt := srv.Options()
	opt.ConnectTimeout = time.Second
	s, err := keys.OpenPostgres(context.Background(), dsn, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h := metricsHandler(prometheus.NewRegistry(), s)
	want := func(code int, when string) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		if rec.Code != code {
			t.Errorf("%s: /healthz %d, want %d", when, rec.Code, code)
		}
	}
	want(200, "running")
	srv.Stop(t, "fast")
	want(503, "stopped")
	srv.StartAgain(t)
	want(200, "started again")
}

// TestImportIntoPostgres: the gpg-mailgate imports write into a
// PostgreSQL store as into SQLite: a preview changes nothing, the import
// binds, a second run changes nothing, and the milter's lookup (keys show)
// then encrypts to the imported key.
func TestImportIntoPostgres(t *testing.T) {
	srv := pgtest.Start(t)
	db := srv.NewDB(t)
	cfg := pgConfig(t, srv, db)
	wantCode(t, cli(t, nil, "-config", cfg, "store", "init"), 0)

	h := gnupgtest.New(t, false)
	alice := h.Key("Alice <alice@example.org>", time.Time{}, "1y")
	r := cli(t, nil, "-config", cfg, "import", "gnupg", "-dry-run", h.Dir)
	wantCode(t, r, 0)
	wantContains(t, "dry run", r.stdout, "alice@example.org: would be imported", "dry run: nothing was changed")
	r = cli(t, nil, "-config", cfg, "keys", "show", "alice@example.org")
	wantContains(t, "keys show after the dry run", r.stdout, "no key")

	r = cli(t, nil, "-config", cfg, "import", "gnupg", h.Dir)
	wantCode(t, r, 0)
	wantContains(t, "import", r.stdout, "alice@example.org: imported: gnupg key 0x", alice)
	r = cli(t, nil, "-config", cfg, "import", "gnupg", h.Dir)
	wantCode(t, r, 0)
	wantContains(t, "second import", r.stdout, "alice@example.org: already present", "imported 0,")

	// gpg-mailgate-web's table, from an SQLite file, into the same store.
	bob := testkeys.Generate(t, testkeys.Curve25519, "bob@example.org")
	path := filepath.Join(t.TempDir(), "gpgmw.db")
	sdb, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"CREATE TABLE gpgmw_keys (id INTEGER NOT NULL, email VARCHAR(256), publickey TEXT, confirm VARCHAR(32), status INTEGER NOT NULL, time DATETIME DEFAULT (CURRENT_TIMESTAMP), PRIMARY KEY (id))",
		fmt.Sprintf("INSERT INTO gpgmw_keys (email, publickey, confirm, status) VALUES ('bob@example.org', '%s', '', 0)", testkeys.ArmoredPublic(t, bob)),
	} {
		if _, err := sdb.Exec(s); err != nil {
			t.Fatal(err)
		}
	}
	sdb.Close()
	r = cli(t, nil, "-config", cfg, "import", "gpgmw", path)
	wantCode(t, r, 0)
	wantContains(t, "import gpgmw", r.stdout, "bob@example.org: imported: row 1")

	for addr, fp := range map[string]string{"alice@example.org": alice, "bob@example.org": fpr(bob)} {
		r = cli(t, nil, "-config", cfg, "keys", "show", addr)
		wantCode(t, r, 0)
		wantContains(t, "keys show "+addr, r.stdout, "encrypt to 1 key", fp)
	}
}
