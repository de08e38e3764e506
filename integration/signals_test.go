package integration

import (
	"bytes"
	"errors"
	"net/smtp"
	"net/textproto"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
)

func (m *milterProc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	m.mu.Lock()
	cmd := m.cmd
	m.mu.Unlock()
	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// openTransaction starts an SMTP transaction and stops before DATA, so
// the milter has a session in the middle of a message.
func openTransaction(t *testing.T, p *postfixInstance, rcpt string) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(p.smtpAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("sender@example.com"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt(rcpt); err != nil {
		t.Fatal(err)
	}
	return c
}

func finishTransaction(c *smtp.Client, msg []byte) error {
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		return err
	}
	return w.Close()
}

// TestSignals: SIGHUP reloads the configuration without dropping a
// message in flight; SIGTERM stops accepting, lets the message in flight
// finish and exits within shutdown_timeout.
func TestSignals(t *testing.T) {
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	s := startSink(t)
	m := startMilter(t, "[milter]\nshutdown_timeout = \"3s\"\n")
	m.keysAdd(t, "alice@example.org", testkeys.ArmoredPublic(t, alice))
	p := startPostfix(t, postfixOptions{RelayPort: s.port, SMTPDMilters: m.addr()})

	t.Run("SIGHUP reloads without dropping the message in flight", func(t *testing.T) {
		c := openTransaction(t, p, "alice@example.org")
		cfg, err := os.ReadFile(m.configPath)
		if err != nil {
			t.Fatal(err)
		}
		newCfg := strings.Replace(string(cfg), "[milter]\n", "[milter]\ntrace_header = \"X-Reloaded\"\n", 1)
		if err := os.WriteFile(m.configPath, []byte(newCfg), 0o600); err != nil {
			t.Fatal(err)
		}
		m.signal(t, syscall.SIGHUP)
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(m.out.String(), "configuration reloaded") {
			if time.Now().After(deadline) {
				t.Fatalf("no reload logged:\n%s", m.out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		// The message in flight finishes with the settings it began with.
		inflight := message("hup-inflight", "alice@example.org", textFields, textBody)
		if err := finishTransaction(c, inflight); err != nil {
			t.Fatalf("the message in flight failed across SIGHUP: %v", err)
		}
		got := byMessageID(t, s, "hup-inflight")
		checkDecrypts(t, got.Data, inflight, alice)
		if !bytes.Contains(got.Data, []byte("\r\nX-Lacre: encrypted\r\n")) {
			t.Error("the message in flight did not keep the old settings")
		}
		// The next one uses the new ones.
		next := message("hup-next", "alice@example.org", textFields, textBody)
		if err := p.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, next); err != nil {
			t.Fatal(err)
		}
		if got := byMessageID(t, s, "hup-next"); !bytes.Contains(got.Data, []byte("\r\nX-Reloaded: encrypted\r\n")) {
			t.Errorf("the reloaded trace_header is not used")
		}
		// A broken configuration is refused; the running one stays.
		os.WriteFile(m.configPath, []byte(newCfg+"\nbogus = 1\n"), 0o600)
		m.signal(t, syscall.SIGHUP)
		deadline = time.Now().Add(10 * time.Second)
		for !strings.Contains(m.out.String(), "reload failed") {
			if time.Now().After(deadline) {
				t.Fatalf("a broken configuration was not refused:\n%s", m.out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		os.WriteFile(m.configPath, []byte(newCfg), 0o600)
		if err := p.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, message("hup-after-bad", "alice@example.org", textFields, textBody)); err != nil {
			t.Fatalf("after a refused reload: %v", err)
		}
		pgptest.OpenAndDecrypt(t, byMessageID(t, s, "hup-after-bad").Data, alice)
	})

	t.Run("SIGTERM drains the message in flight", func(t *testing.T) {
		c := openTransaction(t, p, "alice@example.org")
		m.signal(t, syscall.SIGTERM)
		time.Sleep(300 * time.Millisecond)
		if !m.running() {
			t.Fatal("lacre-milter exited with a message in flight")
		}
		msg := message("term-inflight", "alice@example.org", textFields, textBody)
		if err := finishTransaction(c, msg); err != nil {
			t.Fatalf("the message in flight failed during shutdown: %v", err)
		}
		checkDecrypts(t, byMessageID(t, s, "term-inflight").Data, msg, alice)
		waitExit(t, m, 5*time.Second)
	})

	t.Run("SIGTERM gives up on a stuck message after shutdown_timeout", func(t *testing.T) {
		m.start(t)
		c := openTransaction(t, p, "alice@example.org")
		start := time.Now()
		m.signal(t, syscall.SIGTERM)
		waitExit(t, m, 10*time.Second)
		if d := time.Since(start); d < 2500*time.Millisecond || d > 6*time.Second {
			t.Errorf("exited after %v, want about shutdown_timeout (3s)", d)
		}
		// The client's message now fails temporarily: nothing lost, nothing in clear.
		err := finishTransaction(c, message("term-stuck", "alice@example.org", textFields, textBody))
		var te *textproto.Error
		if !errors.As(err, &te) || te.Code/100 != 4 {
			t.Fatalf("after the milter gave up: %v, want a 4xx", err)
		}
		t.Logf("Postfix answered: %v", err)
		time.Sleep(time.Second)
		for _, sm := range s.messages() {
			if bytes.Contains(sm.Data, []byte("<term-stuck@example.com>")) {
				t.Fatal("the message reached the sink")
			}
		}
	})
}

func waitExit(t *testing.T, m *milterProc, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for m.running() {
		if time.Now().After(deadline) {
			t.Fatalf("lacre-milter still running %v after SIGTERM", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(m.out.String(), "msg=stopped") {
		t.Errorf("no orderly stop logged:\n%s", m.out.String())
	}
}
