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
//
// The store is the only thing that says "this address has no key", so it
// must never answer from a database that is not the one holding the keys.
// SQLite would happily create a new empty database wherever the file has
// gone; here nothing but InitSQLite creates or migrates one, and every
// operation first checks that the file is still the store that was opened
// (see storeDB).
type SQLiteStore struct {
	db   *storeDB
	path string
	now  func() time.Time // binding and update times; replaced in tests
}

var _ Store = (*SQLiteStore)(nil)

// sqliteBusyTimeout is how long a connection waits for another writer's
// lock before giving up with SQLITE_BUSY. Writes are short (a handful of
// rows), so five seconds only runs out when something is badly wrong, and
// the milter then answers with a temporary failure rather than hanging.
const sqliteBusyTimeout = 5000 // milliseconds

// sqliteMagic is the first 16 bytes of every SQLite 3 database file
// (https://www.sqlite.org/fileformat.html §1.3).
const sqliteMagic = "SQLite format 3\x00"

// OpenSQLite opens the existing key store at path, which must be a lacre
// store at this binary's schema version. It never creates, initialises or
// migrates anything: a missing, empty or foreign file is an error that
// says what to do, because taking it for a new store would turn every
// keyed recipient's mail into cleartext. Create a store with InitSQLite
// ("lacre-milter store init").
func OpenSQLite(ctx context.Context, path string) (*SQLiteStore, error) {
	abs, err := storePath(path)
	if err != nil {
		return nil, err
	}
	s := &SQLiteStore{path: path, now: time.Now}
	s.db = &storeDB{path: path, abs: abs}
	if err := s.db.open(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// InitSQLite is the one way to make a key store: it creates the file at
// path if there is none (mode 0600: it tells who corresponds with whom)
// and brings the schema of a new or existing store up to date. An existing
// file that is empty or not a lacre store is refused, never initialised:
// an emptied store is an accident to repair from the backup, not a new
// store. The directory must exist: a missing directory is far more likely
// a typo than a wish for a new store.
//
// Run as root (the Debian package's postinst, an operator's "sudo"), a new
// file is given the owner and group of its directory, which is the service
// user's state directory (/var/lib/lacre, owner lacre), so that the
// unprivileged milter can open it; SQLite gives the -wal and -shm files it
// creates the database file's owner.
func InitSQLite(ctx context.Context, path string) (*SQLiteStore, error) {
	abs, err := storePath(path)
	if err != nil {
		return nil, err
	}
	if err := createStoreFile(abs); err != nil {
		return nil, fmt.Errorf("%w: key store %s: %w", ErrUnavailable, path, err)
	}
	s := &SQLiteStore{path: path, now: time.Now}
	s.db = &storeDB{path: path, abs: abs, migrate: s.migrate}
	if err := s.db.open(ctx); err != nil {
		return nil, err
	}
	s.db.migrate = nil // only this first open may migrate
	return s, nil
}

// storePath checks path and its directory and returns it absolute.
func storePath(path string) (string, error) {
	if path == "" {
		return "", fmt.Errorf("%w: no SQLite key store path configured", ErrUnavailable)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("%w: key store %s: %w", ErrUnavailable, path, err)
	}
	dir := filepath.Dir(abs)
	if st, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%w: key store %s: directory %s does not exist (create it, or fix the path)", ErrUnavailable, path, dir)
		}
		return "", fmt.Errorf("%w: key store %s: %w", ErrUnavailable, path, err)
	} else if !st.IsDir() {
		return "", fmt.Errorf("%w: key store %s: %s is not a directory", ErrUnavailable, path, dir)
	}
	return abs, nil
}

// createStoreFile creates a database file at abs unless something is there
// already. The file is made under a temporary name and linked into place,
// so that the store never exists as a zero-length file, which OpenSQLite
// rightly refuses as "emptied", not even while two processes (the milter
// and the registration service starting together) create it at once. It
// is created here rather than by SQLite so that it gets 0600 rather than
// 0644 (SQLite gives the -wal and -shm files the database file's mode), and
// so that creating is a decision of InitSQLite alone: every connection
// opens with mode=rw, which never creates.
func createStoreFile(abs string) error {
	if _, err := os.Lstat(abs); err == nil {
		return nil // OpenSQLite's checks decide what it is
	}
	// A write-ahead log without its database is what is left when a store
	// was deleted while in use; SQLite would replay it into the new file.
	if st, err := os.Stat(abs + "-wal"); err == nil && st.Size() > 0 {
		return fmt.Errorf("%s-wal is there without its database: the store was deleted while in use; restore it from the backup, or remove the -wal and -shm files to start an empty store", abs)
	}
	f, err := os.CreateTemp(filepath.Dir(abs), filepath.Base(abs)+".init-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	err = f.Chmod(0o600)
	if err == nil && os.Geteuid() == 0 {
		if st, serr := os.Stat(filepath.Dir(abs)); serr == nil {
			if uid, gid, ok := fileOwner(st); ok && (uid != 0 || gid != 0) {
				if err = f.Chown(uid, gid); err != nil {
					err = fmt.Errorf("giving the new store the owner of its directory: %w", err)
				}
			}
		}
	}
	f.Close()
	if err != nil {
		return err
	}
	db, err := sql.Open("sqlite", sqliteDSN(tmp))
	if err != nil {
		return err
	}
	_, err = db.Exec("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
	// Closing the last connection checkpoints the write-ahead log into
	// the file and removes it: the file is complete on its own.
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Link(tmp, abs); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return nil
}

// sqliteDSN builds the connection string. The pragmas are in the DSN, not
// run once after Open, because database/sql keeps a pool of connections and
// busy_timeout, foreign_keys and synchronous are per connection: each new
// connection must get them. _txlock=immediate makes every transaction take
// the write lock at BEGIN; a deferred transaction that reads and then writes
// can fail with SQLITE_BUSY at once, without waiting for the busy timeout,
// when another process wrote in between. mode=rw (an SQLite URI parameter)
// makes opening a connection fail where the file has gone instead of
// creating a new, empty database there.
func sqliteDSN(abs string) string {
	// The path is a URI path: escape what SQLite's URI parser would take as
	// syntax (and what the driver splits the query on).
	esc := strings.NewReplacer("%", "%25", "?", "%3F", "#", "%23").Replace(filepath.ToSlash(abs))
	if !strings.HasPrefix(esc, "/") {
		esc = "/" + esc // Windows drive letters: file:/C:/...
	}
	return "file:" + esc +
		"?mode=rw" +
		fmt.Sprintf("&_pragma=busy_timeout(%d)", sqliteBusyTimeout) +
		"&_pragma=foreign_keys(1)" +
		"&_pragma=journal_mode(WAL)" +
		// NORMAL is durable across application crashes in WAL mode; only a
		// power loss can lose the last commits, which the operator can redo.
		"&_pragma=synchronous(NORMAL)" +
		"&_txlock=immediate"
}

// schemaVersion reads the applied schema version; a database without the
// schema_version table is not a lacre store.
func schemaVersion(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (int, error) {
	var v int
	err := q.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM schema_version").Scan(&v)
	return v, err
}

// migrate applies the migrations the database lacks, each in its own
// transaction together with its schema_version row. Transactions begin
// IMMEDIATE, so two processes starting at once do not both apply one
// migration: the second waits, then sees the new version.
func (s *SQLiteStore) migrate(ctx context.Context, db *sql.DB) error {
	for {
		done, err := s.migrateOne(ctx, db)
		if err != nil || done {
			return err
		}
	}
}

func (s *SQLiteStore) migrateOne(ctx context.Context, db *sql.DB) (done bool, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, s.unavailable("migrating", err)
	}
	defer tx.Rollback()
	v, err := schemaVersion(ctx, tx)
	if err != nil {
		return false, s.unavailable("reading schema version", err)
	}
	switch {
	case v > len(sqliteMigrations):
		return false, fmt.Errorf("%w: key store %s: database schema version %d is newer than this lacre-milter (knows up to %d); upgrade the binary", ErrUnavailable, s.path, v, len(sqliteMigrations))
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

// SetClock replaces the clock that dates bindings and key updates
// ("store copy" keeps the binding times of the source; tests).
func (s *SQLiteStore) SetClock(now func() time.Time) { s.now = now }

// Check reports whether the store can be used now: the file is the store
// that was opened (or a valid lacre store that replaced it, which is then
// used), the schema is the one this binary knows, and writes work again
// if one failed. It is what /healthz asks; the milter's lookups make the
// same file check on every query.
func (s *SQLiteStore) Check(ctx context.Context) error {
	return s.db.check(ctx)
}

// unavailable wraps a database error so that callers can tell "the store
// cannot answer now" (errors.Is ErrUnavailable: the milter tempfails) from
// "the answer is no". The cause stays in the message and in the chain (a
// cancelled context is still errors.Is context.Canceled).
func (s *SQLiteStore) unavailable(op string, err error) error {
	if errors.Is(err, ErrUnavailable) {
		return err // the store's own check, which names the file already
	}
	s.db.noteErr(err)
	return fmt.Errorf("%w: key store %s: %s: %w", ErrUnavailable, s.path, op, err)
}

// parseStored turns stored material back into a Key. Material that does not
// parse, or parses to another key, means a damaged database: that is
// ErrUnavailable (try later, repair), not "this address has no key".
func (s *SQLiteStore) parseStored(fingerprint string, material []byte) (*Key, error) {
	ks, err := ParseStored(material)
	if err != nil {
		// %v, not %w: the *RejectError of Parse is about the stored
		// material, and must not read as a refusal of a submitted key.
		return nil, fmt.Errorf("%w: key store %s: stored key %s does not parse: %v", ErrUnavailable, s.path, fingerprint, err)
	}
	if len(ks) != 1 || ks[0].Fingerprint != fingerprint {
		return nil, fmt.Errorf("%w: key store %s: stored material of key %s holds %d other key(s)", ErrUnavailable, s.path, fingerprint, len(ks))
	}
	return ks[0], nil
}

// The read path of the milter: every recipient runs these, so they are
// prepared once per connection pool (storeDB.queryPrepared).
const (
	sqlKeysFor = `SELECT k.fingerprint, k.material
		FROM bindings b JOIN keys k ON k.fingerprint = b.fingerprint
		WHERE b.address = ?
		ORDER BY b.added_at, b.rowid`
	sqlKeyByFingerprint = "SELECT material FROM keys WHERE fingerprint = ?"
	sqlPrefs            = "SELECT protect_headers, format FROM prefs WHERE address = ?"
)

// KeysFor implements Store. An address the keyed-address set does not
// hold is answered without a query (sqlite_keyed.go).
func (s *SQLiteStore) KeysFor(ctx context.Context, address string) ([]*Key, error) {
	if s.NoKeys(ctx, address) {
		return []*Key{}, nil
	}
	rows, err := s.db.queryPrepared(ctx, sqlKeysFor, address)
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
	err := s.db.queryRowPrepared(ctx, sqlKeyByFingerprint, fingerprint).Scan(&material)
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
	s.db.wrote()
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
	s.db.wrote()
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
	var format string
	err := s.db.queryRowPrepared(ctx, sqlPrefs, address).Scan(&ph, &format)
	if errors.Is(err, sql.ErrNoRows) {
		return Prefs{}, nil
	}
	if err != nil {
		return Prefs{}, s.unavailable("reading preferences of "+address, err)
	}
	return sqlitePrefs(ph, format), nil
}

// sqlitePrefs turns a prefs row into Prefs.
func sqlitePrefs(ph sql.NullInt64, format string) Prefs {
	p := Prefs{Format: Format(format)}
	if ph.Valid {
		b := ph.Int64 != 0
		p.ProtectHeaders = &b
	}
	return p
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
	if _, err := s.db.ExecContext(ctx, `INSERT INTO prefs(address, protect_headers, format) VALUES (?, ?, ?)
		ON CONFLICT(address) DO UPDATE SET protect_headers = excluded.protect_headers, format = excluded.format`,
		address, ph, string(p.Format)); err != nil {
		return s.unavailable("storing preferences of "+address, err)
	}
	s.db.wrote()
	return nil
}

// Close implements Store. Later calls on the store fail with ErrUnavailable.
func (s *SQLiteStore) Close() error {
	if err := s.db.Close(); err != nil {
		return s.unavailable("closing", err)
	}
	return nil
}

// Backup writes a consistent copy of the store to the new file dst
// (mode 0600), while the store stays in use: SQLite's VACUUM INTO reads
// one snapshot, including commits still in the write-ahead log, which a
// plain copy of the file would miss.
func (s *SQLiteStore) Backup(ctx context.Context, dst string) error {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("backup of key store %s: %w", s.path, err)
	}
	f.Close()
	if _, err := s.db.ExecContext(ctx, "VACUUM INTO ?", dst); err != nil {
		os.Remove(dst)
		return fmt.Errorf("backup of key store %s to %s: %w", s.path, dst, s.unavailable("backup", err))
	}
	return nil
}

// AllPrefs returns every address's stored preferences ("store copy").
func (s *SQLiteStore) AllPrefs(ctx context.Context) (map[string]Prefs, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT address, protect_headers, format FROM prefs")
	if err != nil {
		return nil, s.unavailable("listing preferences", err)
	}
	defer rows.Close()
	out := map[string]Prefs{}
	for rows.Next() {
		var addr, format string
		var ph sql.NullInt64
		if err := rows.Scan(&addr, &ph, &format); err != nil {
			return nil, s.unavailable("listing preferences", err)
		}
		out[addr] = sqlitePrefs(ph, format)
	}
	if err := rows.Err(); err != nil {
		return nil, s.unavailable("listing preferences", err)
	}
	return out, nil
}
