package milter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
	gomilter "github.com/d--j/go-milter"

	"lacre.io/milter/crypto"
	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// fixture is a milter server on loopback over a MemoryStore with keys for
// alice@ and bob@ (Curve25519) and carol@ (protect-headers on).
type fixture struct {
	srv     *Server
	addr    string
	store   *keystest.Store
	opts    Options              // as cmd/lacre-milter builds them from the default configuration
	keyOpts keys.ResolverOptions // likewise
	secrets map[string]*openpgp.Entity
	logs    *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newFixture(t testing.TB, tweak func(*Options)) *fixture {
	t.Helper()
	f := &fixture{store: keystest.NewStore(), secrets: map[string]*openpgp.Entity{}, logs: &syncBuffer{},
		// The defaults of lacre.toml.example (cmd/lacre-milter's
		// TestMilterOptions checks that the zero Options mean the same).
		opts: Options{TraceHeader: "X-Lacre"},
		keyOpts: keys.ResolverOptions{
			Policy:   keys.Policy{MinRSABits: 2048, Normalizer: keys.Normalizer{FoldLocalPartCase: true, SubaddressSeparator: "+"}},
			CacheTTL: 30 * time.Second,
		},
	}
	ctx := context.Background()
	for _, a := range []string{"alice@example.org", "bob@example.org", "carol@example.org"} {
		e := testkeys.Generate(t, testkeys.Curve25519, a)
		ks, err := keys.Parse(testkeys.Public(t, e))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.store.Add(ctx, a, ks, false); err != nil {
			t.Fatal(err)
		}
		f.secrets[a] = e
	}
	on := true
	f.store.SetPrefs(ctx, "carol@example.org", keys.Prefs{ProtectHeaders: &on})
	exp, _ := keys.Parse(testkeys.Public(t, testkeys.Generate(t, testkeys.ExpiredSubkey, "old@example.org")))
	f.store.Add(ctx, "old@example.org", exp, false)
	if tweak != nil {
		tweak(&f.opts)
	}
	f.start(t)
	return f
}

func (f *fixture) start(t testing.TB) {
	t.Helper()
	res, err := keys.NewResolver(f.store, f.keyOpts)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts := f.opts
	opts.Keys = res
	f.srv = New(opts, log)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	go f.srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		f.srv.Shutdown(ctx)
		if t.Failed() {
			t.Logf("milter log:\n%s", f.logs.String())
		}
	})
}

// mta is one MTA-side milter connection (go-milter's client, mta_test.go),
// speaking milter protocol 6 as Postfix does, or 2.
type mta struct {
	t *testing.T
	s *mtaClient
	// noRcptAddr: send no {rcpt_addr} before RCPT (an MTA configured not to).
	noRcptAddr bool
}

func (f *fixture) connect(t *testing.T, nonSMTP bool) *mta {
	t.Helper()
	return f.connectVersion(t, nonSMTP, 6)
}

// connectVersion connects as an MTA speaking milter protocol version; one
// speaking 2 (Postfix with milter_protocol = 2) sends no DATA event.
func (f *fixture) connectVersion(t *testing.T, nonSMTP bool, version uint32) *mta {
	t.Helper()
	s, err := dialMTA("tcp", f.addr, version)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	port := uint16(41234)
	host := "client.example"
	if nonSMTP {
		port, host = 0, "localhost"
	}
	act, err := s.Conn(host, gomilter.FamilyInet, port, "127.0.0.1")
	if err != nil || act.Code != actContinue {
		t.Fatalf("connect: %v %v", act, err)
	}
	return &mta{t: t, s: s}
}

// result is what the MTA did with one message.
type result struct {
	rcptReplies map[string]*action // non-continue replies to RCPT
	final       *action            // the reply that ended the message
	endedAt     string             // "data", "header", "eoh", "body", "eom"
	mods        []modAction
	delivered   []byte // the message after the modifications
	quarantine  string
}

// send runs one message through the milter like Postfix does: MAIL, the
// RCPTs, DATA, the header fields, end of header, the body in 64 KiB chunks,
// end of message; stopping where the milter ends the message.
func (m *mta) send(queueID string, rcpts []string, msg []byte) *result {
	t := m.t
	t.Helper()
	r := &result{rcptReplies: map[string]*action{}}
	s := m.s
	must := func(a *action, err error) *action {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	must(s.Mail("sender@example.net", nil))
	accepted := 0
	for _, rc := range rcpts {
		if m.noRcptAddr {
			s.Macros(codeRcpt, "i", queueID)
		} else {
			s.Macros(codeRcpt, "i", queueID, "{rcpt_addr}", strings.Trim(rc, "<>"))
		}
		a := must(s.Rcpt(rc, nil))
		if a.Code != actContinue {
			r.rcptReplies[rc] = a
			continue
		}
		accepted++
	}
	if accepted == 0 {
		s.Abort()
		return r
	}
	s.Macros(codeData, "i", queueID)
	if a := must(s.Data()); a.Code != actContinue { // sends nothing with protocol 2
		r.final, r.endedAt = a, "data"
		r.delivered = msg
		s.Abort() // as Postfix does before the next message
		return r
	}
	fields, body := crypto.Split(msg)
	for _, fl := range fields {
		a := must(s.HeaderField(fl.Name, fl.Value))
		if a.Code != actContinue {
			r.final, r.endedAt = a, "header"
			r.delivered = msg
			s.Abort()
			return r
		}
	}
	if a := must(s.HeaderEnd()); a.Code != actContinue {
		r.final, r.endedAt = a, "eoh"
		r.delivered = msg
		s.Abort()
		return r
	}
	for b := body; len(b) > 0; {
		n := min(len(b), maxBodyChunk)
		a := must(s.BodyChunk(b[:n]))
		if a.Code != actContinue {
			r.final, r.endedAt = a, "body"
			s.Abort()
			return r
		}
		b = b[n:]
	}
	s.Macros(codeEOB, "i", queueID)
	mods, a, err := s.End()
	if err != nil {
		t.Fatal(err)
	}
	r.final, r.endedAt, r.mods = a, "eom", mods
	r.delivered = applyMods(t, fields, body, mods, &r.quarantine)
	return r
}

// applyMods does what the MTA does with the modification actions.
func applyMods(t *testing.T, fields []crypto.Field, body []byte, mods []modAction, quarantine *string) []byte {
	var changes []crypto.Change
	var newBody []byte
	replaced := false
	for _, m := range mods {
		switch m.Code {
		case actChangeHeader:
			op := crypto.Set
			if m.HeaderValue == "" {
				op = crypto.Delete
			}
			changes = append(changes, crypto.Change{Op: op, Name: m.HeaderName, Index: int(m.HeaderIndex), Value: m.HeaderValue})
		case actAddHeader:
			changes = append(changes, crypto.Change{Op: crypto.Add, Name: m.HeaderName, Value: m.HeaderValue})
		case actReplBody:
			if len(m.Body) > 65535 {
				t.Errorf("body replacement packet of %d bytes", len(m.Body))
			}
			replaced = true
			newBody = append(newBody, m.Body...)
		case actQuarantine:
			*quarantine = m.Reason
		case actAddRcpt, actDelRcpt: // the envelope: see result.mods
		default:
			t.Errorf("unexpected modification %c", m.Code)
		}
	}
	if replaced {
		body = newBody
	}
	var b bytes.Buffer
	crypto.WriteMessage(&b, crypto.Apply(fields, changes), body)
	return b.Bytes()
}

const plainMsg = "From: Sender <sender@example.net>\r\nTo: alice@example.org\r\nSubject: hello\r\n" +
	"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m1@example.net>\r\nMIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße,\r\nthe body.\r\n"

// innerBody returns the body of the decrypted entity.
func innerBody(t *testing.T, inner []byte) []byte {
	t.Helper()
	_, b := crypto.Split(inner)
	return b
}

func TestKeyedRecipientIsEncrypted(t *testing.T) {
	f := newFixture(t, nil)
	m := f.connect(t, false)
	r := m.send("Q1", []string{"<alice@example.org>"}, []byte(plainMsg))
	if r.endedAt != "eom" || r.final.Code != actAccept {
		t.Fatalf("ended at %s with %+v", r.endedAt, r.final)
	}
	_, inner := pgptest.OpenAndDecrypt(t, r.delivered, f.secrets["alice@example.org"])
	_, origBody := crypto.Split([]byte(plainMsg))
	if !bytes.Equal(innerBody(t, inner), origBody) {
		t.Fatalf("inner body %q, want %q", innerBody(t, inner), origBody)
	}
	if !bytes.Contains(r.delivered, []byte("\r\nX-Lacre: encrypted\r\n")) {
		t.Errorf("no trace header:\n%s", r.delivered[:400])
	}
	if !strings.Contains(f.logs.String(), "queue_id=Q1 action=encrypted rcpts=1 classes=pgp-mime:1") {
		t.Errorf("log line missing:\n%s", f.logs.String())
	}
}

func TestClearMailIsAcceptedAtData(t *testing.T) {
	f := newFixture(t, nil)
	m := f.connect(t, false)
	if v := m.s.ProtocolOpts(); v != protocol|noReply|noReplyAfterData {
		t.Fatalf("negotiated protocol flags %v", v)
	}
	r := m.send("Q2", []string{"nobody@example.org", "other@example.net"}, []byte(plainMsg))
	if r.endedAt != "data" || r.final.Code != actAccept || len(r.mods) != 0 {
		t.Fatalf("ended at %s with %+v, %d modifications", r.endedAt, r.final, len(r.mods))
	}
	if !regexp.MustCompile(`queue_id=Q2 action=clear rcpts=2 classes=clear:2 .* at=data\n`).MatchString(f.logs.String()) {
		t.Errorf("log line missing:\n%s", f.logs.String())
	}
	// An MTA that sends no DATA (protocol 2) has it accepted at the first
	// header field; one with a keyed recipient goes on past DATA.
	m2 := f.connectVersion(t, false, 2)
	if v := m2.s.ProtocolOpts(); v&(noReply|noReplyAfterData) != 0 {
		t.Fatalf("protocol 2: negotiated protocol flags %v", v)
	}
	r = m2.send("Q2b", []string{"nobody@example.org"}, []byte(plainMsg))
	if r.endedAt != "header" || r.final.Code != actAccept || len(r.mods) != 0 {
		t.Fatalf("without DATA: ended at %s with %+v, %d modifications", r.endedAt, r.final, len(r.mods))
	}
	if !regexp.MustCompile(`queue_id=Q2b action=clear .* at=header\n`).MatchString(f.logs.String()) {
		t.Errorf("log line missing:\n%s", f.logs.String())
	}
	r = m.send("Q2c", []string{"alice@example.org"}, []byte(plainMsg))
	if r.endedAt != "eom" || r.final.Code != actAccept || len(r.mods) == 0 {
		t.Fatalf("keyed: ended at %s with %+v, %d modifications", r.endedAt, r.final, len(r.mods))
	}
}

func TestMixedRecipientsSplit(t *testing.T) {
	f := newFixture(t, nil)
	m := f.connect(t, false)
	// Keyed first: the unkeyed recipient is deferred, the message encrypted.
	r := m.send("Q3", []string{"alice@example.org", "nobody@example.org", "bob@example.org", "carol@example.org"}, []byte(plainMsg))
	for rc, want := range map[string]int{"nobody@example.org": 452, "carol@example.org": 452} {
		a := r.rcptReplies[rc]
		if a == nil || a.Code != actReplyCode || a.SMTPCode != want || !strings.HasPrefix(a.SMTPText, "4.5.3 ") {
			t.Errorf("%s: reply %+v, want %d 4.5.3", rc, a, want)
		}
	}
	if len(r.rcptReplies) != 2 {
		t.Errorf("replies %v", r.rcptReplies)
	}
	// One ciphertext both keyed recipients can read.
	for _, who := range []string{"alice@example.org", "bob@example.org"} {
		_, inner := pgptest.OpenAndDecrypt(t, r.delivered, f.secrets[who])
		_, origBody := crypto.Split([]byte(plainMsg))
		if !bytes.Equal(innerBody(t, inner), origBody) {
			t.Errorf("%s: inner body differs", who)
		}
	}
	// The deferred ones come back in a new transaction on the same
	// connection; the state of the first did not leak into it.
	r = m.send("Q4", []string{"nobody@example.org"}, []byte(plainMsg))
	if r.endedAt != "data" || r.final.Code != actAccept {
		t.Fatalf("second transaction ended at %s with %+v", r.endedAt, r.final)
	}
	r = m.send("Q5", []string{"carol@example.org"}, []byte(plainMsg))
	_, inner := pgptest.OpenAndDecrypt(t, r.delivered, f.secrets["carol@example.org"])
	if fields, _ := crypto.Split(inner); !strings.Contains(fmt.Sprint(fields), "hello") {
		t.Errorf("carol's protected headers missing: %v", fields)
	}
	if !bytes.Contains(r.delivered, []byte("Subject: [...]")) {
		t.Errorf("carol's outer subject not obscured")
	}
	// Unkeyed first: the keyed recipient is deferred, the message clear.
	r = m.send("Q6", []string{"nobody@example.org", "alice@example.org"}, []byte(plainMsg))
	if a := r.rcptReplies["alice@example.org"]; a == nil || a.SMTPCode != 452 {
		t.Errorf("keyed after unkeyed: %+v", a)
	}
	if r.endedAt != "data" {
		t.Errorf("clear transaction ended at %s", r.endedAt)
	}
}

func TestAlreadyEncryptedPassesUnchanged(t *testing.T) {
	f := newFixture(t, nil)
	m := f.connect(t, false)
	// Decided at end of message, from the body: the header alone never
	// lets a message through.
	pgpMIME := "From: a@example.net\r\nTo: alice@example.org\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b\r\n\r\n" + fuzzCanned['B'][4]
	r := m.send("Q7", []string{"alice@example.org"}, []byte(pgpMIME))
	if r.endedAt != "eom" || r.final.Code != actAccept || len(r.mods) != 0 {
		t.Fatalf("PGP/MIME: ended at %s with %+v, %d mods", r.endedAt, r.final, len(r.mods))
	}
	inline := "From: a@example.net\r\nTo: alice@example.org\r\n\r\n" + fuzzFakeArmour
	r = m.send("Q8", []string{"alice@example.org"}, []byte(inline))
	if r.endedAt != "eom" || r.final.Code != actAccept || len(r.mods) != 0 {
		t.Fatalf("inline: ended at %s with %+v, %d mods", r.endedAt, r.final, len(r.mods))
	}
}

// TestLookalikeIsEncrypted: mail whose header says "encrypted" over a
// readable body is encrypted like any other (issue 11).
func TestLookalikeIsEncrypted(t *testing.T) {
	f := newFixture(t, nil)
	m := f.connect(t, false)
	for i, msg := range []string{
		"From: a@example.net\r\nTo: alice@example.org\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=x\r\n\r\nThe launch code is 1234.\r\n",
		"From: a@example.net\r\nTo: alice@example.org\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: application/pkcs7-mime\r\n\r\nThe launch code is 1234.\r\n",
		"From: a@example.net\r\nTo: alice@example.org\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: application/octet-stream; name=\"letter.p7m\"\r\n\r\nThe launch code is 1234.\r\n",
		"From: a@example.net\r\nTo: alice@example.org\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b\r\nContent-Type: text/plain\r\n\r\n" + fuzzCanned['B'][4],
	} {
		r := m.send(fmt.Sprintf("L%d", i), []string{"alice@example.org"}, []byte(msg))
		if r.endedAt != "eom" || r.final.Code != actAccept {
			t.Fatalf("look-alike %d: ended at %s with %+v", i, r.endedAt, r.final)
		}
		_, inner := pgptest.OpenAndDecrypt(t, r.delivered, f.secrets["alice@example.org"])
		if _, body := crypto.Split([]byte(msg)); !bytes.HasSuffix(inner, body) {
			t.Errorf("look-alike %d: decrypted %q, want the body %q", i, inner, body)
		}
	}
}

func TestStoreDownFailsClosed(t *testing.T) {
	f := newFixture(t, nil)
	m := f.connect(t, false)
	f.store.SetFail(errors.New("disk on fire"))
	r := m.send("Q9", []string{"alice@example.org", "nobody@example.org"}, []byte(plainMsg))
	for _, rc := range []string{"alice@example.org", "nobody@example.org"} {
		if a := r.rcptReplies[rc]; a == nil || a.SMTPCode != 451 || !strings.HasPrefix(a.SMTPText, "4.3.0 ") {
			t.Errorf("%s: %+v, want 451 4.3.0", rc, a)
		}
	}
	if strings.Contains(fmt.Sprint(r.rcptReplies), "disk on fire") {
		t.Error("an internal error reached the SMTP reply")
	}
	f.store.SetFail(nil)
	r = m.send("Q10", []string{"alice@example.org"}, []byte(plainMsg))
	pgptest.OpenAndDecrypt(t, r.delivered, f.secrets["alice@example.org"])
}

func TestUnusableKeyPolicy(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy UnusableKeyPolicy
		code   int
		clear  bool
	}{{"tempfail", UnusableKeyTempfail, 450, false}, {"reject", UnusableKeyReject, 550, false}, {"clear", UnusableKeyClear, 0, true}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(o *Options) { o.UnusableKey = tc.policy })
			r := f.connect(t, false).send("Q11", []string{"old@example.org"}, []byte(plainMsg))
			if tc.clear {
				if r.endedAt != "data" || r.final.Code != actAccept {
					t.Fatalf("clear policy: ended at %s %+v", r.endedAt, r.final)
				}
				return
			}
			if a := r.rcptReplies["old@example.org"]; a == nil || a.SMTPCode != tc.code {
				t.Fatalf("reply %+v, want %d", a, tc.code)
			}
		})
	}
}

func TestTooBigWithKeyedRecipient(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.MaxMessageSize = 1 << 20 })
	m := f.connect(t, false)
	big := []byte(plainMsg + strings.Repeat("x", 2<<20))
	// Refused at end of message: body chunks get no reply (SMFIP_NR_BODY);
	// the SMTP client gets the same 552 at the end of DATA.
	r := m.send("Q12", []string{"alice@example.org"}, big)
	if r.endedAt != "eom" || r.final.SMTPCode != 552 || !strings.HasPrefix(r.final.SMTPText, "5.3.4 ") {
		t.Fatalf("ended at %s with %+v", r.endedAt, r.final)
	}
	// The same size to an unkeyed recipient passes: it is never buffered.
	r = m.send("Q13", []string{"nobody@example.org"}, big)
	if r.final.Code != actAccept {
		t.Fatalf("clear big message: %+v", r.final)
	}
}

func TestNonSMTPMixedIsHeld(t *testing.T) {
	f := newFixture(t, nil)
	m := f.connect(t, true)
	r := m.send("Q14", []string{"alice@example.org", "nobody@example.org"}, []byte(plainMsg))
	if len(r.rcptReplies) != 0 {
		t.Fatalf("non-SMTP mail got recipient replies: %v", r.rcptReplies)
	}
	if r.final.Code != actAccept || !strings.Contains(r.quarantine, "nobody@example.org is clear") {
		t.Fatalf("final %+v, quarantine %q", r.final, r.quarantine)
	}
	if !bytes.Equal(r.delivered, []byte(plainMsg)) {
		t.Fatal("held message was changed")
	}
	// A second message on the same connection is still non-SMTP, although
	// go-milter replaced the backend after the accept.
	r = m.send("Q15", []string{"nobody@example.org", "alice@example.org"}, []byte(plainMsg))
	if len(r.rcptReplies) != 0 || r.quarantine == "" {
		t.Fatalf("second message: replies %v, quarantine %q", r.rcptReplies, r.quarantine)
	}
}

func TestNonSMTPMixedEncryptPolicy(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.MixedLocal = MixedLocalEncrypt })
	r := f.connect(t, true).send("Q16", []string{"nobody@example.org", "alice@example.org"}, []byte(plainMsg))
	if r.quarantine != "" || len(r.rcptReplies) != 0 {
		t.Fatalf("quarantine %q replies %v", r.quarantine, r.rcptReplies)
	}
	pgptest.OpenAndDecrypt(t, r.delivered, f.secrets["alice@example.org"])
}

func TestAbortResetsState(t *testing.T) {
	f := newFixture(t, nil)
	m := f.connect(t, false)
	must := func(a *action, err error) {
		if err != nil || a.Code != actContinue {
			t.Fatalf("%+v %v", a, err)
		}
	}
	must(m.s.Mail("a@example.net", nil))
	m.s.Macros(codeRcpt, "{rcpt_addr}", "alice@example.org")
	must(m.s.Rcpt("alice@example.org", nil))
	if err := m.s.Abort(); err != nil {
		t.Fatal(err)
	}
	// After RSET, an unkeyed recipient starts a clear transaction.
	r := m.send("Q17", []string{"nobody@example.org"}, []byte(plainMsg))
	if r.endedAt != "data" {
		t.Fatalf("ended at %s", r.endedAt)
	}
}

// panicResolver stands in for a bug anywhere below the session.
type panicResolver struct{}

func (panicResolver) Resolve(context.Context, string) (*keys.Recipient, error) { panic("boom") }

func TestPanicBecomesTempfail(t *testing.T) {
	f := newFixture(t, nil)
	f.srv.Reload(Options{Keys: panicResolver{}, LookupTimeout: time.Second, MaxMessageSize: 1 << 20})
	m := f.connect(t, false)
	r := m.send("Q18", []string{"alice@example.org"}, []byte(plainMsg))
	if a := r.rcptReplies["alice@example.org"]; a == nil || a.SMTPCode != 451 {
		t.Fatalf("reply %+v", a)
	}
	if !strings.Contains(f.logs.String(), "panic in milter session") {
		t.Error("panic not logged")
	}
}

func TestShutdownDrainsMessagesInFlight(t *testing.T) {
	f := newFixture(t, nil)
	busy := f.connect(t, false)
	f.connect(t, false) // an idle connection: closed at once
	if a, err := busy.s.Mail("a@example.net", nil); err != nil || a.Code != actContinue {
		t.Fatal(err)
	}
	busy.s.Macros(codeRcpt, "{rcpt_addr}", "alice@example.org")
	busy.s.Rcpt("alice@example.org", nil)
	busy.s.Data()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- f.srv.Shutdown(ctx)
	}()
	time.Sleep(200 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("shutdown returned with a message in flight: %v", err)
	default:
	}
	if _, err := net.DialTimeout("tcp", f.addr, time.Second); err == nil {
		t.Error("still accepting connections while draining")
	}
	// The message in flight completes and is encrypted.
	fields, body := crypto.Split([]byte(plainMsg))
	for _, fl := range fields {
		busy.s.HeaderField(fl.Name, fl.Value)
	}
	busy.s.HeaderEnd()
	busy.s.BodyChunk(body)
	mods, a, err := busy.s.End()
	if err != nil || a.Code != actAccept || len(mods) == 0 {
		t.Fatalf("end: %+v %d mods %v", a, len(mods), err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not return after the message completed")
	}
}

func TestReplies(t *testing.T) {
	for _, r := range []Reply{ReplyMixedClass, ReplyLookupFailed, ReplyAddressUnknown, ReplyKeyUnusableTemp, ReplyKeyUnusableReject,
		ReplyEncryptFailed, ReplyTooBig, ReplyInternal, ReplyExpandFailed, ReplyMixedAlias, ReplyReinjectFailed} {
		class := fmt.Sprint(r.Code / 100)
		if !strings.HasPrefix(r.Enhanced, class+".") || (class != "4" && class != "5") {
			t.Errorf("%v: enhanced code does not match the reply code", r)
		}
		if strings.ContainsAny(r.Text, "%\r\n") {
			t.Errorf("%v: text must not contain %% or line breaks", r)
		}
	}
	wrapped := fmt.Errorf("context: %w", withReply(ReplyTooBig, errors.New("x")))
	if ReplyFor(wrapped) != ReplyTooBig || ReplyFor(errors.New("other")) != ReplyInternal {
		t.Error("ReplyFor does not unwrap")
	}
	if got := ReplyMixedClass.line("4ABC"); got != "452 4.5.3 Please send to this recipient in a separate transaction (queue id 4ABC)" {
		t.Errorf("line = %q", got)
	}
}

// fixedResolver answers every lookup with the same keys.
type fixedResolver struct{ keys []*keys.Key }

func (r fixedResolver) Resolve(_ context.Context, a string) (*keys.Recipient, error) {
	return &keys.Recipient{Address: a, Source: keys.SourceStore, Keys: r.keys}, nil
}

// TestEncryptionFailureIsTempfail: if encryption fails at end of message
// (here: a key below the strength floor slipped past the lookup), the
// reply is 451 4.3.0 and the body is not handed back in any form.
func TestEncryptionFailureIsTempfail(t *testing.T) {
	f := newFixture(t, nil)
	weak, err := keys.Parse(testkeys.Public(t, testkeys.Generate(t, testkeys.RSA1024, "weak@example.org")))
	if err != nil {
		t.Fatal(err)
	}
	f.srv.Reload(Options{Keys: fixedResolver{weak}, MinRSABits: 2048, LookupTimeout: time.Second, MaxMessageSize: 1 << 20})
	r := f.connect(t, false).send("Q19", []string{"weak@example.org"}, []byte(plainMsg))
	if r.endedAt != "eom" || r.final.Code != actReplyCode || r.final.SMTPCode != 451 || !strings.HasPrefix(r.final.SMTPText, "4.3.0 ") {
		t.Fatalf("ended at %s with %+v, want 451 4.3.0 at end of message", r.endedAt, r.final)
	}
	if len(r.mods) != 0 {
		t.Fatalf("%d modifications sent with a failed encryption", len(r.mods))
	}
	if !strings.Contains(f.logs.String(), "queue_id=Q19 action=tempfail") {
		t.Errorf("no log line for the failure:\n%s", f.logs.String())
	}
}

// TestUnixSocket: the "unix:PATH" listen form, including a stale socket
// file left by a killed process.
func TestUnixSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "lm") // short: unix socket paths are limited to ~107 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "milter.sock")
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close() // the file stays, nobody listens: as after SIGKILL
	ln, err := Listen("unix", path)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	f := newFixture(t, nil)
	go f.srv.Serve(ln)
	if _, err := Listen("unix", path); err == nil {
		t.Fatal("a second instance took over a live socket")
	}
	s, err := dialMTA("unix", path, 6)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Conn("client.example", gomilter.FamilyUnix, 0, path); err != nil {
		t.Fatal(err)
	}
	m := &mta{t: t, s: s}
	r := m.send("Q20", []string{"alice@example.org"}, []byte(plainMsg))
	pgptest.OpenAndDecrypt(t, r.delivered, f.secrets["alice@example.org"])
}

// TestNonSMTPEncryptPolicyNeedsUsableKeys: mixed_local = "encrypt" covers
// recipients of different classes, not a recipient whose keys cannot be
// used: that message is held, never encrypted without that key.
func TestNonSMTPEncryptPolicyNeedsUsableKeys(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.MixedLocal = MixedLocalEncrypt })
	r := f.connect(t, true).send("Q21", []string{"alice@example.org", "old@example.org"}, []byte(plainMsg))
	if r.quarantine == "" || !strings.Contains(r.quarantine, "every key of old@example.org is unusable") {
		t.Fatalf("quarantine %q, want held for the unusable key", r.quarantine)
	}
	if len(r.mods) != 1 {
		t.Fatalf("%d modifications, want only the quarantine", len(r.mods))
	}
}
