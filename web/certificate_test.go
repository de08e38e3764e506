package web

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"html"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/mail"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/internal/smimetest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// smimeMail checks that msg is an S/MIME enveloped-data message with one
// RecipientInfo, decrypts it with c's private key (smimetest's CMS
// reader) and returns the decrypted entity (header and body).
func smimeMail(t *testing.T, msg []byte, c *smimetest.Cert) []byte {
	t.Helper()
	if linkRE.Match(msg) || bytes.Contains(msg, []byte("confirm?token=")) {
		t.Fatal("the link is readable without the certificate's private key")
	}
	der := smimeDER(t, msg)
	inner, parsed, err := smimetest.Decrypt(der, c.Cert, c.Key)
	if err != nil {
		t.Fatalf("decrypting the confirmation mail with the certificate's key: %v", err)
	}
	if parsed.RICount != 1 || parsed.Auth {
		t.Errorf("the mail has %d RecipientInfos (auth %v), want exactly one, enveloped-data", parsed.RICount, parsed.Auth)
	}
	return inner
}

// smimeDER returns the CMS object of an S/MIME message.
func smimeDER(t *testing.T, msg []byte) []byte {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, _ := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if mt != "application/pkcs7-mime" || params["smime-type"] != "enveloped-data" {
		t.Fatalf("confirmation mail is %s %v, want S/MIME enveloped-data:\n%s", mt, params, msg)
	}
	body, _ := io.ReadAll(m.Body)
	der, err := base64.StdEncoding.DecodeString(strings.NewReplacer("\r", "", "\n", "").Replace(string(body)))
	if err != nil {
		t.Fatalf("the S/MIME body is not base64: %v", err)
	}
	if linkRE.Match(der) {
		t.Fatal("the link is in the CMS object in clear")
	}
	return der
}

// smimeToken decrypts an S/MIME confirmation mail with c and returns the
// token of its link.
func smimeToken(t *testing.T, msg []byte, c *smimetest.Cert) string {
	t.Helper()
	inner := smimeMail(t, msg, c)
	tok := linkRE.FindSubmatch(inner)
	if tok == nil {
		t.Fatalf("no confirmation link in:\n%s", inner)
	}
	return string(tok[1])
}

func certFor(t *testing.T, kind smimetest.KeyKind, addrs ...string) *smimetest.Cert {
	return smimetest.New(t, smimetest.Spec{Key: kind, Addresses: addrs, CommonName: "Cert " + strings.Join(addrs, " ")})
}

func derOf(c *smimetest.Cert) []byte { return c.Cert.Raw }

// p7b makes a PKCS #7 certificate bundle of certs with openssl crl2pkcs7,
// as Windows exports them.
func p7b(t *testing.T, certs ...*smimetest.Cert) []byte {
	t.Helper()
	openssl := smimetest.Tool(t, "openssl")
	dir := t.TempDir()
	args := []string{"crl2pkcs7", "-nocrl", "-outform", "DER"}
	for i, c := range certs {
		args = append(args, "-certfile", smimetest.WriteFile(t, dir, fmt.Sprint(i, ".pem"), c.PEM()))
	}
	out, stderr, err := smimetest.Run(dir, nil, nil, openssl, args...)
	if err != nil {
		t.Fatalf("openssl crl2pkcs7: %v\n%s", err, stderr)
	}
	return out
}

// uploadForm posts the registration form with a file, as a browser does.
func uploadForm(t *testing.T, f *fixture, c *http.Client, address, name string, file []byte) (int, string) {
	t.Helper()
	csrf := getCSRF(t, c, f.srv.URL+"/")
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("csrf", csrf)
	mw.WriteField("address", address)
	mw.WriteField("key", "")
	fw, _ := mw.CreateFormFile("keyfile", name)
	fw.Write(file)
	mw.Close()
	resp, err := c.Post(f.srv.URL+"/submit", mw.FormDataContentType(), &body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// nothingHappened checks that no mail went out, no request is pending and
// nothing is bound for address.
func nothingHappened(t *testing.T, f *fixture, address string, mails int) {
	t.Helper()
	if n := f.mailer.count(); n != mails {
		t.Errorf("%d mails sent, want %d", n, mails)
	}
	if ks, _ := f.store.KeysFor(context.Background(), address); len(ks) != 0 {
		t.Errorf("%d keys bound to %s", len(ks), address)
	}
	if a, _, _ := f.store.CountRequests(context.Background(), address, "", f.now.Add(-time.Hour), f.now); a != 0 {
		t.Errorf("%d requests pending for %s", a, address)
	}
}

// TestCertificateFormats registers a certificate through every way the
// service takes one: pasted PEM (form and API), and uploaded PEM, DER and
// PKCS #7 bundle files; RSA and EC. Each mail is S/MIME, to the
// certificate alone, and its link binds exactly that certificate.
func TestCertificateFormats(t *testing.T) {
	for _, tc := range []struct {
		name string
		kind smimetest.KeyKind
		how  string // "paste", "api", or a file name to upload
		data func(c *smimetest.Cert) []byte
	}{
		{"pasted PEM", smimetest.RSA2048, "paste", (*smimetest.Cert).PEM},
		{"API PEM", smimetest.RSA2048, "api", (*smimetest.Cert).PEM},
		{"API PEM P-256", smimetest.P256, "api", (*smimetest.Cert).PEM},
		{"uploaded PEM", smimetest.RSA4096, "alice.pem", (*smimetest.Cert).PEM},
		{"uploaded DER", smimetest.RSA2048, "alice.cer", derOf},
		{"uploaded DER P-384", smimetest.P384, "alice.der", derOf},
		{"uploaded p7b", smimetest.RSA2048, "alice.p7b", func(c *smimetest.Cert) []byte { return p7b(t, c) }},
		{"pasted with openssl's text", smimetest.RSA2048, "paste", func(c *smimetest.Cert) []byte {
			return append([]byte("Certificate:\n    Data:\n        Version: 3 (0x2)\n"), c.PEM()...)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			alice := certFor(t, tc.kind, "alice@example.org")
			fpr := keys.FromCertificate(mustParseCert(t, alice)).Fingerprint
			c := browser(t)
			var status int
			var page string
			switch tc.how {
			case "paste":
				csrf := getCSRF(t, c, f.srv.URL+"/")
				status, page = postForm(t, c, f.srv.URL+"/submit", url.Values{"csrf": {csrf}, "address": {"alice@example.org"}, "key": {string(tc.data(alice))}})
			case "api":
				var out map[string]any
				status, out = apiCall(t, f, "/api/v1/submit", map[string]string{"address": "alice@example.org", "key": string(tc.data(alice))})
				page = fmt.Sprint(out)
				ks, _ := out["keys"].([]any)
				if len(ks) != 1 {
					t.Fatalf("API answer: %v", out)
				}
				k := ks[0].(map[string]any)
				if k["kind"] != "x509" || k["fingerprint"] != fpr || !strings.Contains(fmt.Sprint(k["subject"]), "CN=Cert alice@example.org") ||
					k["expires"] != alice.Cert.NotAfter.UTC().Format(time.RFC3339) || k["serial"] == "" || k["issuer"] == "" ||
					fmt.Sprint(k["user_ids"]) != "[alice@example.org]" {
					t.Errorf("API key: %v", k)
				}
			default:
				status, page = uploadForm(t, f, c, "alice@example.org", tc.how, tc.data(alice))
			}
			if status != http.StatusAccepted || !strings.Contains(page, fpr) {
				t.Fatalf("submit: %d\n%s", status, page)
			}
			if tc.how != "api" && (!strings.Contains(page, "S/MIME certificate: CN=Cert alice@example.org") || !strings.Contains(page, "encrypted to this certificate alone")) {
				t.Errorf("the pending page does not name the certificate:\n%s", page)
			}
			if f.mailer.count() != 1 {
				t.Fatalf("%d mails", f.mailer.count())
			}
			inner := smimeMail(t, f.mailer.last(t).msg, alice)
			for _, want := range []string{"S/MIME certificate this message is encrypted to", "SHA-256:     " + fpr, "Certificate: CN=Cert alice@example.org",
				"Expires:     " + alice.Cert.NotAfter.UTC().Format("2006-01-02 15:04 MST")} {
				if !bytes.Contains(inner, []byte(want)) {
					t.Errorf("the mail lacks %q:\n%s", want, inner)
				}
			}
			token := smimeToken(t, f.mailer.last(t).msg, alice)
			csrf := getCSRF(t, c, f.srv.URL+"/confirm?token="+token)
			status, page = postForm(t, c, f.srv.URL+"/confirm", url.Values{"csrf": {csrf}, "token": {token}})
			if status != http.StatusOK || !strings.Contains(page, "Your certificate is active") || !strings.Contains(page, fpr) {
				t.Fatalf("confirm: %d\n%s", status, page)
			}
			ks, _ := f.store.KeysFor(context.Background(), "alice@example.org")
			if len(ks) != 1 || ks[0].Kind() != keys.KindX509 || ks[0].Fingerprint != fpr {
				t.Fatalf("after confirmation the store has %v", ks)
			}
		})
	}
}

func mustParseCert(t *testing.T, c *smimetest.Cert) *keys.Certificate {
	t.Helper()
	pc, err := keys.ParseCertificate(c.Cert.Raw, "", norm)
	if err != nil {
		t.Fatal(err)
	}
	return pc
}

// TestCertificateProofOfPossession is attack (a): Mallory submits Alice's
// real certificate (public: it comes with every message she signs) for
// alice. The confirmation goes to alice's mailbox encrypted to that
// certificate; its token is not in the message in any readable form, and
// only Alice's private key recovers it: smimetest's CMS reader and openssl
// cms both fail with another key, and succeed with hers.
func TestCertificateProofOfPossession(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	alice := certFor(t, smimetest.RSA2048, "alice@example.org")
	status, out := apiCall(t, f, "/api/v1/submit", map[string]string{"address": "alice@example.org", "key": string(alice.PEM())})
	if status != http.StatusAccepted {
		t.Fatalf("submit: %d %v", status, out)
	}
	msg := f.mailer.last(t).msg
	der := smimeDER(t, msg)

	// Mallory's own RSA key (not smimetest's cached one, which Alice's
	// certificate uses) opens nothing.
	mkey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if inner, _, err := smimetest.Decrypt(der, alice.Cert, mkey); err == nil {
		t.Fatalf("decrypted without Alice's private key:\n%s", inner)
	}
	openssl := smimetest.Tool(t, "openssl")
	dir := t.TempDir()
	mallory := smimetest.Party{C: &smimetest.Cert{Cert: alice.Cert, Key: mkey},
		CertPath: smimetest.WriteFile(t, dir, "alice.crt", alice.PEM())}
	mallory.KeyPath = smimetest.WriteFile(t, dir, "mallory.key", mallory.C.KeyPEM(t))
	if out, _, err := smimetest.OpenSSLDecrypt(t, openssl, dir, mallory, msg, true); err == nil || linkRE.Match(out) {
		t.Fatalf("openssl cms -decrypt opened the mail with Mallory's key (%v):\n%s", err, out)
	}

	// Alice's key: both readers find the same token, and it is not in
	// the message as sent, nor in its decoded CMS object.
	token := smimeToken(t, msg, alice)
	party := smimetest.Party{C: alice, CertPath: mallory.CertPath, KeyPath: smimetest.WriteFile(t, dir, "alice.key", alice.KeyPEM(t))}
	plain, stderr, err := smimetest.OpenSSLDecrypt(t, openssl, dir, party, msg, true)
	if err != nil {
		t.Fatalf("openssl cms -decrypt with Alice's key: %v\n%s", err, stderr)
	}
	if m := linkRE.FindSubmatch(plain); m == nil || string(m[1]) != token {
		t.Fatalf("openssl found another token (%q, want %q):\n%s", m, token, plain)
	}
	for _, where := range [][]byte{msg, der} {
		if bytes.Contains(where, []byte(token)) {
			t.Fatal("the token is in the mail in clear")
		}
	}

	// Mallory cannot confirm without it: guesses are unknown tokens,
	// limited per client, and bind nothing.
	for i := range 5 {
		if status, _ := apiCall(t, f, "/api/v1/confirm", map[string]string{"token": fmt.Sprint("guess-", i)}); status != 404 {
			t.Errorf("guessed token: %d", status)
		}
	}
	if ks, _ := f.store.KeysFor(ctx, "alice@example.org"); len(ks) != 0 {
		t.Fatal("a certificate was bound without its private key")
	}
	// Alice (who holds the key) can.
	if status, out := apiCall(t, f, "/api/v1/confirm", map[string]string{"token": token}); status != 200 || out["status"] != "done" {
		t.Fatalf("Alice's confirmation: %d %v", status, out)
	}
	if ks, _ := f.store.KeysFor(ctx, "alice@example.org"); len(ks) != 1 || ks[0].Kind() != keys.KindX509 {
		t.Fatalf("after Alice confirmed: %v", ks)
	}
}

// TestCertificateRefusals: every admission rule refuses before any mail
// or stored request, with its rule named in the API's answer; attacks
// (b) no address in the certificate, (d) somebody else's certificate, (e)
// expired, weak, wrong key usage, and the secret-material rule (c) for
// private keys in every container.
func TestCertificateRefusals(t *testing.T) {
	now := time.Now()
	p12dir := t.TempDir()
	alice := certFor(t, smimetest.RSA2048, "alice@example.org")
	p12, err := os.ReadFile(smimetest.PKCS12(t, alice, p12dir, "alice", false))
	if err != nil {
		t.Fatal(err)
	}
	p12legacy, err := os.ReadFile(smimetest.PKCS12(t, alice, p12dir, "alice-legacy", true))
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(alice.Key)
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(alice.Key.(*rsa.PrivateKey))})
	ca := smimetest.New(t, smimetest.Spec{Key: smimetest.P384, CA: true, CommonName: "Test CA"})
	for _, tc := range []struct {
		name string
		data []byte
		rule keys.Rule
	}{
		{"no address at all", certFor(t, smimetest.RSA2048).PEM(), keys.RuleAddress},
		{"SAN without the address", certFor(t, smimetest.RSA2048, "alice@example.net").PEM(), keys.RuleAddress},
		{"subject e-mail, SAN elsewhere", smimetest.New(t, smimetest.Spec{Addresses: []string{"mallory@example.org"}, SubjectEmail: "alice@example.org"}).PEM(), keys.RuleAddress},
		{"bob's certificate", certFor(t, smimetest.RSA2048, "bob@example.org").PEM(), keys.RuleAddress},
		{"CA certificate", ca.PEM(), keys.RuleKeyUsage},
		{"expired", smimetest.New(t, smimetest.Spec{Addresses: []string{"alice@example.org"}, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}).PEM(), keys.RuleExpired},
		{"not yet valid", smimetest.New(t, smimetest.Spec{Addresses: []string{"alice@example.org"}, NotBefore: now.Add(time.Hour)}).PEM(), keys.RuleNotYetValid},
		{"RSA-1024", certFor(t, smimetest.RSA1024, "alice@example.org").PEM(), keys.RuleStrength},
		{"P-224", certFor(t, smimetest.P224, "alice@example.org").PEM(), keys.RuleStrength},
		{"Ed25519", certFor(t, smimetest.Ed25519, "alice@example.org").PEM(), keys.RuleStrength},
		{"signing only", smimetest.New(t, smimetest.Spec{Addresses: []string{"alice@example.org"}, KeyUsage: x509.KeyUsageDigitalSignature}).PEM(), keys.RuleKeyUsage},
		{"EC without key agreement", smimetest.New(t, smimetest.Spec{Key: smimetest.P256, Addresses: []string{"alice@example.org"}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment}).PEM(), keys.RuleKeyUsage},
		{"TLS server only", smimetest.New(t, smimetest.Spec{Addresses: []string{"alice@example.org"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}).PEM(), keys.RuleKeyUsage},
		{"two certificates for the address", append(alice.PEM(), certFor(t, smimetest.P256, "alice@example.org").PEM()...), RuleCertificateCount},
		{"PKCS #12", p12, keys.RuleSecret},
		{"PKCS #12 legacy", p12legacy, keys.RuleSecret},
		{"DER PKCS #8 key", pkcs8, keys.RuleSecret},
		{"PEM private key alone", alice.KeyPEM(t), keys.RuleSecret},
		{"PEM RSA private key alone", pkcs1, keys.RuleSecret},
		{"certificate and its key", append(alice.PEM(), alice.KeyPEM(t)...), keys.RuleSecret},
		{"key before certificate", append(alice.KeyPEM(t), alice.PEM()...), keys.RuleSecret},
		{"OpenPGP key and private key", append(testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")), alice.KeyPEM(t)...), keys.RuleSecret},
		{"public key, not a certificate", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: mustMarshalPKIX(t, alice)}), keys.RuleFormat},
		{"truncated DER", alice.Cert.Raw[:len(alice.Cert.Raw)/2], keys.RuleFormat},
		{"DER with trailing garbage", append(slicesClone(alice.Cert.Raw), 0x01, 0x02), keys.RuleFormat},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			if tc.rule == keys.RuleSecret || bytes.HasPrefix(tc.data, []byte{0x30}) {
				// Uploaded as a file, as a browser would.
				status, page := uploadForm(t, f, browser(t), "alice@example.org", "upload.bin", tc.data)
				if status != 400 {
					t.Fatalf("upload: %d\n%s", status, page)
				}
				if leaksKey(page) {
					t.Error("the refused page shows the private key again")
				}
				t.Logf("upload: %s", errorText(page))
			}
			if !bytes.HasPrefix(tc.data, []byte{0x30}) { // text: pasted into the form and sent to the API
				c := browser(t)
				csrf := getCSRF(t, c, f.srv.URL+"/")
				status, page := postForm(t, c, f.srv.URL+"/submit", url.Values{"csrf": {csrf}, "address": {"alice@example.org"}, "key": {string(tc.data)}})
				if status != 400 {
					t.Fatalf("form: %d\n%s", status, page)
				}
				if tc.rule == keys.RuleSecret && leaksKey(page) {
					t.Error("the refused form is sent back with the private key in it")
				}
				status, out := apiCall(t, f, "/api/v1/submit", map[string]string{"address": "alice@example.org", "key": string(tc.data)})
				e, _ := out["error"].(map[string]any)
				if status != 400 || e["code"] != "invalid_key" || e["rule"] != string(tc.rule) {
					t.Errorf("API: %d %v, want 400 invalid_key %s", status, out, tc.rule)
				}
				t.Logf("API: %v", e["message"])
			} else {
				_, err := f.svc.Submit(context.Background(), "alice@example.org", tc.data, "192.0.2.1")
				if ue := userErr(t, err); ue.Status != 400 || ue.Rule != tc.rule {
					t.Errorf("Submit: %d %s %s, want rule %s", ue.Status, ue.Rule, ue.Msg, tc.rule)
				}
			}
			nothingHappened(t, f, "alice@example.org", 0)
		})
	}
}

// leaksKey reports whether a page holds a PEM private key.
func leaksKey(page string) bool {
	return strings.Contains(page, "-----BEGIN PRIVATE KEY-----") || strings.Contains(page, "-----BEGIN RSA PRIVATE KEY-----")
}

func errorText(page string) string {
	i := strings.Index(page, `role="alert">`)
	if i < 0 {
		return "(no error shown)"
	}
	s := page[i+len(`role="alert">`):]
	s, _, _ = strings.Cut(s, "</p>")
	return html.UnescapeString(s)
}

func mustMarshalPKIX(t *testing.T, c *smimetest.Cert) []byte {
	b, err := x509.MarshalPKIXPublicKey(c.Key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func slicesClone(b []byte) []byte { return append([]byte(nil), b...) }

// TestCertificateTrustAnchors: with [smime] trust_anchors configured, a
// certificate must chain to them (its issuers may come in the same file);
// a self-issued one is refused before any mail. Without them (the
// default), the self-issued one is accepted.
func TestCertificateTrustAnchors(t *testing.T) {
	root := smimetest.New(t, smimetest.Spec{Key: smimetest.P384, CA: true, CommonName: "Test Root"})
	inter := smimetest.New(t, smimetest.Spec{Key: smimetest.P256, CA: true, CommonName: "Test Intermediate", Parent: root})
	issued := smimetest.New(t, smimetest.Spec{Addresses: []string{"alice@example.org"}, CommonName: "Alice", Parent: inter})
	self := certFor(t, smimetest.RSA2048, "alice@example.org")
	pool := x509.NewCertPool()
	pool.AddCert(root.Cert)
	f := newFixtureWith(t, nil, func(o *Options) { o.Policy.TrustAnchors = pool })

	for _, tc := range []struct {
		name string
		data []byte
		rule string
	}{
		{"self-issued", self.PEM(), string(keys.RuleTrustChain)},
		{"issued, without the intermediate", issued.PEM(), string(keys.RuleTrustChain)},
		{"issued, with the intermediate", append(issued.PEM(), inter.PEM()...), ""},
		{"issued, as a p7b bundle with the intermediate", p7b(t, inter, issued), ""},
	} {
		before := f.mailer.count()
		var status int
		var out map[string]any
		if tc.data[0] == 0x30 {
			// DER cannot travel in a JSON string: the form takes the file.
			var page string
			status, page = uploadForm(t, f, browser(t), "alice@example.org", "alice.p7b", tc.data)
			out = map[string]any{"page": errorText(page)}
		} else {
			status, out = apiCall(t, f, "/api/v1/submit", map[string]string{"address": "alice@example.org", "key": string(tc.data)})
		}
		e, _ := out["error"].(map[string]any)
		switch {
		case tc.rule != "" && (status != 400 || e["rule"] != tc.rule || f.mailer.count() != before):
			t.Errorf("%s: %d %v, want rule %s and no mail", tc.name, status, out, tc.rule)
		case tc.rule == "" && (status != 202 || f.mailer.count() != before+1):
			t.Errorf("%s: %d %v, want 202 and a mail", tc.name, status, out)
		case tc.rule == "":
			// The chosen end-entity certificate is Alice's, not a CA's.
			smimeToken(t, f.mailer.last(t).msg, issued)
		}
	}
	// No anchors (the default): the self-issued certificate is fine.
	g := newFixture(t)
	if status, out := apiCall(t, g, "/api/v1/submit", map[string]string{"address": "alice@example.org", "key": string(self.PEM())}); status != 202 {
		t.Fatalf("self-issued without trust anchors: %d %v", status, out)
	}
}

// TestMixedSubmission: an OpenPGP key and a certificate pasted together
// (in either order) make two requests, each mailed in its own format and
// encrypted to its key alone; confirming both binds both (the resolver
// then chooses the format), confirming one binds that one. A removal then
// goes out once per kind, with the same link.
func TestMixedSubmission(t *testing.T) {
	ctx := context.Background()
	pgpKey := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	pub := testkeys.ArmoredPublic(t, pgpKey)
	cert := certFor(t, smimetest.P256, "alice@example.org")
	for _, order := range []string{"key first", "certificate first"} {
		t.Run(order, func(t *testing.T) {
			f := newFixture(t)
			data := append(append([]byte("my key:\n"), pub...), cert.PEM()...)
			if order == "certificate first" {
				data = append(append(slicesClone(cert.PEM()), "\nand my key:\n"...), pub...)
			}
			p, err := f.svc.Submit(ctx, "alice@example.org", data, "192.0.2.1")
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Keys) != 2 || p.Keys[0].Kind != keys.KindOpenPGP || p.Keys[1].Kind != keys.KindX509 {
				t.Fatalf("pending: %+v", p.Keys)
			}
			if f.mailer.count() != 2 {
				t.Fatalf("%d mails, want one per key", f.mailer.count())
			}
			pgpToken := openMail(t, f.mailer.sent[0].msg, pgpKey)
			certToken := smimeToken(t, f.mailer.sent[1].msg, cert)
			if _, err := f.svc.Confirm(ctx, certToken, "192.0.2.1"); err != nil {
				t.Fatal(err)
			}
			ks, _ := f.store.KeysFor(ctx, "alice@example.org")
			if len(ks) != 1 || ks[0].Kind() != keys.KindX509 {
				t.Fatalf("after confirming the certificate: %v", ks)
			}
			if _, err := f.svc.Confirm(ctx, pgpToken, "192.0.2.1"); err != nil {
				t.Fatal(err)
			}
			ks, _ = f.store.KeysFor(ctx, "alice@example.org")
			if len(ks) != 2 {
				t.Fatalf("after confirming both: %v", ks)
			}
			// Removal: one mail per kind, the same token in both.
			sent := f.mailer.count()
			if p, err := f.svc.RequestRemoval(ctx, "alice@example.org", "192.0.2.2"); err != nil || !p.Encrypted {
				t.Fatalf("removal: %v %+v", err, p)
			}
			if f.mailer.count() != sent+2 {
				t.Fatalf("%d removal mails, want 2", f.mailer.count()-sent)
			}
			t1 := openMail(t, f.mailer.sent[sent].msg, pgpKey)
			t2 := smimeToken(t, f.mailer.sent[sent+1].msg, cert)
			if t1 != t2 {
				t.Fatal("the removal mails carry different links")
			}
			if _, err := f.svc.Confirm(ctx, t1, "192.0.2.2"); err != nil {
				t.Fatal(err)
			}
			if ks, _ := f.store.KeysFor(ctx, "alice@example.org"); len(ks) != 0 {
				t.Fatalf("after removal: %v", ks)
			}
		})
	}
}

// TestCertificateReplacesKey: a certificate submitted alone replaces the
// address's OpenPGP key when confirmed, as a new key would: a submission
// is the whole set (documented in docs/api.md).
func TestCertificateReplacesKey(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	pgpKey := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	if _, err := f.svc.Submit(ctx, "alice@example.org", testkeys.ArmoredPublic(t, pgpKey), "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Confirm(ctx, openMail(t, f.mailer.last(t).msg, pgpKey), "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	cert := certFor(t, smimetest.RSA2048, "alice@example.org")
	if _, err := f.svc.Submit(ctx, "alice@example.org", cert.PEM(), "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	// The confirmation page names the certificate by its subject.
	c := browser(t)
	token := smimeToken(t, f.mailer.last(t).msg, cert)
	resp, err := c.Get(f.srv.URL + "/confirm?token=" + token)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if page := html.UnescapeString(string(b)); !strings.Contains(page, "with this certificate") || !strings.Contains(page, "CN=Cert alice@example.org") ||
		!strings.Contains(page, "expires "+cert.Cert.NotAfter.UTC().Format("2006-01-02")) {
		t.Errorf("the confirmation page does not describe the certificate:\n%s", page)
	}
	if _, err := f.svc.Confirm(ctx, token, "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	ks, _ := f.store.KeysFor(ctx, "alice@example.org")
	if len(ks) != 1 || ks[0].Kind() != keys.KindX509 {
		t.Fatalf("after confirming the certificate: %v", ks)
	}
}

// TestCertificateLimits: certificate submissions count against the same
// limits as keys, per address and per client, and are refused before
// they are parsed.
func TestCertificateLimits(t *testing.T) {
	f := newFixtureWith(t, nil, func(o *Options) { o.MaxPendingPerAddress = 2; o.MaxRequestsPerClient = 3 })
	ctx := context.Background()
	cert := certFor(t, smimetest.RSA2048, "alice@example.org")
	for i := range 2 {
		if _, err := f.svc.Submit(ctx, "alice@example.org", cert.PEM(), "192.0.2.1"); err != nil {
			t.Fatalf("submission %d: %v", i, err)
		}
	}
	_, err := f.svc.Submit(ctx, "alice+x@example.org", cert.PEM(), "192.0.2.1")
	if ue := userErr(t, err); ue.Status != 429 {
		t.Fatalf("third certificate for alice: %d %s", ue.Status, ue.Msg)
	}
	bob := certFor(t, smimetest.RSA2048, "bob@example.org")
	if _, err := f.svc.Submit(ctx, "bob@example.org", bob.PEM(), "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	// The client has used its 3 requests: even garbage DER is not parsed.
	_, err = f.svc.Submit(ctx, "carol@example.org", []byte{0x30, 0x84, 0xff, 0xff, 0xff, 0xff}, "192.0.2.1")
	if ue := userErr(t, err); ue.Status != 429 {
		t.Fatalf("fourth request of the client: %d %s", ue.Status, ue.Msg)
	}
	if f.mailer.count() != 3 {
		t.Errorf("%d mails", f.mailer.count())
	}
}

// TestCertificateSQLite runs a certificate submission through the SQLite
// store: the request keeps the certificate (and its chain) until it is
// confirmed, and the bound certificate is the submitted one.
func TestCertificateSQLite(t *testing.T) {
	ctx := context.Background()
	store, err := keys.InitSQLite(ctx, filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	f := newFixtureWith(t, store, nil)
	root := smimetest.New(t, smimetest.Spec{Key: smimetest.P384, CA: true, CommonName: "Test Root"})
	alice := smimetest.New(t, smimetest.Spec{Addresses: []string{"Alice@Example.org"}, CommonName: "Alice", Parent: root})
	if _, err := f.svc.Submit(ctx, "alice@example.org", append(root.PEM(), alice.PEM()...), "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Confirm(ctx, smimeToken(t, f.mailer.last(t).msg, alice), "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	ks, err := store.KeysFor(ctx, "alice@example.org")
	if err != nil || len(ks) != 1 || ks[0].Kind() != keys.KindX509 {
		t.Fatalf("bound: %v %v", ks, err)
	}
	c := ks[0].Certificate()
	if !c.Cert.Equal(alice.Cert) || len(c.Chain) != 1 || !c.Chain[0].Equal(root.Cert) {
		t.Fatalf("stored certificate %s with %d chain certificates", c.Cert.Subject, len(c.Chain))
	}
}

// TestSplitSubmission checks the separation of a submission's text into
// its OpenPGP and certificate parts.
func TestSplitSubmission(t *testing.T) {
	const key = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxjMEZ\n=abcd\n-----END PGP PUBLIC KEY BLOCK-----\n"
	const cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
	for _, tc := range []struct {
		name, in, pgp, cert string
	}{
		{"key", key, key, ""},
		{"key with text", "hi\n" + key + "bye", "hi\n" + key + "bye", ""},
		{"certificate", cert, "", cert},
		{"key, certificate", key + cert, key + "\n", cert},
		{"certificate, key", cert + key + "x", key + "\n", cert + "x"},
		{"unterminated armour", cert + "-----BEGIN PGP PUBLIC KEY BLOCK-----\nxx", "-----BEGIN PGP PUBLIC KEY BLOCK-----\nxx", cert},
		{"END without newline", cert + "-----BEGIN PGP PUBLIC KEY BLOCK-----\n-----END PGP PUBLIC KEY BLOCK-----", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n-----END PGP PUBLIC KEY BLOCK-----\n", cert},
		{"private key PEM", "-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----\n", "", "-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----\n"},
		{"garbage", "garbage", "garbage", ""},
		{"DER", "\x30\x03\x02\x01\x00", "", "\x30\x03\x02\x01\x00"},
	} {
		pgp, c := splitSubmission([]byte(tc.in))
		if string(pgp) != tc.pgp || string(c) != tc.cert {
			t.Errorf("%s: pgp %q cert %q, want %q %q", tc.name, pgp, c, tc.pgp, tc.cert)
		}
	}
}
