package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPostgresStoreOptions: a connection string selects PostgreSQL and
// is kept as written (not resolved as a path); password_file is resolved
// against the config file's folder; a password in the connection string
// is refused, in both forms.
func TestPostgresStoreOptions(t *testing.T) {
	dir := t.TempDir()
	load := func(lines ...string) (*Config, error) {
		path := filepath.Join(dir, "lacre.toml")
		if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return Load(path)
	}
	for _, dsn := range []string{
		"postgres://lacre_milter@db1.example.org/lacre?sslmode=verify-full",
		"postgresql://lacre_milter@db1.example.org:5433/lacre",
		"host=db1.example.org dbname=lacre user=lacre_milter sslmode=verify-full",
	} {
		c, err := load(`[store]`, `database = "`+dsn+`"`, `password_file = "db.pw"`, `max_conns = 4`)
		if err != nil {
			t.Fatalf("%s: %v", dsn, err)
		}
		if !c.StoreIsPostgres() || c.DatabasePath() != dsn {
			t.Errorf("%s: StoreIsPostgres %v, DatabasePath %q", dsn, c.StoreIsPostgres(), c.DatabasePath())
		}
		o := c.PostgresOptions()
		if o.PasswordFile != filepath.Join(dir, "db.pw") || o.MaxConns != 4 || o.ConnectTimeout == 0 || o.StatementTimeout == 0 {
			t.Errorf("%s: options %+v", dsn, o)
		}
	}
	for _, dsn := range []string{
		"postgres://lacre_milter:secret@db1.example.org/lacre",
		"postgres://lacre_milter@db1.example.org/lacre?password=secret",
		"host=db1.example.org dbname=lacre user=lacre_milter password=secret",
	} {
		_, err := load(`[store]`, `database = "`+dsn+`"`)
		if err == nil || !strings.Contains(err.Error(), "store.database") || !strings.Contains(err.Error(), "password_file") {
			t.Errorf("%s: %v; want store.database refused, pointing to password_file", dsn, err)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: the error repeats the password: %v", dsn, err)
		}
	}
	if c, err := load(`[store]`, `database = "keys/lacre.db"`); err != nil || c.StoreIsPostgres() || c.DatabasePath() != filepath.Join(dir, "keys/lacre.db") {
		t.Errorf("a path: %v", err)
	}
	if _, err := load(`[store]`, `database = "lacre.db"`, `password_file = "db.pw"`); err == nil {
		t.Error("password_file with an SQLite store accepted")
	}
	if _, err := load(`[store]`, `database = "postgres://u@h/d"`, `max_conns = 0`); err == nil {
		t.Error("max_conns = 0 accepted")
	}
}
