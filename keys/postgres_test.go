package keys_test

import (
	"context"
	"testing"

	"lacre.io/milter/internal/storetest"
	"lacre.io/milter/keys"
)

// TestPostgresConformance runs the store conformance suite against a
// real PostgreSQL server; the two handles are two pools, as two mail
// hosts have.
func TestPostgresConformance(t *testing.T) {
	srv := sharedPG(t)
	storetest.Run(t, func(t *testing.T) (storetest.Store, storetest.Store) {
		dsn := srv.NewStore(t)
		var out [2]storetest.Store
		for i := range out {
			s, err := keys.OpenPostgres(context.Background(), dsn, srv.Options())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			out[i] = s
		}
		return out[0], out[1]
	})
}
