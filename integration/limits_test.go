package integration

import (
	"errors"
	"net/smtp"
	"testing"
	"time"

	"lacre.io/milter/internal/testkeys"
)

// TestMaxConnectionsThroughPostfix: a connection over [milter]
// max_connections is closed at once, so Postfix applies
// milter_default_action = tempfail to that SMTP session; the sessions
// within the cap are served, and the freed slot serves the next one.
func TestMaxConnectionsThroughPostfix(t *testing.T) {
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	s := startSink(t)
	m := startMilter(t, "[milter]\nmax_connections = 1\n")
	m.keysAdd(t, "alice@example.org", testkeys.ArmoredPublic(t, alice))
	p := startPostfix(t, postfixOptions{RelayPort: s.port, SMTPDMilters: m.addr()})

	// Hold the one milter connection. The harness's own probe of the SMTP
	// port made smtpd open (and close) a milter connection a moment ago:
	// retry until its slot is free.
	var a *smtp.Client
	for deadline := time.Now().Add(30 * time.Second); ; {
		c, err := tryTransaction(p, "alice@example.org")
		if err == nil {
			a = c
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no SMTP session got the milter's one connection: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	defer a.Close()
	err := p.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, message("over-cap", "alice@example.org", textFields, textBody))
	var se *sendError
	if !errors.As(err, &se) || se.Errs[0].Code/100 != 4 {
		t.Fatalf("a session over the cap: %v; want a temporary failure", err)
	}
	msg := message("first", "alice@example.org", textFields, textBody)
	if err := finishTransaction(a, msg); err != nil {
		t.Fatal(err)
	}
	checkDecrypts(t, byMessageID(t, s, "first").Data, msg, alice)
	a.Quit()
	// smtpd closes its milter connection when its session ends; the next
	// session gets the freed slot (a few tries: the close is not
	// synchronous with QUIT's reply).
	msg = message("after", "alice@example.org", textFields, textBody)
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := p.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, msg)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slot was not freed: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	checkDecrypts(t, byMessageID(t, s, "after").Data, msg, alice)
	if len(s.messages()) != 2 {
		t.Errorf("%d messages delivered, want 2", len(s.messages()))
	}
}

// tryTransaction is openTransaction that returns its error.
func tryTransaction(p *postfixInstance, rcpt string) (*smtp.Client, error) {
	c, err := smtp.Dial(p.smtpAddr())
	if err != nil {
		return nil, err
	}
	if err = c.Hello("client.test"); err == nil {
		if err = c.Mail("sender@example.com"); err == nil {
			err = c.Rcpt(rcpt)
		}
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
