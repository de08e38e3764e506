package main

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/config"
	"lacre.io/milter/internal/gnupgtest"
	"lacre.io/milter/internal/smimetest"
	"lacre.io/milter/internal/testkeys"
)

// TestImportGnuPG runs "import gnupg" through the CLI: preview, import,
// again, the exit status, and -replace.
func TestImportGnuPG(t *testing.T) {
	f := newFixture(t, false, "[web]\ndomains = [\"example.org\"]\n")
	h := gnupgtest.New(t, false)
	alice := h.Key("Alice <alice@example.org>", time.Time{}, "1y")
	h.Key("Old <old@example.org>", time.Now().AddDate(-1, 0, 0), "30d")

	r := f.run(nil, "import", "gnupg", "-dry-run", h.Dir)
	wantCode(t, r, 1)
	wantContains(t, "dry run", r.stdout, "alice@example.org: would be imported: gnupg key 0x", "old@example.org: refused (expired)",
		"summary: imported 1, updated 0, unbound 0, already present 0, refused 1 (expired 1), skipped 0", "dry run: nothing was changed")
	wantContains(t, "dry run", r.stderr, "1 refused")
	if rows, _ := f.list(); len(rows) != 0 {
		t.Fatalf("the dry run changed the store: %v", rows)
	}

	r = f.run(nil, "import", "gnupg", h.Dir)
	wantCode(t, r, 1)
	wantContains(t, "import", r.stdout, "alice@example.org: imported: gnupg key 0x", alice)
	rows, _ := f.list()
	if len(rows) != 1 || rows[0].fingerprint != alice {
		t.Fatalf("store after the import: %v", rows)
	}

	r = f.run(nil, "import", "gnupg", h.Dir)
	wantCode(t, r, 1)
	wantContains(t, "second import", r.stdout, "alice@example.org: already present", "imported 0, updated 0, unbound 0, already present 1")
	if again, _ := f.list(); fmt.Sprint(again) != fmt.Sprint(rows) {
		t.Errorf("the second import changed the store:\n%v\n%v", rows, again)
	}

	// A key only for the valid addresses: nothing refused, exit 0.
	h2 := gnupgtest.New(t, true)
	h2.Key("Carol <carol@example.org>", time.Time{}, "1y")
	wantCode(t, f.run(nil, "import", "gnupg", h2.Dir), 0)

	// alice bound to another key: refused, unless -replace.
	other := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	f.must(testkeys.ArmoredPublic(t, other), "keys", "add", "-replace", "alice@example.org", "-")
	r = f.run(nil, "import", "gnupg", h.Dir)
	wantCode(t, r, 1)
	wantContains(t, "conflict", r.stdout, "alice@example.org: refused (already-bound)", fpr(other))
	r = f.run(nil, "import", "gnupg", "-replace", h.Dir)
	wantContains(t, "-replace", r.stdout, "alice@example.org: imported", "replaced "+fpr(other))

	wantCode(t, f.run(nil, "import", "gnupg", filepath.Join(f.dir, "nonexistent")), 1)
	wantCode(t, f.run(nil, "import", "gnupg"), 2)
}

// TestImportGpgmwSQLite runs "import gpgmw" on an SQLite file.
func TestImportGpgmwSQLite(t *testing.T) {
	f := newFixture(t, false, "")
	path := filepath.Join(t.TempDir(), "gpgmw.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	for _, s := range []string{
		"CREATE TABLE gpgmw_keys (id INTEGER NOT NULL, email VARCHAR(256), publickey TEXT, confirm VARCHAR(32), status INTEGER NOT NULL, time DATETIME DEFAULT (CURRENT_TIMESTAMP), PRIMARY KEY (id))",
		fmt.Sprintf("INSERT INTO gpgmw_keys (email, publickey, confirm, status) VALUES ('alice@example.org', '%s', '', 1)", testkeys.ArmoredPublic(t, alice)),
		"INSERT INTO gpgmw_keys (email, publickey, confirm, status) VALUES ('bob@example.org', '', 'token', 0)",
	} {
		if _, err := db.Exec(s); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	r := f.run(nil, "import", "gpgmw", path)
	wantCode(t, r, 0)
	wantContains(t, "import", r.stdout, "SQLite "+path+", table gpgmw_keys: 2 row(s)", "alice@example.org: imported: row 1", "bob@example.org: skipped: row 2: unconfirmed")
	wantCode(t, f.run(nil, "import", "gpgmw", "-table", "gpgmw_keys; DROP TABLE x", path), 1)
	wantCode(t, f.run(nil, "import", "gpgmw", "oracle://x"), 1)
}

// TestImportConfig checks that "import config" prints a file that loads,
// and fails (while still printing it) when a key ID is not in the store.
func TestImportConfig(t *testing.T) {
	f := newFixture(t, false, "")
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	f.add("alice@example.org", alice)
	id := strings.TrimPrefix(keyID(alice), "0x")
	conf := f.file("gpg-mailgate.conf", []byte("[default]\nadd_header = no\n\n[enc_keymap]\narchive@example.org = "+id+"\nlost@example.org = 0123456789ABCDEF\n"))
	r := f.run(nil, "import", "config", conf)
	wantCode(t, r, 1)
	wantContains(t, "stderr", r.stderr, "lost@example.org", "0123456789ABCDEF is not in the key store")
	p := filepath.Join(t.TempDir(), "lacre.toml")
	// check-config below must not depend on this machine's own Postfix.
	if err := os.WriteFile(p, []byte(r.stdout+noAliases), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(p)
	if err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	if got := c.Static.Addresses["archive@example.org"]; len(got) != 1 || got[0] != fpr(alice) {
		t.Errorf("static.addresses = %v", c.Static.Addresses)
	}
	if c.Milter.TraceHeader != "" || c.DatabasePath() != f.db() {
		t.Errorf("trace_header %q, database %q", c.Milter.TraceHeader, c.DatabasePath())
	}
	// With the store pointing at the same keys, check-config agrees.
	wantCode(t, cli(t, nil, "-config", p, "check-config"), 0)
}

// TestImportSMIME runs "import smime" through the CLI on a directory as
// gpg-mailgate's register-handler.py left it: a dry run, the import, a
// second run, and the exit status (1 while anything is refused).
func TestImportSMIME(t *testing.T) {
	f := newFixture(t, false, "[web]\ndomains = [\"example.org\"]\n")
	dir := t.TempDir()
	write := func(name string, data []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	alice := cert(t, "alice@example.org", smimetest.Spec{})
	write("alice@example.org", alice.PEM())
	write("bob@example.org", cert(t, "mallory@example.org", smimetest.Spec{}).PEM()) // someone else's certificate
	expired := cert(t, "old@example.org", smimetest.Spec{NotBefore: time.Now().AddDate(-1, 0, 0), NotAfter: time.Now().AddDate(0, 0, -1)})
	write("old@example.org", expired.PEM())
	write("key@example.org", alice.KeyPEM(t)) // a private key
	write("carol@example.net", cert(t, "carol@example.net", smimetest.Spec{}).PEM())

	r := f.run(nil, "import", "smime", "-dry-run", dir)
	wantCode(t, r, 1)
	wantContains(t, "dry run", r.stdout, "certificate directory "+dir+": 5 file(s)\n",
		"alice@example.org: would be imported: file alice@example.org: "+certFpr(t, alice)+"\n",
		"bob@example.org: refused (address): file bob@example.org: key sha256:", "(it names: mallory@example.org)",
		"old@example.org: refused (expired)", "key@example.org: refused (public-only)",
		"carol@example.net: refused (domain)",
		"summary: imported 1, updated 0, unbound 0, already present 0, refused 4 (address 1, domain 1, expired 1, public-only 1), skipped 0",
		"dry run: nothing was changed")
	wantContains(t, "dry run", r.stderr, "4 refused")
	if rows, _ := f.list(); len(rows) != 0 {
		t.Fatalf("the dry run changed the store: %v", rows)
	}
	r = f.run(nil, "import", "smime", dir)
	wantCode(t, r, 1)
	rows, _ := f.listFull()
	if len(rows) != 1 || rows[0].fingerprint != certFpr(t, alice) || rows[0].kind != "x509" || rows[0].format != "smime" {
		t.Fatalf("store after the import: %+v", rows)
	}
	// Only what the admission rules accept: exit 0 once the rest is gone.
	for _, name := range []string{"bob@example.org", "old@example.org", "key@example.org", "carol@example.net"} {
		os.Remove(filepath.Join(dir, name))
	}
	r = f.run(nil, "import", "smime", dir)
	wantCode(t, r, 0)
	wantContains(t, "again", r.stdout, "alice@example.org: already present", "imported 0, updated 0, unbound 0, already present 1, refused 0")

	wantCode(t, f.run(nil, "import", "smime", filepath.Join(dir, "missing")), 1)
	wantCode(t, f.run(nil, "import", "smime"), 2)
}
