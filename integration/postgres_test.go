package integration

import (
	"bytes"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// TestPostgresTwoHosts (issue 16): two mail hosts, each a private Postfix
// with its own lacre-milter (read-only role), share one PostgreSQL with
// the registration service (read-write role). Both have cached "no key"
// for alice, with cache_ttl one hour; a key confirmed through the
// registration service is used by both one second later: only the
// change notification can have told them.
func TestPostgresTwoHosts(t *testing.T) {
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	pg := startPGStore(t)
	s := startSink(t)
	m1 := startPGMilter(t, pg, "1h", "")
	m2 := startPGMilter(t, pg, "1h", "")
	rw := pg.rwConfig(t, "")
	base := startWeb(t, rw, s.port)
	p1 := startPostfix(t, postfixOptions{RelayPort: s.port, SMTPDMilters: m1.addr()})
	p2 := startPostfix(t, postfixOptions{RelayPort: s.port, SMTPDMilters: m2.addr()})
	hosts := []*postfixInstance{p1, p2}

	for i, p := range hosts {
		id := "pg-before-" + string(rune('1'+i))
		msg := message(id, "alice@example.org", textFields, textBody)
		if err := p.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, msg); err != nil {
			t.Fatal(err)
		}
		checkRelayed(t, byMessageID(t, s, id).Data, msg)
	}
	if out, err := m1.cli(nil, "check-config"); err != nil || !strings.Contains(out, fmt.Sprintf("schema version %d (connected)", keys.PostgresSchemaVersion)) {
		t.Fatalf("check-config: %v\n%s", err, out)
	}

	webRegister(t, base, s, alice, "alice@example.org")
	confirmed := time.Now()
	time.Sleep(time.Until(confirmed.Add(time.Second)))
	for i, p := range hosts {
		id := "pg-after-" + string(rune('1'+i))
		msg := message(id, "alice@example.org", textFields, textBody)
		if err := p.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, msg); err != nil {
			t.Fatal(err)
		}
		got := byMessageID(t, s, id)
		if bytes.Contains(got.Data, []byte("ünïcödé")) {
			t.Fatalf("host %d: cleartext to alice one second after her key was confirmed", i+1)
		}
		checkDecrypts(t, got.Data, msg, alice)
	}

	// The milter's role cannot write; the CLI's role can.
	key := testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.Curve25519, "bob@example.org"))
	if out, err := m1.cli(key, "keys", "add", "bob@example.org", "-"); err == nil || !strings.Contains(out, "permission denied") {
		t.Errorf("keys add with the milter's read-only role: %v\n%s", err, out)
	}
	if out, err := rw.cli(key, "keys", "add", "bob@example.org", "-"); err != nil {
		t.Errorf("keys add with the read-write role: %v\n%s", err, out)
	}

	// After a reload (SIGHUP: a new resolver, with a new cache), the
	// changes still reach the milter: a key added by the CLI for carol,
	// whose "no key" the new resolver has cached, is used a second later.
	carol := testkeys.Generate(t, testkeys.Curve25519, "carol@example.org")
	m1.mu.Lock()
	m1.cmd.Process.Signal(syscall.SIGHUP)
	m1.mu.Unlock()
	waitText(t, "milter 1 reload", m1.out.String, "configuration reloaded", 10*time.Second)
	msg := message("pg-carol-before", "carol@example.org", textFields, textBody)
	if err := p1.sendSMTP(t, "sender@example.com", []string{"carol@example.org"}, msg); err != nil {
		t.Fatal(err)
	}
	checkRelayed(t, byMessageID(t, s, "pg-carol-before").Data, msg)
	if out, err := rw.cli(testkeys.ArmoredPublic(t, carol), "keys", "add", "carol@example.org", "-"); err != nil {
		t.Fatalf("keys add: %v\n%s", err, out)
	}
	time.Sleep(time.Second)
	msg = message("pg-carol-after", "carol@example.org", textFields, textBody)
	if err := p1.sendSMTP(t, "sender@example.com", []string{"carol@example.org"}, msg); err != nil {
		t.Fatal(err)
	}
	got := byMessageID(t, s, "pg-carol-after")
	if bytes.Contains(got.Data, []byte("ünïcödé")) {
		t.Fatal("after a reload: cleartext to carol one second after her key was added")
	}
	checkDecrypts(t, got.Data, msg, carol)
}
