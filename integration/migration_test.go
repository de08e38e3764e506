package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
	_ "github.com/go-sql-driver/mysql" // MariaDB, to fill gpgmw_keys
	_ "github.com/jackc/pgx/v5/stdlib" // PostgreSQL, to fill gpgmw_keys
	_ "modernc.org/sqlite"             // SQLite, to fill gpgmw_keys

	"lacre.io/milter/internal/gnupgtest"
)

// gpgmwMySQLSchema is gpg-mailgate-web's schema.sql for the table, exactly.
const gpgmwMySQLSchema = `CREATE TABLE gpgmw_keys (id INT NOT NULL PRIMARY KEY AUTO_INCREMENT, email VARCHAR(256), publickey TEXT, confirm VARCHAR(32), status INT NOT NULL DEFAULT 0, time TIMESTAMP DEFAULT CURRENT_TIMESTAMP);`

// The same table as Lacre's SQLAlchemy model creates it in PostgreSQL and
// in SQLite (which has no AUTO_INCREMENT: an INTEGER PRIMARY KEY is the
// row id).
const (
	gpgmwPostgresSchema = `CREATE TABLE gpgmw_keys (
	id SERIAL NOT NULL, 
	email VARCHAR(256), 
	publickey TEXT, 
	confirm VARCHAR(32), 
	status INTEGER NOT NULL, 
	time TIMESTAMP WITHOUT TIME ZONE DEFAULT now(), 
	PRIMARY KEY (id)
)`
	gpgmwSQLiteSchema = `CREATE TABLE gpgmw_keys (
	id INTEGER NOT NULL, 
	email VARCHAR(256), 
	publickey TEXT, 
	confirm VARCHAR(32), 
	status INTEGER NOT NULL, 
	time DATETIME DEFAULT (CURRENT_TIMESTAMP), 
	PRIMARY KEY (id)
)`
)

// gpgmwRow is an INSERT of one registration.
func gpgmwRow(email, key, confirm string, status int) string {
	q := func(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
	return fmt.Sprintf("INSERT INTO gpgmw_keys (email, publickey, confirm, status) VALUES (%s, %s, %s, %d)", q(email), q(key), q(confirm), status)
}

// filterScript stands in for gpg-mailgate.py as Postfix's content filter:
// it records each message it is given, then re-injects it unchanged over
// SMTP to the re-injection smtpd, which is what gpg-mailgate does with a
// message that is already encrypted (multipart/encrypted). It does not
// encrypt: the test checks that it never needs to.
const filterScript = `#!/bin/sh
sender="$1"; shift
f=$(mktemp %[1]s/msg.XXXXXX) || exit 75
cat > "$f" || exit 75
to=$(echo "$@" | tr ' ' ',')
exec swaks --silent 2 --server 127.0.0.1:%[2]d --from "$sender" --to "$to" --data "$f"
`

// TestMigrationWalkthrough follows docs/migration.md: import the keys of
// gpg-mailgate's GnuPG home, the registrations of its gpg-mailgate-web
// database (MariaDB, and the same table in PostgreSQL and SQLite as Lacre
// keeps it) and its gpg-mailgate.conf; add the milter to a Postfix whose
// content filter is still gpg-mailgate; send; remove the content filter,
// its re-injection service and no_address_mappings; send again; roll back.
// The old filter itself does not run: a script stands in for it (see
// filterScript).
func TestMigrationWalkthrough(t *testing.T) {
	swaks := needTool(t, "swaks")

	// gpg-mailgate's GnuPG home: good keys, an expired one, a revoked one,
	// and one for a domain outside [web] domains.
	home := gnupgtest.New(t, false)
	alice := home.Key("Alice <alice@example.org>", time.Time{}, "1y")
	carol := home.Key("Carol <carol@example.org>", time.Time{}, "never")
	home.AddUserID(carol, "Carol <carol@example.net>")
	home.Key("Old <old@example.org>", time.Now().AddDate(-1, 0, 0), "30d")
	rev := home.Key("Rev <rev@example.org>", time.Time{}, "1y")
	home.Revoke(rev)
	home.Key("Bob <bob@elsewhere.test>", time.Time{}, "1y")

	// Keys that users registered with gpg-mailgate-web.
	web := gnupgtest.New(t, false)
	dave := web.Key("Dave <dave@example.org>", time.Time{}, "1y")
	erin := web.Key("Erin <erin@example.org>", time.Time{}, "1y")
	gina := web.Key("Gina <gina@example.org>", time.Time{}, "1y")
	hank := web.Key("Hank <hank@example.org>", time.Time{}, "1y")
	pub := func(f string) string { return string(web.Public(f)) }

	mysqlDSN := startMariaDB(t)
	u := strings.TrimPrefix(mysqlDSN, "mysql://gpgmw:gpgmw-pw@")
	execSQL(t, "mysql", "gpgmw:gpgmw-pw@tcp("+strings.SplitN(u, "/", 2)[0]+")/gpgmw", gpgmwMySQLSchema,
		gpgmwRow("dave@example.org", pub(dave), "", 1),       // confirmed, imported by the cron job
		gpgmwRow("erin@example.org", pub(erin), "c0ffee", 0), // never confirmed
	)
	pgDSN := startPostgres(t)
	execSQL(t, "pgx", pgDSN, gpgmwPostgresSchema,
		gpgmwRow("gina@example.org", pub(gina), "", 0), // confirmed, not yet imported
		gpgmwRow("alice@example.org", "", "", 0),       // alice asked for no encryption
	)
	sqlitePath := filepath.Join(t.TempDir(), "gpgmw.db")
	execSQL(t, "sqlite", sqlitePath, gpgmwSQLiteSchema, gpgmwRow("hank@example.org", pub(hank), "", 1))

	s := startSink(t)
	m := startMilter(t, "[store]\ncache_ttl = \"0s\"\n\n[web]\ndomains = [\"example.org\", \"example.net\"]\n")
	cli := func(wantOK bool, args ...string) string {
		t.Helper()
		out, err := m.cli(nil, args...)
		if wantOK && err != nil || !wantOK && err == nil {
			t.Fatalf("lacre-milter %s: error %v, want failure %v\n%s", strings.Join(args, " "), err, !wantOK, out)
		}
		return out
	}
	contains := func(out string, want ...string) {
		t.Helper()
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Fatalf("output lacks %q:\n%s", w, out)
			}
		}
	}

	// 1. Keys: preview, import, import again.
	out := cli(false, "import", "gnupg", "-dry-run", home.Dir)
	contains(out, "summary: imported 3, updated 0, unbound 0, already present 0, refused 3 (domain 1, expired 1, revoked 1), skipped 0",
		"dry run: nothing was changed", "alice@example.org: would be imported")
	contains(cli(true, "keys", "list"), "(no keys")
	out = cli(false, "import", "gnupg", home.Dir)
	contains(out, "imported 3,", "bob@elsewhere.test: refused (domain)", "old@example.org: refused (expired)", "rev@example.org: refused (revoked)",
		"carol@example.net: imported", "carol@example.org: imported")
	contains(cli(false, "import", "gnupg", home.Dir), "imported 0, updated 0, unbound 0, already present 3, refused 3")

	// 2. Registrations, from each kind of database.
	out = cli(true, "import", "gpgmw", mysqlDSN)
	contains(out, "dave@example.org: imported: row 1", "erin@example.org: skipped: row 2", "unconfirmed", "imported 1,")
	if strings.Contains(out, "gpgmw-pw") {
		t.Errorf("the password is in the output:\n%s", out)
	}
	contains(cli(true, "import", "gpgmw", mysqlDSN), "imported 0, updated 0, unbound 0, already present 1")
	out = cli(false, "import", "gpgmw", pgDSN)
	contains(out, "gina@example.org: imported", "alice@example.org: refused (already-bound)", "-replace")
	contains(cli(true, "import", "gpgmw", sqlitePath), "hank@example.org: imported")

	// 3. The configuration: enc_keymap's key ID becomes alice's fingerprint.
	confPath := filepath.Join(t.TempDir(), "gpg-mailgate.conf")
	conf := fmt.Sprintf("[default]\nadd_header = yes\nmail_case_insensitive = yes\n\n[gpg]\nkeyhome = %s\n\n[relay]\nhost = 127.0.0.1\nport = 10028\n\n[enc_keymap]\narchive@example.org = %s\n",
		home.Dir, alice[24:])
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	toml := cli(true, "import", "config", confPath)
	contains(toml, `"archive@example.org" = ["`+alice+`"]`)
	cfg := withTableKey(toml, "milter", "listen", strconv.Quote(fmt.Sprintf("inet:127.0.0.1:%d", m.port)))
	// The private Postfix has no alias tables of its own; [aliases]'s
	// default ("auto") would read this machine's /etc/postfix instead.
	cfg += noAliasesTOML
	if err := os.WriteFile(m.configPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	contains(cli(true, "check-config"), "configuration OK")
	m.restart(t)

	// 4. Postfix as gpg-mailgate left it, then the milter lines added
	// while the content filter still runs.
	filterDir, err := os.MkdirTemp("", "lacre-filter-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(filterDir) })
	spool := filepath.Join(filterDir, "seen")
	reinject := freePort(t)
	script := filepath.Join(filterDir, "gpg-mailgate.sh")
	if err := os.WriteFile(script, []byte(fmt.Sprintf(strings.Replace(filterScript, "exec swaks", "exec "+swaks, 1), spool, reinject)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(spool, 0o777); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filterDir, spool} {
		os.Chmod(d, map[string]os.FileMode{filterDir: 0o755, spool: 0o777}[d])
	}
	filterServices := []string{
		"gpg-mailgate unix - n n - - pipe\n  flags=q user=nobody argv=" + script + " ${sender} ${recipient}",
		fmt.Sprintf("127.0.0.1:%d inet n - n - 10 smtpd\n  -o content_filter=\n  -o smtpd_milters=\n  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks\n  -o smtpd_recipient_restrictions=permit_mynetworks,reject\n  -o mynetworks=127.0.0.0/8", reinject),
	}
	p := startPostfix(t, postfixOptions{RelayPort: s.port, Master: filterServices,
		Main: map[string]string{"content_filter": "gpg-mailgate", "receive_override_options": "no_address_mappings"}})
	p.setMain(t, map[string]string{"smtpd_milters": m.addr(), "non_smtpd_milters": m.addr()})

	secrets := map[string]*openpgp.Entity{
		"alice@example.org":   home.Secret(alice),
		"carol@example.net":   home.Secret(carol),
		"dave@example.org":    web.Secret(dave),
		"gina@example.org":    web.Secret(gina),
		"hank@example.org":    web.Secret(hank),
		"archive@example.org": home.Secret(alice), // [static.addresses], from enc_keymap
	}
	sendAll := func(phase string) {
		t.Helper()
		for rcpt, secret := range secrets {
			id := phase + "-" + strings.ReplaceAll(rcpt, "@", "-at-")
			msg := message(id, rcpt, textFields, textBody)
			if err := p.sendSMTP(t, "sender@example.com", []string{rcpt}, msg); err != nil {
				t.Fatalf("%s: %v", rcpt, err)
			}
			got := byMessageID(t, s, id)
			checkDecrypts(t, got.Data, msg, secret)
		}
	}
	seen := func() [][]byte {
		t.Helper()
		files, _ := filepath.Glob(filepath.Join(spool, "msg.*"))
		var out [][]byte
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b)
		}
		return out
	}
	sendAll("overlap")
	// Every message reached the old filter already encrypted.
	if got := seen(); len(got) != len(secrets) {
		t.Fatalf("the content filter saw %d messages, want %d", len(got), len(secrets))
	}
	for _, b := range seen() {
		if !bytes.Contains(b, []byte("multipart/encrypted")) || bytes.Contains(b, []byte("ünïcödé")) {
			t.Fatalf("the content filter was given a message in clear:\n%s", b)
		}
	}

	// 5. Remove content_filter, the re-injection service and
	// no_address_mappings.
	if err := writeCold(filepath.Join(p.configDir, "master.cf"), []byte(masterCF(p.smtpPort, nil))); err != nil {
		t.Fatal(err)
	}
	p.setMain(t, map[string]string{"content_filter": "", "receive_override_options": ""})
	sendAll("after")
	if got := seen(); len(got) != len(secrets) {
		t.Fatalf("the content filter still runs: it saw %d messages, want %d", len(got), len(secrets))
	}

	// Rolling back: the content filter and its service again, no milter.
	if err := writeCold(filepath.Join(p.configDir, "master.cf"), []byte(masterCF(p.smtpPort, filterServices))); err != nil {
		t.Fatal(err)
	}
	p.setMain(t, map[string]string{"content_filter": "gpg-mailgate", "receive_override_options": "no_address_mappings", "smtpd_milters": "", "non_smtpd_milters": ""})
	msg := message("rollback", "alice@example.org", textFields, textBody)
	if err := p.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, msg); err != nil {
		t.Fatal(err)
	}
	byMessageID(t, s, "rollback")
	if got := seen(); len(got) != len(secrets)+1 {
		t.Fatalf("after the rollback the content filter saw %d messages, want %d", len(got), len(secrets)+1)
	}
}
