package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// TestStoreIdentity is issue 11's first finding, through a real Postfix: a
// key store that is deleted, emptied or replaced under the running milter,
// or missing when it starts, must never make alice's mail clear. Each
// recipient the store cannot answer for gets a temporary failure, /healthz
// fails, and no command brings back an empty store.
func TestStoreIdentity(t *testing.T) {
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	healthPort := freePort(t)
	s := startSink(t)
	m := startMilter(t, fmt.Sprintf("[milter]\nmetrics_listen = \"127.0.0.1:%d\"\n[store]\ncache_ttl = \"1s\"\n", healthPort))
	m.keysAdd(t, "alice@example.org", testkeys.ArmoredPublic(t, alice))
	p := startPostfix(t, postfixOptions{RelayPort: s.port, SMTPDMilters: m.addr()})
	db := filepath.Join(m.dir, "keys.db")

	health := func() int {
		t.Helper()
		c := &http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", healthPort))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	// encrypted: mail to alice arrives encrypted to her key.
	encrypted := func(id string) {
		t.Helper()
		msg := message(id, "alice@example.org", textFields, textBody)
		if err := p.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, msg); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		checkDecrypts(t, byMessageID(t, s, id).Data, msg, alice)
	}
	// deferred: RCPT alice gets a 4xx, so the sending MTA keeps the mail;
	// nothing reaches the sink.
	deferred := func(id, why string) {
		t.Helper()
		time.Sleep(1200 * time.Millisecond) // past cache_ttl: the store is asked
		msg := message(id, "alice@example.org", textFields, textBody)
		err := p.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, msg)
		var se *sendError
		if !errors.As(err, &se) || len(se.Errs) != 1 || se.Errs[0].Stage != "RCPT" || se.Errs[0].Code/100 != 4 {
			t.Fatalf("%s: mail to alice with the store %s: %v; want a 4xx reply to RCPT", id, why, err)
		}
		if !m.logSays(why) {
			t.Errorf("%s: the milter's log does not say %q", id, why)
		}
		if code := health(); code != http.StatusServiceUnavailable {
			t.Errorf("%s: /healthz answers %d with the store %s, want 503", id, code, why)
		}
	}
	noStoreAt := func(what string) {
		t.Helper()
		if _, err := os.Stat(db); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: a store is back at %s (stat: %v)", what, db, err)
		}
	}

	encrypted("store-before")
	if code := health(); code != http.StatusOK {
		t.Fatalf("/healthz with the store in place: %d", code)
	}
	backup := filepath.Join(t.TempDir(), "backup.db")
	copyStore(t, db, backup)

	t.Run("deleted while running", func(t *testing.T) {
		for _, f := range []string{db, db + "-wal", db + "-shm"} {
			os.Remove(f)
		}
		deferred("store-deleted", "does not exist")
		// The operator's first reflex must not make it worse.
		if out, err := m.cli(nil, "keys", "list"); err == nil {
			t.Errorf("keys list without a store succeeded:\n%s", out)
		}
		noStoreAt("after keys list")
		deferred("store-deleted-2", "does not exist")
	})

	t.Run("restored by moving a backup into place", func(t *testing.T) {
		copyStore(t, backup, db+".restore")
		if err := os.Rename(db+".restore", db); err != nil {
			t.Fatal(err)
		}
		encrypted("store-restored")
		if code := health(); code != http.StatusOK {
			t.Errorf("/healthz after the restore: %d", code)
		}
	})

	t.Run("emptied while running", func(t *testing.T) {
		if err := os.Truncate(db, 0); err != nil {
			t.Fatal(err)
		}
		deferred("store-emptied", "is empty")
		if st, err := os.Stat(db); err != nil || st.Size() != 0 {
			t.Fatalf("the emptied store was written to: %v", err)
		}
	})

	t.Run("replaced by something else", func(t *testing.T) {
		junk := db + ".junk"
		os.WriteFile(junk, []byte(strings.Repeat("this is not a key store\n", 400)), 0o600)
		if err := os.Rename(junk, db); err != nil {
			t.Fatal(err)
		}
		deferred("store-junk", "not an SQLite database")
	})

	t.Run("missing when the milter starts", func(t *testing.T) {
		m.kill()
		os.Remove(db)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, milterBin, "-config", m.configPath, "serve").CombinedOutput()
		if err == nil || ctx.Err() != nil {
			t.Fatalf("serve without a store: %v (context: %v)\n%s", err, ctx.Err(), out)
		}
		if !strings.Contains(string(out), "lacre-milter store init") {
			t.Errorf("serve does not say how to create a store:\n%s", out)
		}
		noStoreAt("after serve")
		// Postfix's milter_default_action = tempfail: the mail waits.
		msg := message("store-missing-at-start", "alice@example.org", textFields, textBody)
		if err := p.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, msg); err == nil {
			t.Fatal("mail to alice was accepted with no milter running")
		}

		// Restored, the milter starts and encrypts again.
		copyStore(t, backup, db)
		m.start(t)
		encrypted("store-after-restart")
	})
	if got := len(s.messages()); got != 3 {
		t.Errorf("the sink holds %d messages, want the 3 encrypted ones", got)
	}
}

// copyStore copies the key store at src to dst through SQLite (the online
// backup a careful operator takes), so that dst is a whole store even
// while src's last commits are still in its write-ahead log.
func copyStore(t *testing.T, src, dst string) {
	t.Helper()
	s, err := keys.OpenSQLite(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Backup(context.Background(), dst); err != nil {
		t.Fatal(err)
	}
}
