package web

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// chattr sets or clears the immutable flag, which makes a file read-only
// even for root (chmod does not). Without the tool or the privilege the
// test is skipped, except under CI.
func chattr(t *testing.T, flag string, files ...string) {
	t.Helper()
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			continue
		}
		if out, err := exec.Command("chattr", flag, f).CombinedOutput(); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("chattr %s %s: %v %s", flag, f, err, out)
			}
			t.Skipf("chattr %s: %v %s (needs root on ext4 or similar)", flag, err, out)
		}
	}
}

// TestSQLiteStoreFaultHeals: the database file turns read-only while the
// service runs, then writable again. While it is read-only, writes fail
// (503) and /healthz says so; afterwards writes work again without a
// restart, and /healthz is ok.
//
// The probe write of Service.Health alone could run on a pool connection
// opened before the fault, which still writes; the store's own Check
// (keys.SQLiteStore) sees the fault.
func TestSQLiteStoreFaultHeals(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "keys.db")
	store, err := keys.InitSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if _, ok := any(store).(Checker); !ok {
		t.Fatal("keys.SQLiteStore has no Check")
	}
	f := newFixtureWith(t, store, func(o *Options) { o.MaxRequestsPerClient = 10000; o.MaxPendingPerAddress = 100 })
	f.now = time.Now()
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	pub := testkeys.ArmoredPublic(t, alice)
	files := []string{path, path + "-wal", path + "-shm"}
	defer chattr(t, "-i", files...)
	// Several submissions at once, so that the pool opens connections
	// while the file is read-only.
	burst := func(round int) (fails int) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := f.svc.Submit(ctx, "alice@example.org", pub, fmt.Sprintf("192.0.2.%d", round*8+i)); err != nil {
					mu.Lock()
					fails++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return fails
	}
	if n := burst(0); n != 0 {
		t.Fatalf("%d of 8 submissions failed before the fault", n)
	}
	chattr(t, "+i", files...)
	failed := 0
	for round := 1; round < 10 && failed == 0; round++ {
		failed = burst(round)
	}
	if failed == 0 {
		t.Fatal("no write failed while the database file was read-only")
	}
	if s := healthz(t, f); s != 503 {
		t.Fatalf("/healthz while the database is read-only: %d", s)
	}
	chattr(t, "-i", files...)
	if s := healthz(t, f); s != 200 {
		t.Fatalf("/healthz after the database is writable again: %d", s)
	}
	for round := 20; round < 25; round++ {
		if n := burst(round); n != 0 {
			t.Fatalf("%d of 8 submissions failed after the database is writable again (round %d)", n, round)
		}
	}
}
