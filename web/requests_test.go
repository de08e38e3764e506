package web

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"html"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

func TestClientAddress(t *testing.T) {
	f := newFixtureWith(t, nil, func(o *Options) {
		o.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.0.0.0/8")}
	})
	for _, tc := range []struct {
		peer string
		xff  []string
		want string
	}{
		{"192.0.2.7:1234", nil, "192.0.2.7"},
		{"192.0.2.7:1234", []string{"198.51.100.1"}, "192.0.2.7"},               // untrusted peer: header ignored
		{"127.0.0.1:1234", []string{"198.51.100.1"}, "198.51.100.1"},            // the proxy's word
		{"127.0.0.1:1234", []string{"6.6.6.6, 198.51.100.1"}, "198.51.100.1"},   // the client's own hop is not believed
		{"127.0.0.1:1234", []string{"6.6.6.6", "198.51.100.1"}, "198.51.100.1"}, // several lines: the last counts, not the first
		{"127.0.0.1:1234", []string{"198.51.100.1, 10.1.2.3"}, "198.51.100.1"},  // two trusted proxies
		{"127.0.0.1:1234", []string{"6.6.6.6", "198.51.100.1", "10.1.2.3"}, "198.51.100.1"},
		{"127.0.0.1:1234", []string{"nonsense"}, "127.0.0.1"},                      // a proxy that wrote nonsense is counted itself
		{"127.0.0.1:1234", []string{"10.9.9.9"}, "10.9.9.9"},                       // all trusted: the left-most
		{"127.0.0.1:1234", []string{"[2001:db8:1:2::5]:443"}, "2001:db8:1:2::/64"}, // IPv6 counts by /64
		{"[2001:db8:1:2:aaaa::1]:5", nil, "2001:db8:1:2::/64"},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = tc.peer
		for _, v := range tc.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		if got := f.svc.clientIP(r); got != tc.want {
			t.Errorf("peer %s, X-Forwarded-For %q: %s, want %s", tc.peer, tc.xff, got, tc.want)
		}
	}
}

// TestStaleTokens: a token is bound to the state of the address it was
// issued for, and dies when that state changes.
func TestStaleTokens(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	a := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	b := testkeys.Generate(t, testkeys.V6, "alice@example.org")
	c := testkeys.Generate(t, testkeys.RSA3072, "alice@example.org")
	submit := func(key []byte, client string) {
		t.Helper()
		if _, err := f.svc.Submit(ctx, "alice@example.org", key, client); err != nil {
			t.Fatal(err)
		}
	}
	// Submit A, submit B, confirm B: A's link no longer works (it would
	// revert the address to A).
	submit(testkeys.ArmoredPublic(t, a), "192.0.2.1")
	tokA := openMail(t, f.mailer.last(t).msg, a)
	submit(testkeys.ArmoredPublic(t, b), "192.0.2.2")
	tokB := openMail(t, f.mailer.last(t).msg, b)
	if _, err := f.svc.Confirm(ctx, tokB, "192.0.2.2"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Confirm(ctx, tokA, "192.0.2.1"); err == nil || userErr(t, err).Status/100 != 4 {
		t.Fatalf("confirming A after B: %v", err)
	}
	bk := []*keys.Key{keystest.Parse(t, b)}
	if ks, _ := f.store.KeysFor(ctx, "alice@example.org"); len(ks) != 1 || ks[0].Fingerprint != bk[0].Fingerprint {
		t.Fatalf("an old link reverted the address: %v", keys.SortedFingerprints(ks))
	}

	// A removal link from before a new key was registered removes nothing.
	if _, err := f.svc.RequestRemoval(ctx, "alice@example.org", "192.0.2.3"); err != nil {
		t.Fatal(err)
	}
	tokRm := openMail(t, f.mailer.last(t).msg, b)
	submit(testkeys.ArmoredPublic(t, c), "192.0.2.4")
	tokC := openMail(t, f.mailer.last(t).msg, c)
	if _, err := f.svc.Confirm(ctx, tokC, "192.0.2.4"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Confirm(ctx, tokRm, "192.0.2.3"); err == nil {
		t.Fatal("an old removal link removed the key registered after it")
	}
	if ks, _ := f.store.KeysFor(ctx, "alice@example.org"); len(ks) != 1 {
		t.Fatalf("after the old removal link: %d keys", len(ks))
	}

	// A confirmation drops the other submissions' tokens, even where the
	// state alone would let them pass: submission S = {A, B}, then T = {A};
	// confirming T leaves only A bound, a state S could have produced, yet
	// S's link for B must be dead.
	submit([]byte(string(testkeys.ArmoredPublic(t, a))+string(testkeys.ArmoredPublic(t, b))), "192.0.2.6")
	var tokSB string
	for _, m := range f.mailer.sent[len(f.mailer.sent)-2:] {
		if _, err := pgptest.DecryptFirstBlock(m.msg, b); err == nil {
			tokSB = openMail(t, m.msg, b)
		}
	}
	submit(testkeys.ArmoredPublic(t, a), "192.0.2.7")
	if _, err := f.svc.Confirm(ctx, openMail(t, f.mailer.last(t).msg, a), "192.0.2.7"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Confirm(ctx, tokSB, "192.0.2.6"); err == nil {
		t.Fatal("a link of an earlier submission still worked after another was confirmed")
	}
	f.store.Remove(ctx, "alice@example.org", "")
	f.store.Add(ctx, "alice@example.org", []*keys.Key{keystest.Parse(t, c)}, false)

	// The state is checked too, not only the tokens dropped by the
	// service: a change made elsewhere (lacre-milter keys add) kills the
	// links issued before it.
	if _, err := f.svc.RequestRemoval(ctx, "alice@example.org", "192.0.2.5"); err != nil {
		t.Fatal(err)
	}
	tokRm = openMail(t, f.mailer.last(t).msg, c)
	ak := []*keys.Key{keystest.Parse(t, a)}
	f.store.Add(ctx, "alice@example.org", ak, false)
	_, err := f.svc.Confirm(ctx, tokRm, "192.0.2.5")
	if ue := userErr(t, err); ue.Status != 409 || ue.Code != "stale_token" {
		t.Fatalf("removal after an operator's change: %v", err)
	}
	if ks, _ := f.store.KeysFor(ctx, "alice@example.org"); len(ks) != 2 {
		t.Fatalf("a stale removal link changed the keys: %d left", len(ks))
	}
	// And it is used up.
	if _, err := f.svc.Confirm(ctx, tokRm, "192.0.2.5"); userErr(t, err).Status != 404 {
		t.Fatalf("a stale token used again: %v", err)
	}
}

func TestAddressValidation(t *testing.T) {
	f := newFixture(t)
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	pub := string(testkeys.ArmoredPublic(t, alice))
	for _, a := range []string{
		"alice%example.net@example.org",
		"bob!alice@example.org",
		`"alice@example.net"@example.org`,
		`"alice example"@example.org`,
		"@relay.example.net:alice@example.org",
		"<@relay.example.net:alice@example.org>",
		"älice@example.org",
		strings.Repeat("a", 65) + "@example.org",
		"alice\x01@example.org",
		"alice\r\nRCPT TO:<x@example.net>@example.org",
		`"al\"ice"@example.org`,
		".alice@example.org",
		"alice..b@example.org",
		"alice(comment)@example.org",
	} {
		for _, path := range []string{"/api/v1/submit", "/api/v1/remove"} {
			status, out := apiCall(t, f, path, map[string]string{"address": a, "key": pub})
			if path == "/api/v1/remove" {
				status, out = apiCall(t, f, path, map[string]string{"address": a})
			}
			e, _ := out["error"].(map[string]any)
			if status != 400 || e["code"] != "invalid_address" {
				t.Errorf("%s %q: %d %v", path, a, status, out)
			}
		}
	}
	if n := f.mailer.count(); n != 0 {
		t.Errorf("%d mails sent to refused addresses", n)
	}
	// Plain addresses, with a subaddress or in another case, still work.
	for _, a := range []string{"Alice@Example.ORG", "alice+tag@example.org", "<alice@example.org>"} {
		if status, out := apiCall(t, f, "/api/v1/remove", map[string]string{"address": a}); status != 202 {
			t.Errorf("%q: %d %v", a, status, out)
		}
	}
}

// TestNoEnumeration: removal answers the same for an address with an
// unusable key and one with none; limits and their messages say nothing
// about other people; the confirm endpoint is limited too.
func TestNoEnumeration(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	old := testkeys.Generate(t, testkeys.ExpiredSubkey, "old@example.org")
	ok := []*keys.Key{keystest.Parse(t, old)}
	f.store.Add(ctx, "old@example.org", ok, false)
	_, withKey := apiCall(t, f, "/api/v1/remove", map[string]string{"address": "old@example.org"})
	_, without := apiCall(t, f, "/api/v1/remove", map[string]string{"address": "nobody@example.org"})
	for _, m := range []map[string]any{withKey, without} {
		delete(m, "address")
	}
	if fmt.Sprint(withKey) != fmt.Sprint(without) || withKey["status"] != "pending" {
		t.Errorf("removal answers differ:\n expired key: %v\n no key:      %v", withKey, without)
	}
	// Unknown tokens are limited per client.
	var status int
	for i := range 100 {
		status, _ = apiCall(t, f, "/api/v1/confirm", map[string]string{"token": fmt.Sprint("guess", i)})
		if status == 429 {
			break
		}
	}
	if status != 429 {
		t.Errorf("100 guessed tokens: the last answered %d, want 429", status)
	}
	// The confirmation page (GET) counts and obeys the same limit.
	resp, err := http.Get(f.srv.URL + "/confirm?token=guess")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 {
		t.Errorf("confirmation page for a limited client: %d", resp.StatusCode)
	}
}

// TestCSRF: the form token is the server's HMAC of the cookie, and
// cross-site POSTs are refused whatever they carry.
func TestCSRF(t *testing.T) {
	f := newFixture(t)
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	form := url.Values{"address": {"alice@example.org"}, "key": {string(testkeys.ArmoredPublic(t, alice))}}
	post := func(cookie, field string, hdr map[string]string) int {
		v := url.Values{}
		for k, x := range form {
			v[k] = x
		}
		v.Set("csrf", field)
		req, _ := http.NewRequest("POST", f.srv.URL+"/submit", strings.NewReader(v.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if cookie != "" {
			req.AddCookie(&http.Cookie{Name: csrfCookie, Value: cookie})
		}
		for k, x := range hdr {
			req.Header.Set(k, x)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	planted := strings.Repeat("ab", 32)
	// The old double submit: a cookie planted by a sibling host, repeated
	// in the form. Not an HMAC of the server's: refused.
	if s := post(planted, planted, nil); s != 403 {
		t.Errorf("planted cookie repeated in the form: %d", s)
	}
	other, _ := New(f.store, f.mailer, Options{Domains: []string{"example.org"}})
	if s := post(planted, other.csrfMAC(planted), nil); s != 403 {
		t.Errorf("token made with another secret: %d", s)
	}
	good := f.svc.csrfMAC(planted)
	for _, h := range []map[string]string{
		{"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
		{"Origin": "https://evil.example"}, {"Origin": "null"},
	} {
		if s := post(planted, good, h); s != 403 {
			t.Errorf("a valid token with %v: %d", h, s)
		}
	}
	if n := f.mailer.count(); n != 0 {
		t.Fatalf("%d mails sent by refused forms", n)
	}
	if s := post(planted, good, map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": "https://keys.example.org"}); s != 202 {
		t.Errorf("a valid same-origin form: %d", s)
	}
	// The API too refuses a browser's cross-site request.
	req, _ := http.NewRequest("POST", f.srv.URL+"/api/v1/remove", strings.NewReader(`{"address":"alice@example.org"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Errorf("cross-site API call: %d", resp.StatusCode)
	}
}

// TestFormsKeepTheKey: after an error, the form comes back with the key
// (pasted or from the file); a huge POST is 413, not "form expired".
func TestFormsKeepTheKey(t *testing.T) {
	f := newFixture(t)
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	pub := string(testkeys.ArmoredPublic(t, alice))
	c := browser(t)
	f.mailer.fail = fmt.Errorf("451 4.3.0 try later")
	csrf := getCSRF(t, c, f.srv.URL+"/")
	status, page := postForm(t, c, f.srv.URL+"/submit", url.Values{"csrf": {csrf}, "address": {"alice@example.org"}, "key": {pub}})
	if status != 503 || !strings.Contains(html.UnescapeString(page), strings.TrimSpace(pub)) || !csrfField.MatchString(page) {
		t.Errorf("after a failure the form lost the key: %d\n%s", status, page)
	}
	// From a file: the key comes back in the text area.
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("csrf", csrf)
	mw.WriteField("address", "bob@example.org")
	fw, _ := mw.CreateFormFile("keyfile", "alice.asc")
	fw.Write([]byte(pub))
	mw.Close()
	f.mailer.fail = nil
	resp, err := c.Post(f.srv.URL+"/submit", mw.FormDataContentType(), &body)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), "BEGIN PGP PUBLIC KEY BLOCK") {
		t.Errorf("a key from a file is not shown again: %d\n%s", resp.StatusCode, b)
	}
	// Refused by a limit: the key comes back too.
	f.svc.opt.MaxRequestsPerClient = 0
	status, page = postForm(t, c, f.srv.URL+"/submit", url.Values{"csrf": {csrf}, "address": {"alice@example.org"}, "key": {pub}})
	if status != 429 || !strings.Contains(html.UnescapeString(page), strings.TrimSpace(pub)) {
		t.Errorf("after a 429 the form lost the key: %d", status)
	}
	f.svc.opt.MaxRequestsPerClient = 10
	// 100 MB to /remove: 413.
	big := io.MultiReader(strings.NewReader("csrf="+csrf+"&address="), io.LimitReader(zeros{}, 100<<20))
	req, _ := http.NewRequest("POST", f.srv.URL+"/remove", big)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Errorf("100 MB form POST: %d, want 413", resp.StatusCode)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'a'
	}
	return len(p), nil
}

// TestSMTPReplyAfterData: once the server has answered 250 to the end of
// DATA, the mail is sent, even if the connection drops before QUIT.
func TestSMTPReplyAfterData(t *testing.T) {
	for _, tc := range []struct {
		dataReply string
		wantErr   bool
	}{{"250 2.0.0 queued", false}, {"451 4.3.0 try later", true}} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			r := bufio.NewReader(c)
			fmt.Fprintf(c, "220 sink ESMTP\r\n")
			inData := false
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				switch {
				case inData && line == ".\r\n":
					fmt.Fprintf(c, "%s\r\n", tc.dataReply)
					return // hang up before QUIT
				case inData:
				case strings.HasPrefix(line, "EHLO"):
					fmt.Fprintf(c, "250 sink\r\n")
				case strings.HasPrefix(line, "DATA"):
					fmt.Fprintf(c, "354 go on\r\n")
					inData = true
				default:
					fmt.Fprintf(c, "250 ok\r\n")
				}
			}
		}()
		m := &SMTPMailer{Addr: ln.Addr().String(), Timeout: 5 * time.Second}
		err = m.Send(context.Background(), "lacre@example.org", []string{"alice@example.org"}, []byte("Subject: x\r\n\r\nbody\r\n"))
		if (err != nil) != tc.wantErr {
			t.Errorf("DATA answered %q, connection dropped: %v", tc.dataReply, err)
		}
		ln.Close()
	}
}
