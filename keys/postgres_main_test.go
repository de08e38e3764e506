package keys_test

import (
	"os"
	"sync"
	"testing"

	"lacre.io/milter/internal/pgtest"
)

// One private PostgreSQL cluster serves the tests of this package that do
// not stop it (each gets its own database); those that stop or restart
// the server start their own (pgtest.Start).
var shared struct {
	once sync.Once
	srv  *pgtest.Server
	err  error
}

func sharedPG(t testing.TB) *pgtest.Server {
	t.Helper()
	bin := pgtest.Need(t)
	shared.once.Do(func() { shared.srv, shared.err = pgtest.StartServer(bin) })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.srv
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.srv != nil {
		shared.srv.Destroy()
	}
	os.Exit(code)
}
