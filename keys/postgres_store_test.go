package keys_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/pgtest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

func openPG(t *testing.T, dsn string, opt keys.PostgresOptions) *keys.PostgresStore {
	t.Helper()
	s, err := keys.OpenPostgres(context.Background(), dsn, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func wantUnavailable(t *testing.T, err error, says ...string) {
	t.Helper()
	if !errors.Is(err, keys.ErrUnavailable) {
		t.Fatalf("error %v; want keys.ErrUnavailable", err)
	}
	for _, s := range says {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
}

// TestPostgresSchemaVersions: only "store init" creates a schema, only
// "store migrate" upgrades one; opening refuses a database without a
// lacre schema, an older and a newer one, each with what to do.
func TestPostgresSchemaVersions(t *testing.T) {
	ctx := context.Background()
	srv := sharedPG(t)
	opt := srv.Options()

	empty := srv.AdminDSN(srv.NewDB(t))
	_, err := keys.OpenPostgres(ctx, empty, opt)
	wantUnavailable(t, err, "no lacre key store", "store init")
	_, err = keys.MigratePostgres(ctx, empty, opt)
	wantUnavailable(t, err, "never creates")
	if res, err := keys.InitPostgres(ctx, empty, opt); err != nil || res.From != 0 || res.To != keys.PostgresSchemaVersion {
		t.Fatalf("init: %+v, %v", res, err)
	}
	if res, err := keys.InitPostgres(ctx, empty, opt); err != nil || res.From != res.To {
		t.Fatalf("init of an existing store: %+v, %v; want nothing done", res, err)
	}
	openPG(t, empty, opt)

	older := srv.AdminDSN(srv.NewDB(t))
	if _, err := keys.InitPostgresTo(ctx, older, opt, 1); err != nil {
		t.Fatal(err)
	}
	_, err = keys.OpenPostgres(ctx, older, opt)
	wantUnavailable(t, err, "version 1 is older", "store migrate")
	// Opening did not migrate; init neither.
	if res, err := keys.InitPostgres(ctx, older, opt); err != nil || res.From != 1 || res.To != 1 {
		t.Fatalf("init of an older store: %+v, %v; want nothing done", res, err)
	}
	if res, err := keys.MigratePostgres(ctx, older, opt); err != nil || res.From != 1 || res.To != keys.PostgresSchemaVersion {
		t.Fatalf("migrate: %+v, %v", res, err)
	}
	openPG(t, older, opt)

	newer := srv.NewStore(t)
	db := newer[strings.LastIndex(newer, "/")+1 : strings.Index(newer, "?")]
	srv.Exec(t, db, "INSERT INTO schema_version VALUES ($1, 0)", keys.PostgresSchemaVersion+1)
	_, err = keys.OpenPostgres(ctx, newer, opt)
	wantUnavailable(t, err, "is newer", "upgrade the binary")
	_, err = keys.MigratePostgres(ctx, newer, opt)
	wantUnavailable(t, err, "is newer")

	foreign := srv.NewDB(t)
	srv.Exec(t, foreign, "CREATE TABLE keys (x int)")
	_, err = keys.InitPostgres(ctx, srv.AdminDSN(foreign), opt)
	wantUnavailable(t, err, "not a lacre store")
}

// TestPostgresConcurrentMigrate: several hosts running "store init" or
// "store migrate" at once do not race: the advisory lock lets one apply
// each migration, the others then find nothing to do.
func TestPostgresConcurrentMigrate(t *testing.T) {
	ctx := context.Background()
	srv := sharedPG(t)
	opt := srv.Options()
	for _, tc := range []struct {
		name  string
		start int
		run   func(context.Context, string, keys.PostgresOptions) (keys.MigrateResult, error)
	}{
		{"init", 0, keys.InitPostgres},
		{"migrate", 1, keys.MigratePostgres},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := srv.NewDB(t)
			dsn := srv.AdminDSN(db)
			if tc.start > 0 {
				if _, err := keys.InitPostgresTo(ctx, dsn, opt, tc.start); err != nil {
					t.Fatal(err)
				}
			}
			// Each holds the lock a moment, so that the others queue on it.
			keys.SetMigrateHook(func() { time.Sleep(50 * time.Millisecond) })
			defer keys.SetMigrateHook(nil)
			const n = 4
			var wg sync.WaitGroup
			results := make(chan keys.MigrateResult, n)
			for range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					res, err := tc.run(ctx, dsn, opt)
					if err != nil {
						t.Error(err)
						return
					}
					results <- res
				}()
			}
			wg.Wait()
			close(results)
			did := 0
			for r := range results {
				if r.To != keys.PostgresSchemaVersion {
					t.Errorf("result %+v", r)
				}
				if r.From != r.To {
					did++
				}
			}
			if did != 1 {
				t.Errorf("%d of %d concurrent runs migrated; want exactly 1", did, n)
			}
			openPG(t, dsn, opt)
		})
	}
}

// TestPostgresPasswords: a password in the connection string is refused
// without connecting (and not repeated); the password comes from
// PasswordFile or PGPASSFILE; a wrong one is ErrUnavailable.
func TestPostgresPasswords(t *testing.T) {
	ctx := context.Background()
	srv := sharedPG(t)
	dsn := srv.NewStore(t)
	for _, bad := range []string{
		strings.Replace(dsn, "lacre_admin@", "lacre_admin:hunter2@", 1),
		dsn + "&password=hunter2",
		fmt.Sprintf("host=127.0.0.1 port=%d dbname=x user=lacre_admin password=hunter2", srv.Port),
	} {
		_, err := keys.OpenPostgres(ctx, bad, keys.PostgresOptions{})
		wantUnavailable(t, err, "password_file")
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("the error repeats the password: %v", err)
		}
	}
	wrong := filepath.Join(t.TempDir(), "wrong.pw")
	os.WriteFile(wrong, []byte("not-it\n"), 0o600)
	_, err := keys.OpenPostgres(ctx, dsn, keys.PostgresOptions{PasswordFile: wrong})
	wantUnavailable(t, err, "password authentication failed")

	// PGPASSFILE, as libpq reads it.
	pw, _ := os.ReadFile(srv.PasswordFile())
	pass := filepath.Join(t.TempDir(), "pgpass")
	os.WriteFile(pass, fmt.Appendf(nil, "127.0.0.1:%d:*:%s:%s", srv.Port, pgtest.Admin, strings.TrimSpace(string(pw))), 0o600)
	t.Setenv("PGPASSFILE", pass)
	kv := fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s user=%s sslmode=disable", srv.Port, dsn[strings.LastIndex(dsn, "/")+1:strings.Index(dsn, "?")], pgtest.Admin)
	s := openPG(t, kv, keys.PostgresOptions{})
	if _, err := s.KeysFor(ctx, "alice@example.org"); err != nil {
		t.Fatal(err)
	}
}

// TestPostgresRoles: the grants docs/operations.md gives work: the
// milter's read-only role looks up keys and listens for changes but
// cannot write; the read-write role of the CLI and the web service
// writes, requests included.
func TestPostgresRoles(t *testing.T) {
	ctx := context.Background()
	srv := sharedPG(t)
	dsn := srv.NewStore(t)
	db := dsn[strings.LastIndex(dsn, "/")+1 : strings.Index(dsn, "?")]
	roPW := srv.CreateRole(t, "lacre_milter_"+db)
	rwPW := srv.CreateRole(t, "lacre_web_"+db)
	for _, q := range pgGrants("lacre_milter_"+db, "lacre_web_"+db, db) {
		srv.Exec(t, db, q)
	}
	ro := openPG(t, srv.DSN("lacre_milter_"+db, db), keys.PostgresOptions{PasswordFile: roPW})
	rw := openPG(t, srv.DSN("lacre_web_"+db, db), keys.PostgresOptions{PasswordFile: rwPW})
	k, _ := keystest.Key(t, testkeys.Curve25519, "alice@example.org")
	if err := rw.Add(ctx, "alice@example.org", []*keys.Key{k}, false); err != nil {
		t.Fatalf("read-write role: %v", err)
	}
	yes := true
	if err := rw.SetPrefs(ctx, "alice@example.org", keys.Prefs{ProtectHeaders: &yes}); err != nil {
		t.Fatalf("read-write role: %v", err)
	}
	now := time.Now()
	if err := rw.CreateRequests(ctx, now, keys.Limits{PerAddress: 3, PerClient: 3}, [][]byte{[]byte("h")}, []keys.Request{{
		Action: keys.ActionRemove, Address: "alice@example.org", LimitAddress: "alice@example.org", ClientIP: "192.0.2.1", Created: now, Expires: now.Add(time.Hour)}}); err != nil {
		t.Fatalf("read-write role, requests: %v", err)
	}
	if _, err := rw.TakeRequest(ctx, []byte("h"), now); err != nil {
		t.Fatalf("read-write role, requests: %v", err)
	}
	if _, err := rw.Remove(ctx, "alice@example.org", ""); err != nil {
		t.Fatalf("read-write role: %v", err)
	}
	if err := rw.Add(ctx, "alice@example.org", []*keys.Key{k}, true); err != nil {
		t.Fatal(err)
	}
	// The milter's role reads and listens.
	res, err := keys.NewResolver(ro, keys.ResolverOptions{CacheTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	l := ro.Listen(func() keys.Invalidator { return res }, nil, keys.ListenerOptions{})
	defer l.Close()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := l.WaitUp(wctx); err != nil {
		t.Fatal("the read-only role's listener did not connect")
	}
	if r, err := res.Resolve(ctx, "alice@example.org"); err != nil || !r.Encrypt() || !r.ProtectHeaders {
		t.Fatalf("read-only role: %+v, %v", r, err)
	}
	if err := ro.Add(ctx, "bob@example.org", []*keys.Key{k}, false); !errors.Is(err, keys.ErrUnavailable) || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("the read-only role wrote: %v", err)
	}
}

// pgGrants are the grants of docs/operations.md ("Roles").
func pgGrants(milter, web, db string) []string {
	return []string{
		"REVOKE ALL ON DATABASE " + db + " FROM PUBLIC",
		"GRANT CONNECT ON DATABASE " + db + " TO " + milter + ", " + web,
		"GRANT USAGE ON SCHEMA public TO " + milter + ", " + web,
		"GRANT SELECT ON keys, bindings, prefs, schema_version TO " + milter,
		"GRANT SELECT, INSERT, UPDATE, DELETE ON keys, bindings, prefs, requests TO " + web,
		"GRANT SELECT ON schema_version TO " + web,
	}
}

// TestPostgresListener: a change committed through one store (another
// host, the web service) reaches the cache of a resolver over another
// within a second, for adds, removals, preferences and a key's refreshed
// material; the cache TTL is an hour, so only the notification can do it.
func TestPostgresListener(t *testing.T) {
	ctx := context.Background()
	srv := sharedPG(t)
	dsn := srv.NewStore(t)
	milterStore := openPG(t, dsn, srv.Options())
	webStore := openPG(t, dsn, srv.Options())
	res, err := keys.NewResolver(milterStore, keys.ResolverOptions{CacheTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	l := milterStore.Listen(func() keys.Invalidator { return res }, nil, keys.ListenerOptions{})
	defer l.Close()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := l.WaitUp(wctx); err != nil {
		t.Fatal(err)
	}
	const alice, bob = "alice@example.org", "bob@example.org"
	k, e := keystest.Key(t, testkeys.Curve25519, alice)
	kb, _ := keystest.Key(t, testkeys.Curve25519, bob)
	resolve := func(addr string) *keys.Recipient {
		t.Helper()
		r, err := res.Resolve(ctx, addr)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// within waits up to a second for the cached answer of addr to go.
	within := func(what, addr string) {
		t.Helper()
		start := time.Now()
		for time.Since(start) < time.Second {
			if _, ok := res.Cached(addr); !ok {
				t.Logf("%s: cache of %s dropped after %v", what, addr, time.Since(start).Round(time.Millisecond))
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatalf("%s: the cached answer for %s is still there after 1s", what, addr)
	}
	if resolve(alice).Encrypt() {
		t.Fatal("alice has a key before any was added")
	}
	resolve(bob)
	if err := webStore.Add(ctx, alice, []*keys.Key{k}, false); err != nil {
		t.Fatal(err)
	}
	within("add", alice)
	if !resolve(alice).Encrypt() {
		t.Fatal("alice's new key is not used")
	}
	if _, ok := res.Cached(bob); !ok {
		t.Error("a change for alice dropped bob's cached answer")
	}
	yes := true
	if err := webStore.SetPrefs(ctx, alice, keys.Prefs{ProtectHeaders: &yes}); err != nil {
		t.Fatal(err)
	}
	within("prefs", alice)
	if !resolve(alice).ProtectHeaders {
		t.Fatal("alice's preference is not used")
	}
	// A key's material refreshed (a new User ID) under another address:
	// every cached answer may hold the old material.
	if err := webStore.Add(ctx, bob, []*keys.Key{kb}, false); err != nil {
		t.Fatal(err)
	}
	within("add bob", bob)
	resolve(bob)
	if err := e.AddUserId("Alice", "", "alice@example.net", nil); err != nil {
		t.Fatal(err)
	}
	if err := webStore.Add(ctx, "alice@example.net", []*keys.Key{keystest.Parse(t, e)}, false); err != nil {
		t.Fatal(err)
	}
	within("refreshed material", bob)
	resolve(alice)
	if _, err := webStore.Remove(ctx, alice, ""); err != nil {
		t.Fatal(err)
	}
	within("remove", alice)
	if resolve(alice).Encrypt() {
		t.Fatal("alice's removed key is still used")
	}
}

// pgClock is a settable resolver clock.
type pgClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *pgClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *pgClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestPostgresListenerReconnect: the listener's connection is killed;
// a change committed while it is away is not announced to it, so on
// reconnecting it LISTENs and then flushes the cache: the change is read.
func TestPostgresListenerReconnect(t *testing.T) {
	ctx := context.Background()
	srv := sharedPG(t)
	dsn := srv.NewStore(t)
	db := dsn[strings.LastIndex(dsn, "/")+1 : strings.Index(dsn, "?")]
	milterStore := openPG(t, dsn, srv.Options())
	webStore := openPG(t, dsn, srv.Options())
	res, _ := keys.NewResolver(milterStore, keys.ResolverOptions{CacheTTL: time.Hour})
	l := milterStore.Listen(func() keys.Invalidator { return res }, nil, keys.ListenerOptions{MinBackoff: time.Second})
	defer l.Close()
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := l.WaitUp(wctx); err != nil {
		t.Fatal(err)
	}
	const alice = "alice@example.org"
	if r, err := res.Resolve(ctx, alice); err != nil || r.Encrypt() {
		t.Fatal(r, err)
	}
	srv.Exec(t, db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'", db)
	for l.Up() {
		if wctx.Err() != nil {
			t.Fatal("the listener did not notice its connection was killed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	k, _ := keystest.Key(t, testkeys.Curve25519, alice)
	if err := webStore.Add(ctx, alice, []*keys.Key{k}, false); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitUp(wctx); err != nil {
		t.Fatal("the listener did not reconnect by itself")
	}
	if r, err := res.Resolve(ctx, alice); err != nil || !r.Encrypt() {
		t.Fatalf("after reconnecting: %+v, %v; want the key added while the listener was away", r, err)
	}
}

// TestPostgresServerDown: PostgreSQL stopped. Cached answers, "no key"
// included, are served until cache_ttl ends and no longer; then a lookup
// is ErrUnavailable (a temporary failure), never "no key", and bounded by
// its context. Started again, the same store and listener work without a
// restart of the milter.
func TestPostgresServerDown(t *testing.T) {
	ctx := context.Background()
	srv := pgtest.Start(t)
	dsn := srv.NewStore(t)
	opt := srv.Options()
	opt.ConnectTimeout = time.Second
	s := openPG(t, dsn, opt)
	clk := &pgClock{t: time.Now()}
	const ttl = 30 * time.Second
	res, _ := keys.NewResolver(s, keys.ResolverOptions{CacheTTL: ttl, Now: clk.now})
	l := s.Listen(func() keys.Invalidator { return res }, nil, keys.ListenerOptions{MaxBackoff: 500 * time.Millisecond})
	defer l.Close()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := l.WaitUp(wctx); err != nil {
		t.Fatal(err)
	}
	const alice, bob = "alice@example.org", "bob@example.org"
	k, _ := keystest.Key(t, testkeys.Curve25519, alice)
	if err := s.Add(ctx, alice, []*keys.Key{k}, false); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the add's own notification
	for addr, enc := range map[string]bool{alice: true, bob: false} {
		if r, err := res.Resolve(ctx, addr); err != nil || r.Encrypt() != enc {
			t.Fatal(r, err)
		}
	}
	srv.Stop(t, "fast")
	for l.Up() {
		if wctx.Err() != nil {
			t.Fatal("the listener did not notice the server stopped")
		}
		time.Sleep(5 * time.Millisecond)
	}
	clk.add(ttl - time.Second)
	for addr, enc := range map[string]bool{alice: true, bob: false} {
		if r, ok := res.Cached(addr); !ok || r.Encrypt() != enc {
			t.Errorf("%s: cached answer not served within cache_ttl while the server is down", addr)
		}
	}
	clk.add(2 * time.Second)
	for _, addr := range []string{alice, bob} {
		if _, ok := res.Cached(addr); ok {
			t.Errorf("%s: cached answer served past cache_ttl", addr)
		}
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		start := time.Now()
		r, err := res.Resolve(lctx, addr)
		cancel()
		if !errors.Is(err, keys.ErrUnavailable) {
			t.Errorf("%s with the server down: %+v, %v; want ErrUnavailable", addr, r, err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("%s: the lookup took %v, past its deadline", addr, d)
		}
	}
	srv.StartAgain(t)
	if err := l.WaitUp(wctx); err != nil {
		t.Fatal("the listener did not reconnect after the server came back")
	}
	for addr, enc := range map[string]bool{alice: true, bob: false} {
		if r, err := res.Resolve(ctx, addr); err != nil || r.Encrypt() != enc {
			t.Fatalf("%s after the server came back: %+v, %v", addr, r, err)
		}
	}
}

// TestPostgresSlowQuery: a lookup stuck behind a lock ends at its
// context's deadline (lookup_timeout), and a caller without one at
// statement_timeout; both as ErrUnavailable.
func TestPostgresSlowQuery(t *testing.T) {
	ctx := context.Background()
	srv := sharedPG(t)
	dsn := srv.NewStore(t)
	opt := srv.Options()
	opt.StatementTimeout = 500 * time.Millisecond
	s := openPG(t, dsn, opt)
	locker := openPG(t, dsn, srv.Options())
	_ = locker
	db := dsn[strings.LastIndex(dsn, "/")+1 : strings.Index(dsn, "?")]
	release := make(chan struct{})
	locked := make(chan error, 1)
	go func() {
		locked <- srv.ExecErr(db, "BEGIN; LOCK TABLE bindings IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(4); COMMIT")
		close(release)
	}()
	time.Sleep(300 * time.Millisecond)
	lctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	start := time.Now()
	_, err := s.KeysFor(lctx, "alice@example.org")
	cancel()
	wantUnavailable(t, err)
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("lookup with a 300ms deadline took %v", d)
	}
	start = time.Now()
	_, err = s.KeysFor(ctx, "alice@example.org")
	wantUnavailable(t, err, "statement timeout")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("lookup without a deadline took %v; statement_timeout is 500ms", d)
	}
	<-release
	if err := <-locked; err != nil {
		t.Fatal(err)
	}
}
