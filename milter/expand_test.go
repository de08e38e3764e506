package milter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"lacre.io/milter/aliases"
	"lacre.io/milter/crypto"
	"lacre.io/milter/internal/pgptest"
)

// fakeExpander expands from a table: address → targets ("|cmd", "/file"
// and ":include:/f" are the other kinds, as aliases(5) writes them).
// Addresses in fail get an error, those in block wait for ctx (or
// forever, with ignoreCtx, as a table stuck on a lock would).
type fakeExpander struct {
	table     map[string][]string
	fail      map[string]bool
	block     map[string]bool
	ignoreCtx bool

	mu    sync.Mutex
	calls []string
}

func (x *fakeExpander) Expand(ctx context.Context, addr string) (aliases.Expansion, error) {
	x.mu.Lock()
	x.calls = append(x.calls, addr)
	x.mu.Unlock()
	if x.block[addr] {
		if x.ignoreCtx {
			select {}
		}
		<-ctx.Done()
		return aliases.Expansion{}, ctx.Err()
	}
	if x.fail[addr] {
		return aliases.Expansion{}, errors.New("open /etc/postfix/virtual.lmdb: permission denied")
	}
	ts, ok := x.table[addr]
	if !ok {
		return aliases.None{}.Expand(ctx, addr)
	}
	e := aliases.Expansion{Input: addr, Expanded: true}
	for _, t := range ts {
		k := aliases.Mailbox
		switch {
		case strings.HasPrefix(t, "|"):
			k = aliases.Command
		case strings.HasPrefix(t, ":include:"):
			k = aliases.Include
		case strings.HasPrefix(t, "/"):
			k = aliases.File
		}
		e.Targets = append(e.Targets, aliases.Target{Addr: t, Kind: k})
	}
	return e, nil
}

func (x *fakeExpander) called(addr string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, c := range x.calls {
		if c == addr {
			return true
		}
	}
	return false
}

// fakeReinjector records the clear copies handed back.
type fakeReinjector struct {
	mu    sync.Mutex
	fail  error
	sends []reinjected
}

type reinjected struct {
	from string
	to   []string
	msg  []byte
}

func (r *fakeReinjector) Reinject(_ context.Context, from string, to []string, msg []byte) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return "", r.fail
	}
	r.sends = append(r.sends, reinjected{from, append([]string(nil), to...), append([]byte(nil), msg...)})
	return "250 2.0.0 Ok: queued as R1", nil
}

// The keys of the fixture: alice@, bob@, carol@ (protect-headers) are
// keyed, old@ has only an expired key; dave@ and erin@ have none.
var aliasTable = map[string][]string{
	"keyed@example.org":    {"alice@example.org", "carol@example.org"},
	"clear@example.org":    {"dave@example.org", "erin@example.org"},
	"team@example.org":     {"alice@example.org", "dave@example.org"},
	"teamcmd@example.org":  {"alice@example.org", "dave@example.org", "|/usr/bin/archive"},
	"keyedcmd@example.org": {"alice@example.org", "/var/spool/archive"},
	"expired@example.org":  {"alice@example.org", "old@example.org"},
	"bob@example.org":      {"dave@example.org"}, // bob's own key wins
	"nobody@example.org":   {"alice@example.org"},
}

func aliasFixture(t *testing.T, tweak func(*Options)) (*fixture, *fakeExpander, *fakeReinjector) {
	t.Helper()
	x := &fakeExpander{table: aliasTable, fail: map[string]bool{"broken@example.org": true},
		block: map[string]bool{"slow@example.org": true}}
	ri := &fakeReinjector{}
	f := newFixture(t, func(o *Options) {
		o.Expander, o.Reinject = x, ri
		if tweak != nil {
			tweak(o)
		}
	})
	return f, x, ri
}

// rcptMods returns the envelope changes of a result, e.g. "-<a> +<b>".
func rcptMods(r *result) string {
	var out []string
	for _, m := range r.mods {
		if m.Code == actAddRcpt || m.Code == actDelRcpt {
			out = append(out, string(rune(m.Code))+m.Rcpt)
		}
	}
	return strings.Join(out, " ")
}

func checkEncryptedFor(t *testing.T, f *fixture, r *result, who ...string) {
	t.Helper()
	if r.endedAt != "eom" || r.final.Code != actAccept {
		t.Fatalf("ended at %s with %+v", r.endedAt, r.final)
	}
	_, origBody := crypto.Split([]byte(plainMsg))
	for _, w := range who {
		_, inner := pgptest.OpenAndDecrypt(t, r.delivered, f.secrets[w])
		if !bytes.Equal(innerBody(t, inner), origBody) {
			t.Fatalf("%s: inner body %q, want %q", w, innerBody(t, inner), origBody)
		}
	}
	if bytes.Contains(r.delivered, []byte("Grüße")) {
		t.Fatal("cleartext in the delivered message")
	}
}

// TestExpandAllKeyed: an alias of keyed mailboxes is encrypted to all
// their keys, in one ciphertext, and the envelope is left to the MTA.
func TestExpandAllKeyed(t *testing.T) {
	f, _, ri := aliasFixture(t, nil)
	r := f.connect(t, false).send("QK", []string{"<keyed@example.org>"}, []byte(plainMsg))
	checkEncryptedFor(t, f, r, "alice@example.org", "carol@example.org")
	if got := rcptMods(r); got != "" {
		t.Errorf("envelope changed: %s", got)
	}
	if len(ri.sends) != 0 {
		t.Errorf("a clear copy was handed back: %+v", ri.sends)
	}
	// carol wants header protection: the alias's mail gets it.
	if !bytes.Contains(r.delivered, []byte("Subject: [...]")) {
		t.Error("header protection of a keyed mailbox not applied")
	}
	if !strings.Contains(f.logs.String(), "queue_id=QK action=encrypted rcpts=1 classes=pgp-mime+hp:1") ||
		!strings.Contains(f.logs.String(), "expanded=1") {
		t.Errorf("log line without the expansion:\n%s", f.logs)
	}
}

// TestExpandAllClear: an alias of unkeyed mailboxes passes unchanged,
// accepted at DATA like any clear mail.
func TestExpandAllClear(t *testing.T) {
	f, _, _ := aliasFixture(t, nil)
	r := f.connect(t, false).send("QC", []string{"<clear@example.org>"}, []byte(plainMsg))
	if r.endedAt != "data" || r.final.Code != actAccept {
		t.Fatalf("ended at %s with %+v, want accept at data", r.endedAt, r.final)
	}
	if !strings.Contains(f.logs.String(), "queue_id=QC action=clear rcpts=1 classes=clear:1") {
		t.Errorf("log:\n%s", f.logs)
	}
}

// TestAddressBindingWinsOverExpansion: bob@ has a key of his own; the
// table that sends bob@ to unkeyed dave@ is not even asked. nobody@ has
// none, so its expansion (to alice) decides.
func TestAddressBindingWinsOverExpansion(t *testing.T) {
	f, x, _ := aliasFixture(t, nil)
	r := f.connect(t, false).send("QB", []string{"<bob@example.org>"}, []byte(plainMsg))
	checkEncryptedFor(t, f, r, "bob@example.org")
	if x.called("bob@example.org") {
		t.Error("bob@, bound to a key as written, was expanded")
	}
	r = f.connect(t, false).send("QN", []string{"<nobody@example.org>"}, []byte(plainMsg))
	checkEncryptedFor(t, f, r, "alice@example.org")
}

// TestExpandMixedReinject: alice gets the ciphertext in this transaction
// (team@ replaced by alice@ in the envelope), dave one clear copy handed
// back to the MTA before the message is accepted.
func TestExpandMixedReinject(t *testing.T) {
	f, _, ri := aliasFixture(t, nil)
	r := f.connect(t, false).send("QM", []string{"<team@example.org>"}, []byte(plainMsg))
	checkEncryptedFor(t, f, r, "alice@example.org")
	if got, want := rcptMods(r), "-<team@example.org> +<alice@example.org>"; got != want {
		t.Errorf("envelope changes %q, want %q", got, want)
	}
	if len(ri.sends) != 1 {
		t.Fatalf("%d clear copies handed back, want 1", len(ri.sends))
	}
	s := ri.sends[0]
	if s.from != "sender@example.net" || fmt.Sprint(s.to) != "[dave@example.org]" {
		t.Errorf("clear copy from %q to %v", s.from, s.to)
	}
	if !bytes.Equal(s.msg, []byte(plainMsg)) {
		t.Errorf("clear copy differs from the message:\n%q\nwant\n%q", s.msg, plainMsg)
	}
	if l := f.logs.String(); !strings.Contains(l, "queue_id=QM action=encrypted") || !strings.Contains(l, "split=1") ||
		!strings.Contains(l, `reinjected="250 2.0.0 Ok: queued as R1"`) {
		t.Errorf("log:\n%s", l)
	}
}

// TestExpandMixedReinjectFails: the hand-back fails, so the whole message
// waits (451) and nothing of it is accepted or changed.
func TestExpandMixedReinjectFails(t *testing.T) {
	f, _, ri := aliasFixture(t, nil)
	ri.fail = errors.New("connection refused")
	r := f.connect(t, false).send("QF", []string{"<team@example.org>"}, []byte(plainMsg))
	if r.final.Code != actReplyCode || r.final.SMTPCode != 451 || !strings.HasPrefix(r.final.SMTPText, "4.3.0 ") {
		t.Fatalf("final reply %+v, want 451 4.3.0", r.final)
	}
	if len(r.mods) != 0 {
		t.Errorf("modifications with a temporary failure: %+v", r.mods)
	}
	if !strings.Contains(f.logs.String(), "connection refused") {
		t.Errorf("log without the cause:\n%s", f.logs)
	}
}

// TestExpandMixedDefer: [aliases] mixed = "defer", or targets that are no
// mailboxes: the recipient waits (451), others of the message go on.
// Without the split, alice would get cleartext or dave ciphertext.
func TestExpandMixedDefer(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tweak func(*Options)
		rcpt  string
		log   string
	}{
		{"mixed = defer", func(o *Options) { o.MixedAlias = MixedAliasDefer }, "<team@example.org>", `mixed = \"defer\"`},
		{"no reinjection service", func(o *Options) { o.Reinject = nil }, "<team@example.org>", `mixed = \"defer\"`},
		{"command target", nil, "<teamcmd@example.org>", "split the alias"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, _, ri := aliasFixture(t, tc.tweak)
			r := f.connect(t, false).send("QD", []string{tc.rcpt, "<alice@example.org>"}, []byte(plainMsg))
			if a := r.rcptReplies[tc.rcpt]; a == nil || a.SMTPCode != 451 || !strings.HasPrefix(a.SMTPText, "4.3.0 ") {
				t.Fatalf("RCPT %s: %+v, want 451 4.3.0", tc.rcpt, a)
			}
			checkEncryptedFor(t, f, r, "alice@example.org")
			if len(ri.sends) != 0 || rcptMods(r) != "" {
				t.Errorf("split anyway: %d copies, envelope %q", len(ri.sends), rcptMods(r))
			}
			if !strings.Contains(f.logs.String(), tc.log) {
				t.Errorf("log without %q:\n%s", tc.log, f.logs)
			}
		})
	}
}

// TestExpandKeyedWithCommand: the command and file targets of an alias
// whose mailboxes are all keyed get the ciphertext (they have no keys;
// the message is the one this transaction carries), and the log says so.
func TestExpandKeyedWithCommand(t *testing.T) {
	f, _, _ := aliasFixture(t, nil)
	r := f.connect(t, false).send("QX", []string{"<keyedcmd@example.org>"}, []byte(plainMsg))
	checkEncryptedFor(t, f, r, "alice@example.org")
	if rcptMods(r) != "" {
		t.Errorf("envelope changed: %s", rcptMods(r))
	}
	if !strings.Contains(f.logs.String(), "non_mailbox_targets=1") {
		t.Errorf("log:\n%s", f.logs)
	}
}

// TestExpandFailure: a table that cannot be read, or an expansion that
// does not answer within milter.lookup_timeout (also one that ignores its
// context), is a temporary failure for that recipient, never "no key".
func TestExpandFailure(t *testing.T) {
	for _, tc := range []struct {
		rcpt      string
		ignoreCtx bool
	}{{"<broken@example.org>", false}, {"<slow@example.org>", false}, {"<slow@example.org>", true}} {
		t.Run(fmt.Sprint(tc.rcpt, tc.ignoreCtx), func(t *testing.T) {
			f, x, _ := aliasFixture(t, func(o *Options) { o.LookupTimeout = 200 * time.Millisecond })
			x.ignoreCtx = tc.ignoreCtx
			start := time.Now()
			r := f.connect(t, false).send("QE", []string{tc.rcpt}, []byte(plainMsg))
			if a := r.rcptReplies[tc.rcpt]; a == nil || a.SMTPCode != 451 || !strings.HasPrefix(a.SMTPText, "4.3.0 ") {
				t.Fatalf("RCPT: %+v, want 451 4.3.0", a)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("took %v with a 200ms lookup timeout", d)
			}
			if !strings.Contains(f.logs.String(), "recipient expansion failed") {
				t.Errorf("log:\n%s", f.logs)
			}
		})
	}
}

// TestExpandFailureLocal: non-SMTP mail cannot have a recipient refused:
// a failed expansion holds the message.
func TestExpandFailureLocal(t *testing.T) {
	f, _, _ := aliasFixture(t, nil)
	r := f.connect(t, true).send("QL", []string{"<broken@example.org>", "<alice@example.org>"}, []byte(plainMsg))
	if r.quarantine == "" || !strings.Contains(r.quarantine, "expansion of broken@example.org failed") {
		t.Fatalf("not held: %+v, quarantine %q", r.final, r.quarantine)
	}
}

// TestExpandUnusableMailbox: a mailbox of the expansion whose every key
// is unusable gets the recipient the reply it would get itself.
func TestExpandUnusableMailbox(t *testing.T) {
	f, _, _ := aliasFixture(t, nil)
	r := f.connect(t, false).send("QU", []string{"<expired@example.org>"}, []byte(plainMsg))
	if a := r.rcptReplies["<expired@example.org>"]; a == nil || a.SMTPCode != 450 || !strings.HasPrefix(a.SMTPText, "4.7.1 ") {
		t.Fatalf("RCPT: %+v, want 450 4.7.1", a)
	}
}

// TestExpandMixedLocal: a mixed alias in non-SMTP mail is split too.
func TestExpandMixedLocal(t *testing.T) {
	f, _, ri := aliasFixture(t, nil)
	r := f.connect(t, true).send("QO", []string{"<team@example.org>"}, []byte(plainMsg))
	checkEncryptedFor(t, f, r, "alice@example.org")
	if got, want := rcptMods(r), "-<team@example.org> +<alice@example.org>"; got != want || len(ri.sends) != 1 {
		t.Errorf("envelope changes %q (want %q), %d copies", got, want, len(ri.sends))
	}
}

// TestExpandMixedAfterClear: the transaction's class is fixed by its
// first recipient; a mixed alias after a clear one waits for a
// transaction of its own, as any keyed recipient would.
func TestExpandMixedAfterClear(t *testing.T) {
	f, _, ri := aliasFixture(t, nil)
	r := f.connect(t, false).send("QA", []string{"<dave@example.org>", "<team@example.org>"}, []byte(plainMsg))
	if a := r.rcptReplies["<team@example.org>"]; a == nil || a.SMTPCode != 452 {
		t.Fatalf("RCPT team@: %+v, want 452", a)
	}
	if len(ri.sends) != 0 {
		t.Error("a clear copy was handed back")
	}
}

// TestNegotiateRecipientChanges: the recipient changes of a split are
// asked for, not required: an MTA that does not offer them still gets a
// milter (mixed expansions are then deferred).
func TestNegotiateRecipientChanges(t *testing.T) {
	for _, offered := range []gomilter.OptAction{actions, actions | rcptActions, actions | rcptActions | gomilter.OptChangeFrom} {
		_, got, _, _, err := negotiate(6, 0, offered, 0, 0x1fffff, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if want := actions | offered&rcptActions; got != want {
			t.Errorf("offered %v: negotiated %v, want %v", offered, got, want)
		}
	}
	if _, _, _, _, err := negotiate(6, 0, actions&^gomilter.OptChangeBody|rcptActions, 0, 0x1fffff, 0, 0); err == nil {
		t.Error("an MTA that does not allow body changes was accepted")
	}
}
