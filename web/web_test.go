package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/mail"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// fakeMailer records the mail the service sends.
type fakeMailer struct {
	mu   sync.Mutex
	sent []sentMail
	fail error
}

type sentMail struct {
	from string
	to   []string
	msg  []byte
}

func (m *fakeMailer) Send(_ context.Context, from string, to []string, msg []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	m.sent = append(m.sent, sentMail{from, to, msg})
	return nil
}

func (m *fakeMailer) last(t *testing.T) sentMail {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.sent) == 0 {
		t.Fatal("no mail sent")
	}
	return m.sent[len(m.sent)-1]
}

type fixture struct {
	svc    *Service
	store  *keystest.Store
	mailer *fakeMailer
	srv    *httptest.Server
	now    time.Time
}

var norm = keys.Normalizer{FoldLocalPartCase: true, SubaddressSeparator: "+"}

func newFixture(t *testing.T) *fixture {
	return newFixtureWith(t, nil, nil)
}

// newFixtureWith is newFixture with another store (nil: f.store) and
// changed options.
func newFixtureWith(t *testing.T, store Store, mod func(*Options)) *fixture {
	t.Helper()
	f := &fixture{store: keystest.NewStore(), mailer: &fakeMailer{}, now: time.Now()}
	if store == nil {
		store = f.store
	}
	opt := Options{
		BaseURL: "https://keys.example.org", Domains: []string{"example.org"}, From: "lacre@example.org",
		TokenTTL: 48 * time.Hour, MaxPendingPerAddress: 3, MaxRequestsPerClient: 10,
		Policy:         keys.Policy{MinRSABits: 2048, Normalizer: norm},
		Now:            func() time.Time { return f.now },
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
	}
	if mod != nil {
		mod(&opt)
	}
	svc, err := New(store, f.mailer, opt)
	if err != nil {
		t.Fatal(err)
	}
	f.svc = svc
	f.srv = httptest.NewServer(svc.Handler(nil))
	t.Cleanup(f.srv.Close)
	return f
}

// browser is an HTTP client with cookies, like a user's browser.
func browser(t *testing.T) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

var csrfField = regexp.MustCompile(`name="csrf" value="([0-9a-f]{64})"`)

// getCSRF loads a page and returns its form's CSRF value.
func getCSRF(t *testing.T, c *http.Client, u string) string {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := csrfField.FindSubmatch(b)
	if m == nil {
		t.Fatalf("no CSRF field on %s:\n%s", u, b)
	}
	return string(m[1])
}

func postForm(t *testing.T, c *http.Client, u string, v url.Values) (int, string) {
	t.Helper()
	resp, err := c.PostForm(u, v)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var linkRE = regexp.MustCompile(`https://keys\.example\.org/confirm\?token=([A-Za-z0-9_-]+)`)

// openMail decrypts a confirmation mail with secret (nil: it must be
// unencrypted) and returns the token of its link.
func openMail(t *testing.T, msg []byte, secret *openpgp.Entity) string {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(m.Body)
	if secret == nil {
		if mt, _, _ := mime.ParseMediaType(m.Header.Get("Content-Type")); mt != "text/plain" {
			t.Fatalf("confirmation mail is %s, want unencrypted text", mt)
		}
	} else {
		if linkRE.Match(msg) {
			t.Fatal("the link is readable without the key")
		}
		_, body = pgptest.OpenAndDecrypt(t, msg, secret)
	}
	tok := linkRE.FindSubmatch(body)
	if tok == nil {
		t.Fatalf("no confirmation link in:\n%s", body)
	}
	return string(tok[1])
}

func TestSubmitConfirmWithBrowserForms(t *testing.T) {
	f := newFixture(t)
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	c := browser(t)
	csrf := getCSRF(t, c, f.srv.URL+"/")
	status, page := postForm(t, c, f.srv.URL+"/submit", url.Values{"csrf": {csrf}, "address": {"Alice@Example.org"},
		"key": {string(testkeys.ArmoredPublic(t, alice))}})
	if status != http.StatusAccepted || !strings.Contains(page, "Check your mailbox") {
		t.Fatalf("submit: %d\n%s", status, page)
	}
	// Nothing changes before confirmation.
	if ks, _ := f.store.KeysFor(context.Background(), "alice@example.org"); len(ks) != 0 {
		t.Fatal("the key was stored before confirmation")
	}
	sent := f.mailer.last(t)
	if sent.to[0] != "alice@example.org" || sent.from != "lacre@example.org" {
		t.Errorf("mail from %s to %v", sent.from, sent.to)
	}
	token := openMail(t, sent.msg, alice)
	// GET shows a button; it does not confirm (link scanners fetch links).
	csrf = getCSRF(t, c, f.srv.URL+"/confirm?token="+token)
	if ks, _ := f.store.KeysFor(context.Background(), "alice@example.org"); len(ks) != 0 {
		t.Fatal("GET /confirm changed the key store")
	}
	status, page = postForm(t, c, f.srv.URL+"/confirm", url.Values{"csrf": {csrf}, "token": {token}})
	if status != http.StatusOK || !strings.Contains(page, "Your key is active") {
		t.Fatalf("confirm: %d\n%s", status, page)
	}
	ks, _ := f.store.KeysFor(context.Background(), "alice@example.org")
	if len(ks) != 1 || ks[0].KeyID() != "0x"+strings.ToUpper(alice.PrimaryKey.KeyIdString()) {
		t.Fatalf("after confirmation the store has %v", ks)
	}
	// The token works once.
	status, page = postForm(t, c, f.srv.URL+"/confirm", url.Values{"csrf": {csrf}, "token": {token}})
	if status != http.StatusNotFound {
		t.Fatalf("second confirmation: %d\n%s", status, page)
	}
}

func TestFormsNeedCSRF(t *testing.T) {
	f := newFixture(t)
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	c := browser(t)
	getCSRF(t, c, f.srv.URL+"/") // the cookie is set, but the field is missing
	status, _ := postForm(t, c, f.srv.URL+"/submit", url.Values{"address": {"alice@example.org"}, "key": {string(testkeys.ArmoredPublic(t, alice))}})
	if status != http.StatusForbidden {
		t.Fatalf("submit without CSRF value: %d", status)
	}
	status, _ = postForm(t, browser(t), f.srv.URL+"/submit", url.Values{"csrf": {strings.Repeat("a", 64)}, "address": {"alice@example.org"}, "key": {"x"}})
	if status != http.StatusForbidden {
		t.Fatalf("submit with a forged CSRF value and no cookie: %d", status)
	}
	if len(f.mailer.sent) != 0 {
		t.Fatal("mail sent without CSRF")
	}
}

func TestSecurityHeaders(t *testing.T) {
	f := newFixture(t)
	resp, err := http.Get(f.srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for h, want := range map[string]string{
		"Content-Security-Policy": "default-src 'none'", "X-Content-Type-Options": "nosniff",
		"X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
	} {
		if !strings.Contains(resp.Header.Get(h), want) {
			t.Errorf("%s = %q, want %q", h, resp.Header.Get(h), want)
		}
	}
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == csrfCookie {
			cookie = c
		}
	}
	if cookie == nil || !cookie.HttpOnly || !cookie.Secure || cookie.SameSite != http.SameSiteStrictMode {
		t.Errorf("CSRF cookie %+v", cookie)
	}
}

// apiCall posts JSON and decodes the reply.
func apiCall(t *testing.T, f *fixture, path string, in any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(in)
	resp, err := http.Post(f.srv.URL+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestAPIFlowAndErrors(t *testing.T) {
	f := newFixture(t)
	alice := testkeys.Generate(t, testkeys.RSA3072, "alice@example.org")
	pub := string(testkeys.ArmoredPublic(t, alice))
	status, out := apiCall(t, f, "/api/v1/submit", map[string]string{"address": "alice@example.org", "key": pub})
	if status != 202 || out["status"] != "pending" || out["encrypted"] != true {
		t.Fatalf("submit: %d %v", status, out)
	}
	token := openMail(t, f.mailer.last(t).msg, alice)
	if status, out = apiCall(t, f, "/api/v1/confirm", map[string]string{"token": token}); status != 200 || out["status"] != "done" {
		t.Fatalf("confirm: %d %v", status, out)
	}

	expired := testkeys.Generate(t, testkeys.ExpiredSubkey, "alice@example.org")
	secret := string(testkeys.ArmoredSecret(t, testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")))
	for _, tc := range []struct {
		name, path string
		in         any
		status     int
		code, rule string
	}{
		{"expired subkey", "/api/v1/submit", map[string]string{"address": "alice@example.org", "key": string(testkeys.ArmoredPublic(t, expired))}, 400, "invalid_key", "encryption-subkey"},
		{"secret key", "/api/v1/submit", map[string]string{"address": "alice@example.org", "key": secret}, 400, "invalid_key", "public-only"},
		{"other address's key", "/api/v1/submit", map[string]string{"address": "bob@example.org", "key": pub}, 400, "invalid_key", "user-id"},
		{"foreign domain", "/api/v1/submit", map[string]string{"address": "alice@example.net", "key": pub}, 400, "foreign_domain", ""},
		{"bad address", "/api/v1/submit", map[string]string{"address": "alice", "key": pub}, 400, "invalid_address", ""},
		{"unknown field", "/api/v1/submit", map[string]string{"address": "alice@example.org", "kee": pub}, 400, "bad_request", ""},
		{"unknown token", "/api/v1/confirm", map[string]string{"token": "nope"}, 404, "unknown_token", ""},
	} {
		status, out := apiCall(t, f, tc.path, tc.in)
		e, _ := out["error"].(map[string]any)
		if status != tc.status || e["code"] != tc.code || (tc.rule != "" && e["rule"] != tc.rule) {
			t.Errorf("%s: %d %v, want %d %s %s", tc.name, status, out, tc.status, tc.code, tc.rule)
		}
		t.Logf("%s: %v", tc.name, e["message"])
	}
	// A form post is not JSON: refused (no CSRF token on the API).
	resp, _ := http.Post(f.srv.URL+"/api/v1/submit", "application/x-www-form-urlencoded", strings.NewReader("address=alice@example.org"))
	if resp.StatusCode != 415 {
		t.Errorf("form-encoded API call: %d, want 415", resp.StatusCode)
	}
	// Bodies are bounded.
	resp, _ = http.Post(f.srv.URL+"/api/v1/submit", "application/json", strings.NewReader(`{"address":"a@example.org","key":"`+strings.Repeat("A", 2<<20)+`"}`))
	if resp.StatusCode != 413 {
		t.Errorf("2 MiB body: %d, want 413", resp.StatusCode)
	}
}

// TestAttackerCannotSwitchEncryptionOff is the gpg-mailgate flaw: somebody
// who can submit a key for a victim's address, but has neither the
// victim's mailbox nor the victim's private key, changes nothing.
func TestAttackerCannotSwitchEncryptionOff(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	victim := testkeys.Generate(t, testkeys.Curve25519, "victim@example.org")
	vk := []*keys.Key{keystest.Parse(t, victim)}
	f.store.Add(ctx, "victim@example.org", vk, false)

	// The attacker makes a key with the victim's address in its User ID.
	mallory, err := openpgp.NewEntity("Victim", "", "victim@example.org", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
		t.Fatal(err)
	}
	status, out := apiCall(t, f, "/api/v1/submit", map[string]string{"address": "victim@example.org", "key": string(testkeys.ArmoredPublic(t, mallory))})
	if status != 202 {
		t.Fatalf("submission: %d %v", status, out)
	}
	// The confirmation went to the victim's mailbox, not to the attacker;
	// the attacker cannot read that mailbox, so can only guess tokens.
	sent := f.mailer.last(t)
	if len(sent.to) != 1 || sent.to[0] != "victim@example.org" {
		t.Fatalf("confirmation sent to %v", sent.to)
	}
	for range 20 {
		if status, _ := apiCall(t, f, "/api/v1/confirm", map[string]string{"token": "guess" + time.Now().String()}); status != 404 {
			t.Fatalf("a guessed token: %d", status)
		}
	}
	// A removal request is encrypted to the victim's key: no use either.
	if status, out := apiCall(t, f, "/api/v1/remove", map[string]string{"address": "victim@example.org"}); status != 202 || out["encrypted"] != true {
		t.Fatalf("removal request: %d %v", status, out)
	}
	removal := f.mailer.last(t)
	if linkRE.Match(removal.msg) {
		t.Fatal("the removal link is readable without the victim's key")
	}
	// Rate limit: the attacker cannot flood the victim's mailbox.
	apiCall(t, f, "/api/v1/submit", map[string]string{"address": "victim@example.org", "key": string(testkeys.ArmoredPublic(t, mallory))})
	if status, out := apiCall(t, f, "/api/v1/submit", map[string]string{"address": "victim@example.org", "key": string(testkeys.ArmoredPublic(t, mallory))}); status != 429 {
		t.Fatalf("fourth pending request: %d %v", status, out)
	}
	// The victim's key is untouched.
	ks, _ := f.store.KeysFor(ctx, "victim@example.org")
	if len(ks) != 1 || ks[0].Fingerprint != vk[0].Fingerprint {
		t.Fatalf("the victim's keys changed: %v", ks)
	}
	// And the victim, who has the mailbox but not mallory's private key,
	// cannot read the link either: only a key's holder can activate it.
	if _, err := pgptest.DecryptFirstBlock(sent.msg, victim); err == nil {
		t.Fatal("the confirmation for mallory's key is readable with the victim's key")
	}
}

func TestRemovalAndExpiry(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	ak := []*keys.Key{keystest.Parse(t, alice)}
	f.store.Add(ctx, "alice@example.org", ak, false)

	apiCall(t, f, "/api/v1/remove", map[string]string{"address": "alice@example.org"})
	token := openMail(t, f.mailer.last(t).msg, alice)
	// Past the token's lifetime the link fails and nothing changes.
	f.now = f.now.Add(49 * time.Hour)
	if status, out := apiCall(t, f, "/api/v1/confirm", map[string]string{"token": token}); status != 410 {
		t.Fatalf("expired token: %d %v", status, out)
	}
	if ks, _ := f.store.KeysFor(ctx, "alice@example.org"); len(ks) != 1 {
		t.Fatal("an expired removal removed the key")
	}
	apiCall(t, f, "/api/v1/remove", map[string]string{"address": "alice@example.org"})
	token = openMail(t, f.mailer.last(t).msg, alice)
	if status, out := apiCall(t, f, "/api/v1/confirm", map[string]string{"token": token}); status != 200 {
		t.Fatalf("removal: %d %v", status, out)
	}
	if ks, _ := f.store.KeysFor(ctx, "alice@example.org"); len(ks) != 0 {
		t.Fatal("the key is still there")
	}

	// A key that has expired since registration: the removal mail cannot
	// be encrypted to it, so it goes in clear (the mailbox is the proof).
	old := testkeys.Generate(t, testkeys.ExpiredSubkey, "old@example.org")
	ok := []*keys.Key{keystest.Parse(t, old)}
	f.store.Add(ctx, "old@example.org", ok, false)
	if status, out := apiCall(t, f, "/api/v1/remove", map[string]string{"address": "old@example.org"}); status != 202 || out["encrypted"] != false {
		t.Fatalf("removal of an expired key: %d %v", status, out)
	}
	openMail(t, f.mailer.last(t).msg, nil)
}

func TestMailFailureIsNotCounted(t *testing.T) {
	f := newFixture(t)
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	f.mailer.fail = errors.New("connection refused")
	for range 5 {
		if status, _ := apiCall(t, f, "/api/v1/submit", map[string]string{"address": "alice@example.org", "key": string(testkeys.ArmoredPublic(t, alice))}); status != 503 {
			t.Fatalf("mail failure: %d, want 503", status)
		}
	}
	f.mailer.fail = nil
	if status, _ := apiCall(t, f, "/api/v1/submit", map[string]string{"address": "alice@example.org", "key": string(testkeys.ArmoredPublic(t, alice))}); status != 202 {
		t.Fatalf("after the MTA is back: %d (failed attempts counted against the limit)", status)
	}
}

func TestNeedsDomains(t *testing.T) {
	if _, err := New(keystest.NewStore(), &fakeMailer{}, Options{}); err == nil {
		t.Fatal("a service without domains started")
	}
}
