package keys_test

import (
	"context"
	"path/filepath"
	"testing"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/storetest"
	"lacre.io/milter/keys"
)

// TestSQLiteConformance runs the store conformance suite (shared with
// PostgreSQL: TestPostgresConformance) against SQLite; the second handle
// is a second OpenSQLite of the same file, as the CLI has next to the
// milter.
func TestSQLiteConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (storetest.Store, storetest.Store) {
		path := filepath.Join(t.TempDir(), "k.db")
		s, err := keys.InitSQLite(context.Background(), path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		o, err := keys.OpenSQLite(context.Background(), path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { o.Close() })
		return s, o
	})
}

// TestMemoryRequests runs the requests part of the suite against the
// memory store the web tests use, so that they test what the real stores do.
func TestMemoryRequests(t *testing.T) {
	storetest.RunRequests(t, func(*testing.T) keys.Requests { return keystest.NewStore() })
}
