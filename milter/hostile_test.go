package milter

// The hostile MIME corpus (testdata/hostile/mime, see its README.md)
// through real milter sessions: go-milter's client plays the MTA against
// a live server, as in session_test.go. For a recipient with a key every
// file must end in an encrypted message that decrypts to the Content-*
// fields and the body as the MTA passed them, or in a 4xx reply; never
// in an accept that leaves clear text, never in a crash. For a recipient
// without a key it must pass unchanged (or be temp-failed). Each session
// is bounded in CPU time, wall time and bytes allocated.
//
// Also here: a key that expires while the milter runs
// (TestHostileKeyExpiresDuringRun).

import (
	"bytes"
	"context"
	"fmt"
	"mime"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
	gomilter "github.com/d--j/go-milter"

	"lacre.io/milter/crypto"
	"lacre.io/milter/internal/hostiletest"
	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/keys"
)

const hostileMIMEDir = "../testdata/hostile/mime"

// Bounds of one message through one milter session (client and server in
// this process, over loopback):
//
//   - CPU time (user+system of the process, getrusage) at most
//     hostileCPU. The slowest file, 10,000 header fields (one round trip
//     each), takes about 0.5 s; a quadratic blow-up breaks 2 s by far.
//     CPU time does not grow when other processes load the machine.
//   - wall time at most hostileWall (catches waiting and sleeping).
//   - bytes allocated (runtime.MemStats.TotalAlloc, whole process, so
//     the MTA side is counted too) at most hostileAllocPerByte times the
//     message, plus hostileAllocPerField per header field, plus
//     hostileAllocConst. Each byte is copied by the client into a packet,
//     by go-milter into a string and a MIMEHeader, by the session, by
//     Encrypt (about 1.4 times, more with header protection, which copies
//     the protected fields twice), by go-milter again when it turns CRLF
//     into LF in the body-replacement packets, and once more on the MTA
//     side. go-milter also allocates a 4 KiB bufio.Writer for every packet
//     it writes, on both sides: about 8 KiB per header field (one packet
//     and its reply), 80 MB for the 10,000 fields of one corpus file.
//
// Under the race detector the time bounds are not asserted.
const (
	hostileCPU           = 2 * time.Second
	hostileWall          = 15 * time.Second
	hostileAllocPerByte  = 24
	hostileAllocPerField = 12 << 10
	hostileAllocConst    = 8 << 20
	hostileHang          = 60 * time.Second
)

// goMilterMaxPacket is go-milter's limit on one command packet (its
// maxPacketSize): a header field longer than that cannot be passed on.
const goMilterMaxPacket = 1 << 20

// hostileOutcome is what happened to one message.
type hostileOutcome struct {
	// stage is where the message ended: "rcpt", "header", "eoh", "body",
	// "eom", or "dropped" when the milter connection failed, after which
	// the MTA applies milter_default_action (tempfail, as the docs require).
	stage  string
	action *action
	mods   []modAction
	err    error
	raw    []crypto.Field // the header fields as the MTA holds them
	fields []crypto.Field // ... and as it passes them to the milter
	body   []byte
}

// hostileCString is what an MTA passes of a header name or value: the
// milter protocol sends C strings, so Postfix (milter8) and Sendmail stop
// at the first NUL.
func hostileCString(s string) string {
	if i := strings.IndexByte(s, 0); i >= 0 {
		return s[:i]
	}
	return s
}

// hostileSend runs one message through a new milter connection as
// Postfix does (MAIL, RCPT, the header fields, end of header, the body in
// 64 KiB chunks, end of message), stopping where the milter ends it. It
// never calls t: it runs on hostileRun's goroutine.
func hostileSend(addr, queueID, rcpt string, msg []byte) (out hostileOutcome) {
	drop := func(err error) hostileOutcome {
		out.stage, out.err = "dropped", err
		return out
	}
	s, err := dialMTA("tcp", addr, 6)
	if err != nil {
		return drop(err)
	}
	defer s.Close()
	if _, err := s.Conn("client.example", gomilter.FamilyInet, 41234, "127.0.0.1"); err != nil {
		return drop(err)
	}
	if _, err := s.Mail("sender@example.net", nil); err != nil {
		return drop(err)
	}
	if err := s.Macros(codeRcpt, "i", queueID, "{rcpt_addr}", strings.Trim(rcpt, "<>")); err != nil {
		return drop(err)
	}
	a, err := s.Rcpt(rcpt, nil)
	if err != nil {
		return drop(err)
	}
	if a.Code != actContinue {
		out.stage, out.action = "rcpt", a
		return out
	}
	if a, err = s.Data(); err != nil {
		return drop(err)
	}
	if a.Code != actContinue {
		out.stage, out.action = "data", a
		return out
	}
	out.raw, out.body = crypto.Split(msg)
	for _, f := range out.raw {
		out.fields = append(out.fields, crypto.Field{Name: hostileCString(f.Name), Value: hostileCString(f.Value)})
	}
	for _, f := range out.fields {
		a, err := s.HeaderField(f.Name, f.Value)
		if err != nil {
			return drop(err)
		}
		if a.Code != actContinue {
			out.stage, out.action = "header", a
			return out
		}
	}
	if a, err = s.HeaderEnd(); err != nil {
		return drop(err)
	}
	if a.Code != actContinue {
		out.stage, out.action = "eoh", a
		return out
	}
	for b := out.body; len(b) > 0; {
		n := min(len(b), maxBodyChunk)
		if a, err = s.BodyChunk(b[:n]); err != nil {
			return drop(err)
		}
		if a.Code != actContinue {
			out.stage, out.action = "body", a
			return out
		}
		b = b[n:]
	}
	if err := s.Macros(codeEOB, "i", queueID); err != nil {
		return drop(err)
	}
	out.mods, a, err = s.End()
	if err != nil {
		return drop(err)
	}
	out.stage, out.action = "eom", a
	return out
}

// hostileTooBigForProtocol reports whether a header field of msg cannot
// be carried by one milter packet.
func hostileTooBigForProtocol(msg []byte) bool {
	fields, _ := crypto.Split(msg)
	for _, f := range fields {
		if 1+len(hostileCString(f.Name))+1+len(hostileCString(f.Value))+1 > goMilterMaxPacket {
			return true
		}
	}
	return false
}

// hostileTempfail reports whether the outcome is a 4xx reply, and fails
// the test if it is a reply that is neither 4xx nor expected.
func hostileTempfail(t *testing.T, name string, out hostileOutcome, logs string) bool {
	t.Helper()
	if out.action == nil || out.action.Code != actReplyCode {
		return false
	}
	a := out.action
	if a.SMTPCode < 400 || a.SMTPCode > 499 || !strings.HasPrefix(a.SMTPText, "4.") || len(a.SMTPText) < 10 {
		t.Errorf("%s: reply %d %q at %s, want a clear 4xx temporary failure", name, a.SMTPCode, a.SMTPText, out.stage)
		return true
	}
	t.Logf("%s: temporary failure at %s: %d %s", name, out.stage, a.SMTPCode, a.SMTPText)
	return true
}

// hostileCheckKeyed checks a message to a keyed recipient: encrypted to
// secret, or a temporary failure; never clear text.
func hostileCheckKeyed(t *testing.T, name string, msg []byte, out hostileOutcome, secret *openpgp.Entity, protect bool, logs string) string {
	t.Helper()
	switch {
	case out.stage == "dropped":
		if !hostileTooBigForProtocol(msg) {
			t.Errorf("%s: the milter connection failed (%v) for a message the protocol can carry", name, out.err)
		}
		t.Logf("%s: connection dropped (%v): the MTA applies milter_default_action = tempfail", name, out.err)
		return "dropped (MTA tempfails)"
	case hostileTempfail(t, name, out, logs):
		return fmt.Sprintf("%d %s", out.action.SMTPCode, out.action.SMTPText)
	case out.action.Code != actAccept:
		t.Errorf("%s: ended at %s with %c (%+v), want accept with an encrypted body or 4xx", name, out.stage, out.action.Code, out.action)
		return "?"
	case out.stage != "eom":
		t.Errorf("%s: accepted at %s without encryption: clear text to a keyed recipient", name, out.stage)
		return "CLEAR"
	}
	var changes []crypto.Change
	var body []byte
	replaced := false
	for _, m := range out.mods {
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
				t.Errorf("%s: body replacement packet of %d bytes", name, len(m.Body))
			}
			replaced = true
			body = append(body, m.Body...)
		default:
			t.Errorf("%s: unexpected modification %c", name, m.Code)
		}
	}
	if !replaced {
		t.Fatalf("%s: accepted at end of message with the body unchanged: clear text to a keyed recipient", name)
	}
	// The MTA applies the changes to the fields it holds.
	outer := crypto.Apply(out.raw, changes)
	var ct string
	for _, f := range outer {
		low := strings.ToLower(f.Name)
		switch {
		case low == "content-type":
			if ct != "" {
				t.Errorf("%s: a second outer Content-Type %.80q", name, f.Value)
			}
			ct = f.Value
		case strings.HasPrefix(low, "content-") && len(low) > len("content-"):
			t.Errorf("%s: outer header still has %s: %.80q", name, f.Name, f.Value)
		case low == "subject" && protect && f.Value != crypto.ObscuredSubject:
			t.Errorf("%s: outer Subject %.80q with header protection", name, f.Value)
		}
	}
	if mt, params, err := mime.ParseMediaType(ct); err != nil || mt != "multipart/encrypted" || params["protocol"] != "application/pgp-encrypted" {
		t.Fatalf("%s: outer Content-Type %q (%v)", name, ct, err)
	}
	var m bytes.Buffer
	crypto.WriteMessage(&m, []crypto.Field{{Name: "MIME-Version", Value: "1.0"}, {Name: "Content-Type", Value: ct}}, body)
	_, inner := pgptest.OpenAndDecrypt(t, m.Bytes(), secret)
	innerFields, innerBody := crypto.Split(inner)
	if !bytes.Equal(innerBody, out.body) {
		t.Fatalf("%s: decrypted body (%d bytes) differs from the body sent (%d bytes)", name, len(innerBody), len(out.body))
	}
	norm := func(v string) string {
		lines := strings.Split(v, "\n")
		for i, l := range lines {
			lines[i] = strings.TrimRight(l, "\r")
		}
		return strings.Join(lines, "\n")
	}
	content := func(fs []crypto.Field) (rest []string, types []string) {
		for _, f := range fs {
			low := strings.ToLower(f.Name)
			switch {
			case low == "content-type":
				types = append(types, norm(f.Value))
			case strings.HasPrefix(low, "content-") && len(low) > len("content-"):
				rest = append(rest, f.Name+": "+norm(f.Value))
			}
		}
		return rest, types
	}
	want, wantTypes := content(out.fields)
	got, gotTypes := content(innerFields)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s: inner Content-* fields %.300q, want %.300q", name, got, want)
	}
	switch {
	case len(gotTypes) != 1:
		t.Errorf("%s: inner Content-Type fields %.200q, want one", name, gotTypes)
	case len(wantTypes) == 0:
		if !strings.HasPrefix(gotTypes[0], "text/plain") {
			t.Errorf("%s: inner Content-Type %.200q for a message without one", name, gotTypes[0])
		}
	case !strings.HasPrefix(gotTypes[0], strings.TrimRight(wantTypes[0], " \t\r\n;")):
		t.Errorf("%s: inner Content-Type %.200q, want the original %.200q", name, gotTypes[0], wantTypes[0])
	}
	return "encrypted"
}

func TestHostileMIMESessions(t *testing.T) {
	f := newFixture(t, nil)
	ents, err := os.ReadDir(hostileMIMEDir)
	if err != nil {
		t.Fatal(err)
	}
	type input struct {
		name string
		data []byte
	}
	var inputs []input
	for _, e := range ents {
		if e.Type().IsRegular() {
			b, err := os.ReadFile(filepath.Join(hostileMIMEDir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			inputs = append(inputs, input{e.Name(), b})
		}
	}
	if len(inputs) == 0 {
		t.Fatalf("no files in %s", hostileMIMEDir)
	}
	// Not a file: a header field too long for one milter packet. No MTA
	// passes it on (Postfix cuts header lines at 100 KiB); if one did, the
	// connection would fail and the MTA temp-fail the message.
	inputs = append(inputs, input{"(generated) header-over-milter-packet-limit",
		[]byte("From: a@example.net\r\nX-Long: " + strings.Repeat("x", goMilterMaxPacket) + "\r\n\r\nsecret body\r\n")})

	var worstCPU, worstWall time.Duration
	worstShare, worstName := 0.0, ""
	n := 0
	for _, in := range inputs {
		for _, rc := range []struct {
			rcpt    string
			protect bool
		}{{"alice@example.org", false}, {"carol@example.org", true}, {"nobody@example.org", false}} {
			name := in.name + "/" + rc.rcpt
			t.Run(name, func(t *testing.T) {
				n++
				queueID := fmt.Sprintf("QH%d", n)
				var out hostileOutcome
				m := hostiletest.Run(t, name, hostileHang, func() { out = hostileSend(f.addr, queueID, rc.rcpt, in.data) })
				fields, _ := crypto.Split(in.data)
				share := m.Check(t, name, hostiletest.Bounds{CPU: hostileCPU, Wall: hostileWall, Alloc: uint64(hostileAllocPerByte*len(in.data) + hostileAllocPerField*len(fields) + hostileAllocConst)})
				worstCPU, worstWall = max(worstCPU, m.CPU), max(worstWall, m.Wall)
				if share > worstShare {
					worstShare, worstName = share, name
				}
				if strings.Contains(f.logs.String(), "panic in milter session") {
					t.Fatalf("%s: a session callback panicked:\n%s", name, f.logs.String())
				}
				if rc.rcpt == "nobody@example.org" {
					switch {
					case out.stage == "dropped":
						if !hostileTooBigForProtocol(in.data) {
							t.Errorf("%s: the milter connection failed: %v", name, out.err)
						}
					case hostileTempfail(t, name, out, f.logs.String()):
					case out.action.Code != actAccept || len(out.mods) != 0:
						t.Errorf("%s: unkeyed recipient: ended at %s with %c and %d modifications, want an unchanged accept",
							name, out.stage, out.action.Code, len(out.mods))
					default:
						t.Logf("%s: passed unchanged (accepted at %s)", name, out.stage)
					}
					return
				}
				got := hostileCheckKeyed(t, name, in.data, out, f.secrets[rc.rcpt], rc.protect, f.logs.String())
				t.Logf("%s: %s", name, got)
			})
		}
	}
	// The server still serves: a plain message after the corpus encrypts.
	out := hostileSend(f.addr, "QHLAST", "alice@example.org", []byte(plainMsg))
	if got := hostileCheckKeyed(t, "after the corpus", []byte(plainMsg), out, f.secrets["alice@example.org"], false, ""); got != "encrypted" {
		t.Fatalf("after the corpus: %s", got)
	}
	t.Logf("worst case: %v CPU, %v wall; %.0f%% of the allocation bound (%s)", worstCPU.Round(time.Millisecond),
		worstWall.Round(time.Millisecond), 100*worstShare, worstName)
}

// TestHostileKeyExpiresDuringRun: a key is added while valid and a
// message to its address is encrypted; the key then expires (2 s after it
// was made, well inside the resolver's 30 s cache); the next message must
// get [encryption] unusable_key at RCPT (default tempfail, 450 4.7.1),
// and with the other policies their outcome, never clear text by
// accident and never an encryption to the expired key.
func TestHostileKeyExpiresDuringRun(t *testing.T) {
	const addr = "soon@example.org"
	f := newFixture(t, nil)
	if f.keyOpts.CacheTTL < 10*time.Second {
		t.Fatalf("cache TTL %v: the test wants the answer cached past the key's expiry", f.keyOpts.CacheTTL)
	}
	created := time.Now().Truncate(time.Second)
	const life = 2 * time.Second
	cfg := &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, Curve: packet.Curve25519, DefaultCipher: packet.CipherAES256,
		Time: func() time.Time { return created }, KeyLifetimeSecs: uint32(life / time.Second)}
	secret, err := openpgp.NewEntity("Expiring Test", "", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var pub bytes.Buffer
	secret.Serialize(&pub)
	ks, err := keys.Parse(pub.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	expires := ks[0].Expires()
	if !expires.Equal(created.Add(life)) {
		t.Fatalf("the key expires at %v, want %v", expires, created.Add(life))
	}
	res := f.srv.opts.Load().Keys.(*keys.Resolver)
	if err := res.Policy().Validate(ks[0], addr, time.Now()); err != nil {
		t.Fatalf("refused while valid: %v", err)
	}
	if err := f.store.Add(context.Background(), addr, ks, false); err != nil {
		t.Fatal(err)
	}

	out := hostileSend(f.addr, "QEXP1", addr, []byte(plainMsg))
	if time.Now().After(expires.Add(time.Second)) {
		t.Skipf("the machine took more than %v to send one message; the key expired first", life)
	}
	if got := hostileCheckKeyed(t, "while valid", []byte(plainMsg), out, secret, false, f.logs.String()); got != "encrypted" {
		t.Fatalf("while valid: %s, want encrypted", got)
	}

	// go-crypto compares whole seconds: the key is usable until the end
	// of the second it expires in.
	time.Sleep(time.Until(expires.Add(time.Second)) + 100*time.Millisecond)
	// The default policy, tempfail.
	out = hostileSend(f.addr, "QEXP2", addr, []byte(plainMsg))
	if out.stage != "rcpt" || out.action.Code != actReplyCode || out.action.SMTPCode != ReplyKeyUnusableTemp.Code ||
		!strings.HasPrefix(out.action.SMTPText, ReplyKeyUnusableTemp.Enhanced+" ") {
		t.Fatalf("after expiry: ended at %s with %+v, want %s at RCPT", out.stage, out.action, ReplyKeyUnusableTemp)
	}
	if !strings.Contains(f.logs.String(), "recipient's keys are unusable") {
		t.Errorf("no log line for the unusable key:\n%s", f.logs.String())
	}
	// The other policies, with the same resolver (and its cache).
	for _, tc := range []struct {
		policy UnusableKeyPolicy
		check  func(hostileOutcome) bool
	}{
		{UnusableKeyReject, func(o hostileOutcome) bool {
			return o.stage == "rcpt" && o.action.SMTPCode == ReplyKeyUnusableReject.Code
		}},
		{UnusableKeyClear, func(o hostileOutcome) bool {
			// The operator chose clear delivery for unusable keys.
			return o.stage == "data" && o.action.Code == actAccept && len(o.mods) == 0
		}},
	} {
		st := *f.srv.opts.Load()
		st.UnusableKey = tc.policy
		f.srv.Reload(st)
		out = hostileSend(f.addr, "QEXP-"+tc.policy.String(), addr, []byte(plainMsg))
		if !tc.check(out) {
			t.Errorf("unusable_key = %v after expiry: ended at %s with %+v", tc.policy, out.stage, out.action)
		}
	}
}
