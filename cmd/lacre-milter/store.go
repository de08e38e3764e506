package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"lacre.io/milter/config"
	"lacre.io/milter/keys"
)

// fullStore is a key store with the registration requests: what every
// store lacre can use provides.
type fullStore interface {
	keys.Store
	keys.Requests
}

// openStore opens the configured store: PostgreSQL when store.database
// is a connection string, else the SQLite file. Either way only an
// existing store at this binary's schema version opens.
func openStore(c *config.Config) (fullStore, error) {
	if c.StoreIsPostgres() {
		return keys.OpenPostgres(context.Background(), c.DatabasePath(), c.PostgresOptions())
	}
	return keys.OpenSQLite(context.Background(), c.DatabasePath())
}

// storeInit creates the key store if there is none. It is the one command
// that creates a store ("serve -init" runs it too): every other command
// refuses a missing or empty store, because taking an accidentally
// deleted store for a new one would send every keyed recipient's mail in
// clear.
func storeInit(e *env, args []string) error {
	if err := e.noArgs("store init", args); err != nil {
		return err
	}
	c, err := e.loadConfig()
	if err != nil {
		return err
	}
	if c.StoreIsPostgres() {
		return pgInit(e, c)
	}
	path := c.DatabasePath()
	if _, err := os.Stat(path); err == nil {
		// Say what is there rather than touching it.
		s, err := keys.OpenSQLite(context.Background(), path)
		if err != nil {
			return err
		}
		s.Close()
		fmt.Fprintf(e.stdout, "key store %s exists already; nothing changed\n", path)
		return nil
	}
	created, err := initStore(path)
	if err != nil {
		return err
	}
	if created {
		fmt.Fprintf(e.stdout, "key store %s created\n", path)
	}
	return nil
}

// pgInit is "store init" for PostgreSQL: the operator created the
// database (docs/operations.md); this creates lacre's tables in it, under
// the migration lock.
func pgInit(e *env, c *config.Config) error {
	res, err := keys.InitPostgres(context.Background(), c.DatabasePath(), c.PostgresOptions())
	if err != nil {
		return err
	}
	if res.From == res.To {
		if res.To < keys.PostgresSchemaVersion {
			return fmt.Errorf("key store exists already at schema version %d (this lacre-milter uses %d): run \"lacre-milter store migrate\" after a backup", res.To, keys.PostgresSchemaVersion)
		}
		fmt.Fprintf(e.stdout, "key store exists already (schema version %d); nothing changed\n", res.To)
		return nil
	}
	fmt.Fprintf(e.stdout, "key store created (schema version %d)\n", res.To)
	return nil
}

// initStore creates the store at path if nothing is there and reports
// whether it did. An existing file is left to OpenSQLite's checks.
func initStore(path string) (bool, error) {
	_, statErr := os.Stat(path)
	if statErr == nil {
		return false, nil
	}
	if !errors.Is(statErr, fs.ErrNotExist) {
		return false, fmt.Errorf("key store %s: %w", path, statErr)
	}
	s, err := keys.InitSQLite(context.Background(), path)
	if err != nil {
		return false, err
	}
	return true, s.Close()
}

// storeMigrate brings an existing store's schema up to date. The milter
// and the other commands only check the version and refuse another one,
// so that an upgrade changes the database only when the operator says so
// (after a backup; the Debian package runs it on upgrade).
func storeMigrate(e *env, args []string) error {
	if err := e.noArgs("store migrate", args); err != nil {
		return err
	}
	c, err := e.loadConfig()
	if err != nil {
		return err
	}
	if c.StoreIsPostgres() {
		res, err := keys.MigratePostgres(context.Background(), c.DatabasePath(), c.PostgresOptions())
		if err != nil {
			return err
		}
		if res.From == res.To {
			fmt.Fprintf(e.stdout, "key store is up to date (schema version %d); nothing changed\n", res.To)
		} else {
			fmt.Fprintf(e.stdout, "key store migrated from schema version %d to %d\n", res.From, res.To)
		}
		return nil
	}
	path := c.DatabasePath()
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("key store %s: %w (\"store migrate\" never creates a store; \"store init\" does)", path, err)
	}
	if s, err := keys.OpenSQLite(context.Background(), path); err == nil {
		s.Close()
		fmt.Fprintf(e.stdout, "key store %s is up to date; nothing changed\n", path)
		return nil
	}
	s, err := keys.InitSQLite(context.Background(), path)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "key store %s migrated\n", path)
	return s.Close()
}

// storeBackup writes a consistent copy of the store to a new file, while
// the milter and the registration service keep using it.
func storeBackup(e *env, args []string) error {
	pos, err := parseFlags(e.flags("store backup"), args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("want the backup's file name: %w", errUsage)
	}
	c, err := e.loadConfig()
	if err != nil {
		return err
	}
	if c.StoreIsPostgres() {
		return errors.New("the key store is in PostgreSQL: back it up with pg_dump (see docs/operations.md), or copy it to an SQLite file with \"lacre-milter store copy\"")
	}
	s, err := keys.OpenSQLite(context.Background(), c.DatabasePath())
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.Backup(context.Background(), pos[0]); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "key store %s backed up to %s\n", c.DatabasePath(), pos[0])
	return nil
}

// resolverRef is the resolver the milter uses now (a reload builds a new
// one), for the PostgreSQL change listener to tell.
type resolverRef struct{ p atomic.Pointer[keys.Resolver] }

func (r *resolverRef) set(res *keys.Resolver) { r.p.Store(res) }

// Invalidate implements keys.Invalidator.
func (r *resolverRef) Invalidate(address string) {
	if res := r.p.Load(); res != nil {
		res.Invalidate(address)
	}
}

// InvalidateAll implements keys.Invalidator.
func (r *resolverRef) InvalidateAll() {
	if res := r.p.Load(); res != nil {
		res.InvalidateAll()
	}
}

// listenForChanges starts the PostgreSQL change listener of a milter;
// the function returned stops it. With SQLite it does nothing: the
// cache TTL is the only bound there.
func listenForChanges(store keys.Store, ref *resolverRef, log *slog.Logger) (stop func()) {
	pg, ok := store.(*keys.PostgresStore)
	if !ok {
		return func() {}
	}
	l := pg.Listen(func() keys.Invalidator { return ref }, log, keys.ListenerOptions{})
	return l.Close
}

// copyable is a store "store copy" can read and write whole.
type copyable interface {
	fullStore
	SetClock(now func() time.Time)
	AllPrefs(ctx context.Context) (map[string]keys.Prefs, error)
}

// openStoreAt opens the store named by an argument of "store copy": a
// path (SQLite) or a PostgreSQL connection string, whose password comes
// from [store] password_file, PGPASSFILE or ~/.pgpass.
func openStoreAt(c *config.Config, where string) (copyable, error) {
	if keys.IsPostgresDSN(where) {
		return keys.OpenPostgres(context.Background(), where, c.PostgresOptions())
	}
	return keys.OpenSQLite(context.Background(), where)
}

// storeCopy copies every binding (with its time) and every address's
// preferences from one store to another, e.g. an SQLite file into a new
// PostgreSQL database. The destination must be initialised ("store init")
// and hold no keys: copying never merges. Pending registration requests
// are not copied (their users ask again). Stop the writers of the source
// (the registration service, the CLI) while copying.
func storeCopy(e *env, args []string) error {
	pos, err := parseFlags(e.flags("store copy"), args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return fmt.Errorf("want the source and the destination store: %w", errUsage)
	}
	c, err := e.loadConfig()
	if err != nil {
		return err
	}
	ctx := context.Background()
	src, err := openStoreAt(c, pos[0])
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	defer src.Close()
	dst, err := openStoreAt(c, pos[1])
	if err != nil {
		return fmt.Errorf("destination: %w", err)
	}
	defer dst.Close()
	if have, err := dst.List(ctx); err != nil {
		return fmt.Errorf("destination: %w", err)
	} else if len(have) > 0 {
		return fmt.Errorf("destination holds %d bindings already; \"store copy\" copies into an empty store only", len(have))
	}
	bs, err := src.List(ctx)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	prefs, err := src.AllPrefs(ctx)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	for _, b := range bs {
		added := b.Added
		dst.SetClock(func() time.Time { return added })
		if err := dst.Add(ctx, b.Address, []*keys.Key{b.Key}, false); err != nil {
			return fmt.Errorf("destination: %w", err)
		}
	}
	for addr, p := range prefs {
		if err := dst.SetPrefs(ctx, addr, p); err != nil {
			return fmt.Errorf("destination: %w", err)
		}
	}
	// Read back: the destination must answer as the source does.
	got, err := dst.List(ctx)
	if err != nil {
		return fmt.Errorf("destination: %w", err)
	}
	if len(got) != len(bs) {
		return fmt.Errorf("destination holds %d bindings after the copy, the source %d", len(got), len(bs))
	}
	fmt.Fprintf(e.stdout, "copied %d bindings and %d preferences\n", len(bs), len(prefs))
	return nil
}
