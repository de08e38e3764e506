package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"lacre.io/milter/internal/pgtest"
)

// pgStore is a private PostgreSQL cluster (internal/pgtest: Debian's
// initdb and pg_ctl, run as the postgres user, on a free loopback port)
// holding one lacre store, with the two roles of docs/operations.md: the
// milters' read-only role and the read-write role of the CLI and the
// registration service. The cluster is stopped and removed when the test
// ends. Without PostgreSQL the test skips, or fails under CI.
type pgStore struct {
	srv *pgtest.Server
	db  string
	// Password files of the roles.
	milterPW, webPW string
	// adminConfig is a config file whose [store] logs in as the
	// superuser, for "store init".
	adminConfig string
}

const (
	pgMilterRole = "lacre_milter"
	pgWebRole    = "lacre_web"
)

// startPGStore starts the cluster, creates the database, runs
// "lacre-milter store init" on it as its owner and grants the roles.
func startPGStore(t testing.TB) *pgStore {
	t.Helper()
	recordInputs()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	p := &pgStore{srv: pgtest.Start(t), db: "lacre"}
	p.srv.Exec(t, "postgres", "CREATE DATABASE lacre")
	p.milterPW = p.srv.CreateRole(t, pgMilterRole)
	p.webPW = p.srv.CreateRole(t, pgWebRole)
	p.adminConfig = filepath.Join(t.TempDir(), "admin.toml")
	if err := os.WriteFile(p.adminConfig, []byte(p.storeTOML(pgtest.Admin, p.srv.PasswordFile())), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := run(nil, nil, milterBin, "-config", p.adminConfig, "store", "init"); err != nil || !strings.Contains(string(out), "created") {
		t.Fatalf("lacre-milter store init: %v\n%s", err, out)
	}
	for _, q := range []string{
		"REVOKE ALL ON DATABASE lacre FROM PUBLIC",
		"GRANT CONNECT ON DATABASE lacre TO lacre_milter, lacre_web",
		"GRANT USAGE ON SCHEMA public TO lacre_milter, lacre_web",
		"GRANT SELECT ON keys, bindings, prefs, schema_version TO lacre_milter",
		"GRANT SELECT, INSERT, UPDATE, DELETE ON keys, bindings, prefs, requests TO lacre_web",
		"GRANT SELECT ON schema_version TO lacre_web",
	} {
		p.srv.Exec(t, "lacre", q)
	}
	return p
}

// storeTOML is a [store] table for role.
func (p *pgStore) storeTOML(role, pwfile string) string {
	return fmt.Sprintf("[store]\ndatabase = %q\npassword_file = %q\n", p.srv.DSN(role, p.db), pwfile)
}

// startPGMilter is startMilter with the store in PostgreSQL, logged in
// as the read-only milter role; extraTOML must not have a [store] table
// (cacheTTL goes there). The milter's CLI (m.cli) gets a config with the
// read-write role, as an operator's "keys add" has.
func startPGMilter(t testing.TB, p *pgStore, cacheTTL, extraTOML string) *milterProc {
	t.Helper()
	m := &milterProc{t: t, dir: t.TempDir(), port: freePort(t), out: &tailBuffer{max: 4 << 20}}
	m.configPath = filepath.Join(m.dir, "lacre.toml")
	cfg := withTableKey(extraTOML, "milter", "listen", strconv.Quote(fmt.Sprintf("inet:127.0.0.1:%d", m.port)))
	cfg += "\n" + p.storeTOML(pgMilterRole, p.milterPW) + "cache_ttl = " + strconv.Quote(cacheTTL) + "\n"
	if !strings.Contains(cfg, "[aliases]") {
		cfg += noAliasesTOML
	}
	if err := os.WriteFile(m.configPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if m.running() {
			if err := m.stop(); err != nil {
				t.Errorf("lacre-milter: %v", err)
			}
		}
		if out := m.out.String(); out != "" && t.Failed() {
			t.Logf("lacre-milter output:\n%s", out)
		}
	})
	m.start(t)
	return m
}

// rwConfig writes a config with the read-write role (and extraTOML, which
// must have no [store]), for the CLI and the registration service; it
// returns a milterProc whose cli and configPath use it (not started).
func (p *pgStore) rwConfig(t testing.TB, extraTOML string) *milterProc {
	t.Helper()
	m := &milterProc{t: t, dir: t.TempDir()}
	m.configPath = filepath.Join(m.dir, "rw.toml")
	cfg := extraTOML + "\n" + p.storeTOML(pgWebRole, p.webPW)
	if !strings.Contains(cfg, "[aliases]") {
		cfg += noAliasesTOML
	}
	if err := os.WriteFile(m.configPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return m
}
