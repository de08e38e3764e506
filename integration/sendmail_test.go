package integration

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/internal/testkeys"
)

// TestSendmail runs the core cases of TestPostfix against a real Sendmail
// (Debian's sendmail-bin in a chroot) with lacre as its input mail
// filter, configured as the README says:
//
//	INPUT_MAIL_FILTER(`lacre', `S=inet:PORT@127.0.0.1, F=T, T=C:10s;S:10s;R:2m;E:10m')
func TestSendmail(t *testing.T) {
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	carol := testkeys.Generate(t, testkeys.RSA3072, "carol@example.org")
	s := startSink(t)
	m := startMilter(t, "[store]\ncache_ttl = \"1s\"\n")
	m.keysAdd(t, "alice@example.org", testkeys.ArmoredPublic(t, alice))
	m.keysAdd(t, "carol@example.org", testkeys.ArmoredPublic(t, carol))
	sm := startSendmail(t, sendmailOptions{RelayPort: s.port, Milter: sendmailSocket(m)})

	t.Run("keyed recipient is encrypted", func(t *testing.T) {
		msg := message("sm-keyed", "alice@example.org", textFields, textBody)
		if err := sm.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, msg); err != nil {
			t.Fatal(err)
		}
		got := byMessageID(t, s, "sm-keyed")
		checkDecrypts(t, got.Data, msg, alice)
		if !bytes.Contains(got.Data, []byte("\r\nX-Lacre: encrypted\r\n")) {
			t.Error("no X-Lacre trace header")
		}
		if bytes.Contains(got.Data, []byte("ünïcödé")) {
			t.Fatal("cleartext in the delivered message")
		}
		// The queue id Sendmail gives the milter ({i} at MAIL) is in
		// lacre's log line, so the two logs can be joined.
		id := sendmailQueueID(t, sm, "sm-keyed")
		waitText(t, "lacre-milter output", m.out.String, "queue_id="+id, 5*time.Second)
	})

	t.Run("unkeyed recipient is unchanged", func(t *testing.T) {
		msg := message("sm-unkeyed", "bob@example.net", textFields, textBody)
		if err := sm.sendSMTP(t, "sender@example.com", []string{"bob@example.net"}, msg); err != nil {
			t.Fatal(err)
		}
		checkRelayed(t, byMessageID(t, s, "sm-unkeyed").Data, msg)
		// Sendmail 8.17 speaks milter protocol 6 too.
		checkClearAcceptedAt(t, m, sendmailQueueID(t, sm, "sm-unkeyed"), "data")
	})

	t.Run("two keyed recipients share one ciphertext", func(t *testing.T) {
		msg := message("sm-two", "alice@example.org, carol@example.org", textFields, textBody)
		if err := sm.sendSMTP(t, "sender@example.com", []string{"alice@example.org", "carol@example.org"}, msg); err != nil {
			t.Fatal(err)
		}
		got := byMessageID(t, s, "sm-two")
		if !sameSet(got.To, []string{"alice@example.org", "carol@example.org"}) {
			t.Errorf("delivered to %v, want one message to both", got.To)
		}
		checkDecrypts(t, got.Data, msg, alice, carol)
	})

	t.Run("already encrypted passes unchanged", func(t *testing.T) {
		msg := pgpMIMEMessage("sm-pgpmime")
		if err := sm.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, msg); err != nil {
			t.Fatal(err)
		}
		checkRelayed(t, byMessageID(t, s, "sm-pgpmime").Data, msg)
	})

	t.Run("mixed recipients get 452 for the second class", func(t *testing.T) {
		msg := message("sm-mixed", "alice@example.org, bob@example.net", textFields, textBody)
		err := sm.sendSMTP(t, "sender@example.com", []string{"alice@example.org", "bob@example.net"}, msg)
		var se *sendError
		if !errors.As(err, &se) || se.rcpt("bob@example.net") == nil || se.rcpt("bob@example.net").Code != 452 {
			t.Fatalf("err = %v, want 452 for bob@example.net", err)
		}
		if !strings.Contains(se.rcpt("bob@example.net").Error(), "4.5.3") {
			t.Errorf("reply %v, want enhanced code 4.5.3", se.rcpt("bob@example.net"))
		}
		checkDecrypts(t, byMessageID(t, s, "sm-mixed").Data, msg, alice)
		// The client sends the deferred recipient again, alone.
		if err := sm.sendSMTP(t, "sender@example.com", []string{"bob@example.net"}, msg); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(deliveryTimeout)
		for {
			var clear []sinkMessage
			for _, got := range s.messages() {
				if bytes.Contains(got.Data, []byte("<sm-mixed@example.com>")) && sameSet(got.To, []string{"bob@example.net"}) {
					clear = append(clear, got)
				}
			}
			if len(clear) == 1 {
				checkRelayed(t, clear[0].Data, msg)
				break
			}
			if len(clear) > 1 || time.Now().After(deadline) {
				t.Fatalf("%d clear copies for bob@example.net, want 1", len(clear))
			}
			time.Sleep(100 * time.Millisecond)
		}
	})

	t.Run("10 MB attachment is encrypted", func(t *testing.T) {
		msg := attachmentMessage("sm-big", 7<<20) // base64 makes it about 10 MB
		if err := sm.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, msg); err != nil {
			t.Fatal(err)
		}
		got := byMessageID(t, s, "sm-big")
		t.Logf("%d bytes in, %d bytes delivered", len(msg), len(got.Data))
		checkDecrypts(t, got.Data, msg, alice)
	})

	t.Run("keyed and unkeyed from a sending MTA both arrive", func(t *testing.T) {
		sender := startPostfix(t, postfixOptions{RelayPort: sm.smtpPort})
		checkSplitBySender(t, sender, s, "sm-relay", alice)
	})

	// Last: it stops the milter.
	t.Run("milter stopped means 4xx and nothing delivered", func(t *testing.T) {
		before := len(s.messages())
		m.kill()
		err := sm.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, message("sm-down", "alice@example.org", textFields, textBody))
		var se *smtpError
		if !errors.As(err, &se) || !se.Temporary() {
			t.Fatalf("with the milter down: err = %v, want a 4xx", err)
		}
		t.Logf("Sendmail answered: %v", err)
		time.Sleep(2 * time.Second)
		if n := len(s.messages()); n != before {
			t.Fatalf("%d message(s) reached the sink while the milter was down", n-before)
		}
		// The line docs/operations.md quotes for this case.
		l := sm.waitLog(t, "Milter (lacre): to error state", 5*time.Second)
		for _, line := range strings.Split(l, "\n") {
			if strings.Contains(line, "Milter (lacre)") || strings.Contains(line, "Milter: ") {
				t.Logf("sendmail: %s", line)
			}
		}
	})
}

// sendmailSocket is the milter's address in Sendmail's S= notation.
func sendmailSocket(m *milterProc) string {
	return "inet:" + strings.TrimPrefix(m.addr(), "inet:127.0.0.1:") + "@127.0.0.1"
}

// sendmailQueueID finds the queue id Sendmail logged for a Message-ID of
// message().
func sendmailQueueID(t testing.TB, sm *sendmailInstance, id string) string {
	t.Helper()
	needle := "msgid=<" + id + "@example.com>"
	l := sm.waitLog(t, needle, 10*time.Second)
	for _, line := range strings.Split(l, "\n") {
		if i := strings.Index(line, needle); i >= 0 {
			// "sm-mta[123]: 5AQKe1abc012345: from=<...>, ..., msgid=<...>"
			if f := strings.Fields(line); len(f) > 1 {
				return strings.TrimSuffix(f[1], ":")
			}
		}
	}
	t.Fatalf("no queue id for %s in Sendmail's log", id)
	return ""
}
