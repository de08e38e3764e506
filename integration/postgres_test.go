package integration

import (
	"bytes"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/web"
)

// webRegister submits e's key for address to the registration service at
// base, takes the confirmation mail from the sink, decrypts it with e and
// confirms; it returns when the service has answered "Your key is active".
func webRegister(t *testing.T, base string, s *sink, e *openpgp.Entity, address string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	csrf := formCSRF(t, c, base+"/")
	resp, err := c.PostForm(base+"/submit", url.Values{"csrf": {csrf}, "address": {address}, "key": {string(testkeys.ArmoredPublic(t, e))}})
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submit: %d\n%s", resp.StatusCode, page)
	}
	var conf []byte
	deadline := time.Now().Add(deliveryTimeout)
	for conf == nil {
		for _, sm := range s.messages() {
			if bytes.Contains(sm.Data, []byte("Subject: "+web.MailSubject)) && bytes.Contains(sm.Data, []byte("To: "+address)) {
				conf = sm.Data
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no confirmation mail at the sink")
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, inner := pgptest.OpenAndDecrypt(t, conf, e)
	link := linkRE.Find(inner)
	if link == nil {
		t.Fatalf("no link in the decrypted confirmation:\n%s", inner)
	}
	csrf = formCSRF(t, c, string(link))
	token := string(link[strings.Index(string(link), "token=")+6:])
	resp, err = c.PostForm(base+"/confirm", url.Values{"csrf": {csrf}, "token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	page, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(page, []byte("Your key is active")) {
		t.Fatalf("confirm: %d\n%s", resp.StatusCode, page)
	}
}

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
	if out, err := m1.cli(nil, "check-config"); err != nil || !strings.Contains(out, "schema version 2 (connected)") {
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
