package keys

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers the pure-Go "sqlite" driver: no cgo, one static binary
)

// SQLiteStore is the default Store: one SQLite file holding the keys, the
// address→key bindings and the per-address preferences.
//
// The file is opened in WAL mode because several processes use it at once:
// the milter reads it on every RCPT while the CLI and the web service write
// to it. With WAL, readers never block the writer and the writer never
// blocks readers; only writers wait for each other, up to the busy timeout.
type SQLiteStore struct {
	db   *sql.DB
	path string
	now  func() time.Time // binding and update times; replaced in tests
}

var _ Store = (*SQLiteStore)(nil)

// sqliteBusyTimeout is how long a connection waits for another writer's
// lock before giving up with SQLITE_BUSY. Writes are short (a handful of
// rows), so five seconds only runs out when something is badly wrong, and
// the milter then answers with a temporary failure rather than hanging.
const sqliteBusyTimeout = 5000 // milliseconds

// OpenSQLite opens (creating if needed) the key store at path and brings its
// schema up to date. The directory must exist: a missing directory is far
// more likely a typo in the configuration than a wish for a new store, so it
// is reported, not created. A new file is created with mode 0600, as it
// tells who corresponds with whom.
func OpenSQLite(ctx context.Context, path string) (*SQLiteStore, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: no SQLite key store path configured", ErrUnavailable)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("%w: key store %s: %w", ErrUnavailable, path, err)
	}
	dir := filepath.Dir(abs)
	if st, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: key store %s: directory %s does not exist (create it, or fix the path)", ErrUnavailable, path, dir)
		}
		return nil, fmt.Errorf("%w: key store %s: %w", ErrUnavailable, path, err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("%w: key store %s: %s is not a directory", ErrUnavailable, path, dir)
	}
	// Create the file ourselves so that it gets 0600 rather than SQLite's
	// 0644; SQLite gives the -wal and -shm files the database file's mode.
	if f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600); err == nil {
		f.Close()
	} else if !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("%w: key store %s: %w", ErrUnavailable, path, err)
	}

	db, err := sql.Open("sqlite", sqliteDSN(abs))
	if err != nil {
		return nil, fmt.Errorf("%w: key store %s: %w", ErrUnavailable, path, err)
	}
	s := &SQLiteStore{db: db, path: path, now: time.Now}
	if err := s.init(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// sqliteDSN builds the connection string. The pragmas are in the DSN, not
// run once after Open, because database/sql keeps a pool of connections and
// busy_timeout, foreign_keys and synchronous are per connection: each new
// connection must get them. _txlock=immediate makes every transaction take
// the write lock at BEGIN; a deferred transaction that reads and then writes
// can fail with SQLITE_BUSY at once, without waiting for the busy timeout,
// when another process wrote in between.
func sqliteDSN(abs string) string {
	// The path is a URI path: escape what SQLite's URI parser would take as
	// syntax (and what the driver splits the query on).
	esc := strings.NewReplacer("%", "%25", "?", "%3F", "#", "%23").Replace(filepath.ToSlash(abs))
	if !strings.HasPrefix(esc, "/") {
		esc = "/" + esc // Windows drive letters: file:/C:/...
	}
	return "file:" + esc +
		fmt.Sprintf("?_pragma=busy_timeout(%d)", sqliteBusyTimeout) +
		"&_pragma=foreign_keys(1)" +
		"&_pragma=journal_mode(WAL)" +
		// NORMAL is durable across application crashes in WAL mode; only a
		// power loss can lose the last commits, which the operator can redo.
		"&_pragma=synchronous(NORMAL)" +
		"&_txlock=immediate"
}

func (s *SQLiteStore) init(ctx context.Context) error {
	var mode string
	if err := s.db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return s.unavailable("opening", err)
	}
	if !strings.EqualFold(mode, "wal") {
		// For example a file system that cannot map the -shm file.
		return fmt.Errorf("%w: key store %s: cannot switch to WAL mode (journal mode is %q)", ErrUnavailable, s.path, mode)
	}
	return s.migrate(ctx)
}

// migrate applies the migrations the database lacks, each in its own
// transaction together with its schema_version row. Transactions begin
// IMMEDIATE, so two processes starting at once do not both apply one
// migration: the second waits, then sees the new version.
func (s *SQLiteStore) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (
		version    INTEGER PRIMARY KEY,
		applied_at INTEGER NOT NULL
	)`); err != nil {
		return s.unavailable("creating schema_version", err)
	}
	for {
		done, err := s.migrateOne(ctx)
		if err != nil || done {
			return err
		}
	}
}

func (s *SQLiteStore) migrateOne(ctx context.Context) (done bool, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, s.unavailable("migrating", err)
	}
	defer tx.Rollback()
	var v int
	if err := tx.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM schema_version").Scan(&v); err != nil {
		return false, s.unavailable("reading schema version", err)
	}
	switch {
	case v > len(sqliteMigrations):
		return false, fmt.Errorf("key store %s: database schema version %d is newer than this lacre-milter (knows up to %d); upgrade the binary", s.path, v, len(sqliteMigrations))
	case v == len(sqliteMigrations):
		return true, nil
	}
	if _, err := tx.ExecContext(ctx, sqliteMigrations[v]); err != nil {
		return false, s.unavailable(fmt.Sprintf("migrating to schema version %d", v+1), err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO schema_version(version, applied_at) VALUES (?, ?)", v+1, s.now().UTC().Unix()); err != nil {
		return false, s.unavailable(fmt.Sprintf("migrating to schema version %d", v+1), err)
	}
	if err := tx.Commit(); err != nil {
		return false, s.unavailable(fmt.Sprintf("migrating to schema version %d", v+1), err)
	}
	return false, nil
}

// unavailable wraps a database error so that callers can tell "the store
// cannot answer now" (errors.Is ErrUnavailable: the milter tempfails) from
// "the answer is no". The cause stays in the message and in the chain (a
// cancelled context is still errors.Is context.Canceled).
func (s *SQLiteStore) unavailable(op string, err error) error {
	return fmt.Errorf("%w: key store %s: %s: %w", ErrUnavailable, s.path, op, err)
}

// parseStored turns stored material back into a Key. Material that does not
// parse, or parses to another key, means a damaged database: that is
// ErrUnavailable (try later, repair), not "this address has no key".
func (s *SQLiteStore) parseStored(fingerprint string, material []byte) (*Key, error) {
	ks, err := Parse(material)
	if err != nil {
		return nil, fmt.Errorf("%w: key store %s: stored key %s does not parse: %w", ErrUnavailable, s.path, fingerprint, err)
	}
	if len(ks) != 1 || ks[0].Fingerprint != fingerprint {
		return nil, fmt.Errorf("%w: key store %s: stored material of key %s holds %d other key(s)", ErrUnavailable, s.path, fingerprint, len(ks))
	}
	return ks[0], nil
}

// KeysFor implements Store.
func (s *SQLiteStore) KeysFor(ctx context.Context, address string) ([]*Key, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT k.fingerprint, k.material
		FROM bindings b JOIN keys k ON k.fingerprint = b.fingerprint
		WHERE b.address = ?
		ORDER BY b.added_at, b.rowid`, address)
	if err != nil {
		return nil, s.unavailable("looking up "+address, err)
	}
	defer rows.Close()
	out := []*Key{}
	for rows.Next() {
		var fp string
		var material []byte
		if err := rows.Scan(&fp, &material); err != nil {
			return nil, s.unavailable("looking up "+address, err)
		}
		k, err := s.parseStored(fp, material)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, s.unavailable("looking up "+address, err)
	}
	return out, nil
}

// KeyByFingerprint implements Store.
func (s *SQLiteStore) KeyByFingerprint(ctx context.Context, fingerprint string) (*Key, error) {
	var material []byte
	err := s.db.QueryRowContext(ctx, "SELECT material FROM keys WHERE fingerprint = ?", fingerprint).Scan(&material)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("key %s: %w", fingerprint, ErrNotFound)
	}
	if err != nil {
		return nil, s.unavailable("looking up key "+fingerprint, err)
	}
	return s.parseStored(fingerprint, material)
}

// Add implements Store. An empty keys slice is refused rather than taken as
// "bind nothing": with replace it would silently unbind every key of the
// address, and mail to it would go out in clear.
func (s *SQLiteStore) Add(ctx context.Context, address string, keys []*Key, replace bool) error {
	if len(keys) == 0 {
		return fmt.Errorf("adding keys for %s: no keys given", address)
	}
	keep := make(map[string]bool, len(keys))
	for _, k := range keys {
		if k == nil || k.Fingerprint == "" || len(k.Raw) == 0 {
			return fmt.Errorf("adding keys for %s: a key without fingerprint or material", address)
		}
		keep[k.Fingerprint] = true
	}
	now := s.now().UTC().Unix()
	op := "adding keys for " + address
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return s.unavailable(op, err)
	}
	defer tx.Rollback()
	for _, k := range keys {
		if _, err := tx.ExecContext(ctx, `INSERT INTO keys(fingerprint, material, updated_at) VALUES (?, ?, ?)
			ON CONFLICT(fingerprint) DO UPDATE SET material = excluded.material, updated_at = excluded.updated_at`,
			k.Fingerprint, k.Raw, now); err != nil {
			return s.unavailable(op, err)
		}
		// An existing binding keeps its original time, and with it its place
		// in the order of KeysFor.
		if _, err := tx.ExecContext(ctx, `INSERT INTO bindings(address, fingerprint, added_at) VALUES (?, ?, ?)
			ON CONFLICT(address, fingerprint) DO NOTHING`, address, k.Fingerprint, now); err != nil {
			return s.unavailable(op, err)
		}
	}
	if replace {
		bound, err := boundTo(ctx, tx, address)
		if err != nil {
			return s.unavailable(op, err)
		}
		var gone []string
		for _, fp := range bound {
			if keep[fp] {
				continue
			}
			if _, err := tx.ExecContext(ctx, "DELETE FROM bindings WHERE address = ? AND fingerprint = ?", address, fp); err != nil {
				return s.unavailable(op, err)
			}
			gone = append(gone, fp)
		}
		if err := collect(ctx, tx, gone); err != nil {
			return s.unavailable(op, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return s.unavailable(op, err)
	}
	return nil
}

// Remove implements Store.
func (s *SQLiteStore) Remove(ctx context.Context, address, fingerprint string) (int, error) {
	op := "removing keys of " + address
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, s.unavailable(op, err)
	}
	defer tx.Rollback()
	var gone []string
	if fingerprint == "" {
		if gone, err = boundTo(ctx, tx, address); err != nil {
			return 0, s.unavailable(op, err)
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM bindings WHERE address = ?", address); err != nil {
			return 0, s.unavailable(op, err)
		}
	} else {
		res, err := tx.ExecContext(ctx, "DELETE FROM bindings WHERE address = ? AND fingerprint = ?", address, fingerprint)
		if err != nil {
			return 0, s.unavailable(op, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return 0, s.unavailable(op, err)
		} else if n > 0 {
			gone = []string{fingerprint}
		}
	}
	if len(gone) == 0 {
		if fingerprint == "" {
			return 0, fmt.Errorf("keys for %s: %w", address, ErrNotFound)
		}
		return 0, fmt.Errorf("key %s for %s: %w", fingerprint, address, ErrNotFound)
	}
	if err := collect(ctx, tx, gone); err != nil {
		return 0, s.unavailable(op, err)
	}
	if err := tx.Commit(); err != nil {
		return 0, s.unavailable(op, err)
	}
	return len(gone), nil
}

// boundTo returns the fingerprints bound to address.
func boundTo(ctx context.Context, tx *sql.Tx, address string) ([]string, error) {
	rows, err := tx.QueryContext(ctx, "SELECT fingerprint FROM bindings WHERE address = ?", address)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var fp string
		if err := rows.Scan(&fp); err != nil {
			return nil, err
		}
		out = append(out, fp)
	}
	return out, rows.Err()
}

// collect deletes those of fingerprints that are no longer bound to any
// address. It runs in the transaction that unbound them, so the store never
// keeps a key nobody can reach (and that the operator can no longer see in
// List).
func collect(ctx context.Context, tx *sql.Tx, fingerprints []string) error {
	for _, fp := range fingerprints {
		if _, err := tx.ExecContext(ctx, `DELETE FROM keys WHERE fingerprint = ?
			AND NOT EXISTS (SELECT 1 FROM bindings WHERE bindings.fingerprint = keys.fingerprint)`, fp); err != nil {
			return err
		}
	}
	return nil
}

// List implements Store. A key bound to several addresses is parsed once
// and the Bindings share the *Key.
func (s *SQLiteStore) List(ctx context.Context) ([]Binding, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT b.address, b.added_at, k.fingerprint, k.material
		FROM bindings b JOIN keys k ON k.fingerprint = b.fingerprint
		ORDER BY b.address, b.added_at, b.rowid`)
	if err != nil {
		return nil, s.unavailable("listing keys", err)
	}
	defer rows.Close()
	parsed := map[string]*Key{}
	out := []Binding{}
	for rows.Next() {
		var addr, fp string
		var added int64
		var material []byte
		if err := rows.Scan(&addr, &added, &fp, &material); err != nil {
			return nil, s.unavailable("listing keys", err)
		}
		k := parsed[fp]
		if k == nil {
			if k, err = s.parseStored(fp, material); err != nil {
				return nil, err
			}
			parsed[fp] = k
		}
		out = append(out, Binding{Address: addr, Key: k, Added: time.Unix(added, 0).UTC()})
	}
	if err := rows.Err(); err != nil {
		return nil, s.unavailable("listing keys", err)
	}
	return out, nil
}

// Prefs implements Store.
func (s *SQLiteStore) Prefs(ctx context.Context, address string) (Prefs, error) {
	var ph sql.NullInt64
	err := s.db.QueryRowContext(ctx, "SELECT protect_headers FROM prefs WHERE address = ?", address).Scan(&ph)
	if errors.Is(err, sql.ErrNoRows) {
		return Prefs{}, nil
	}
	if err != nil {
		return Prefs{}, s.unavailable("reading preferences of "+address, err)
	}
	var p Prefs
	if ph.Valid {
		b := ph.Int64 != 0
		p.ProtectHeaders = &b
	}
	return p, nil
}

// SetPrefs implements Store.
func (s *SQLiteStore) SetPrefs(ctx context.Context, address string, p Prefs) error {
	var ph sql.NullInt64
	if p.ProtectHeaders != nil {
		ph.Valid = true
		if *p.ProtectHeaders {
			ph.Int64 = 1
		}
	}
	if _, err := s.db.ExecContext(ctx, `INSERT INTO prefs(address, protect_headers) VALUES (?, ?)
		ON CONFLICT(address) DO UPDATE SET protect_headers = excluded.protect_headers`, address, ph); err != nil {
		return s.unavailable("storing preferences of "+address, err)
	}
	return nil
}

// Close implements Store. Later calls on the store fail with ErrUnavailable.
func (s *SQLiteStore) Close() error {
	if err := s.db.Close(); err != nil {
		return s.unavailable("closing", err)
	}
	return nil
}
