package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"lacre.io/milter/internal/testkeys"
)

// The load of TestFaultsUnderLoad: two smtp-source streams, single
// recipients and pairs.
const (
	faultSingles = 4000 // messages with one recipient
	faultPairs   = 1000 // messages with two recipients
	faultRcpts   = faultSingles + 2*faultPairs
	// faultTimeout bounds the whole test (less if go test's -timeout
	// leaves less).
	faultTimeout = 6 * time.Minute
)

// faultBodyMarker is in every line of the body: it must never appear in
// a keyed recipient's copy.
const faultBodyMarker = "FAULT-BODY"

// faultMessage is what smtp-source sends (-F): header and body with LF
// line ends; smtp-source sends CRLF and dot-stuffs.
func faultMessage() string {
	var b strings.Builder
	b.WriteString("From: Load Sender <sender@example.com>\nTo: Load Recipients <rcpt@mix.test>\nSubject: faults under load\n" +
		"MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n")
	for i := 1; i <= 48; i++ {
		fmt.Fprintf(&b, "%s line %02d: the quick brown fox jumps over the lazy dog, 0123456789.\n", faultBodyMarker, i)
		if i == 24 {
			b.WriteString("." + faultBodyMarker + " a line that starts with a dot\n")
		}
	}
	return b.String()
}

// faultRcptRE matches an envelope recipient as the sink sees it, after
// A's rewriting: "123pair@keyed.test" (number, stream, class).
var faultRcptRE = regexp.MustCompile(`^([0-9]+)(rcpt|pair)@(keyed|clear)\.test$`)

// TestFaultsUnderLoad (issue 6, item 3): smtp-source sends 5,000 messages
// (6,000 recipients, half of them keyed) through a sending Postfix (A,
// no milter, retrying quickly) to Postfix B with the milter, which
// relays to the sink. During the run the milter is killed with SIGKILL
// and restarted twice, and the key store is made unreadable once.
// Afterwards every recipient has exactly one copy, every keyed copy
// decrypts to the original body, no keyed copy holds cleartext, and every
// unkeyed copy is unchanged.
//
// Why two Postfix instances: smtp-source drops a message that gets a 4xx
// reply; A's queue keeps it and retries, as a real sending MTA does, so
// "exactly once" can be checked. Recipients: smtp-source numbers them
// (-N: 1rcpt@mix.test, 2rcpt@mix.test, …), and A's
// recipient_canonical_maps sends numbers ending in 0-4 to keyed.test
// (a [static.domains] key) and the others to clear.test (no key). The
// pairs of the second stream are often of different classes: the milter
// splits them with 452 4.5.3 and A delivers the rest later.
func TestFaultsUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the faults-under-load test takes minutes")
	}
	begin := time.Now()
	deadline := begin.Add(faultTimeout)
	if d, ok := t.Deadline(); ok && d.Add(-30*time.Second).Before(deadline) {
		deadline = d.Add(-30 * time.Second)
	}
	smtpSource, err := lookSbin("smtp-source")
	if err != nil {
		t.Fatalf("smtp-source (part of Debian's postfix package) is needed: %v", err)
	}

	// The key of keyed.test, bound in the store to one address of the
	// domain and mapped to the whole domain in [static.domains].
	key := testkeys.Generate(t, testkeys.Curve25519, "fault@keyed.test")
	fpr := fmt.Sprintf("%X", key.PrimaryKey.Fingerprint)
	s := startSink(t)
	// cache_ttl = 0: every RCPT reaches the store (the store is consulted
	// before [static.domains], so during the outage every recipient's
	// lookup fails). Log level warn: one line per failed lookup or
	// temporary failure, not one per message.
	m := startMilter(t, fmt.Sprintf("[log]\nlevel = \"warn\"\n\n[store]\ncache_ttl = \"0s\"\n\n[static.domains]\n\"keyed.test\" = [%q]\n", fpr))
	m.keysAdd(t, "fault@keyed.test", testkeys.ArmoredPublic(t, key))
	t.Cleanup(func() { // before the harness writes the milter's output to the test log
		if !t.Failed() {
			if n := m.out.omitLines(`msg="key lookup failed"`); n > 0 {
				t.Logf("(%d lines \"key lookup failed\" of the milter's output not shown: the test passed)", n)
			}
		}
	})
	b := startPostfix(t, postfixOptions{RelayPort: s.port, SMTPDMilters: m.addr(), Main: map[string]string{
		// Every milter RCPT refusal (452 split, 451 lookup failure)
		// counts as an smtpd error; do not sleep on them.
		"smtpd_error_sleep_time": "0s",
		"smtpd_soft_error_limit": "100",
	}})

	// A's recipient rewriting: a regexp table in a directory Postfix's
	// cleanup (user postfix) can read.
	mapDir, err := os.MkdirTemp("", "lacre-fault-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(mapDir) })
	if err := os.Chmod(mapDir, 0o755); err != nil {
		t.Fatal(err)
	}
	canonical := filepath.Join(mapDir, "recipient_canonical")
	if err := os.WriteFile(canonical, []byte(
		"/^([0-9]*[0-4])(rcpt|pair)@mix\\.test$/\t${1}${2}@keyed.test\n"+
			"/^([0-9]+)(rcpt|pair)@mix\\.test$/\t${1}${2}@clear.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a := startPostfix(t, postfixOptions{RelayPort: b.smtpPort, Main: map[string]string{
		"recipient_canonical_maps":    "regexp:" + canonical,
		"recipient_canonical_classes": "envelope_recipient",
		"minimal_backoff_time":        "1s",
		"maximal_backoff_time":        "2s",
		"queue_run_delay":             "1s",
	}})

	msgFile := filepath.Join(t.TempDir(), "message")
	if err := os.WriteFile(msgFile, []byte(faultMessage()), 0o644); err != nil {
		t.Fatal(err)
	}
	// smtp-source ends the data with an empty line of its own.
	_, wantBody := splitMessage([]byte(strings.ReplaceAll(faultMessage()+"\n", "\n", "\r\n")))

	// The two smtp-source streams.
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
	runSource("singles", "-s", "4", "-m", strconv.Itoa(faultSingles), "-r", "1", "-t", "rcpt@mix.test")
	runSource("pairs", "-s", "2", "-m", strconv.Itoa(faultPairs), "-r", "2", "-t", "pair@mix.test")

	// What the sink got, checked as it arrives.
	var (
		seen         = map[string]int{} // "123rcpt" → copies
		deliveries   int                // sink transactions
		keyedCopies  int                // keyed recipients' copies
		clearCopies  int                // unkeyed recipients' copies
		sharedCopies int                // one ciphertext for two keyed recipients
		problems     []string
	)
	problem := func(format string, args ...any) {
		if len(problems) < 50 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	check := func() {
		for _, sm := range s.take() {
			deliveries++
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
				if len(sm.To) > 1 {
					sharedCopies++
				}
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
					problem("the copy for keyed %v decrypts to another body (%d bytes, want %d)", sm.To, len(body), len(wantBody))
				}
			case domains["clear"]:
				clearCopies += len(sm.To)
				if _, body := splitMessage(sm.Data); !bytes.Equal(body, wantBody) {
					problem("the copy for unkeyed %v changed (%d body bytes, want %d)", sm.To, len(body), len(wantBody))
				}
			}
		}
	}

	// Faults, at fractions of the recipients delivered.
	milterFailures := func() int {
		return strings.Count(b.log(), "warning: milter "+m.addr()) + strings.Count(b.log(), "warning: connect to Milter service "+m.addr())
	}
	var restarts int
	crash := func(when string) {
		before := milterFailures()
		m.kill()
		time.Sleep(time.Second) // Postfix B meets a dead milter for a while
		m.start(t)
		restarts++
		// The crash must have hit sessions in flight or refused connections.
		for milterFailures() == before {
			if time.Now().After(deadline) {
				t.Fatalf("SIGKILL %s: Postfix B logged no milter failure", when)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("%v: SIGKILL and restart %s (%d recipients delivered)", time.Since(begin).Round(time.Millisecond), when, len(seen))
	}
	dbPath := filepath.Join(m.dir, "keys.db")
	lookupFailures := func() int { return strings.Count(m.out.String(), `msg="key lookup failed"`) }
	var outage time.Duration
	storeDown := func() {
		before := lookupFailures()
		start := time.Now()
		var once sync.Once
		restore := storeFault(t, dbPath)
		restoreOnce := func() { once.Do(restore) }
		t.Cleanup(restoreOnce)
		// Down for at least 3 s and until lookups have failed.
		for time.Since(start) < 3*time.Second || lookupFailures() < before+10 {
			if time.Now().After(deadline) || time.Since(start) > time.Minute {
				restoreOnce()
				t.Fatalf("key store made unreadable: %d lookup failures in %v", lookupFailures()-before, time.Since(start))
			}
			time.Sleep(100 * time.Millisecond)
		}
		restoreOnce()
		outage = time.Since(start)
		t.Logf("%v: key store unreadable for %v, %d lookups failed (%d recipients delivered)",
			time.Since(begin).Round(time.Millisecond), outage.Round(time.Millisecond), lookupFailures()-before, len(seen))
	}
	faults := []struct {
		at   int
		what string
		do   func()
	}{
		{faultRcpts / 4, "crash 1", func() { crash("at 25%") }},
		{faultRcpts * 2 / 5, "store", storeDown},
		{faultRcpts * 3 / 5, "crash 2", func() { crash("at 60%") }},
	}

	// Run until every recipient has its copy and both streams ended.
	//
	// When the streams have ended and nothing arrives for a while, A's
	// queue is flushed: under load, A's queue manager sometimes finds a
	// message it just deferred still locked by the delivery agent ("skipped,
	// still being delivered"); it then puts the message back into the
	// incoming queue for 60 s, and with no new mail arriving only its
	// periodic wakeup (300 s in the harness's master.cf) looks there again.
	running := 2
	flushes := 0
	progress, progressAt := 0, time.Now()
	for {
		check()
		if len(seen) != progress {
			progress, progressAt = len(seen), time.Now()
		} else if running == 0 && time.Since(progressAt) > 3*time.Second {
			if err := a.flush(); err != nil {
				t.Fatal(err)
			}
			flushes++
			progressAt = time.Now()
		}
		if len(faults) > 0 && len(seen) >= faults[0].at {
			faults[0].do()
			faults = faults[1:]
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
		if running == 0 && len(seen) >= faultRcpts && len(faults) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %d of %d recipients have their copy, %d smtp-source stream(s) running, faults left %d; A's queue %d, B's queue %d; problems:\n%s",
				time.Since(begin).Round(time.Second), len(seen), faultRcpts, running, len(faults), len(a.queue(t)), len(b.queue(t)), strings.Join(problems, "\n"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	loadDone := time.Since(begin)
	// Nothing more may come: both queues empty, then a last look.
	for _, p := range []*postfixInstance{a, b} {
		p.waitQueue(t, time.Until(deadline), "empty", func(q []queueEntry) bool { return len(q) == 0 })
	}
	check()

	// Every expected recipient exactly once, nothing else.
	missing := 0
	for _, local := range []struct {
		name string
		n    int
	}{{"rcpt", faultSingles}, {"pair", 2 * faultPairs}} {
		for i := 1; i <= local.n; i++ {
			if seen[strconv.Itoa(i)+local.name] == 0 {
				if missing < 10 {
					problem("%d%s has no copy", i, local.name)
				}
				missing++
			}
		}
	}
	if len(seen) != faultRcpts {
		// Recipients outside 1rcpt…4000rcpt, 1pair…2000pair.
		var extra []string
		for k := range seen {
			n, _ := strconv.Atoi(strings.TrimRight(k, "acdiprt"))
			if (strings.HasSuffix(k, "rcpt") && n <= faultSingles) || (strings.HasSuffix(k, "pair") && n <= 2*faultPairs) {
				continue
			}
			extra = append(extra, k)
		}
		sort.Strings(extra)
		problem("%d distinct recipients, want %d (unexpected: %v)", len(seen), faultRcpts, extra)
	}

	// What the faults did, from the logs.
	alog := a.log()
	deferred := map[string]int{}
	for _, l := range strings.Split(alog, "\n") {
		if !strings.Contains(l, "status=deferred") {
			continue
		}
		switch {
		case strings.Contains(l, "451 4.7.1"): // milter_default_action = tempfail
			deferred["milter unavailable (451 4.7.1)"]++
		case strings.Contains(l, "451 4.3.0 Encryption key lookup failed"):
			deferred["key lookup failed (451 4.3.0)"]++
		case strings.Contains(l, "452 4.5.3"):
			deferred["other class (452 4.5.3)"]++
		case strings.Contains(l, "421 4.7.0") && strings.Contains(l, "too many errors"):
			// B's smtpd counts milter refusals as errors
			// (smtpd_hard_error_limit) and ends the session.
			deferred["B's error limit (421 4.7.0)"]++
		default:
			deferred["other"]++
			if deferred["other"] <= 5 {
				t.Logf("A deferred: %s", l)
			}
		}
	}
	sent := strings.Count(alog, "status=sent")
	splits := strings.Count(alog, "452 4.5.3")
	storeErrors := strings.Count(m.out.String(), "file is not a database")
	t.Logf("messages sent by smtp-source: %d (%d with one recipient, %d with two); recipients: %d (keyed %d, unkeyed %d)",
		faultSingles+faultPairs, faultSingles, faultPairs, len(seen), keyedCopies, clearCopies)
	t.Logf("sink: %d deliveries (%d keyed copies shared by two recipients); Postfix A: %d recipient deliveries to B, deferrals %v, %d lines with 452 4.5.3, %d \"skipped, still being delivered\"",
		deliveries, sharedCopies, sent, deferred, splits, strings.Count(alog, "skipped, still being delivered"))
	t.Logf("faults: %d milter restarts after SIGKILL (Postfix B logged %d milter failures), key store down %v with %d failed lookups (%d \"file is not a database\")",
		restarts, milterFailures(), outage.Round(time.Millisecond), lookupFailures(), storeErrors)
	t.Logf("duration: %v until every copy arrived (A's queue flushed %d times when deliveries stalled), %v in all",
		loadDone.Round(time.Millisecond), flushes, time.Since(begin).Round(time.Millisecond))

	if len(problems) > 0 {
		t.Fatalf("%d problem(s):\n%s", len(problems), strings.Join(problems, "\n"))
	}
	if sent != faultRcpts {
		t.Errorf("Postfix A logged %d deliveries to B, want %d (one per recipient)", sent, faultRcpts)
	}
	if deferred["milter unavailable (451 4.7.1)"] == 0 {
		t.Errorf("Postfix A was never told the milter was unavailable: the crashes did not reach it")
	}
	if deferred["key lookup failed (451 4.3.0)"] == 0 {
		t.Errorf("Postfix A was never told a key lookup failed: the store outage did not reach it")
	}
	if splits == 0 {
		t.Errorf("no mixed transaction was split (452 4.5.3)")
	}
}
