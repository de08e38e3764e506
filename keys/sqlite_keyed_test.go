package keys

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// The keyed-address set (sqlite_keyed.go) answers "no key" without a
// query. It must never do so for an address that has a committed binding,
// whoever committed it: these tests bind and unbind through another store
// handle, another process and a plain SQLite connection, and look up
// right after, with no pause in between.

// kyNoKeysNow asks the set directly, and fails the test if it could not
// answer at all (the tests below would then pass through SQLite and prove
// nothing about the set).
func kyNoKeysNow(t *testing.T, s *SQLiteStore, addr string) bool {
	t.Helper()
	ctx := context.Background()
	db, err := s.db.current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := s.db.keyedSetFor(db).current(ctx)
	if err != nil || addrs == nil {
		t.Fatalf("the keyed-address set did not answer: %v", err)
	}
	_, bound := addrs[addr]
	return !bound
}

// kyFastHits runs f and returns how many of its set answers came from
// memory (keyedSet.fast).
func kyFastHits(t *testing.T, s *SQLiteStore, f func()) int64 {
	t.Helper()
	db, err := s.db.current(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	k := s.db.keyedSetFor(db)
	n := k.fastHits.Load()
	f()
	return k.fastHits.Load() - n
}

// kyWant checks KeysFor(addr) against the fingerprints wanted, and that
// NoKeys agrees.
func kyWant(t *testing.T, s *SQLiteStore, when, addr string, fprs ...string) {
	t.Helper()
	got, err := s.KeysFor(context.Background(), addr)
	if err != nil {
		t.Fatalf("%s: KeysFor(%s): %v", when, addr, err)
	}
	if len(got) != len(fprs) {
		t.Fatalf("%s: KeysFor(%s) = %d keys, want %d: the keyed-address set is stale", when, addr, len(got), len(fprs))
	}
	for i := range got {
		if got[i].Fingerprint != fprs[i] {
			t.Fatalf("%s: KeysFor(%s)[%d] = %s, want %s", when, addr, i, got[i].Fingerprint, fprs[i])
		}
	}
	if none := s.NoKeys(context.Background(), addr); none != (len(fprs) == 0) {
		t.Fatalf("%s: NoKeys(%s) = %v with %d keys bound", when, addr, none, len(fprs))
	}
}

func TestKeyedSetSeesOtherStoreHandle(t *testing.T) {
	ctx := context.Background()
	s, _, path := sqltOpen(t)
	alice := sqltNewKey(t, "alice@example.org")
	if err := s.Add(ctx, "alice@example.org", []*Key{alice}, false); err != nil {
		t.Fatal(err)
	}
	kyWant(t, s, "before", "bob@example.org")
	if !kyNoKeysNow(t, s, "bob@example.org") || kyNoKeysNow(t, s, "alice@example.org") {
		t.Fatal("the set is wrong from the start")
	}
	// Nothing changed: answered from memory, by the log index header,
	// without the checker (below, every write must end that).
	if kyFastHits(t, s, func() { kyWant(t, s, "unchanged", "bob@example.org") }) == 0 {
		t.Error("the set was not answered from memory with the store unchanged")
	}
	o, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	bob := sqltNewKey(t, "bob@example.org")
	for round := range 3 { // the set is read again each time
		if err := o.Add(ctx, "bob@example.org", []*Key{bob}, false); err != nil {
			t.Fatal(err)
		}
		kyWant(t, s, fmt.Sprintf("round %d, bound by another handle", round), "bob@example.org", bob.Fingerprint)
		if _, err := o.Remove(ctx, "bob@example.org", ""); err != nil {
			t.Fatal(err)
		}
		kyWant(t, s, fmt.Sprintf("round %d, unbound by another handle", round), "bob@example.org")
	}
	// This handle's own writes, through its pool (not the set's
	// connection), count as well.
	if err := s.Add(ctx, "carol@example.org", []*Key{bob}, false); err != nil {
		t.Fatal(err)
	}
	kyWant(t, s, "bound by the same handle", "carol@example.org", bob.Fingerprint)
	kyWant(t, s, "unchanged", "alice@example.org", alice.Fingerprint)
}

func TestKeyedSetSeesPlainSQLiteConnection(t *testing.T) {
	ctx := context.Background()
	s, _, path := sqltOpen(t)
	bob := sqltNewKey(t, "bob@example.org")
	// The key is in the store (bound to another address), so that the
	// operator's statement below only adds a binding.
	if err := s.Add(ctx, "other@example.org", []*Key{bob}, false); err != nil {
		t.Fatal(err)
	}
	kyWant(t, s, "before", "bob@example.org")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("INSERT INTO bindings(address, fingerprint, added_at) VALUES (?, ?, 1)", "bob@example.org", bob.Fingerprint); err != nil {
		t.Fatal(err)
	}
	kyWant(t, s, "bound by a plain connection", "bob@example.org", bob.Fingerprint)
	if _, err := db.Exec("DELETE FROM bindings WHERE address = ?", "bob@example.org"); err != nil {
		t.Fatal(err)
	}
	kyWant(t, s, "unbound by a plain connection", "bob@example.org")

	// And the sqlite3 shell, as an operator would use it.
	sh, err := exec.LookPath("sqlite3")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("sqlite3 not found (apt-get install sqlite3)")
		}
		t.Skip("sqlite3 not found")
	}
	out, err := exec.Command(sh, path, fmt.Sprintf("INSERT INTO bindings(address, fingerprint, added_at) VALUES ('bob@example.org', '%s', 2);", bob.Fingerprint)).CombinedOutput()
	if err != nil {
		t.Fatalf("sqlite3: %v: %s", err, out)
	}
	kyWant(t, s, "bound with sqlite3", "bob@example.org", bob.Fingerprint)
	out, err = exec.Command(sh, path, "DELETE FROM bindings WHERE address = 'bob@example.org';").CombinedOutput()
	if err != nil {
		t.Fatalf("sqlite3: %v: %s", err, out)
	}
	kyWant(t, s, "unbound with sqlite3", "bob@example.org")
}

// TestKeyedSetSeesOtherProcess: the CLI or the registration service binds
// and unbinds in a process of its own (this test binary again,
// TestHelperKeyedWriter).
func TestKeyedSetSeesOtherProcess(t *testing.T) {
	s, _, path := sqltOpen(t)
	bob := sqltNewKey(t, "bob@example.org")
	keyFile := filepath.Join(t.TempDir(), "bob.pgp")
	if err := os.WriteFile(keyFile, bob.Raw, 0o600); err != nil {
		t.Fatal(err)
	}
	other := func(op string) {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperKeyedWriter$", "-test.count=1")
		cmd.Env = append(os.Environ(), "LACRE_TEST_KEYED_STORE="+path, "LACRE_TEST_KEYED_OP="+op, "LACRE_TEST_KEYED_KEY="+keyFile)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("other process (%s): %v\n%s", op, err, out)
		}
	}
	for round := range 2 {
		kyWant(t, s, fmt.Sprintf("round %d, before", round), "bob@example.org")
		other("add")
		kyWant(t, s, fmt.Sprintf("round %d, bound by another process", round), "bob@example.org", bob.Fingerprint)
		other("remove")
		kyWant(t, s, fmt.Sprintf("round %d, unbound by another process", round), "bob@example.org")
	}
}

// TestHelperKeyedWriter is the other process of the test above.
func TestHelperKeyedWriter(t *testing.T) {
	path := os.Getenv("LACRE_TEST_KEYED_STORE")
	if path == "" {
		t.Skip("helper process of TestKeyedSetSeesOtherProcess")
	}
	ctx := context.Background()
	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	switch os.Getenv("LACRE_TEST_KEYED_OP") {
	case "add":
		raw, err := os.ReadFile(os.Getenv("LACRE_TEST_KEYED_KEY"))
		if err != nil {
			t.Fatal(err)
		}
		ks, err := Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Add(ctx, "bob@example.org", ks, false); err != nil {
			t.Fatal(err)
		}
	case "remove":
		if _, err := s.Remove(ctx, "bob@example.org", ""); err != nil {
			t.Fatal(err)
		}
	}
}

// TestKeyedSetMatchesSQL: the set holds exactly the addresses that
// sqlKeysFor finds, compared as SQLite compares them, and a flood of
// lookups of other addresses does not grow it.
func TestKeyedSetMatchesSQL(t *testing.T) {
	ctx := context.Background()
	s, _, _ := sqltOpen(t)
	k := sqltNewKey(t, "k@example.org")
	bound := []string{"alice@example.org", "Bob@example.org", "carol+tag@example.org", "dave@EXAMPLE.org", "ünï@example.org"}
	for _, a := range bound {
		if err := s.Add(ctx, a, []*Key{k}, false); err != nil {
			t.Fatal(err)
		}
	}
	probes := append([]string{"bob@example.org", "ALICE@example.org", "carol@example.org", "dave@example.org",
		"alice@example.org ", "unï@example.org", "alice@example.or", ""}, bound...)
	for _, a := range probes {
		var n int
		if err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM bindings WHERE address = ?", a).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if got := kyNoKeysNow(t, s, a); got != (n == 0) {
			t.Errorf("%q: the set says no key %v, SQLite finds %d bindings", a, got, n)
		}
	}
	for i := range 5000 {
		if ks, err := s.KeysFor(ctx, fmt.Sprintf("random%d@example.net", i)); err != nil || len(ks) != 0 {
			t.Fatalf("KeysFor: %v, %v", ks, err)
		}
	}
	db, _ := s.db.current(ctx)
	addrs, err := s.db.keyedSetFor(db).current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != len(bound) {
		t.Errorf("the set holds %d addresses after 5,000 lookups of others, want %d", len(addrs), len(bound))
	}
}

// TestKeyedSetErrorsAreNeverNoKey: when the set cannot be read, the answer
// comes from SQLite, and an error there stays an error.
func TestKeyedSetErrorsAreNeverNoKey(t *testing.T) {
	ctx := context.Background()
	s, _, path := sqltOpen(t)
	k := sqltNewKey(t, "alice@example.org")
	if err := s.Add(ctx, "alice@example.org", []*Key{k}, false); err != nil {
		t.Fatal(err)
	}
	kyWant(t, s, "before", "bob@example.org")
	// Another connection takes the bindings away under a new name: the
	// set's reload fails, and so does the query.
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("ALTER TABLE bindings RENAME TO bindings_gone"); err != nil {
		t.Fatal(err)
	}
	if s.NoKeys(ctx, "bob@example.org") {
		t.Fatal("NoKeys is sure while the set cannot be read")
	}
	_, err = s.KeysFor(ctx, "bob@example.org")
	wantUnavailable(t, "KeysFor without a bindings table", err)
	if _, err := db.Exec("ALTER TABLE bindings_gone RENAME TO bindings"); err != nil {
		t.Fatal(err)
	}
	kyWant(t, s, "after the repair", "alice@example.org", k.Fingerprint)
	kyWant(t, s, "after the repair", "bob@example.org")

	// A caller whose time is up gets no "no key" either.
	done, cancel := context.WithCancel(ctx)
	cancel()
	if s.NoKeys(done, "bob@example.org") {
		t.Error("NoKeys is sure with a cancelled context")
	}

	// A closed store answers nothing.
	s.Close()
	if s.NoKeys(ctx, "bob@example.org") {
		t.Error("NoKeys is sure on a closed store")
	}
	_, err = s.KeysFor(ctx, "bob@example.org")
	wantUnavailable(t, "KeysFor on a closed store", err)
}

// TestKeyedSetTooBig: a store with more bound addresses than the set
// holds is asked every time, and answers right.
func TestKeyedSetTooBig(t *testing.T) {
	ctx := context.Background()
	defer func(n int) { keyedSetMax = n }(keyedSetMax)
	keyedSetMax = 2
	s, _, _ := sqltOpen(t)
	k := sqltNewKey(t, "k@example.org")
	for _, a := range []string{"a@example.org", "b@example.org", "c@example.org"} {
		if err := s.Add(ctx, a, []*Key{k}, false); err != nil {
			t.Fatal(err)
		}
	}
	if s.NoKeys(ctx, "d@example.org") {
		t.Error("NoKeys answers from a set larger than keyedSetMax")
	}
	kyWant(t, s, "too many for the set", "c@example.org", k.Fingerprint)
	if got, err := s.KeysFor(ctx, "d@example.org"); err != nil || len(got) != 0 {
		t.Errorf("KeysFor(d) = %v, %v", got, err)
	}
}

// TestKeyedSetIdleAndClose: the set's connection is released after
// keyedMaxIdle without a lookup, like the pool's idle ones, so that it
// does not hold a replaced store's log for good, and read afresh on the
// next use; Close releases it at once.
func TestKeyedSetIdleAndClose(t *testing.T) {
	ctx := context.Background()
	defer func(d time.Duration) { keyedMaxIdle = d }(keyedMaxIdle)
	keyedMaxIdle = 50 * time.Millisecond
	s, _, path := sqltOpen(t)
	checker := func() chan struct{} {
		db, _ := s.db.current(ctx)
		k := s.db.keyedSetFor(db)
		k.mu.Lock()
		defer k.mu.Unlock()
		return k.done
	}
	kyWant(t, s, "before", "bob@example.org")
	select {
	case <-checker():
	case <-time.After(5 * time.Second):
		t.Fatal("the checker still runs after keyedMaxIdle")
	}
	o, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	bob := sqltNewKey(t, "bob@example.org")
	if err := o.Add(ctx, "bob@example.org", []*Key{bob}, false); err != nil {
		t.Fatal(err)
	}
	kyWant(t, s, "bound while the checker was stopped", "bob@example.org", bob.Fingerprint)
	select {
	case <-checker():
	case <-time.After(5 * time.Second):
		t.Fatal("the checker still runs after keyedMaxIdle")
	}
	s.Close()

	// Close, on a store whose checker is not idle.
	keyedMaxIdle = time.Hour // no checker runs now
	s, err = OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	kyWant(t, s, "again", "bob@example.org", bob.Fingerprint)
	done := checker()
	s.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the checker still runs after Close")
	}
	o.Close()
	if inUse, err := walInUse(path); err != nil || inUse {
		t.Fatalf("the log is still in use after Close (%v, %v)", inUse, err)
	}
}

// TestResolverQuick: Quick answers "no key" only where Resolve would, and
// leaves everything else to Resolve.
func TestResolverQuick(t *testing.T) {
	ctx := context.Background()
	s, _, path := sqltOpen(t)
	alice := sqltNewKey(t, "alice@example.org")
	dom := sqltNewKey(t, "dom@keyed.example")
	if err := s.Add(ctx, "alice@example.org", []*Key{alice}, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(ctx, "holder@example.net", []*Key{dom}, false); err != nil {
		t.Fatal(err)
	}
	r, err := NewResolver(s, ResolverOptions{
		Policy:       Policy{Normalizer: Normalizer{FoldLocalPartCase: true, SubaddressSeparator: "+"}},
		NeverEncrypt: []string{"never@example.org"},
		Addresses:    map[string][]string{"static@example.org": {dom.Fingerprint}},
		Domains:      map[string][]string{"keyed.example": {dom.Fingerprint}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"alice@example.org", "Alice+news@example.org", "never@example.org", "static@example.org", "anyone@keyed.example", "not an address"} {
		if l, ok := r.Quick(ctx, a); ok {
			t.Errorf("Quick(%s) = %+v: only Resolve can tell", a, l)
		}
	}
	l, ok := r.Quick(ctx, "bob+x@example.org")
	if !ok || l.Source != SourceNone || l.Encrypt() || l.Address != "bob+x@example.org" {
		t.Fatalf("Quick(bob+x) = %+v, %v; want no key", l, ok)
	}
	want, err := r.Resolve(ctx, "bob+x@example.org")
	if err != nil || want.Source != l.Source || want.Matched != l.Matched || want.ProtectHeaders != l.ProtectHeaders {
		t.Fatalf("Resolve(bob+x) = %+v, %v; Quick said %+v", want, err, l)
	}
	// Bound by another process's handle: the very next Quick leaves it to
	// Resolve, which finds the key (this resolver has no cache).
	o, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if err := o.Add(ctx, "bob@example.org", []*Key{alice}, false); err != nil {
		t.Fatal(err)
	}
	if l, ok := r.Quick(ctx, "bob+x@example.org"); ok {
		t.Fatalf("Quick(bob+x) = %+v after bob@ was bound", l)
	}
	if l, err := r.Resolve(ctx, "bob+x@example.org"); err != nil || !l.Encrypt() {
		t.Fatalf("Resolve(bob+x) = %+v, %v after bob@ was bound", l, err)
	}
	// The store file gone: no "no key" from Quick.
	for _, f := range []string{path, path + "-wal", path + "-shm"} {
		os.Remove(f)
	}
	if l, ok := r.Quick(ctx, "carol@example.org"); ok {
		t.Fatalf("Quick(carol) = %+v with the store file gone", l)
	}
}

// TestKeyedSetStoreReplaced: a store file restored over the one in use
// is used from the next query, with its own set; the old set's
// connection must be gone by then, or the old file's log reads as still
// in use and the restored store as unavailable.
func TestKeyedSetStoreReplaced(t *testing.T) {
	ctx := context.Background()
	s, _, path := sqltOpen(t)
	alice := sqltNewKey(t, "alice@example.org")
	if err := s.Add(ctx, "alice@example.org", []*Key{alice}, false); err != nil {
		t.Fatal(err)
	}
	kyWant(t, s, "before", "bob@example.org")
	kyWant(t, s, "before", "alice@example.org", alice.Fingerprint)

	restored := filepath.Join(t.TempDir(), "restored.db")
	r, err := InitSQLite(ctx, restored)
	if err != nil {
		t.Fatal(err)
	}
	bob := sqltNewKey(t, "bob@example.org")
	if err := r.Add(ctx, "bob@example.org", []*Key{bob}, false); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := os.Rename(restored, path); err != nil {
		t.Fatal(err)
	}
	if err := s.Check(ctx); err != nil {
		t.Fatalf("Check after the restore: %v", err)
	}
	kyWant(t, s, "after the restore", "bob@example.org", bob.Fingerprint)
	kyWant(t, s, "after the restore", "alice@example.org")
}

// TestKeyedSetSnapshot: within WithSnapshot, NoKeys answers from the
// first call's reading of the set; a new snapshot (the next recipient)
// sees what was committed in between.
func TestKeyedSetSnapshot(t *testing.T) {
	ctx := context.Background()
	s, _, path := sqltOpen(t)
	o, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	bob := sqltNewKey(t, "bob@example.org")
	one := WithSnapshot(ctx)
	if !s.NoKeys(one, "bob@example.org") {
		t.Fatal("NoKeys(bob) = false before any binding")
	}
	if err := o.Add(ctx, "bob@example.org", []*Key{bob}, false); err != nil {
		t.Fatal(err)
	}
	if !s.NoKeys(one, "bob@example.org") {
		t.Error("NoKeys within one snapshot read the set again")
	}
	if s.NoKeys(WithSnapshot(ctx), "bob@example.org") {
		t.Error("a new snapshot does not see bob's binding")
	}
	if s.NoKeys(ctx, "bob@example.org") {
		t.Error("NoKeys without a snapshot does not see bob's binding")
	}
	kyWant(t, s, "after the snapshot", "bob@example.org", bob.Fingerprint)
}
