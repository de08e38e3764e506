package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// The load of TestPostgresRestartUnderLoad: 2,000 messages.
const (
	pgSingles = 1600
	pgPairs   = 400
	pgRcpts   = pgSingles + 2*pgPairs
	pgTimeout = 6 * time.Minute
)

// bindKeyed binds key, with the read-write role, to every recipient the
// canonical map sends to keyed.test (numbers ending in 0-4).
func bindKeyed(t *testing.T, pg *pgStore, key *openpgp.Entity) {
	t.Helper()
	ctx := context.Background()
	st, err := keys.OpenPostgres(ctx, pg.srv.DSN(pgWebRole, pg.db), keys.PostgresOptions{PasswordFile: pg.webPW})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ks, err := keys.Parse(testkeys.Public(t, key))
	if err != nil {
		t.Fatal(err)
	}
	for _, local := range []struct {
		name string
		n    int
	}{{"rcpt", pgSingles}, {"pair", 2 * pgPairs}} {
		for i := 1; i <= local.n; i++ {
			if i%10 > 4 {
				continue
			}
			if err := st.Add(ctx, fmt.Sprintf("%d%s@keyed.test", i, local.name), ks, false); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestPostgresRestartUnderLoad (issue 16): smtp-source sends 2,000
// messages (2,400 recipients, half keyed) through a sending Postfix A,
// which retries quickly, to two mail hosts B1 and B2 (recipients with an
// even number to B1, odd to B2), each with its own lacre-milter; both
// share one PostgreSQL, which is restarted when 40% of the recipients
// have their copy. Lookups that cannot be decided while it is down get a
// temporary failure, A retries them, and afterwards every recipient has
// exactly one copy, every keyed copy decrypts to the original body and no
// keyed copy holds cleartext; neither milter crashed.
func TestPostgresRestartUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the PostgreSQL restart test takes a minute or more")
	}
	begin := time.Now()
	deadline := begin.Add(pgTimeout)
	if d, ok := t.Deadline(); ok && d.Add(-30*time.Second).Before(deadline) {
		deadline = d.Add(-30 * time.Second)
	}
	smtpSource, err := lookSbin("smtp-source")
	if err != nil {
		t.Fatalf("smtp-source (part of Debian's postfix package) is needed: %v", err)
	}
	key := testkeys.Generate(t, testkeys.Curve25519, "fault@keyed.test")
	pg := startPGStore(t)
	s := startSink(t)
	extra := "[log]\nlevel = \"warn\"\n"
	// Every keyed recipient has the key bound in the store (not a
	// [static.domains] entry): only a store lookup can say "encrypt".
	bindKeyed(t, pg, key)
	var ms []*milterProc
	var bs []*postfixInstance
	for range 2 {
		m := startPGMilter(t, pg, "30s", extra)
		ms = append(ms, m)
		bs = append(bs, startPostfix(t, postfixOptions{RelayPort: s.port, SMTPDMilters: m.addr(), Main: map[string]string{
			"smtpd_error_sleep_time": "0s",
			"smtpd_soft_error_limit": "100",
			// Two hosts relay to one sink, which takes 32 connections
			// (sinkMaxConns) and refuses more with 421.
			"smtp_destination_concurrency_limit": "12",
		}}))
	}

	mapDir, err := os.MkdirTemp("", "lacre-pgfault-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(mapDir) })
	if err := os.Chmod(mapDir, 0o755); err != nil {
		t.Fatal(err)
	}
	canonical := filepath.Join(mapDir, "recipient_canonical")
	transport := filepath.Join(mapDir, "transport")
	if err := os.WriteFile(canonical, []byte(
		"/^([0-9]*[0-4])(rcpt|pair)@mix\\.test$/\t${1}${2}@keyed.test\n"+
			"/^([0-9]+)(rcpt|pair)@mix\\.test$/\t${1}${2}@clear.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(transport, fmt.Appendf(nil,
		"/^[0-9]*[02468](rcpt|pair)@/\tsmtp:[127.0.0.1]:%d\n/^[0-9]+(rcpt|pair)@/\tsmtp:[127.0.0.1]:%d\n", bs[0].smtpPort, bs[1].smtpPort), 0o644); err != nil {
		t.Fatal(err)
	}
	a := startPostfix(t, postfixOptions{RelayPort: bs[0].smtpPort, Main: map[string]string{
		"recipient_canonical_maps":    "regexp:" + canonical,
		"recipient_canonical_classes": "envelope_recipient",
		"transport_maps":              "regexp:" + transport,
		"minimal_backoff_time":        "1s",
		"maximal_backoff_time":        "2s",
		"queue_run_delay":             "1s",
	}})

	msgFile := filepath.Join(t.TempDir(), "message")
	if err := os.WriteFile(msgFile, []byte(faultMessage()), 0o644); err != nil {
		t.Fatal(err)
	}
	_, wantBody := splitMessage([]byte(strings.ReplaceAll(faultMessage()+"\n", "\n", "\r\n")))

	type sourceResult struct {
		name string
		out  []byte
		err  error
	}
	sources := make(chan sourceResult, 2)
	srcCtx, srcCancel := context.WithDeadline(context.Background(), deadline)
	defer srcCancel()
	runSource := func(name string, args ...string) {
		args = append([]string{"-d", "-N", "-M", "client.test", "-f", "sender@example.com", "-F", msgFile}, args...)
		args = append(args, a.smtpAddr())
		cmd := exec.CommandContext(srcCtx, smtpSource, args...)
		cmd.WaitDelay = 5 * time.Second
		go func() {
			out, err := cmd.CombinedOutput()
			sources <- sourceResult{name, out, err}
		}()
	}
	runSource("singles", "-s", "4", "-m", strconv.Itoa(pgSingles), "-r", "1", "-t", "rcpt@mix.test")
	runSource("pairs", "-s", "2", "-m", strconv.Itoa(pgPairs), "-r", "2", "-t", "pair@mix.test")

	var (
		seen        = map[string]int{}
		keyedCopies int
		clearCopies int
		problems    []string
	)
	problem := func(format string, args ...any) {
		if len(problems) < 50 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	check := func() {
		for _, sm := range s.take() {
			domains := map[string]bool{}
			for _, r := range sm.To {
				mm := faultRcptRE.FindStringSubmatch(r)
				if mm == nil {
					problem("unexpected recipient <%s>", r)
					continue
				}
				seen[mm[1]+mm[2]]++
				if seen[mm[1]+mm[2]] == 2 {
					problem("<%s> received a second copy", r)
				}
				domains[mm[3]] = true
			}
			switch {
			case len(domains) > 1:
				problem("one copy went to keyed and unkeyed recipients together: %v", sm.To)
			case domains["keyed"]:
				keyedCopies += len(sm.To)
				if bytes.Contains(sm.Data, []byte(faultBodyMarker)) {
					problem("cleartext in the copy for keyed %v", sm.To)
					continue
				}
				inner, err := decryptMessage(t, sm.Data, key)
				if err != nil {
					problem("the copy for keyed %v: %v", sm.To, err)
					continue
				}
				if _, body := splitMessage(inner); !bytes.Equal(body, wantBody) {
					problem("the copy for keyed %v decrypts to another body", sm.To)
				}
			case domains["clear"]:
				clearCopies += len(sm.To)
				if _, body := splitMessage(sm.Data); !bytes.Equal(body, wantBody) {
					problem("the copy for unkeyed %v changed", sm.To)
				}
			}
		}
	}

	lookupFailures := func() int {
		n := 0
		for _, m := range ms {
			n += strings.Count(m.out.String(), `msg="key lookup failed"`)
		}
		return n
	}
	restarted := false
	var outage time.Duration
	restart := func() {
		before := lookupFailures()
		start := time.Now()
		pg.srv.Stop(t, "fast")
		for time.Since(start) < 2*time.Second || lookupFailures() < before+10 {
			if time.Now().After(deadline) || time.Since(start) > time.Minute {
				pg.srv.StartAgain(t)
				check()
				t.Fatalf("PostgreSQL stopped: only %d lookup failures in %v; problems:\n%s", lookupFailures()-before, time.Since(start), strings.Join(problems, "\n"))
			}
			time.Sleep(100 * time.Millisecond)
		}
		pg.srv.StartAgain(t)
		outage = time.Since(start)
		restarted = true
		t.Logf("%v: PostgreSQL down for %v, %d lookups failed meanwhile (%d recipients delivered)",
			time.Since(begin).Round(time.Millisecond), outage.Round(time.Millisecond), lookupFailures()-before, len(seen))
	}

	running := 2
	flushes := 0
	progress, progressAt := 0, time.Now()
	for {
		check()
		if len(seen) != progress {
			progress, progressAt = len(seen), time.Now()
		} else if time.Since(progressAt) > 3*time.Second {
			// A queue manager that finds a message it just deferred still
			// being delivered puts it back into incoming for 60 s (see
			// TestFaultsUnderLoad); with three instances this happens
			// also while the sources run. Flush all of them.
			for _, p := range append([]*postfixInstance{a}, bs...) {
				if err := p.flush(); err != nil {
					t.Fatal(err)
				}
			}
			flushes++
			progressAt = time.Now()
		}
		if !restarted && len(seen) >= pgRcpts*2/5 {
			restart()
			continue
		}
	drain:
		for running > 0 {
			select {
			case r := <-sources:
				running--
				if r.err != nil {
					t.Fatalf("smtp-source (%s): %v\n%s", r.name, r.err, r.out)
				}
			default:
				break drain
			}
		}
		if running == 0 && len(seen) >= pgRcpts && restarted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %d of %d recipients have their copy, %d smtp-source stream(s) running, restarted %v; queues: A %d, B1 %d, B2 %d; problems:\n%s",
				time.Since(begin).Round(time.Second), len(seen), pgRcpts, running, restarted, len(a.queue(t)), len(bs[0].queue(t)), len(bs[1].queue(t)), strings.Join(problems, "\n"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	loadDone := time.Since(begin)
	for _, p := range append([]*postfixInstance{a}, bs...) {
		p.waitQueue(t, time.Until(deadline), "empty", func(q []queueEntry) bool { return len(q) == 0 })
	}
	check()
	for _, local := range []struct {
		name string
		n    int
	}{{"rcpt", pgSingles}, {"pair", 2 * pgPairs}} {
		for i := 1; i <= local.n; i++ {
			if seen[strconv.Itoa(i)+local.name] == 0 {
				problem("%d%s has no copy", i, local.name)
			}
		}
	}
	if len(seen) != pgRcpts {
		problem("%d distinct recipients, want %d", len(seen), pgRcpts)
	}
	for i, m := range ms {
		if !m.running() {
			problem("milter %d is no longer running", i+1)
		}
		if out := m.out.String(); strings.Contains(out, "panic") {
			problem("milter %d panicked", i+1)
		}
	}
	alog := a.log()
	tempfails := strings.Count(alog, "451 4.3.0 Encryption key lookup failed")
	sent := strings.Count(alog, "status=sent")
	t.Logf("messages: %d (%d single, %d pairs); recipients %d (keyed %d, unkeyed %d); A: %d deliveries, %d deferred with 451 4.3.0, queue flushed %d times",
		pgSingles+pgPairs, pgSingles, pgPairs, len(seen), keyedCopies, clearCopies, sent, tempfails, flushes)
	t.Logf("duration: %v until every copy arrived, %v in all; PostgreSQL down %v", loadDone.Round(time.Millisecond), time.Since(begin).Round(time.Millisecond), outage.Round(time.Millisecond))
	if len(problems) > 0 {
		t.Fatalf("%d problem(s):\n%s", len(problems), strings.Join(problems, "\n"))
	}
	if sent != pgRcpts {
		t.Errorf("Postfix A logged %d deliveries, want %d (one per recipient)", sent, pgRcpts)
	}
	if tempfails == 0 {
		t.Error("Postfix A was never told a key lookup failed: the restart did not reach the milters")
	}
}
