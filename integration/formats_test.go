package integration

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/smimetest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// withStore opens the milter's key store in-process (SQLite allows this
// while lacre-milter serve runs), for tests that bind hundreds of
// certificates: one "keys add" process each would take minutes (see
// addKeys). The running milter sees the change once its lookup cache
// expires. Tests of a few recipients use the CLI.
func withStore(t testing.TB, m *milterProc, f func(ctx context.Context, st *keys.SQLiteStore)) {
	t.Helper()
	ctx := context.Background()
	st, err := keys.OpenSQLite(ctx, filepath.Join(m.dir, "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	f(ctx, st)
}

// bindCert binds a certificate (PEM) to addr through keys.Admit, the
// admission path of "keys add".
func bindCert(t testing.TB, ctx context.Context, st *keys.SQLiteStore, addr string, pemCert []byte) {
	t.Helper()
	ks, err := keys.ParseAny(pemCert, addr, keys.Normalizer{})
	if err != nil {
		t.Fatal(err)
	}
	if err := keys.Admit(ctx, st, keys.Policy{MinRSABits: 2048}, keys.Admission{Address: addr, Keys: ks}, time.Now()); err != nil {
		t.Fatalf("certificate for %s refused: %v", addr, err)
	}
}

// gpgReader is a GnuPG home with secret keys imported, for decrypting
// what the milter delivered with an implementation we did not write.
type gpgReader struct {
	gpg, home string
}

func newGPGReader(t *testing.T, secrets ...*openpgp.Entity) *gpgReader {
	t.Helper()
	gpg, err := exec.LookPath("gpg")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("gpg is required in CI: %v", err)
		}
		t.Skipf("gpg not installed: %v", err)
	}
	// A short path: gpg-agent's socket lives in the home.
	home, err := os.MkdirTemp("", "lg-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(home, 0o700)
	t.Cleanup(func() {
		exec.Command("gpgconf", "--homedir", home, "--kill", "all").Run()
		os.RemoveAll(home)
	})
	g := &gpgReader{gpg: gpg, home: home}
	for _, s := range secrets {
		if _, stderr, err := g.run(testkeys.ArmoredSecret(t, s), "--import"); err != nil {
			t.Fatalf("gpg --import: %v\n%s", err, stderr)
		}
	}
	return g
}

func (g *gpgReader) run(stdin []byte, args ...string) ([]byte, []byte, error) {
	common := []string{"--homedir", g.home, "--batch", "--yes", "--pinentry-mode", "loopback", "--no-tty",
		"--disable-dirmngr", "--no-auto-key-retrieve", "--no-auto-key-locate"}
	return smimetest.Run(g.home, stdin, nil, g.gpg, append(common, args...)...)
}

// decrypt decrypts an OpenPGP message (armoured or binary) and checks
// that gpg reports the integrity check.
func (g *gpgReader) decrypt(t testing.TB, ct []byte) []byte {
	t.Helper()
	plain, stderr, err := g.run(ct, "--status-fd", "2", "--decrypt")
	if err != nil {
		t.Fatalf("gpg --decrypt: %v\n%s", err, stderr)
	}
	for _, s := range []string{"[GNUPG:] DECRYPTION_OKAY", "[GNUPG:] GOODMDC"} {
		if !bytes.Contains(stderr, []byte(s)) {
			t.Fatalf("gpg --decrypt: no %q status:\n%s", s, stderr)
		}
	}
	return plain
}

// checkPGPMIMEWithGPG decrypts a delivered PGP/MIME message with gpg and
// compares the inner body with the sent one byte for byte.
func checkPGPMIMEWithGPG(t *testing.T, g *gpgReader, got, sent []byte) {
	t.Helper()
	_, armored := pgptest.Open(t, got)
	inner := g.decrypt(t, armored)
	if _, innerBody := splitMessage(inner); !bytes.Equal(innerBody, mustBody(sent)) {
		t.Fatalf("gpg: decrypted PGP/MIME body differs: %q", innerBody)
	}
}

func mustBody(msg []byte) []byte {
	_, b := splitMessage(msg)
	return b
}

// contentFields returns the Content-* fields of a header section as
// written (name: value, folded lines kept), in order.
func contentFields(header []byte) []string {
	var out []string
	for _, l := range strings.SplitAfter(string(header), "\r\n") {
		switch {
		case l == "" || l == "\r\n":
		case (l[0] == ' ' || l[0] == '\t') && len(out) > 0 && out[len(out)-1] != "":
			out[len(out)-1] += l
		case strings.HasPrefix(strings.ToLower(l), "content-"):
			out = append(out, l)
		default:
			out = append(out, "") // a field of another name ends a folded one
		}
	}
	var fields []string
	for _, f := range out {
		if f != "" {
			fields = append(fields, f)
		}
	}
	return fields
}

// checkSMIMEWithOpenSSL decrypts a delivered S/MIME message with openssl
// cms -decrypt for party p and checks that the inner entity is the sent
// message's Content-* fields and body, byte for byte; it returns the
// entity.
func checkSMIMEWithOpenSSL(t *testing.T, openssl string, p smimetest.Party, got, sent []byte) []byte {
	t.Helper()
	h, err := mail.ReadMessage(bytes.NewReader(got))
	if err != nil {
		t.Fatal(err)
	}
	if ct := h.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/pkcs7-mime") || !strings.Contains(ct, "smime-type=enveloped-data") {
		t.Fatalf("delivered Content-Type %q, want S/MIME enveloped-data", ct)
	}
	inner, stderr, err := smimetest.OpenSSLDecrypt(t, openssl, t.TempDir(), p, got, true)
	if err != nil {
		t.Fatalf("openssl cms -decrypt for %s: %v\n%s", p.C.Cert.EmailAddresses[0], err, stderr)
	}
	innerHeader, innerBody := splitMessage(inner)
	sentHeader, sentBody := splitMessage(sent)
	if !bytes.Equal(innerBody, sentBody) {
		t.Fatalf("openssl: inner body differs:\n got %q\nwant %q", innerBody, sentBody)
	}
	if g, w := contentFields(innerHeader), contentFields(sentHeader); strings.Join(g, "") != strings.Join(w, "") {
		t.Fatalf("openssl: inner MIME fields %q, want %q", g, w)
	}
	return inner
}

// inlineMessage is a multipart message with a quoted-printable text part,
// an HTML part and a base64 PDF attachment, for PGP/inline.
func inlineMessage(id, to string) ([]byte, map[string][]byte) {
	text := "Grüße aus dem Test — inline marker 51c2.\r\nZweite Zeile.\r\n"
	html := "<p>HTML marker 51c2</p>\r\n"
	pdf := []byte("%PDF-1.4\n% binary \x00\x01\x02\xff marker 51c2\n%%EOF\n")
	var qp bytes.Buffer
	w := quotedprintable.NewWriter(&qp)
	w.Write([]byte(text))
	w.Close()
	body := "This is a multi-part message.\r\n--outer\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" + qp.String() + "\r\n--outer\r\n" +
		"Content-Type: text/html; charset=utf-8\r\n\r\n" + html + "\r\n--outer\r\n" +
		"Content-Type: application/pdf; name=\"report.pdf\"\r\nContent-Disposition: attachment; filename=\"report.pdf\"\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\n" + base64.StdEncoding.EncodeToString(pdf) + "\r\n--outer--\r\n"
	return message(id, to, "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"outer\"\n", body),
		map[string][]byte{"text": []byte(text), "html": []byte(html), "pdf": pdf}
}

// checkInlineWithGPG checks a delivered PGP/inline copy of inlineMessage:
// multipart/mixed with the text part as ASCII armour in text/plain (the
// charset kept) and the others as .pgp attachments, each decrypting with
// gpg to its original decoded content; no plaintext anywhere.
func checkInlineWithGPG(t *testing.T, g *gpgReader, got []byte, want map[string][]byte) {
	t.Helper()
	if bytes.Contains(got, []byte("51c2")) {
		t.Fatal("cleartext in the PGP/inline copy")
	}
	msg, err := mail.ReadMessage(bytes.NewReader(got))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" {
		t.Fatalf("PGP/inline copy: Content-Type %q (%v)", msg.Header.Get("Content-Type"), err)
	}
	r := multipart.NewReader(msg.Body, params["boundary"])
	var parts []string
	for {
		p, err := r.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		raw, err := io.ReadAll(p)
		if err != nil {
			t.Fatal(err)
		}
		pmt, pparams, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		switch {
		case pmt == "text/plain":
			if strings.ToLower(pparams["charset"]) != "utf-8" {
				t.Errorf("inline text part: charset %q, want utf-8", pparams["charset"])
			}
			if !bytes.HasPrefix(raw, []byte("-----BEGIN PGP MESSAGE-----")) {
				t.Fatalf("inline text part is not armour: %.80q", raw)
			}
			if plain := g.decrypt(t, raw); !bytes.Equal(plain, want["text"]) {
				t.Errorf("gpg: text part decrypts to %q, want %q", plain, want["text"])
			}
			parts = append(parts, "text")
		case pmt == "application/octet-stream" && strings.HasSuffix(pparams["name"], ".pgp"):
			bin, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(string(raw), "\r\n", ""))
			if err != nil {
				t.Fatalf("attachment %s: %v", pparams["name"], err)
			}
			plain := g.decrypt(t, bin)
			name := map[string]string{"message.html.pgp": "html", "report.pdf.pgp": "pdf"}[pparams["name"]]
			if name == "" || !bytes.Equal(plain, want[name]) {
				t.Errorf("gpg: attachment %s decrypts to %q", pparams["name"], plain)
			}
			parts = append(parts, name)
		default:
			t.Errorf("unexpected part %q", p.Header.Get("Content-Type"))
		}
	}
	if strings.Join(parts, ",") != "text,html,pdf" {
		t.Errorf("inline parts %v, want text,html,pdf", parts)
	}
}

// TestFormatsThroughPostfix: per-recipient formats through a real
// Postfix (issue 18): an S/MIME recipient (openssl decrypts), a
// PGP/inline recipient (gpg decrypts each part), and one transaction from
// a sending Postfix to PGP/MIME, S/MIME, PGP/inline and clear recipients,
// split by 452 4.5.3 and each delivered once, in its own format.
func TestFormatsThroughPostfix(t *testing.T) {
	openssl := smimetest.Tool(t, "openssl")
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	ivy := testkeys.Generate(t, testkeys.Curve25519, "ivy@example.org")
	g := newGPGReader(t, alice, ivy)
	dir := t.TempDir()
	rsa := smimetest.NewParty(t, dir, smimetest.RSA2048) // rsa2048@example.org
	ec := smimetest.NewParty(t, dir, smimetest.P256)     // p256@example.org

	s := startSink(t)
	m := startMilter(t, "[store]\ncache_ttl = \"1s\"\n")
	m.keysAdd(t, "alice@example.org", testkeys.ArmoredPublic(t, alice))
	m.keysAdd(t, "ivy@example.org", testkeys.ArmoredPublic(t, ivy))
	// Through the operator's commands: keys add takes a certificate as it
	// takes an OpenPGP key, keys set chooses the format.
	m.keysAdd(t, "rsa2048@example.org", rsa.C.PEM())
	m.keysAdd(t, "p256@example.org", ec.C.PEM())
	if out, err := m.cli(nil, "keys", "set", "ivy@example.org", "format", "pgp-inline"); err != nil {
		t.Fatalf("keys set format: %v\n%s", err, out)
	}
	p := startPostfix(t, postfixOptions{RelayPort: s.port, SMTPDMilters: m.addr()})

	t.Run("S/MIME recipient", func(t *testing.T) {
		msg := message("smime-one", "rsa2048@example.org", textFields, textBody)
		if err := p.sendSMTP(t, "sender@example.com", []string{"rsa2048@example.org"}, msg); err != nil {
			t.Fatal(err)
		}
		got := byMessageID(t, s, "smime-one").Data
		if bytes.Contains(got, []byte("ünïcödé")) {
			t.Fatal("cleartext in the S/MIME copy")
		}
		checkSMIMEWithOpenSSL(t, openssl, rsa, got, msg)
		if !m.logSays(" action=encrypted rcpts=1 classes=smime:1 ") {
			t.Error("no log line with classes=smime:1")
		}
	})

	t.Run("PGP/inline recipient", func(t *testing.T) {
		msg, want := inlineMessage("inline-one", "ivy@example.org")
		if err := p.sendSMTP(t, "sender@example.com", []string{"ivy@example.org"}, msg); err != nil {
			t.Fatal(err)
		}
		checkInlineWithGPG(t, g, byMessageID(t, s, "inline-one").Data, want)
		if !m.logSays(" action=encrypted rcpts=1 classes=pgp-inline:1 ") {
			t.Error("no log line with classes=pgp-inline:1")
		}
	})

	t.Run("one transaction of every format through a sending MTA", func(t *testing.T) {
		sender := startPostfix(t, postfixOptions{RelayPort: p.smtpPort})
		rcpts := []string{"alice@example.org", "rsa2048@example.org", "bob@example.net", "ivy@example.org", "p256@example.org", "dave@example.net"}
		msg := message("formats-mixed", strings.Join(rcpts, ", "), textFields, textBody)
		if err := sender.sendSMTP(t, "sender@example.com", rcpts, msg); err != nil {
			t.Fatal(err)
		}
		copies := waitRecipients(t, sender, s, "formats-mixed", rcpts)
		seen := map[string]int{}
		for _, c := range copies {
			for _, r := range c.To {
				seen[r]++
			}
		}
		for _, r := range rcpts {
			if seen[r] != 1 {
				t.Errorf("%s received %d copies, want 1", r, seen[r])
			}
		}
		groups := 0
		for _, c := range copies {
			switch {
			case sameSet(c.To, []string{"alice@example.org"}):
				checkPGPMIMEWithGPG(t, g, c.Data, msg)
			case sameSet(c.To, []string{"rsa2048@example.org"}):
				// RSA and EC certificates get separate ciphertexts:
				// NSS cannot open a message with any ECDH recipient.
				checkSMIMEWithOpenSSL(t, openssl, rsa, c.Data, msg)
			case sameSet(c.To, []string{"p256@example.org"}):
				checkSMIMEWithOpenSSL(t, openssl, ec, c.Data, msg)
			case sameSet(c.To, []string{"ivy@example.org"}):
				// A single text/plain part: one armoured message.
				_, body := splitMessage(c.Data)
				if plain := g.decrypt(t, body); !bytes.Equal(plain, []byte(textBody)) {
					t.Errorf("gpg: inline copy decrypts to %q", plain)
				}
			case sameSet(c.To, []string{"bob@example.net", "dave@example.net"}):
				checkRelayed(t, c.Data, msg)
			default:
				t.Errorf("a copy went to %v together", c.To)
				continue
			}
			groups++
		}
		if groups != 5 {
			t.Errorf("%d copies of the five classes, want 5", groups)
		}
		if n := strings.Count(sender.log(), "452 4.5.3"); n < 4 {
			t.Errorf("the sending MTA logged %d 452 4.5.3 deferrals, want at least 4 (one per class after the first)", n)
		}
		// Every class but the one the sender happened to put first was
		// deferred at least once.
		deferred := map[string]bool{}
		for _, l := range strings.Split(m.out.String(), "\n") {
			if strings.Contains(l, "recipient deferred to another transaction") {
				for _, c := range []string{"clear", "pgp-mime", "pgp-inline", "smime", "smime-ec"} {
					if strings.Contains(l, " class="+c+" ") {
						deferred[c] = true
					}
				}
			}
		}
		if len(deferred) < 4 {
			t.Errorf("the milter deferred recipients of the classes %v, want four of the five", deferred)
		}
	})
}

// waitRecipientsTimeout bounds waitRecipients: the sending MTA's
// retries of each deferred class (minimal_backoff_time 1 s here).
const waitRecipientsTimeout = 90 * time.Second

// waitRecipients waits until every one of rcpts has received a copy with
// the Message-ID <id@example.com> (flushing the sender's queue meanwhile),
// then two seconds more for a duplicate, and returns the copies.
func waitRecipients(t *testing.T, sender *postfixInstance, s *sink, id string, rcpts []string) []sinkMessage {
	t.Helper()
	needle := []byte("\r\nMessage-ID: <" + id + "@example.com>\r\n")
	find := func() ([]sinkMessage, int) {
		var out []sinkMessage
		got := map[string]bool{}
		for _, m := range s.messages() {
			if bytes.Contains(m.Data, needle) {
				out = append(out, m)
				for _, r := range m.To {
					got[strings.ToLower(r)] = true
				}
			}
		}
		n := 0
		for _, r := range rcpts {
			if got[r] {
				n++
			}
		}
		return out, n
	}
	deadline := time.Now().Add(waitRecipientsTimeout)
	for {
		_, n := find()
		if n == len(rcpts) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sink: %d of %d recipients of %s reached within %v\nsender log:\n%s", n, len(rcpts), id, waitRecipientsTimeout, tail(sender.log(), 30))
		}
		sender.flush()
		time.Sleep(300 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	out, _ := find()
	return out
}
