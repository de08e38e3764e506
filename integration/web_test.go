package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
	"lacre.io/milter/web"
)

// startWeb runs "lacre-milter web" with the milter's configuration (same
// key store) plus a [web] table; it returns the service's base URL.
func startWeb(t *testing.T, m *milterProc, sinkPort int) string {
	t.Helper()
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	cfg, err := os.ReadFile(m.configPath)
	if err != nil {
		t.Fatal(err)
	}
	webCfg := fmt.Sprintf("\n[web]\nlisten = \"127.0.0.1:%d\"\nbase_url = %q\ndomains = [\"example.org\"]\n\n[web.smtp]\naddr = \"127.0.0.1:%d\"\n", port, base, sinkPort)
	path := m.configPath + ".web.toml"
	if err := os.WriteFile(path, append(cfg, webCfg...), 0o600); err != nil {
		t.Fatal(err)
	}
	out := &tailBuffer{max: 1 << 20}
	cmd := exec.Command(milterBin, "-config", path, "web")
	cmd.Dir, cmd.Stdout, cmd.Stderr = m.dir, out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			t.Error("lacre-milter web did not stop on SIGTERM")
		}
		if t.Failed() {
			t.Logf("lacre-milter web output:\n%s", out.String())
		}
	})
	if err := waitPort(fmt.Sprintf("127.0.0.1:%d", port), milterStartTimeout, done); err != nil {
		t.Fatalf("lacre-milter web: %v\n%s", err, out.String())
	}
	return base
}

var (
	csrfRE = regexp.MustCompile(`name="csrf" value="([0-9a-f]{64})"`)
	linkRE = regexp.MustCompile(`http://127\.0\.0\.1:\d+/confirm\?token=[A-Za-z0-9_-]+`)
)

func formCSRF(t *testing.T, c *http.Client, u string) string {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := csrfRE.FindSubmatch(b)
	if m == nil {
		t.Fatalf("no form on %s:\n%s", u, b)
	}
	return string(m[1])
}

// TestWebRegistration: a key submitted over HTTP is confirmed from the
// mailbox (the confirmation, caught at the sink, decrypts only with the
// submitted key), and from then on the milter encrypts to it.
func TestWebRegistration(t *testing.T) {
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	s := startSink(t)
	m := startMilter(t, "[store]\ncache_ttl = \"1s\"\n")
	base := startWeb(t, m, s.port)
	p := startPostfix(t, postfixOptions{RelayPort: s.port, SMTPDMilters: m.addr()})

	// Before: mail to alice passes in clear.
	before := message("web-before", "alice@example.org", textFields, textBody)
	if err := p.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, before); err != nil {
		t.Fatal(err)
	}
	checkRelayed(t, byMessageID(t, s, "web-before").Data, before)

	// The confirmation reaches the mailbox (the sink), encrypted.
	c, conf := webSubmit(t, base, s, alice, "alice@example.org")
	if linkRE.Match(conf) {
		t.Fatal("the confirmation link is readable without the key")
	}
	_, inner := pgptest.OpenAndDecrypt(t, conf, alice)
	link := linkRE.Find(inner)
	if link == nil {
		t.Fatalf("no link in the decrypted confirmation:\n%s", inner)
	}

	// Nothing changed yet.
	if out, _ := m.cli(nil, "keys", "show", "alice@example.org"); !strings.Contains(out, "pass unchanged") {
		t.Fatalf("before confirmation:\n%s", out)
	}
	webConfirm(t, c, base, link)
	if out, _ := m.cli(nil, "keys", "show", "alice@example.org"); !strings.Contains(out, "encrypt to 1 key") {
		t.Fatalf("after confirmation:\n%s", out)
	}

	// The milter (another process, same store) now encrypts to the key.
	time.Sleep(1100 * time.Millisecond) // store.cache_ttl
	after := message("web-after", "alice@example.org", textFields, textBody)
	if err := p.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, after); err != nil {
		t.Fatal(err)
	}
	checkDecrypts(t, byMessageID(t, s, "web-after").Data, after, alice)

	// And the Web Key Directory publishes it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/.well-known/openpgpkey/hu/kei1q4tipxxu1yj79k9kfukdhfy631xe?l=alice", nil)
	req.Host = "example.org"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("WKD lookup: %d", resp.StatusCode)
	}
}

// TestWebMultiKeyAttack is issue 12's attack end to end: mallory fetches
// alice's key from our own Web Key Directory, submits it together with
// her own key carrying alice's address, and waits for alice to follow the
// link she can decrypt. Each key gets its own mail, encrypted to it
// alone: alice's mailbox holds one she can read (naming her fingerprint)
// and one she cannot; following hers binds her key only, and mail to
// alice stays readable by alice alone.
func TestWebMultiKeyAttack(t *testing.T) {
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	aliceKeys, _ := keys.Parse(testkeys.Public(t, alice))
	mallory, err := openpgp.NewEntity("Alice", "", "alice@example.org", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
		t.Fatal(err)
	}
	malloryKeys, _ := keys.Parse(testkeys.Public(t, mallory))
	s := startSink(t)
	m := startMilter(t, "[store]\ncache_ttl = \"1s\"\n")
	m.keysAdd(t, "alice@example.org", testkeys.ArmoredPublic(t, alice))
	base := startWeb(t, m, s.port)
	p := startPostfix(t, postfixOptions{RelayPort: s.port, SMTPDMilters: m.addr()})

	// Mallory takes alice's key from the WKD, as anybody can.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/.well-known/openpgpkey/hu/kei1q4tipxxu1yj79k9kfukdhfy631xe?l=alice", nil)
	req.Host = "example.org"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	fromWKD, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(fromWKD) == 0 {
		t.Fatalf("WKD lookup: %d", resp.StatusCode)
	}
	var armored bytes.Buffer
	w, _ := armor.Encode(&armored, openpgp.PublicKeyType, nil)
	w.Write(fromWKD)
	w.Close()
	armored.WriteString("\n")
	armored.Write(testkeys.ArmoredPublic(t, mallory))
	body, _ := json.Marshal(map[string]string{"address": "alice@example.org", "key": armored.String()})
	resp, err = http.Post(base+"/api/v1/submit", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submission: %d %s", resp.StatusCode, answer)
	}

	// Alice's mailbox: one confirmation per key.
	var confs [][]byte
	deadline := time.Now().Add(deliveryTimeout)
	for len(confs) < 2 {
		confs = nil
		for _, sm := range s.messages() {
			if bytes.Contains(sm.Data, []byte("Subject: "+web.MailSubject)) {
				confs = append(confs, sm.Data)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d confirmation mails at the sink, want 2 (one per key)", len(confs))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(confs) != 2 {
		t.Fatalf("%d confirmation mails, want 2", len(confs))
	}
	var readable [][]byte
	for _, c := range confs {
		if linkRE.Match(c) {
			t.Fatal("a confirmation link is readable without a key")
		}
		if inner, err := pgptest.DecryptFirstBlock(c, alice); err == nil {
			readable = append(readable, inner)
		}
	}
	if len(readable) != 1 {
		t.Fatalf("alice can read %d of the 2 confirmations, want exactly 1 (the one for her own key)", len(readable))
	}
	inner := readable[0]
	if !bytes.Contains(inner, []byte(aliceKeys[0].Fingerprint)) || bytes.Contains(inner, []byte(malloryKeys[0].Fingerprint)) {
		t.Fatalf("alice's confirmation must name her fingerprint and not mallory's:\n%s", inner)
	}
	link := linkRE.Find(inner)
	if link == nil {
		t.Fatalf("no link in alice's confirmation:\n%s", inner)
	}

	// Alice follows it, through the pages.
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	csrf := formCSRF(t, c, string(link))
	token := string(link[strings.Index(string(link), "token=")+6:])
	resp, err = c.PostForm(base+"/confirm", url.Values{"csrf": {csrf}, "token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("confirm: %d\n%s", resp.StatusCode, page)
	}
	out, _ := m.cli(nil, "keys", "show", "alice@example.org")
	if !strings.Contains(out, "encrypt to 1 key") || strings.Contains(out, malloryKeys[0].KeyID()) || strings.Contains(out, malloryKeys[0].Fingerprint) {
		t.Fatalf("after alice confirmed:\n%s\nmallory's key is %s", out, malloryKeys[0].Fingerprint)
	}

	// Mail to alice: alice reads it, mallory does not.
	time.Sleep(1100 * time.Millisecond) // store.cache_ttl
	msg := message("web-multikey", "alice@example.org", textFields, textBody)
	if err := p.sendSMTP(t, "sender@example.com", []string{"alice@example.org"}, msg); err != nil {
		t.Fatal(err)
	}
	got := byMessageID(t, s, "web-multikey").Data
	checkDecrypts(t, got, msg, alice)
	if _, err := pgptest.DecryptFirstBlock(got, mallory); err == nil {
		t.Fatal("mallory can read alice's mail")
	}
}

// webSubmit submits e's key for address through the registration form at
// base and returns the form's client (with its cookies) and the
// confirmation mail as the sink received it.
func webSubmit(t *testing.T, base string, s *sink, e *openpgp.Entity, address string) (*http.Client, []byte) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	csrf := formCSRF(t, c, base+"/")
	resp, err := c.PostForm(base+"/submit", url.Values{"csrf": {csrf}, "address": {address}, "key": {string(testkeys.ArmoredPublic(t, e))}})
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submit: %d\n%s", resp.StatusCode, page)
	}
	deadline := time.Now().Add(deliveryTimeout)
	for {
		for _, sm := range s.messages() {
			if bytes.Contains(sm.Data, []byte("Subject: "+web.MailSubject)) && bytes.Contains(sm.Data, []byte("To: "+address)) {
				return c, sm.Data
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no confirmation mail at the sink")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// webConfirm confirms with the link of a decrypted confirmation mail,
// through the page it opens, and checks that the key is then active.
func webConfirm(t *testing.T, c *http.Client, base string, link []byte) {
	t.Helper()
	csrf := formCSRF(t, c, string(link))
	token := string(link[strings.Index(string(link), "token=")+6:])
	resp, err := c.PostForm(base+"/confirm", url.Values{"csrf": {csrf}, "token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(page, []byte("Your key is active")) {
		t.Fatalf("confirm: %d\n%s", resp.StatusCode, page)
	}
}

// webRegister submits e's key for address, decrypts the confirmation mail
// with e and confirms.
func webRegister(t *testing.T, base string, s *sink, e *openpgp.Entity, address string) {
	t.Helper()
	c, conf := webSubmit(t, base, s, e, address)
	_, inner := pgptest.OpenAndDecrypt(t, conf, e)
	link := linkRE.Find(inner)
	if link == nil {
		t.Fatalf("no link in the decrypted confirmation:\n%s", inner)
	}
	webConfirm(t, c, base, link)
}
