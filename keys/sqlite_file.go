package keys

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// storeDB is the SQLite store's connection pool, guarded by the identity
// of the file it was opened on. Before every query it checks, with one
// stat(2), that the file at the configured path is still that file:
//
//   - gone, emptied, or not a regular file: the query fails with
//     ErrUnavailable (the milter answers a temporary failure) and nothing is
//     created. SQLite alone would keep reading a deleted file's inode, or,
//     for the next connection, create a new empty database in its place;
//     either way "no key" for everybody.
//   - replaced by another file (an operator's restore with mv, a package
//     upgrade): the new file is opened only if it is a lacre store at this
//     binary's schema version, and then used; otherwise ErrUnavailable
//     until it is.
//
// It also heals a pool that SQLite made read-only: a connection opened
// while the file was not writable stays read-only for good ("attempt to
// write a readonly database"), so such an error drops the pool and the
// next use opens new connections.
//
// The same rule serves the milter, the CLI and the registration service.
type storeDB struct {
	path, abs string
	// migrate, when set, is run on the first open (InitSQLite only).
	migrate func(context.Context, *sql.DB) error
	// pragmas are added to every connection's DSN (tests).
	pragmas []string

	mu       sync.RWMutex
	db       *sql.DB
	stmts    map[string]*sql.Stmt // the read path's statements, prepared on db
	keyed    *keyedSet            // the bound addresses of db's file (sqlite_keyed.go)
	fi       os.FileInfo          // the file db was opened on
	stale    bool                 // drop db and open anew before the next use
	writeErr error                // the last write failure, until a write works
	closed   bool
}

// sqliteConnMaxIdle is how long a pool keeps an unused connection. A
// process that holds no connection holds no part of the store's
// write-ahead log, so a store replaced on disk can be reopened by the
// others at most this long after the last query of an idle process.
const sqliteConnMaxIdle = 30 * time.Second

// sqliteMaxIdleConns is how many unused connections a pool keeps (until
// sqliteConnMaxIdle). database/sql keeps two; the milter runs a lookup per
// concurrent RCPT, and with more sessions than that it closed the extra
// connections after each query and opened new ones for the next, each
// running the DSN's pragmas and preparing the read path's statements
// again (seen in a profile of bench/throughput.sh case h).
const sqliteMaxIdleConns = 8

// open makes the first connection pool.
func (d *storeDB) open(ctx context.Context) error {
	fi, err := d.stat()
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.connect(ctx, fi)
}

// stat checks the file at the store's path without opening it.
func (d *storeDB) stat() (os.FileInfo, error) {
	fi, err := os.Stat(d.abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%w: key store %s does not exist: if this is a new installation, create it with \"lacre-milter store init\"; if keys were stored there, restore the file from the backup (lacre-milter never creates a store on its own, as an empty store would send every keyed recipient's mail in clear)", ErrUnavailable, d.path)
	case err != nil:
		return nil, fmt.Errorf("%w: key store %s: %w", ErrUnavailable, d.path, err)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%w: key store %s is not a regular file (%s)", ErrUnavailable, d.path, fi.Mode().Type())
	case fi.Size() == 0:
		return nil, fmt.Errorf("%w: key store %s is empty (0 bytes), not a lacre key store: restore it from the backup; only if no keys were ever stored, remove it and run \"lacre-milter store init\"", ErrUnavailable, d.path)
	}
	return fi, nil
}

// connect opens a pool on the file fi describes and checks that it is a
// lacre store this binary can use. d.mu is held.
func (d *storeDB) connect(ctx context.Context, fi os.FileInfo) error {
	if d.fi != nil && !os.SameFile(fi, d.fi) {
		// Another file is at the path. Its -wal and -shm files have the
		// same names as the old file's: SQLite would replay the old
		// store's write-ahead log into the new file (sqlite.org/howtocorrupt
		// .html §2.3, "mispairing database files and hot journals").
		// Close the old pool first: the last connection to close
		// would checkpoint the log into the old file and delete it, but
		// SQLite does neither for a file that was moved or unlinked, so
		// the log is left behind. If no connection of any process uses it
		// any more, it is set aside; otherwise another process (the CLI,
		// the registration service) still has the old store open, and the
		// new file waits for it to let go (every pool closes idle
		// connections after sqliteConnMaxIdle).
		if d.db != nil {
			if d.keyed != nil {
				d.keyed.stop() // its connection first: it holds the log too
			}
			for _, st := range d.stmts {
				st.Close()
			}
			d.db.Close()
			d.db, d.stmts, d.keyed = nil, nil, nil
		}
		if err := d.setOrphanedLogAside(); err != nil {
			return fmt.Errorf("%w: key store %s was replaced, but the write-ahead log of the file it replaced is still in use (%v): the new file is used once the other processes (lacre-milter keys, web) let go of the old one; to restore a store while it is in use, run sqlite3 %s \".restore BACKUP\" instead of moving files", ErrUnavailable, d.path, err, d.path)
		}
	}
	if err := checkMagic(d.abs); err != nil {
		return fmt.Errorf("%w: key store %s is not an SQLite database (%v): restore it from the backup", ErrUnavailable, d.path, err)
	}
	dsn := sqliteDSN(d.abs)
	for _, p := range d.pragmas {
		dsn += "&_pragma=" + p
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return fmt.Errorf("%w: key store %s: %w", ErrUnavailable, d.path, err)
	}
	db.SetConnMaxIdleTime(sqliteConnMaxIdle)
	db.SetMaxIdleConns(sqliteMaxIdleConns)
	if err := d.verify(ctx, db); err != nil {
		db.Close()
		return err
	}
	// The file the pool opened must be the file that was checked: a
	// rename between the two would leave us guarding the wrong identity.
	now, err := os.Stat(d.abs)
	if err != nil || !os.SameFile(fi, now) {
		db.Close()
		return fmt.Errorf("%w: key store %s was replaced while it was being opened", ErrUnavailable, d.path)
	}
	old, oldStmts, oldKeyed := d.db, d.stmts, d.keyed
	d.db, d.fi, d.stale, d.stmts, d.keyed = db, fi, false, nil, nil
	if old != nil {
		// Close waits for the queries running on the old pool; do not
		// hold the lock for that.
		go func() {
			if oldKeyed != nil {
				oldKeyed.stop()
			}
			for _, st := range oldStmts {
				st.Close()
			}
			old.Close()
		}()
	}
	return nil
}

func (d *storeDB) verify(ctx context.Context, db *sql.DB) error {
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("%w: key store %s: opening: %w", ErrUnavailable, d.path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		// For example a file system that cannot map the -shm file.
		return fmt.Errorf("%w: key store %s: cannot switch to WAL mode (journal mode is %q)", ErrUnavailable, d.path, mode)
	}
	v, err := schemaVersion(ctx, db)
	if err != nil {
		if strings.Contains(err.Error(), "no such table") {
			return fmt.Errorf("%w: key store %s is an SQLite database but not a lacre key store (it has no schema_version table)", ErrUnavailable, d.path)
		}
		return fmt.Errorf("%w: key store %s: reading schema version: %w", ErrUnavailable, d.path, err)
	}
	if d.migrate != nil && v < len(sqliteMigrations) {
		if err := d.migrate(ctx, db); err != nil {
			return err
		}
		if v, err = schemaVersion(ctx, db); err != nil {
			return fmt.Errorf("%w: key store %s: reading schema version: %w", ErrUnavailable, d.path, err)
		}
	}
	switch {
	case v > len(sqliteMigrations):
		return fmt.Errorf("%w: key store %s: database schema version %d is newer than this lacre-milter (knows up to %d); upgrade the binary", ErrUnavailable, d.path, v, len(sqliteMigrations))
	case v < len(sqliteMigrations):
		return fmt.Errorf("%w: key store %s: database schema version %d is older than this lacre-milter's %d: run \"lacre-milter store migrate\" (after a backup)", ErrUnavailable, d.path, v, len(sqliteMigrations))
	}
	return nil
}

// setOrphanedLogAside moves the -wal and -shm files of a replaced store
// out of the new file's way, when no connection uses them. They are
// renamed, not deleted: the log may hold the last commits of the old
// store, which an operator may want.
func (d *storeDB) setOrphanedLogAside() error {
	if _, err := os.Lstat(d.abs + "-wal"); errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Lstat(d.abs + "-shm"); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
	}
	inUse, err := walInUse(d.abs)
	if err != nil {
		return err
	}
	if inUse {
		return errors.New("another connection holds it")
	}
	suffix := ".replaced-" + time.Now().UTC().Format("20060102T150405.000000000")
	for _, ext := range []string{"-wal", "-shm"} {
		if err := os.Rename(d.abs+ext, d.abs+ext+suffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// checkMagic reads the SQLite header of the file at abs.
func checkMagic(abs string) error {
	f, err := os.Open(abs)
	if err != nil {
		return err
	}
	defer f.Close()
	var b [len(sqliteMagic)]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		return fmt.Errorf("reading its header: %w", err)
	}
	if string(b[:]) != sqliteMagic {
		return errors.New("no SQLite header")
	}
	return nil
}

// current returns the pool to use now, after checking the file.
func (d *storeDB) current(ctx context.Context) (*sql.DB, error) {
	fi, err := d.stat()
	if err != nil {
		return nil, err
	}
	d.mu.RLock()
	db, ok := d.db, !d.closed && !d.stale && d.db != nil && os.SameFile(fi, d.fi)
	closed := d.closed
	d.mu.RUnlock()
	if ok {
		return db, nil
	}
	if closed {
		return nil, fmt.Errorf("%w: key store %s is closed", ErrUnavailable, d.path)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, fmt.Errorf("%w: key store %s is closed", ErrUnavailable, d.path)
	}
	if d.db != nil && !d.stale && os.SameFile(fi, d.fi) {
		return d.db, nil // another goroutine reopened it
	}
	if err := d.connect(ctx, fi); err != nil {
		return nil, err
	}
	return d.db, nil
}

// noteErr looks at an error of a query: a read-only connection marks the
// pool for reopening and the store as unable to write.
func (d *storeDB) noteErr(err error) {
	var se *sqlite.Error
	if !errors.As(err, &se) || se.Code()&0xff != sqlite3.SQLITE_READONLY {
		return
	}
	d.mu.Lock()
	d.stale, d.writeErr = true, err
	d.mu.Unlock()
}

// wrote records a successful write.
func (d *storeDB) wrote() {
	d.mu.Lock()
	d.writeErr = nil
	d.mu.Unlock()
}

// check is SQLiteStore.Check.
func (d *storeDB) check(ctx context.Context) error {
	db, err := d.current(ctx)
	if err != nil {
		return err
	}
	v, err := schemaVersion(ctx, db)
	if err != nil {
		d.noteErr(err)
		return fmt.Errorf("%w: key store %s: reading schema version: %w", ErrUnavailable, d.path, err)
	}
	if v != len(sqliteMigrations) {
		return fmt.Errorf("%w: key store %s: schema version is now %d, this lacre-milter uses %d", ErrUnavailable, d.path, v, len(sqliteMigrations))
	}
	d.mu.RLock()
	werr := d.writeErr
	d.mu.RUnlock()
	if werr == nil {
		return nil
	}
	// A write failed earlier: try a write that changes nothing, on a
	// fresh pool if the failure asked for one.
	if db, err = d.current(ctx); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, "UPDATE schema_version SET applied_at = applied_at WHERE version = (SELECT MAX(version) FROM schema_version)"); err != nil {
		d.noteErr(err)
		return fmt.Errorf("%w: key store %s: writes fail: %w", ErrUnavailable, d.path, err)
	}
	d.wrote()
	return nil
}

// The methods below are database/sql's, each after current(). Errors of
// the queries themselves reach SQLiteStore.unavailable, which notes them.

func (d *storeDB) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	db, err := d.current(ctx)
	if err != nil {
		return nil, err
	}
	return db.ExecContext(ctx, query, args...)
}

func (d *storeDB) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	db, err := d.current(ctx)
	if err != nil {
		return nil, err
	}
	return db.QueryContext(ctx, query, args...)
}

// scanner is a row to scan: a *sql.Row, or storeDB's row.
type scanner interface{ Scan(dest ...any) error }

// row is a *sql.Row, or the error that kept the query from running.
type row struct {
	*sql.Row
	err error
}

func (r row) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	return r.Row.Scan(dest...)
}

func (r row) Err() error {
	if r.err != nil {
		return r.err
	}
	return r.Row.Err()
}

// queryPrepared is QueryContext with query prepared once per pool and
// then reused: the milter's lookups run the same few statements for every
// recipient, and preparing one costs SQLite more than running it
// (docs/performance.md). The file check of current() still comes first,
// on every call; a pool opened anew (a replaced file, a read-only pool)
// starts with no statements, so a statement never outlives its pool.
// database/sql prepares the statement again on each connection of the
// pool it is used on, and forgets it with the connection.
func (d *storeDB) queryPrepared(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	db, err := d.current(ctx)
	if err != nil {
		return nil, err
	}
	st, err := d.prepared(ctx, db, query)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return db.QueryContext(ctx, query, args...)
	}
	return st.QueryContext(ctx, args...)
}

// prepared returns the statement for query on db, preparing it the first
// time. nil (and no error) means db is no longer the store's pool (it was
// replaced meanwhile): the caller runs the query unprepared, on the pool
// that current() checked, as an unprepared query would have.
func (d *storeDB) prepared(ctx context.Context, db *sql.DB, query string) (*sql.Stmt, error) {
	d.mu.RLock()
	st, same := d.stmts[query], d.db == db
	d.mu.RUnlock()
	if !same {
		return nil, nil
	}
	if st != nil {
		return st, nil
	}
	st, err := db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.db != db || d.closed {
		st.Close()
		return nil, nil
	}
	if prev := d.stmts[query]; prev != nil {
		st.Close() // another goroutine prepared it meanwhile
		return prev, nil
	}
	if d.stmts == nil {
		d.stmts = map[string]*sql.Stmt{}
	}
	d.stmts[query] = st
	return st, nil
}

// queryRowPrepared is QueryRowContext through queryPrepared.
func (d *storeDB) queryRowPrepared(ctx context.Context, query string, args ...any) scanner {
	db, err := d.current(ctx)
	if err != nil {
		return row{err: err}
	}
	st, err := d.prepared(ctx, db, query)
	if err != nil {
		return row{err: err}
	}
	if st == nil {
		return row{Row: db.QueryRowContext(ctx, query, args...)}
	}
	return row{Row: st.QueryRowContext(ctx, args...)}
}

func (d *storeDB) QueryRowContext(ctx context.Context, query string, args ...any) scanner {
	db, err := d.current(ctx)
	if err != nil {
		return row{err: err}
	}
	return row{Row: db.QueryRowContext(ctx, query, args...)}
}

func (d *storeDB) BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error) {
	db, err := d.current(ctx)
	if err != nil {
		return nil, err
	}
	return db.BeginTx(ctx, opts)
}

// Close closes the pool; later uses fail with ErrUnavailable.
func (d *storeDB) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	if d.db == nil {
		return nil
	}
	if d.keyed != nil {
		d.keyed.stop()
		d.keyed = nil
	}
	for _, st := range d.stmts {
		st.Close()
	}
	d.stmts = nil
	return d.db.Close()
}
