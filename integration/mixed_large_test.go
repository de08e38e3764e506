package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/smimetest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// Sizes of TestMixedLargeTransaction.
const (
	mixedRecipients = 1000 // what the sender puts in one transaction
	mixedDeadline   = 4 * time.Minute
)

// readmeErrorLimits returns the smtpd_*_error_limit lines of the README's
// Postfix section, so that the test runs the configuration the README
// recommends and fails if the README ever recommends one that does not
// work.
func readmeErrorLimits(t testing.TB) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "\n## Postfix\n")
	if i < 0 {
		t.Fatal("README.md has no Postfix section")
	}
	s = s[i:]
	if j := strings.Index(s[1:], "\n## "); j >= 0 {
		s = s[:j+1]
	}
	re := regexp.MustCompile(`(?m)^(smtpd_(?:soft|hard)_error_limit|smtpd_error_sleep_time|smtpd_recipient_limit|smtpd_recipient_overshoot_limit)\s*=\s*(.+?)\s*$`)
	got := map[string]string{}
	for _, m := range re.FindAllStringSubmatch(s, -1) {
		got[m[1]] = m[2]
	}
	if got["smtpd_soft_error_limit"] == "" || got["smtpd_hard_error_limit"] == "" {
		t.Fatalf("README.md's Postfix section sets no smtpd_soft_error_limit/smtpd_hard_error_limit (found %v)", got)
	}
	return got
}

// mxErrorLimits is readmeErrorLimits with the overrides of
// LACRE_IT_MX_MAIN ("name=value ...", for measuring other limits).
func mxErrorLimits(t testing.TB) map[string]string {
	t.Helper()
	limits := readmeErrorLimits(t)
	for _, kv := range strings.Fields(os.Getenv("LACRE_IT_MX_MAIN")) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			t.Fatalf("LACRE_IT_MX_MAIN: %q is not name=value", kv)
		}
		limits[k] = v
	}
	return limits
}

// TestMixedLargeTransaction: a Postfix sender with
// smtp_destination_recipient_limit = 1000 relays one message to 1,000
// recipients of three classes in turn (an OpenPGP key, an S/MIME
// certificate, neither) to the MX (Postfix with lacre-milter, configured
// with the README's error limits). The MX answers "452 4.5.3" to every
// recipient of another class than the first; the sender delivers those
// in later transactions. Every recipient must receive exactly one copy,
// each keyed recipient a PGP/MIME one that its own key decrypts to the
// original body, each certificate holder an S/MIME one that its own key
// decrypts to the original MIME fields and body (and openssl too, for
// one recipient of each copy), each other recipient the message
// unchanged, and the MX must not have dropped the sender for too many
// errors.
//
// With Postfix's default error limits (10/20), or 50/100, the MX drops
// the sender in the middle of the first transaction, every time, and
// nothing is delivered: docs/operations.md has the figures. To see it,
// override the MX's settings, e.g.
//
//	LACRE_IT_MX_MAIN='smtpd_soft_error_limit=10 smtpd_hard_error_limit=20' \
//	  go test ./integration -run MixedLarge -v
//
// (the test then fails at its deadline and logs what arrived).
func TestMixedLargeTransaction(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 recipients through two Postfix instances: not with -short")
	}
	start := time.Now()

	// Recipients i%3 == 0 have an OpenPGP key each, i%3 == 1 an S/MIME
	// certificate (P-256, each its own key), the others neither; in one
	// domain, so that nothing but the key tells them apart.
	openssl := smimetest.Tool(t, "openssl")
	rcpts := make([]string, mixedRecipients)
	secret := map[string]*openpgp.Entity{}
	certs := map[string]*smimetest.Cert{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	for i := range rcpts {
		rcpts[i] = fmt.Sprintf("r%04d@example.org", i)
		if i%3 == 1 {
			certs[rcpts[i]] = ownKeyCert(t, rcpts[i])
		}
		if i%3 != 0 {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(addr string) {
			defer wg.Done()
			defer func() { <-sem }()
			e := testkeys.Generate(t, testkeys.Curve25519, addr)
			mu.Lock()
			secret[addr] = e
			mu.Unlock()
		}(rcpts[i])
	}
	wg.Wait()
	t.Logf("%d keys and %d certificates generated in %v", len(secret), len(certs), time.Since(start).Round(time.Millisecond))

	s := startSink(t)
	m := startMilter(t, "[store]\ncache_ttl = \"5m\"\n")
	addKeys(t, m, secret)
	withStore(t, m, func(ctx context.Context, st *keys.SQLiteStore) {
		for addr, c := range certs {
			bindCert(t, ctx, st, addr, c.PEM())
		}
	})

	mxMain := mxErrorLimits(t)
	t.Logf("MX settings: %v", mxMain)
	mx := startPostfix(t, postfixOptions{RelayPort: s.port, SMTPDMilters: m.addr(), Main: mxMain})
	sender := startPostfix(t, postfixOptions{RelayPort: mx.smtpPort, Main: map[string]string{
		"smtp_destination_recipient_limit": fmt.Sprint(mixedRecipients),
		// The harness's 1 s retries (minimal_backoff_time, queue_run_delay)
		// stand for Postfix's 300 s.
	}})

	body := strings.ReplaceAll("The mixed-recipient message.\nA marker for cleartext: plaintext-marker-7f3a.\n", "\n", "\r\n")
	msg := message("mixed-large", "undisclosed-recipients:;", textFields, body)
	sent := time.Now()
	if err := sender.sendSMTP(t, "sender@example.com", rcpts, msg); err != nil {
		t.Fatal(err)
	}

	// Wait until every recipient has a copy and both queues are empty.
	deadline := sent.Add(mixedDeadline)
	count := func() (map[string]int, int) {
		n := map[string]int{}
		for _, sm := range s.messages() {
			for _, r := range sm.To {
				n[strings.ToLower(r)]++
			}
		}
		return n, len(s.messages())
	}
	for {
		n, msgs := count()
		if len(n) == len(rcpts) && len(sender.queue(t)) == 0 && len(mx.queue(t)) == 0 {
			t.Logf("all %d recipients delivered in %v (%d messages at the sink)", len(rcpts), time.Since(sent).Round(time.Millisecond), msgs)
			break
		}
		if time.Now().After(deadline) {
			keyed, smime, clear := 0, 0, 0
			for r := range n {
				if _, ok := secret[r]; ok {
					keyed++
				} else if _, ok := certs[r]; ok {
					smime++
				} else {
					clear++
				}
			}
			t.Fatalf("after %v: %d of %d recipients delivered (%d OpenPGP, %d S/MIME, %d neither) in %d messages; MX dropped the sender %d time(s) for too many errors\nsender queue: %d message(s)\nsender log:\n%s",
				mixedDeadline, len(n), len(rcpts), keyed, smime, clear, msgs, strings.Count(mx.log(), "too many errors"),
				len(sender.queue(t)), tail(sender.log(), 20))
		}
		time.Sleep(500 * time.Millisecond)
	}
	// Time for a duplicate to arrive, if anything were still retrying.
	time.Sleep(2 * time.Second)

	n, _ := count()
	for _, r := range rcpts {
		if n[r] != 1 {
			t.Errorf("%s received %d copies, want 1", r, n[r])
		}
	}
	_, sentBody := splitMessage(msg)
	var encMsgs, smimeMsgs, clearMsgs, decrypted, smimeDecrypted int
	for _, sm := range s.messages() {
		if !bytes.Contains(sm.Data, []byte("<mixed-large@example.com>")) {
			t.Fatalf("an unexpected message at the sink: %.200q", sm.Data)
		}
		var keyed, smime, unkeyed int
		for _, r := range sm.To {
			if _, ok := secret[strings.ToLower(r)]; ok {
				keyed++
			} else if _, ok := certs[strings.ToLower(r)]; ok {
				smime++
			} else {
				unkeyed++
			}
		}
		if classes := min(keyed, 1) + min(smime, 1) + min(unkeyed, 1); classes != 1 {
			t.Fatalf("one copy went to %d OpenPGP, %d S/MIME and %d unkeyed recipients together", keyed, smime, unkeyed)
		}
		if keyed+smime > 0 && bytes.Contains(sm.Data, []byte("plaintext-marker-7f3a")) {
			t.Fatalf("cleartext in the copy for %v", sm.To)
		}
		switch {
		case unkeyed > 0:
			clearMsgs++
			checkRelayed(t, sm.Data, msg)
		case smime > 0:
			smimeMsgs++
			// One ciphertext with a RecipientInfo for each recipient,
			// which its own key opens.
			_, body := splitMessage(sm.Data)
			der, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(string(body), "\r\n", ""))
			if err != nil {
				t.Fatalf("S/MIME copy for %d recipients: %v", len(sm.To), err)
			}
			for _, r := range sm.To {
				c := certs[strings.ToLower(r)]
				inner, p, err := smimetest.Decrypt(der, c.Cert, c.Key)
				if err != nil {
					t.Fatalf("%s cannot decrypt its S/MIME copy: %v", r, err)
				}
				// The MX relays a copy to at most 50 recipients
				// (smtp_destination_recipient_limit), a ciphertext made
				// for the whole transaction's S/MIME recipients.
				if p.RICount < len(sm.To) || p.RICount > len(certs) {
					t.Fatalf("S/MIME copy for %d recipients has %d RecipientInfos", len(sm.To), p.RICount)
				}
				if _, innerBody := splitMessage(inner); !bytes.Equal(innerBody, sentBody) {
					t.Fatalf("%s: decrypted S/MIME body differs: %q", r, innerBody)
				}
				smimeDecrypted++
			}
			// And openssl, for the first recipient of the copy.
			first := strings.ToLower(sm.To[0])
			dir := t.TempDir()
			party := smimetest.Party{C: certs[first], CertPath: smimetest.WriteFile(t, dir, "c.pem", certs[first].PEM()),
				KeyPath: smimetest.WriteFile(t, dir, "k.pem", certs[first].KeyPEM(t))}
			checkSMIMEWithOpenSSL(t, openssl, party, sm.Data, msg)
		default:
			encMsgs++
			_, armored := pgptest.Open(t, sm.Data)
			// Every keyed recipient's own key must open its copy.
			for _, r := range sm.To {
				inner, _ := pgptest.Decrypt(t, armored, secret[strings.ToLower(r)])
				if _, innerBody := splitMessage(inner); !bytes.Equal(innerBody, sentBody) {
					t.Fatalf("%s: decrypted body differs: %q", r, innerBody)
				}
				decrypted++
			}
		}
	}
	t.Logf("%d PGP/MIME copies (decrypted for %d recipients, each with its own key), %d S/MIME copies (decrypted for %d recipients, each with its own key), %d clear copies",
		encMsgs, decrypted, smimeMsgs, smimeDecrypted, clearMsgs)
	if decrypted != len(secret) || smimeDecrypted != len(certs) {
		t.Errorf("decrypted for %d of %d OpenPGP and %d of %d S/MIME recipients", decrypted, len(secret), smimeDecrypted, len(certs))
	}

	mxLog, senderLog := mx.log(), sender.log()
	if k := strings.Count(mxLog, "too many errors"); k > 0 {
		t.Errorf("the MX dropped the sender %d time(s) for too many errors", k)
	}
	split := strings.Count(mxLog, "milter-reject: RCPT")
	t.Logf("MX: %d RCPT replies 452 4.5.3 from the milter; sender: %d deferrals logged", split, strings.Count(senderLog, "status=deferred"))
	// The first transaction defers the two classes that are not first
	// (two thirds), the next one of them the other.
	if want := mixedRecipients * 2 / 3; split < want || !strings.Contains(mxLog, "452 4.5.3") {
		t.Errorf("the MX split the transaction %d times, want at least %d", split, want)
	}
	t.Logf("whole test: %v", time.Since(start).Round(time.Millisecond))
}

// addKeys binds each address's public key in the milter's key store,
// in-process (one "lacre-milter keys add" per address would take
// minutes for hundreds of keys).
func addKeys(t testing.TB, m *milterProc, secret map[string]*openpgp.Entity) {
	t.Helper()
	ctx := context.Background()
	st, err := keys.OpenSQLite(ctx, filepath.Join(m.dir, "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for addr, e := range secret {
		ks, err := keys.Parse(testkeys.Public(t, e))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Add(ctx, addr, ks, false); err != nil {
			t.Fatal(err)
		}
	}
}

// ownKeyCert makes a self-signed S/MIME certificate for addr with a P-256
// key of its own (smimetest.New shares one key per kind; the large test
// checks that each recipient's own key opens its copy).
func ownKeyCert(t testing.TB, addr string) *smimetest.Cert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:   serial,
		Subject:        pkix.Name{CommonName: addr},
		NotBefore:      now.Add(-time.Hour),
		NotAfter:       now.Add(24 * time.Hour),
		KeyUsage:       x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
		EmailAddresses: []string{addr},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &smimetest.Cert{Cert: c, Key: key}
}
