package integration

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
)

const deliveryTimeout = 30 * time.Second

// selfTestMessage is a message with what relaying must not change: 8-bit
// text, folded header fields, lines that need dot-stuffing, trailing white
// space, a long line.
func selfTestMessage(id string) []byte {
	return []byte(strings.ReplaceAll(fmt.Sprintf(`From: Sender <sender@example.com>
To: Alice <alice@example.org>, bob@example.net
Subject: harness self-test =?utf-8?q?=C3=BC?=
Date: Wed, 26 Nov 2025 12:00:00 +0000
Message-ID: <%s@example.com>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit
X-Folded: first part,
	second part

Grüße aus dem Test — ünïcödé.
.a line that starts with a dot
..two dots
.
trailing spaces   
	a tab
From the start of a line

%s
last line
`, id, strings.Repeat("0123456789", 90)), "\n", "\r\n"))
}

// checkRelayed asserts that got is sent with only trace fields (Received:)
// prepended: header fields and body byte for byte.
func checkRelayed(t testing.TB, got, sent []byte) {
	t.Helper()
	if !bytes.HasSuffix(got, sent) {
		gi, si := bytes.Index(got, []byte("\r\n\r\n")), bytes.Index(sent, []byte("\r\n\r\n"))
		if gi < 0 || !bytes.Equal(got[gi:], sent[si:]) {
			t.Fatalf("the body changed on the way:\n got %q\nwant %q", got, sent)
		}
		t.Fatalf("the header changed on the way:\n got %q\nwant …%q", got[:gi], sent[:si])
	}
	prefix := got[:len(got)-len(sent)]
	for _, l := range strings.SplitAfter(string(prefix), "\r\n") {
		if l == "" || strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t") || strings.HasPrefix(strings.ToLower(l), "received:") {
			continue
		}
		t.Errorf("Postfix added a header field other than Received: %q", l)
	}
	if !bytes.HasPrefix(prefix, []byte("Received: ")) {
		t.Errorf("no Received: field added: %q", prefix)
	}
}

// byMessageID returns the sink's message with that Message-ID, waiting
// for it.
func byMessageID(t testing.TB, s *sink, id string) sinkMessage {
	t.Helper()
	needle := []byte("\r\nMessage-ID: <" + id + "@example.com>\r\n")
	deadline := time.Now().Add(deliveryTimeout)
	// Poll rather than wait for "one more message": a message that
	// arrives between a scan and the wait would otherwise be waited past.
	for {
		for _, m := range s.messages() {
			if bytes.Contains(m.Data, needle) {
				return m
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("sink: no message %s within %v (%d received)", id, deliveryTimeout, len(s.messages()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sameSet compares recipient lists ignoring order (Postfix's smtp client
// sends them in its own order).
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestHarnessPlainPostfix checks the harness itself, without a milter:
// Postfix relays to the sink unchanged, refusals come back typed, the
// sendmail path works, and deferred mail is retried.
func TestHarnessPlainPostfix(t *testing.T) {
	start := time.Now()
	s := startSink(t)
	p := startPostfix(t, postfixOptions{
		RelayPort: s.port,
		Main: map[string]string{
			"smtpd_recipient_restrictions": "check_recipient_access inline:{ { reject@example.org = 550 5.1.1 rejected by the test }, { later@example.org = 450 4.2.0 later, says the test } }",
		},
	})
	t.Logf("Postfix %s started in %v (smtpd 127.0.0.1:%d, sink %s)", p.name, time.Since(start).Round(time.Millisecond), p.smtpPort, s.addr())

	t.Run("smtp", func(t *testing.T) {
		msg := selfTestMessage("smtp")
		id, err := p.sendSMTPID(t, "sender@example.com", []string{"alice@example.org", "bob@example.net"}, msg)
		if err != nil {
			t.Fatal(err)
		}
		if id == "" {
			t.Errorf("no queue id in the reply to DATA")
		}
		got := byMessageID(t, s, "smtp")
		if got.From != "sender@example.com" || !sameSet(got.To, []string{"alice@example.org", "bob@example.net"}) {
			t.Errorf("envelope = %q → %q", got.From, got.To)
		}
		checkRelayed(t, got.Data, msg)
		p.waitLog(t, id+": to=<bob@example.net>, relay=127.0.0.1", deliveryTimeout)
	})

	t.Run("refusals", func(t *testing.T) {
		msg := selfTestMessage("refusals")
		err := p.sendSMTP(t, "sender@example.com", []string{"reject@example.org", "alice@example.org", "later@example.org"}, msg)
		var se *sendError
		if !errors.As(err, &se) {
			t.Fatalf("err = %v, want a *sendError", err)
		}
		if e := se.rcpt("reject@example.org"); e == nil || e.Code != 550 || e.Temporary() || !strings.HasPrefix(e.Msg, "5.1.1 ") || !strings.Contains(e.Msg, "rejected by the test") {
			t.Errorf("reject@: %v", e)
		}
		if e := se.rcpt("later@example.org"); e == nil || e.Code != 450 || !e.Temporary() {
			t.Errorf("later@: %v", e)
		}
		if se.rcpt("alice@example.org") != nil || se.stage("DATA") != nil || len(se.Errs) != 2 {
			t.Errorf("unexpected refusals: %v", se)
		}
		var first *smtpError
		if !errors.As(err, &first) || first.Rcpt != "reject@example.org" {
			t.Errorf("errors.As(*smtpError) = %v", first)
		}
		got := byMessageID(t, s, "refusals")
		if !sameSet(got.To, []string{"alice@example.org"}) {
			t.Errorf("delivered to %q, want only alice", got.To)
		}
		checkRelayed(t, got.Data, msg)
	})

	t.Run("sendmail", func(t *testing.T) {
		msg := selfTestMessage("sendmail")
		// sendmail reads lines with LF or CRLF; give it LF, as local
		// programs do.
		if err := p.sendmail(t, "local@example.com", []string{"carol@example.org"}, bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))); err != nil {
			t.Fatal(err)
		}
		got := byMessageID(t, s, "sendmail")
		if got.From != "local@example.com" || !sameSet(got.To, []string{"carol@example.org"}) {
			t.Errorf("envelope = %q → %q", got.From, got.To)
		}
		checkRelayed(t, got.Data, msg)
	})

	t.Run("deferred-then-flushed", func(t *testing.T) {
		s.setRcptReply("slow@example.org", "452 4.2.2 the sink says later")
		msg := selfTestMessage("deferred")
		id, err := p.sendSMTPID(t, "sender@example.com", []string{"slow@example.org"}, msg)
		if err != nil {
			t.Fatal(err)
		}
		q := p.waitQueue(t, deliveryTimeout, "deferred by the sink", func(q []queueEntry) bool {
			for _, e := range q {
				// The delay reason is what proves the deferral: with the
				// harness's short retry times the queue manager may already
				// have moved the message from deferred back to incoming for
				// its next try when the queue is listed (seen in CI).
				if e.QueueID == id && e.QueueName != "hold" && len(e.Recipients) == 1 && strings.Contains(e.Recipients[0].DelayReason, "452 4.2.2 the sink says later") {
					return true
				}
			}
			return false
		})
		t.Logf("queue: %+v", q)
		s.setRcptReply("slow@example.org", "")
		if err := p.flush(); err != nil {
			t.Fatal(err)
		}
		got := byMessageID(t, s, "deferred")
		checkRelayed(t, got.Data, msg)
		p.waitQueue(t, deliveryTimeout, "empty", func(q []queueEntry) bool { return len(q) == 0 })
	})

	t.Run("reload", func(t *testing.T) {
		for i := 0; i < 3; i++ {
			text := fmt.Sprintf("reloaded %d", i)
			p.setMain(t, map[string]string{"smtpd_recipient_restrictions": "check_recipient_access inline:{ { x@example.org = 550 5.7.1 " + text + " } }"})
			err := p.sendSMTP(t, "sender@example.com", []string{"x@example.org"}, selfTestMessage("reload"))
			var se *smtpError
			if !errors.As(err, &se) || se.Code != 550 || !strings.Contains(se.Msg, text) {
				t.Fatalf("after reload %d: err = %v", i, err)
			}
		}
	})

	t.Run("sink-direct", func(t *testing.T) {
		// The client against the sink alone: a refused DATA is typed too.
		s.setDataReply("554 5.6.0 the sink refuses the content")
		defer s.setDataReply("")
		_, err := smtpSend(s.addr(), "a@example.com", []string{"b@example.org"}, []byte("Subject: x\r\n\r\nbody\r\n"), 10*time.Second)
		var se *sendError
		if !errors.As(err, &se) || se.stage("DATA") == nil || se.stage("DATA").Code != 554 {
			t.Fatalf("err = %v, want 554 at DATA", err)
		}
	})
}

// TestHarnessMilter checks the milter helpers with the real lacre-milter:
// start, keys add, the CLI, clear and encrypted mail through Postfix,
// fail-closed when the milter is down, and restart.
func TestHarnessMilter(t *testing.T) {
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	s := startSink(t)
	// An existing [store] table: the harness adds database to it.
	m := startMilter(t, "[store]\ncache_ttl = \"1s\"\n\n[log]\nlevel = \"debug\"\n")
	m.keysAdd(t, "alice@example.org", testkeys.ArmoredPublic(t, alice))
	if out, err := m.cli(nil, "keys", "list"); err != nil || !strings.Contains(out, "alice@example.org") {
		t.Fatalf("keys list: %v\n%s", err, out)
	}
	p := startPostfix(t, postfixOptions{RelayPort: s.port, SMTPDMilters: m.addr(), NonSMTPDMilters: m.addr()})

	t.Run("clear", func(t *testing.T) {
		msg := selfTestMessage("clear")
		if err := p.sendSMTP(t, "sender@example.com", []string{"bob@example.net"}, msg); err != nil {
			t.Fatal(err)
		}
		checkRelayed(t, byMessageID(t, s, "clear").Data, msg)
	})

	t.Run("encrypted", func(t *testing.T) {
		msg := selfTestMessage("encrypted")
		if err := p.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, msg); err != nil {
			t.Fatal(err)
		}
		got := byMessageID(t, s, "encrypted")
		_, inner := pgptest.OpenAndDecrypt(t, got.Data, alice)
		_, body := splitMessage(msg)
		if _, innerBody := splitMessage(inner); !bytes.Equal(innerBody, body) {
			t.Errorf("decrypted body differs:\n got %q\nwant %q", innerBody, body)
		}
	})

	t.Run("milter-down", func(t *testing.T) {
		m.kill()
		err := p.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, selfTestMessage("down"))
		var se *smtpError
		if !errors.As(err, &se) || !se.Temporary() {
			t.Fatalf("with the milter down: err = %v, want a 4xx (milter_default_action = tempfail)", err)
		}
		t.Logf("milter down: %v", err)
		m.start(t)
		if err := p.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, selfTestMessage("up")); err != nil {
			t.Fatalf("after restart: %v", err)
		}
		pgptest.OpenAndDecrypt(t, byMessageID(t, s, "up").Data, alice)
	})
}
