package keys

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PostgresStore is the Store on a PostgreSQL database that several mail
// hosts and the registration service share. It behaves as SQLiteStore
// (the conformance suite in internal/storetest runs against both) and the
// same fail-closed rules hold: OpenPostgres opens only a database holding
// a lacre store at this binary's schema version; only InitPostgres and
// MigratePostgres ("lacre-milter store init|migrate") change the schema.
//
// Writes take a transaction-scoped advisory lock, so they are serialised
// as SQLite's are: a key unbound from one address and bound to another at
// the same moment is never collected in between. Every write that changes
// what a lookup answers announces it on NotifyChannel (a trigger, in the
// same transaction); see Listen.
type PostgresStore struct {
	pool *pgxpool.Pool
	cfg  *pgxpool.Config
	name string           // for messages: user@host:port/db, no password
	now  func() time.Time // binding and update times
}

var (
	_ Store    = (*PostgresStore)(nil)
	_ Requests = (*PostgresStore)(nil)
)

func init() {
	if PostgresSchemaVersion != len(postgresMigrations) {
		panic("keys: PostgresSchemaVersion does not match postgresMigrations")
	}
}

// OpenPostgres opens the lacre store in the database dsn names. It
// connects once to check the schema version: a database without a lacre
// schema, or with an older or newer one, is refused with a message that
// says what to do. It never creates or migrates anything.
func OpenPostgres(ctx context.Context, dsn string, opt PostgresOptions) (*PostgresStore, error) {
	cfg, err := postgresConfig(dsn, opt)
	if err != nil {
		return nil, fmt.Errorf("%w: key store: %w", ErrUnavailable, err)
	}
	s := &PostgresStore{cfg: cfg, name: describePG(cfg), now: time.Now}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, s.unavailable("connecting", err)
	}
	s.pool = pool
	if err := s.Check(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// SetClock replaces the clock that dates bindings and key updates
// ("store copy" keeps the binding times of the source; tests).
func (s *PostgresStore) SetClock(now func() time.Time) { s.now = now }

// Name is the database as messages show it (no password).
func (s *PostgresStore) Name() string { return s.name }

// SchemaVersion reads the schema version the database is at.
func (s *PostgresStore) SchemaVersion(ctx context.Context) (int, error) {
	v, exists, err := pgSchemaVersion(ctx, s.pool)
	if err != nil {
		return 0, s.unavailable("reading schema version", err)
	}
	if !exists {
		return 0, fmt.Errorf("%w: key store %s: the database holds no lacre key store (no schema_version table): create one with \"lacre-milter store init\"", ErrUnavailable, s.name)
	}
	return v, nil
}

// Check reports whether the store can answer now: the server is
// reachable and the schema is the one this binary knows. It is what
// /healthz and check-config ask.
func (s *PostgresStore) Check(ctx context.Context) error {
	v, err := s.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	return s.versionError(v)
}

func (s *PostgresStore) versionError(v int) error {
	switch {
	case v > PostgresSchemaVersion:
		return fmt.Errorf("%w: key store %s: database schema version %d is newer than this lacre-milter (knows up to %d); upgrade the binary", ErrUnavailable, s.name, v, PostgresSchemaVersion)
	case v < PostgresSchemaVersion:
		return fmt.Errorf("%w: key store %s: database schema version %d is older than this lacre-milter's %d: run \"lacre-milter store migrate\" with the read-write role (after a backup)", ErrUnavailable, s.name, v, PostgresSchemaVersion)
	}
	return nil
}

type pgQueryer interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// pgSchemaVersion reads the applied version; exists is false when the
// database has no schema_version table (not a lacre store, or a new one).
func pgSchemaVersion(ctx context.Context, q pgQueryer) (v int, exists bool, err error) {
	if err := q.QueryRow(ctx, "SELECT to_regclass('schema_version') IS NOT NULL").Scan(&exists); err != nil || !exists {
		return 0, false, err
	}
	err = q.QueryRow(ctx, "SELECT COALESCE(MAX(version), 0) FROM schema_version").Scan(&v)
	return v, true, err
}

// MigrateResult says what InitPostgres or MigratePostgres did.
type MigrateResult struct {
	From, To int
}

// InitPostgres creates the lacre schema in the database dsn names, which
// the operator created (see docs/operations.md), with a role allowed to
// create tables. A database that already holds a lacre store is left as
// it is (From == To); one with a lacre table but no schema_version is
// refused. It runs under the migration lock, so two hosts initialising at
// once do not race.
func InitPostgres(ctx context.Context, dsn string, opt PostgresOptions) (MigrateResult, error) {
	return migratePostgres(ctx, dsn, opt, true, PostgresSchemaVersion)
}

// MigratePostgres applies the migrations an existing lacre store lacks,
// under the migration lock (pg_advisory_lock), each in its own
// transaction with its schema_version row. A second host migrating at the
// same time waits for the first, then finds nothing to do.
func MigratePostgres(ctx context.Context, dsn string, opt PostgresOptions) (MigrateResult, error) {
	return migratePostgres(ctx, dsn, opt, false, PostgresSchemaVersion)
}

// migrateHook runs after the lock is taken (tests: hold it).
var migrateHook func()

// migratePostgres brings the schema to version target (tests stop early).
func migratePostgres(ctx context.Context, dsn string, opt PostgresOptions, init bool, target int) (res MigrateResult, err error) {
	cfg, err := postgresConfig(dsn, opt)
	if err != nil {
		return res, fmt.Errorf("%w: key store: %w", ErrUnavailable, err)
	}
	name := describePG(cfg)
	fail := func(op string, err error) error {
		return fmt.Errorf("%w: key store %s: %s: %w", ErrUnavailable, name, op, err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig)
	if err != nil {
		return res, fail("connecting", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", pgLockMigrate); err != nil {
		return res, fail("taking the migration lock", err)
	}
	defer conn.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", pgLockMigrate)
	if migrateHook != nil {
		migrateHook()
	}
	v, exists, err := pgSchemaVersion(ctx, conn)
	if err != nil {
		return res, fail("reading schema version", err)
	}
	res.From, res.To = v, v
	if !exists {
		if !init {
			return res, fmt.Errorf("%w: key store %s: the database holds no lacre key store (no schema_version table); \"store migrate\" never creates one, \"store init\" does", ErrUnavailable, name)
		}
		var foreign bool
		if err := conn.QueryRow(ctx, "SELECT to_regclass('keys') IS NOT NULL OR to_regclass('bindings') IS NOT NULL").Scan(&foreign); err != nil {
			return res, fail("looking at the database", err)
		}
		if foreign {
			return res, fmt.Errorf("%w: key store %s: the database has a keys or bindings table but no schema_version: not a lacre store, or a damaged one; restore it from the backup or use another database", ErrUnavailable, name)
		}
		if _, err := conn.Exec(ctx, "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)"); err != nil {
			return res, fail("creating schema_version", err)
		}
	} else if init && v > 0 {
		// An existing store: init changes nothing, not even a missing
		// migration (that is "store migrate", after a backup).
		if v > PostgresSchemaVersion {
			return res, fmt.Errorf("%w: key store %s: database schema version %d is newer than this lacre-milter (knows up to %d); upgrade the binary", ErrUnavailable, name, v, PostgresSchemaVersion)
		}
		return res, nil
	}
	if v > PostgresSchemaVersion {
		return res, fmt.Errorf("%w: key store %s: database schema version %d is newer than this lacre-milter (knows up to %d); upgrade the binary", ErrUnavailable, name, v, PostgresSchemaVersion)
	}
	for ; v < target; v++ {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, postgresMigrations[v]); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO schema_version(version, applied_at) VALUES ($1, $2)", v+1, time.Now().UTC().Unix())
			return err
		})
		if err != nil {
			return res, fail(fmt.Sprintf("migrating to schema version %d", v+1), err)
		}
		res.To = v + 1
	}
	return res, nil
}

// unavailable wraps a database error as ErrUnavailable (the milter
// tempfails), keeping the cause in the chain.
func (s *PostgresStore) unavailable(op string, err error) error {
	if errors.Is(err, ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: key store %s: %s: %w", ErrUnavailable, s.name, op, err)
}

// retryable reports whether a read failed on a connection that died (a
// server restart closes every pooled connection): such a read is tried
// once more on a fresh connection, within the caller's deadline. An error
// the server returned (a *pgconn.PgError) is not retried.
func retryable(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// 57P01 admin_shutdown and friends: the session was ended.
		return len(pe.Code) == 5 && (pe.Code[:2] == "57" || pe.Code[:2] == "08")
	}
	return !errors.Is(err, pgx.ErrNoRows)
}

// read runs a read-only query function, once more on a connection error.
func (s *PostgresStore) read(ctx context.Context, f func() error) error {
	err := f()
	if retryable(ctx, err) {
		err = f()
	}
	return err
}

// parseStored is SQLiteStore.parseStored: damaged material is
// ErrUnavailable, never "no key".
func (s *PostgresStore) parseStored(fingerprint string, material []byte) (*Key, error) {
	ks, err := ParseStored(material)
	if err != nil {
		return nil, fmt.Errorf("%w: key store %s: stored key %s does not parse: %v", ErrUnavailable, s.name, fingerprint, err)
	}
	if len(ks) != 1 || ks[0].Fingerprint != fingerprint {
		return nil, fmt.Errorf("%w: key store %s: stored material of key %s holds %d other key(s)", ErrUnavailable, s.name, fingerprint, len(ks))
	}
	return ks[0], nil
}

// KeysFor implements Store.
func (s *PostgresStore) KeysFor(ctx context.Context, address string) ([]*Key, error) {
	type row struct {
		fp       string
		material []byte
	}
	var rows []row
	err := s.read(ctx, func() error {
		rows = rows[:0]
		rs, err := s.pool.Query(ctx, `SELECT k.fingerprint, k.material
			FROM bindings b JOIN keys k ON k.fingerprint = b.fingerprint
			WHERE b.address = $1
			ORDER BY b.added_at, b.seq`, address)
		if err != nil {
			return err
		}
		var r row
		_, err = pgx.ForEachRow(rs, []any{&r.fp, &r.material}, func() error {
			rows = append(rows, row{r.fp, append([]byte(nil), r.material...)})
			return nil
		})
		return err
	})
	if err != nil {
		return nil, s.unavailable("looking up "+address, err)
	}
	out := make([]*Key, 0, len(rows))
	for _, r := range rows {
		k, err := s.parseStored(r.fp, r.material)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, nil
}

// KeyByFingerprint implements Store.
func (s *PostgresStore) KeyByFingerprint(ctx context.Context, fingerprint string) (*Key, error) {
	var material []byte
	err := s.read(ctx, func() error {
		return s.pool.QueryRow(ctx, "SELECT material FROM keys WHERE fingerprint = $1", fingerprint).Scan(&material)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("key %s: %w", fingerprint, ErrNotFound)
	}
	if err != nil {
		return nil, s.unavailable("looking up key "+fingerprint, err)
	}
	return s.parseStored(fingerprint, material)
}

// write runs f in a transaction holding the advisory lock lock.
func (s *PostgresStore) write(ctx context.Context, lock int64, f func(tx pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lock); err != nil {
			return err
		}
		return f(tx)
	})
}

// Add implements Store, with the same checks as SQLiteStore.Add.
func (s *PostgresStore) Add(ctx context.Context, address string, keys []*Key, replace bool) error {
	if len(keys) == 0 {
		return fmt.Errorf("adding keys for %s: no keys given", address)
	}
	keep := make([]string, 0, len(keys))
	for _, k := range keys {
		if k == nil || k.Fingerprint == "" || len(k.Raw) == 0 {
			return fmt.Errorf("adding keys for %s: a key without fingerprint or material", address)
		}
		keep = append(keep, k.Fingerprint)
	}
	now := s.now().UTC().Unix()
	err := s.write(ctx, pgLockKeys, func(tx pgx.Tx) error {
		for _, k := range keys {
			if _, err := tx.Exec(ctx, `INSERT INTO keys(fingerprint, material, updated_at) VALUES ($1, $2, $3)
				ON CONFLICT (fingerprint) DO UPDATE SET material = excluded.material, updated_at = excluded.updated_at`,
				k.Fingerprint, k.Raw, now); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO bindings(address, fingerprint, added_at) VALUES ($1, $2, $3)
				ON CONFLICT (address, fingerprint) DO NOTHING`, address, k.Fingerprint, now); err != nil {
				return err
			}
		}
		if !replace {
			return nil
		}
		rows, err := tx.Query(ctx, `DELETE FROM bindings WHERE address = $1 AND NOT (fingerprint = ANY($2)) RETURNING fingerprint`, address, keep)
		if err != nil {
			return err
		}
		gone, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		return pgCollect(ctx, tx, gone)
	})
	if err != nil {
		return s.unavailable("adding keys for "+address, err)
	}
	return nil
}

// pgCollect deletes those of fingerprints no longer bound to any address,
// in the transaction that unbound them (see collect).
func pgCollect(ctx context.Context, tx pgx.Tx, fingerprints []string) error {
	if len(fingerprints) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, `DELETE FROM keys WHERE fingerprint = ANY($1)
		AND NOT EXISTS (SELECT 1 FROM bindings WHERE bindings.fingerprint = keys.fingerprint)`, fingerprints)
	return err
}

// Remove implements Store.
func (s *PostgresStore) Remove(ctx context.Context, address, fingerprint string) (int, error) {
	var gone []string
	err := s.write(ctx, pgLockKeys, func(tx pgx.Tx) error {
		var rows pgx.Rows
		var err error
		if fingerprint == "" {
			rows, err = tx.Query(ctx, "DELETE FROM bindings WHERE address = $1 RETURNING fingerprint", address)
		} else {
			rows, err = tx.Query(ctx, "DELETE FROM bindings WHERE address = $1 AND fingerprint = $2 RETURNING fingerprint", address, fingerprint)
		}
		if err != nil {
			return err
		}
		if gone, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return err
		}
		return pgCollect(ctx, tx, gone)
	})
	if err != nil {
		return 0, s.unavailable("removing keys of "+address, err)
	}
	if len(gone) == 0 {
		if fingerprint == "" {
			return 0, fmt.Errorf("keys for %s: %w", address, ErrNotFound)
		}
		return 0, fmt.Errorf("key %s for %s: %w", fingerprint, address, ErrNotFound)
	}
	return len(gone), nil
}

// List implements Store. A key bound to several addresses is parsed once.
func (s *PostgresStore) List(ctx context.Context) ([]Binding, error) {
	type row struct {
		addr, fp string
		added    int64
		material []byte
	}
	var rows []row
	err := s.read(ctx, func() error {
		rows = rows[:0]
		rs, err := s.pool.Query(ctx, `SELECT b.address, b.added_at, k.fingerprint, k.material
			FROM bindings b JOIN keys k ON k.fingerprint = b.fingerprint
			ORDER BY b.address, b.added_at, b.seq`)
		if err != nil {
			return err
		}
		var r row
		_, err = pgx.ForEachRow(rs, []any{&r.addr, &r.added, &r.fp, &r.material}, func() error {
			rows = append(rows, row{r.addr, r.fp, r.added, append([]byte(nil), r.material...)})
			return nil
		})
		return err
	})
	if err != nil {
		return nil, s.unavailable("listing keys", err)
	}
	parsed := map[string]*Key{}
	out := make([]Binding, 0, len(rows))
	for _, r := range rows {
		k := parsed[r.fp]
		if k == nil {
			if k, err = s.parseStored(r.fp, r.material); err != nil {
				return nil, err
			}
			parsed[r.fp] = k
		}
		out = append(out, Binding{Address: r.addr, Key: k, Added: time.Unix(r.added, 0).UTC()})
	}
	return out, nil
}

// Prefs implements Store.
func (s *PostgresStore) Prefs(ctx context.Context, address string) (Prefs, error) {
	var ph *bool
	var format string
	err := s.read(ctx, func() error {
		return s.pool.QueryRow(ctx, "SELECT protect_headers, format FROM prefs WHERE address = $1", address).Scan(&ph, &format)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return Prefs{}, nil
	}
	if err != nil {
		return Prefs{}, s.unavailable("reading preferences of "+address, err)
	}
	return Prefs{ProtectHeaders: ph, Format: Format(format)}, nil
}

// SetPrefs implements Store.
func (s *PostgresStore) SetPrefs(ctx context.Context, address string, p Prefs) error {
	if _, err := s.pool.Exec(ctx, `INSERT INTO prefs(address, protect_headers, format) VALUES ($1, $2, $3)
		ON CONFLICT (address) DO UPDATE SET protect_headers = excluded.protect_headers, format = excluded.format`,
		address, p.ProtectHeaders, string(p.Format)); err != nil {
		return s.unavailable("storing preferences of "+address, err)
	}
	return nil
}

// Close implements Store. Later calls fail with ErrUnavailable (pgxpool
// answers "closed pool").
func (s *PostgresStore) Close() error {
	s.pool.Close()
	return nil
}

// AllPrefs returns every address's stored preferences ("store copy").
func (s *PostgresStore) AllPrefs(ctx context.Context) (map[string]Prefs, error) {
	rows, err := s.pool.Query(ctx, "SELECT address, protect_headers, format FROM prefs")
	if err != nil {
		return nil, s.unavailable("listing preferences", err)
	}
	out := map[string]Prefs{}
	var addr, format string
	var ph *bool
	if _, err := pgx.ForEachRow(rows, []any{&addr, &ph, &format}, func() error {
		out[addr] = Prefs{ProtectHeaders: ph, Format: Format(format)}
		return nil
	}); err != nil {
		return nil, s.unavailable("listing preferences", err)
	}
	return out, nil
}
