package integration

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/internal/testkeys"
)

// smtpSession is one SMTP connection kept open across transactions, the
// way a sending MTA's connection cache keeps it.
type smtpSession struct {
	t    testing.TB
	conn net.Conn
	c    *textproto.Conn
}

func dialSession(t testing.TB, addr string) *smtpSession {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s := &smtpSession{t: t, conn: conn, c: textproto.NewConn(conn)}
	t.Cleanup(func() { conn.Close() })
	if code, text, err := s.reply(); err != nil || code != 220 {
		t.Fatalf("greeting: %d %s %v", code, text, err)
	}
	if code, text, err := s.cmd("EHLO client.test"); err != nil || code != 250 {
		t.Fatalf("EHLO: %d %s %v", code, text, err)
	}
	return s
}

func (s *smtpSession) reply() (int, string, error) {
	s.conn.SetDeadline(time.Now().Add(2 * time.Minute))
	code, text, err := s.c.ReadResponse(0)
	var te *textproto.Error
	if errors.As(err, &te) {
		err = nil
	}
	return code, text, err
}

func (s *smtpSession) cmd(line string) (int, string, error) {
	s.conn.SetDeadline(time.Now().Add(2 * time.Minute))
	if err := s.c.PrintfLine("%s", line); err != nil {
		return 0, "", err
	}
	return s.reply()
}

// send tries one message the way Postfix's smtp client does with
// PIPELINING: MAIL, RCPT and DATA in one write, then the replies; the
// message if DATA got 354, else RSET. It returns the reply to MAIL and
// the final reply (after the message's dot, or to RSET); err is set when
// the connection ended.
func (s *smtpSession) send(from, to string, msg []byte) (mail, final string, err error) {
	s.conn.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := fmt.Fprintf(s.conn, "MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n", from, to); err != nil {
		return "", "", err
	}
	var replies [3]string
	var dataCode int
	for i := range replies {
		code, text, err := s.reply()
		if err != nil {
			return strings.Join(replies[:i], " | "), "", err
		}
		replies[i] = fmt.Sprintf("%d %s", code, text)
		if code == 421 {
			return replies[0], replies[i], io.EOF
		}
		dataCode = code
	}
	if dataCode != 354 {
		code, text, err := s.cmd("RSET")
		return replies[0], fmt.Sprintf("%d %s", code, text), err
	}
	dw := s.c.DotWriter()
	dw.Write(msg)
	if err := dw.Close(); err != nil {
		return replies[0], "", err
	}
	code, text, err := s.reply()
	return replies[0], fmt.Sprintf("%d %s", code, text), err
}

// TestMilterRestartStall shows the operators' trap docs/operations.md
// describes ("After the milter restarts"): Postfix's smtpd connects to the
// milter once per SMTP session, so a session that was open when the
// milter died (SIGKILL, or SIGTERM, which closes idle milter connections)
// answers every later MAIL with 451 4.7.1, also once the milter is back,
// until the session ends; a new session works at once. "postfix reload"
// does not end such sessions (smtpd processes of the old generation exit
// when idle); the smtpd error limit or "postfix stop"/"start" (a
// restart) does. Nothing reaches the sink from the poisoned session: the
// milter being away never lets mail pass unencrypted.
//
// It runs with the README's error limits; LACRE_IT_MX_MAIN (as in
// TestMixedLargeTransaction) measures other settings, e.g.
// 'smtpd_soft_error_limit=50 smtpd_hard_error_limit=100'.
func TestMilterRestartStall(t *testing.T) {
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	s := startSink(t)
	m := startMilter(t, "[store]\ncache_ttl = \"1s\"\n[milter]\nshutdown_timeout = \"2s\"\n")
	m.keysAdd(t, "alice@example.org", testkeys.ArmoredPublic(t, alice))
	mxMain := mxErrorLimits(t)
	p := startPostfix(t, postfixOptions{RelayPort: s.port, SMTPDMilters: m.addr(), Main: mxMain})
	t.Logf("MX settings: %v", mxMain)

	for _, tc := range []struct {
		name string
		stop func()
		// after runs once the milter is back, before the poisoned
		// session tries again; it returns whether the session must
		// have been ended.
		after func() bool
		// openWhileDown: the session starts while the milter is down
		// (its first MAIL gets 451 too), instead of before.
		openWhileDown bool
	}{
		{"SIGKILL", m.kill, func() bool { return false }, false},
		{"SIGTERM", func() {
			if err := m.stop(); err != nil {
				t.Errorf("lacre-milter: %v", err)
			}
		}, func() bool { return false }, false},
		{"session opened while the milter is down", m.kill, func() bool { return false }, true},
		{"SIGKILL then postfix reload", m.kill, func() bool {
			if _, err := run(nil, nil, postfixCmd, "-c", p.configDir, "reload"); err != nil {
				t.Fatal(err)
			}
			return false
		}, false},
		{"SIGKILL then postfix restart", m.kill, func() bool { p.restart(t); return true }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := strings.ReplaceAll(strings.ToLower(tc.name), " ", "-")
			logStart := len(p.log())
			sinkBefore := len(s.messages())
			var old *smtpSession
			if !tc.openWhileDown {
				// A session with one delivered message: smtpd has its
				// milter connection, idle between transactions.
				old = dialSession(t, p.smtpAddr())
				if mail, final, err := old.send("sender@example.com", "alice@example.org", message(id+"-before", "alice@example.org", textFields, textBody)); err != nil || !strings.HasPrefix(final, "250 ") {
					t.Fatalf("first message: MAIL %q, final %q, %v", mail, final, err)
				}
				byMessageID(t, s, id+"-before")
				sinkBefore++
			}

			tc.stop()
			if tc.openWhileDown {
				old = dialSession(t, p.smtpAddr())
				if mail, _, err := old.send("sender@example.com", "alice@example.org", message(id+"-down", "alice@example.org", textFields, textBody)); err != nil || !strings.HasPrefix(mail, "451 4.7.1") {
					t.Fatalf("MAIL with the milter down: %q, %v", mail, err)
				}
			}
			m.start(t)
			back := time.Now()
			mustEnd := tc.after()

			// A new session is served at once, and encrypted.
			fresh := message(id+"-fresh", "alice@example.org", textFields, textBody)
			if err := p.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, fresh); err != nil {
				t.Fatalf("a new session after the milter came back: %v", err)
			}
			checkDecrypts(t, byMessageID(t, s, id+"-fresh").Data, fresh, alice)
			sinkBefore++

			// The old session: a sender with a backlog tries one message
			// after the other on it, until the MX ends the session.
			var tries, tempfails int
			var first, last, end string
			for tries < 2000 && time.Since(back) < 3*time.Minute {
				tries++
				mail, final, err := old.send("sender@example.com", "alice@example.org", message(fmt.Sprintf("%s-%d", id, tries), "alice@example.org", textFields, textBody))
				if first == "" {
					first = mail
				}
				if err != nil {
					end = fmt.Sprintf("%v after MAIL %q, final %q", err, mail, final)
					break
				}
				if strings.HasPrefix(mail, "451 ") {
					tempfails++
					last = mail
					continue
				}
				end = fmt.Sprintf("MAIL answered %q, final %q", mail, final)
				break
			}
			stall := time.Since(back)
			t.Logf("%s: the old session got %d × %q in %v, then: %s", tc.name, tempfails, last, stall.Round(time.Millisecond), end)
			if mustEnd {
				if tempfails > 0 {
					t.Errorf("after a Postfix restart the old session still got %d × 451", tempfails)
				}
			} else {
				if tempfails == 0 || !strings.HasPrefix(first, "451 4.7.1") {
					t.Errorf("the old session's first MAIL after the restart got %q, want 451 4.7.1 (if milter_default_action is tempfail, Postfix now reconnects to the milter: docs/operations.md can be relaxed)", first)
				}
				if !strings.Contains(end, "421 4.7.0") && !strings.Contains(end, "EOF") {
					t.Errorf("the old session ended with %s", end)
				}
			}
			// Whatever the MX accepted has left its queue before the sink
			// is checked.
			p.waitQueue(t, 30*time.Second, "empty", func(q []queueEntry) bool { return len(q) == 0 })
			for _, sm := range s.messages()[sinkBefore:] {
				t.Errorf("a message from the old session reached the sink: %.200q", sm.Data)
			}
			// The Postfix lines docs/operations.md quotes: those of the
			// smtpd process that served the old session.
			if tempfails > 0 {
				logPoisonedSession(t, p, logStart)
			}
		})
		if t.Failed() {
			return
		}
	}
}

// logPoisonedSession writes to the test log the first line of each kind
// that the smtpd process of the first "milter-reject: MAIL" after offset
// logged after offset, once it has logged its disconnect.
func logPoisonedSession(t *testing.T, p *postfixInstance, offset int) {
	t.Helper()
	pid := ""
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		l := p.log()[offset:]
		if i := strings.Index(l, "milter-reject: MAIL"); i >= 0 {
			line := l[strings.LastIndexByte(l[:i], '\n')+1 : i]
			if j := strings.Index(line, "smtpd["); j >= 0 {
				pid = line[j : j+strings.IndexByte(line[j:], ']')+1]
			}
		}
		if pid != "" && strings.Contains(l, pid+": too many errors") && strings.Contains(l[strings.Index(l, pid+": too many errors"):], pid+": disconnect from") {
			seen := map[string]bool{}
			for _, line := range strings.Split(l, "\n") {
				if !strings.Contains(line, pid+": ") {
					continue
				}
				for _, k := range []string{"warning:", "milter-reject: MAIL", "too many errors", "disconnect from"} {
					if strings.Contains(line, k) && !seen[k] && (k != "disconnect from" || strings.Contains(line, " rset=")) {
						seen[k] = true
						t.Logf("maillog: %s", line)
					}
				}
			}
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("no disconnect of the old session's smtpd (%q) in the maillog", pid)
}

// TestMilterRestartRealSender measures the same trap with a real sending
// Postfix (its connection cache, up to 20 connections in parallel): 600
// messages are submitted to it as fast as it takes them, for an unkeyed
// recipient behind the MX; after the 200th the milter is killed (SIGTERM
// with LACRE_IT_SIGNAL=TERM) and started again, and with
// LACRE_IT_RESTART_POSTFIX=1 the MX Postfix is restarted right after. It
// logs how many messages the sender deferred with 451 4.7.1 and when the
// last was. A measurement for docs/operations.md, not a check: it runs
// only with LACRE_IT_MEASURE=1 (about 30 s), e.g.
//
//	LACRE_IT_MEASURE=1 LACRE_IT_MX_MAIN='smtpd_soft_error_limit=10 smtpd_hard_error_limit=20' \
//	  go test ./integration -run MilterRestartRealSender -v
func TestMilterRestartRealSender(t *testing.T) {
	if os.Getenv("LACRE_IT_MEASURE") == "" {
		t.Skip("a measurement: set LACRE_IT_MEASURE=1")
	}
	s := startSink(t)
	m := startMilter(t, "[milter]\nshutdown_timeout = \"2s\"\n")
	mxMain := mxErrorLimits(t)
	mx := startPostfix(t, postfixOptions{RelayPort: s.port, SMTPDMilters: m.addr(), Main: mxMain})
	// Postfix's own retry schedule: what is deferred stays deferred for
	// the measurement.
	sender := startPostfix(t, postfixOptions{RelayPort: mx.smtpPort, Main: map[string]string{
		"minimal_backoff_time": "300s", "maximal_backoff_time": "4000s", "queue_run_delay": "300s"}})
	t.Logf("MX settings: %v; signal %q, restart Postfix %q", mxMain, os.Getenv("LACRE_IT_SIGNAL"), os.Getenv("LACRE_IT_RESTART_POSTFIX"))
	const n = 600
	var back time.Time
	for i := 0; i < n; i++ {
		if i == 200 {
			if os.Getenv("LACRE_IT_SIGNAL") == "TERM" {
				if err := m.stop(); err != nil {
					t.Errorf("lacre-milter: %v", err)
				}
			} else {
				m.kill()
			}
			m.start(t)
			back = time.Now()
			if os.Getenv("LACRE_IT_RESTART_POSTFIX") != "" {
				mx.restart(t)
			}
		}
		msg := message(fmt.Sprintf("burst-%d", i), "bob@example.net", textFields, textBody)
		if err := sender.sendSMTP(t, "sender@example.com", []string{"bob@example.net"}, msg); err != nil {
			t.Fatal(err)
		}
	}
	// Until the sender has tried everything once.
	sender.waitQueue(t, time.Minute, "tried", func(q []queueEntry) bool {
		for _, e := range q {
			if e.QueueName != "deferred" {
				return false
			}
		}
		return true
	})
	mx.waitQueue(t, time.Minute, "empty", func(q []queueEntry) bool { return len(q) == 0 })
	var deferred int
	var last string
	for _, line := range strings.Split(sender.log(), "\n") {
		if strings.Contains(line, "status=deferred") {
			deferred++
			if strings.Contains(line, "451 4.7.1") {
				last = line
			}
		}
	}
	t.Logf("milter back at %s; %d message(s) deferred (%d with 451 4.7.1), the last 451: %.60s; %d delivered; MX dropped %d session(s) for too many errors",
		back.Format("15:04:05.000"), deferred, strings.Count(sender.log(), "451 4.7.1"), last, len(s.messages()), strings.Count(mx.log(), "too many errors after"))
}
