package integration

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/testkeys"
)

// The lookup tables of TestAliases' Postfix. alice@example.org has a
// key; bob@example.org and someone@external.test have none.
var aliasTables = map[string]string{
	// virtual_alias_maps, first table (hash).
	"virtual": `info@example.org      alice@example.org
chain1@example.org    chain2@example.org
chain2@example.org    chain3@example.org
chain3@example.org    alice@example.org
ext@example.org       someone@external.test
team@example.org      alice@example.org, bob@example.org
loop1@example.org     loop2@example.org, alice@example.org
loop2@example.org     loop1@example.org
@catchall.test        alice@example.org
edit@example.org      bob@example.org
`,
	// virtual_alias_maps, second table: regexp tables see only the
	// full address.
	"virtual.regexp": `/^sales-[a-z]+@example\.org$/   alice@example.org
`,
	// virtual_alias_maps, third table (hash): made unreadable by the last case.
	"virtual.extra": `extra@example.org     alice@example.org
`,
	// recipient_canonical_maps: applied before virtual aliasing.
	"canonical": `canon@example.org     info@example.org
`,
	// alias_maps of the local domain local.test (aliases(5)).
	"aliases": `root: alice@example.org
postmaster: root@local.test
mixlocal: alice@example.org, bob@example.org
keyedpipe: alice@example.org, "|/bin/cat >/dev/null"
mixpipe: alice@example.org, bob@example.org, "|/bin/cat >/dev/null"
`,
}

// TestAliases: the milter classifies a recipient by the mailboxes Postfix
// delivers it to, reading the instance's own tables ([aliases] source =
// "postfix"): virtual_alias_maps (a hash and a regexp table),
// recipient_canonical_maps, a local domain's alias_maps and
// recipient_delimiter = +. Each keyed mailbox gets ciphertext it can
// decrypt, each unkeyed one mail it can read, exactly once.
func TestAliases(t *testing.T) {
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	s := startSink(t)
	// The milter starts before Postfix (Postfix needs its address), so it
	// is pointed at the instance's configuration once that exists.
	m := startMilter(t, "[store]\ncache_ttl = \"1s\"\n\n[aliases]\nsource = \"none\"\n")
	m.keysAdd(t, "alice@example.org", testkeys.ArmoredPublic(t, alice))
	reinjectPort := freePort(t)
	p := startPostfix(t, postfixOptions{
		RelayPort: s.port, SMTPDMilters: m.addr(), NonSMTPDMilters: m.addr(),
		Main: map[string]string{
			"mydestination":            "local.test",
			"alias_maps":               "hash:$config_directory/aliases",
			"alias_database":           "hash:$config_directory/aliases",
			"virtual_alias_maps":       "hash:$config_directory/virtual, regexp:$config_directory/virtual.regexp, hash:$config_directory/virtual.extra",
			"recipient_canonical_maps": "hash:$config_directory/canonical",
			"recipient_delimiter":      "+",
		},
		// The re-injection service of docs/operations.md: no milter, no
		// address mapping, loopback.
		Master: []string{fmt.Sprintf("127.0.0.1:%d inet n - n - - smtpd", reinjectPort),
			"  -o syslog_name=lacre-it-reinject",
			"  -o smtpd_milters=",
			"  -o non_smtpd_milters=",
			"  -o receive_override_options=no_address_mappings",
			"  -o smtpd_client_restrictions=",
			"  -o smtpd_helo_restrictions=",
			"  -o smtpd_sender_restrictions=",
			"  -o smtpd_recipient_restrictions=permit_mynetworks,reject",
			"  -o smtpd_relay_restrictions=permit_mynetworks,reject",
			"  -o smtpd_reject_unlisted_recipient=no",
			"  -o mynetworks=127.0.0.0/8"},
		Setup: func(dir string) error { return writeAliasTables(dir, aliasTables) },
	})
	configureAliases(t, m, p, reinjectPort)

	// send submits one message to rcpt and returns it as sent.
	send := func(t *testing.T, id, rcpt string) []byte {
		t.Helper()
		msg := message(id, rcpt, textFields, textBody)
		if err := p.sendSMTP(t, "sender@example.com", []string{rcpt}, msg); err != nil {
			t.Fatal(err)
		}
		return msg
	}
	// encryptedTo checks that the message arrived once, encrypted, for
	// exactly the envelope recipients want, and decrypts for alice.
	encryptedTo := func(t *testing.T, id string, msg []byte, want ...string) {
		t.Helper()
		got := byMessageID(t, s, id)
		if !sameSet(got.To, want) {
			t.Errorf("delivered to %v, want %v", got.To, want)
		}
		checkDecrypts(t, got.Data, msg, alice)
		if bytes.Contains(got.Data, []byte("ünïcödé")) {
			t.Fatal("cleartext in the delivered message")
		}
	}

	for _, tc := range []struct{ name, rcpt, to string }{
		{"alias to a keyed mailbox", "info@example.org", "alice@example.org"},
		{"alias chain three deep", "chain1@example.org", "alice@example.org"},
		{"catch-all of a domain", "anyone@catchall.test", "alice@example.org"},
		{"regexp table", "sales-eu@example.org", "alice@example.org"},
		{"canonical, then virtual", "canon@example.org", "alice@example.org"},
		{"address extension propagated", "info+news@example.org", "alice+news@example.org"},
		{"aliases(5) of a local domain", "root@local.test", "alice@example.org"},
		{"alias chain through aliases(5)", "postmaster@local.test", "alice@example.org"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "alias-" + strings.NewReplacer("@", "-", "+", "-").Replace(tc.rcpt)
			encryptedTo(t, id, send(t, id, tc.rcpt), tc.to)
		})
	}

	t.Run("alias to an external address", func(t *testing.T) {
		msg := send(t, "alias-ext", "ext@example.org")
		got := byMessageID(t, s, "alias-ext")
		if !sameSet(got.To, []string{"someone@external.test"}) {
			t.Errorf("delivered to %v", got.To)
		}
		checkRelayed(t, got.Data, msg)
	})

	t.Run("mixed list: each mailbox gets its copy, once", func(t *testing.T) {
		before := strings.Count(m.out.String(), "msg=message ")
		msg := send(t, "alias-team", "team@example.org")
		// Both copies, then a pause for anything more to arrive.
		checkSplit(t, s, "alias-team", msg, alice)
		// Loop-free by construction: the clear copy went in through the
		// re-injection service and never reached the milter. One message
		// line for the one message, and none for the clear copy's queue id.
		logs := m.out.String()
		if n := strings.Count(logs, "msg=message ") - before; n != 1 {
			t.Errorf("%d milter message lines for one message", n)
		}
		mm := regexp.MustCompile(`action=encrypted .*split=1 .*reinjected="250 2\.0\.0 Ok: queued as ([0-9A-Za-z]+)"`).FindStringSubmatch(logs)
		if mm == nil {
			t.Fatalf("no message line of the split with the clear copy's queue id:\n%s", tail(logs, 20))
		}
		if strings.Contains(logs, "queue_id="+mm[1]) {
			t.Errorf("the clear copy %s reached the milter", mm[1])
		}
		plog := p.waitLog(t, mm[1]+": removed", deliveryTimeout)
		if !strings.Contains(plog, "lacre-it-reinject/smtpd") || regexp.MustCompile(mm[1]+`: milter`).MatchString(plog) {
			t.Errorf("the clear copy %s did not come through the re-injection service alone", mm[1])
		}
	})

	t.Run("mixed aliases(5) list is split too", func(t *testing.T) {
		msg := send(t, "alias-mixlocal", "mixlocal@local.test")
		checkSplit(t, s, "alias-mixlocal", msg, alice)
	})

	t.Run("mixed list from the sendmail command is split too", func(t *testing.T) {
		msg := message("alias-team-local", "team@example.org", textFields, textBody)
		if err := p.sendmail(t, "sender@example.com", []string{"team@example.org"}, msg); err != nil {
			t.Fatal(err)
		}
		checkSplit(t, s, "alias-team-local", msg, alice)
	})

	t.Run("keyed list with a command: encrypted, the command gets the ciphertext", func(t *testing.T) {
		encryptedTo(t, "alias-keyedpipe", send(t, "alias-keyedpipe", "keyedpipe@local.test"), "alice@example.org")
		waitText(t, "lacre-milter output", m.out.String, "non_mailbox_targets=1", 5*time.Second)
		p.waitLog(t, `to=<keyedpipe@local.test>, relay=local`, deliveryTimeout)
	})

	t.Run("mixed list with a command cannot be split: 451", func(t *testing.T) {
		msg := message("alias-mixpipe", "mixpipe@local.test", textFields, textBody)
		err := p.sendSMTP(t, "sender@example.com", []string{"mixpipe@local.test"}, msg)
		var se *sendError
		if !errors.As(err, &se) || se.rcpt("mixpipe@local.test") == nil || se.rcpt("mixpipe@local.test").Code != 451 {
			t.Fatalf("want 451 at RCPT, got %v", err)
		}
		waitText(t, "lacre-milter output", m.out.String, "split the alias", 5*time.Second)
	})

	// Postfix defers such mail itself ("4.6.0 Alias expansion error"),
	// after DATA; the milter must not guess the mailboxes of a loop either:
	// its own 451 at RCPT.
	t.Run("alias loop", func(t *testing.T) {
		msg := message("alias-loop", "loop1@example.org", textFields, textBody)
		err := p.sendSMTP(t, "sender@example.com", []string{"loop1@example.org"}, msg)
		var se *sendError
		if !errors.As(err, &se) {
			t.Fatalf("accepted: %v", err)
		}
		if r := se.rcpt("loop1@example.org"); r == nil || r.Code != 451 || !strings.Contains(r.Msg, "4.3.0 Recipient address resolution failed") {
			t.Fatalf("refusal %v, want the milter's 451 4.3.0 at RCPT", err)
		}
		waitText(t, "lacre-milter output", m.out.String, "alias expansion limit exceeded", 5*time.Second)
		time.Sleep(2 * time.Second)
		for _, sm := range s.messages() {
			if bytes.Contains(sm.Data, []byte("<alias-loop@example.com>")) {
				t.Fatal("a refused message reached the sink")
			}
		}
	})

	t.Run("table rebuilt with postmap while the milter runs", func(t *testing.T) {
		msg := send(t, "alias-edit-1", "edit@example.org")
		got := byMessageID(t, s, "alias-edit-1")
		if !sameSet(got.To, []string{"bob@example.org"}) {
			t.Fatalf("delivered to %v", got.To)
		}
		checkRelayed(t, got.Data, msg)
		edited := strings.Replace(aliasTables["virtual"], "edit@example.org      bob@example.org", "edit@example.org      alice@example.org", 1)
		if err := writeAliasTables(p.configDir, map[string]string{"virtual": edited}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond) // [aliases] cache_ttl = "1s"
		encryptedTo(t, "alias-edit-2", send(t, "alias-edit-2", "edit@example.org"), "alice@example.org")
	})

	// Last: it breaks a table every virtual lookup reads.
	t.Run("table unreadable: 4xx, no cleartext", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(p.configDir, "virtual.extra.db"), []byte("not a database\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond)
		msg := message("alias-unreadable", "info@example.org", textFields, textBody)
		err := p.sendSMTP(t, "sender@example.com", []string{"info@example.org"}, msg)
		var se *sendError
		if !errors.As(err, &se) {
			t.Fatalf("accepted: %v", err)
		}
		// The milter's own reply, at RCPT: Postfix would only fail later.
		r := se.rcpt("info@example.org")
		if r == nil || r.Code != 451 || !strings.Contains(r.Msg, "4.3.0 Recipient address resolution failed") {
			t.Fatalf("refusal %v, want the milter's 451 4.3.0 at RCPT", err)
		}
		time.Sleep(2 * time.Second)
		for _, sm := range s.messages() {
			if bytes.Contains(sm.Data, []byte("<alias-unreadable@example.com>")) {
				t.Fatal("the message reached the sink")
			}
		}
		if !m.logSays("recipient expansion failed") {
			t.Error("no log line of the failed expansion")
		}
	})
}

// writeAliasTables writes tables into dir and builds them as Postfix
// does: postalias for "aliases", postmap for the hash tables; regexp
// tables are read as text. A table is written to a new file and renamed,
// as an operator's editor would.
func writeAliasTables(dir string, tables map[string]string) error {
	for name, text := range tables {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path+".new", []byte(text), 0o644); err != nil {
			return err
		}
		if err := os.Rename(path+".new", path); err != nil {
			return err
		}
		switch {
		case name == "aliases":
			if _, err := run(nil, nil, "/usr/sbin/postalias", "-c", dir, "hash:"+path); err != nil {
				return err
			}
		case !strings.HasSuffix(name, ".regexp"):
			if _, err := run(nil, nil, "/usr/sbin/postmap", "-c", dir, "hash:"+path); err != nil {
				return err
			}
		}
	}
	return nil
}

// configureAliases points the milter at p's configuration ([aliases]
// source = "postfix", the service that runs it, the re-injection port)
// and restarts it.
func configureAliases(t *testing.T, m *milterProc, p *postfixInstance, reinjectPort int) {
	t.Helper()
	cfg, err := os.ReadFile(m.configPath)
	if err != nil {
		t.Fatal(err)
	}
	aliases := fmt.Sprintf("source = \"postfix\"\npostfix_config_dir = %q\nservice = \"127.0.0.1:%d/inet\"\ncache_ttl = \"1s\"\nreinject = \"127.0.0.1:%d\"\n",
		p.configDir, p.smtpPort, reinjectPort)
	next := strings.Replace(string(cfg), "source = \"none\"\n", aliases, 1)
	if next == string(cfg) {
		t.Fatal("the milter's configuration has no [aliases] source = \"none\" to replace")
	}
	if err := os.WriteFile(m.configPath, []byte(next), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := m.cli(nil, "check-config"); err != nil {
		t.Fatalf("check-config: %v\n%s", err, out)
	} else {
		t.Logf("check-config:\n%s", out)
	}
	m.restart(t)
}

// checkSplit checks the two copies of a mixed list's message: one
// encrypted for alice alone, one clear for bob alone.
func checkSplit(t *testing.T, s *sink, id string, msg []byte, alice *openpgp.Entity) {
	t.Helper()
	var enc, clear int
	for _, c := range waitCopies(t, s, id, 2) {
		switch {
		case sameSet(c.To, []string{"alice@example.org"}):
			enc++
			checkDecrypts(t, c.Data, msg, alice)
		case sameSet(c.To, []string{"bob@example.org"}):
			clear++
			checkRelayed(t, c.Data, msg)
		default:
			t.Errorf("a copy for %v", c.To)
		}
	}
	if enc != 1 || clear != 1 {
		t.Fatalf("%d encrypted and %d clear copies, want one each", enc, clear)
	}
}

// waitCopies waits for n messages with the Message-ID <id@example.com>,
// then two seconds more, and returns every one that arrived.
func waitCopies(t *testing.T, s *sink, id string, n int) []sinkMessage {
	t.Helper()
	needle := []byte("\r\nMessage-ID: <" + id + "@example.com>\r\n")
	find := func() []sinkMessage {
		var out []sinkMessage
		for _, m := range s.messages() {
			if bytes.Contains(m.Data, needle) {
				out = append(out, m)
			}
		}
		return out
	}
	deadline := time.Now().Add(deliveryTimeout)
	for len(find()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("sink: %d of %d copies of %s within %v", len(find()), n, id, deliveryTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	return find()
}
