package main

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/config"
	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
	"lacre.io/milter/web"
)

// admitCase is one submission of a key for alice@example.org, made to both
// front ends of keys.Admit: "lacre-milter keys add" and the registration
// service's confirmation.
type admitCase struct {
	name string
	// stored puts the store at path into its state before the submission.
	stored func(t *testing.T, path string)
	// submit is the public key submitted; secret decrypts the confirmation mail.
	submit []byte
	secret *openpgp.Entity
	// submitted is when the web service receives the key (zero: when it
	// is confirmed, now).
	submitted time.Time
	// want is "bound", "invalid" (a rule of the key refused it), "stale"
	// (the store's copy wins) or "error" (the store failed); msg is in
	// the message of every outcome but "bound".
	want, msg string
	// after are the fingerprints bound to alice afterwards.
	after []string
}

const admitAddr = "alice@example.org"

// admitCases builds the table.
func admitCases(t *testing.T) []admitCase {
	now := time.Now()
	// One key in three copies: as exported two days ago, after a new User
	// ID a day later, and after its revocation.
	created := now.Add(-48 * time.Hour)
	e, err := openpgp.NewEntity("Alice", "", admitAddr, &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA,
		DefaultCipher: packet.CipherAES256, Time: func() time.Time { return created }})
	if err != nil {
		t.Fatal(err)
	}
	older := testkeys.ArmoredPublic(t, e)
	if err := e.AddUserId("Alice", "", "alice@example.net", &packet.Config{Time: func() time.Time { return created.Add(24 * time.Hour) }}); err != nil {
		t.Fatal(err)
	}
	newer := testkeys.ArmoredPublic(t, e)
	fpr := keystest.Parse(t, e).Fingerprint
	if err := e.Revoke(packet.KeySuperseded, "moved on", &packet.Config{Time: func() time.Time { return created.Add(36 * time.Hour) }}); err != nil {
		t.Fatal(err)
	}
	revoked := testkeys.ArmoredPublic(t, e)

	fresh, freshSecret := keystest.Key(t, testkeys.Curve25519, admitAddr)
	other, otherSecret := keystest.Key(t, testkeys.Curve25519, "other@example.org")
	// Valid when the web service receives it, expired half an hour before
	// it is confirmed.
	expiringCreated := now.Add(-2 * time.Hour).Truncate(time.Second)
	expiring := testkeys.Expiring(t, admitAddr, expiringCreated, 90*time.Minute)

	// bind stores armoured keys for address as "keys add" would.
	bind := func(address string, armoured []byte) func(t *testing.T, path string) {
		return func(t *testing.T, path string) {
			t.Helper()
			ks, err := keys.Parse(armoured)
			if err != nil {
				t.Fatal(err)
			}
			admitStore(t, path, func(s keys.Store) error { return s.Add(context.Background(), address, ks, false) })
		}
	}
	none := func(*testing.T, string) {}
	return []admitCase{
		{name: "new key", stored: none, submit: fresh.Armored(), secret: freshSecret,
			want: "bound", after: []string{fresh.Fingerprint}},
		{name: "the same copy, bound to another address too", stored: bind("team@example.org", fresh.Armored()), submit: fresh.Armored(), secret: freshSecret,
			want: "bound", after: []string{fresh.Fingerprint}},
		{name: "a key without the address", stored: none, submit: other.Armored(), secret: otherSecret,
			want: "invalid", msg: "no User ID carries the address alice@example.org"},
		{name: "a newer copy replaces an older one", stored: bind(admitAddr, older), submit: newer, secret: e,
			want: "bound", after: []string{fpr}},
		{name: "expired since submission", stored: none, submit: testkeys.ArmoredPublic(t, expiring), secret: expiring,
			submitted: expiringCreated.Add(time.Hour), want: "invalid", msg: "expired"},
		{name: "an older copy does not replace a newer one", stored: bind("bob@example.org", newer), submit: older, secret: e,
			want: "stale", msg: "holds a newer copy"},
		{name: "a copy without the revocation does not replace a revoked one", stored: bind(admitAddr, revoked), submit: newer, secret: e,
			want: "stale", msg: "holds a revoked copy", after: []string{fpr}},
		{name: "an unreadable stored copy is an error, not a missing one", submit: fresh.Armored(), secret: freshSecret,
			stored: func(t *testing.T, path string) {
				bind("bob@example.org", fresh.Armored())(t, path)
				db, err := sql.Open("sqlite", path)
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				if _, err := db.Exec("UPDATE keys SET material = x'00' WHERE fingerprint = ?", fresh.Fingerprint); err != nil {
					t.Fatal(err)
				}
			},
			want: "error", msg: "does not parse"},
	}
}

// admitStore runs f on the store at path, created if needed.
func admitStore(t *testing.T, path string, f func(keys.Store) error) {
	t.Helper()
	s, err := keys.InitSQLite(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := f(s); err != nil {
		t.Fatal(err)
	}
}

// boundTo returns the fingerprints bound to address in the store at path, sorted.
func boundTo(t *testing.T, path, address string) []string {
	t.Helper()
	var out []string
	admitStore(t, path, func(s keys.Store) error {
		ks, err := s.KeysFor(context.Background(), address)
		for _, k := range ks {
			out = append(out, k.Fingerprint)
		}
		return err
	})
	slices.Sort(out)
	return out
}

// TestAdmitFrontEnds runs the same submissions through "keys add" and
// the web service's confirmation: both call keys.Admit, so they must
// agree on every outcome, store errors included.
func TestAdmitFrontEnds(t *testing.T) {
	for _, front := range []struct {
		name string
		run  func(t *testing.T, c admitCase) (path, outcome, msg string)
	}{
		{"cli", admitByCLI},
		{"web", admitByWeb},
	} {
		t.Run(front.name, func(t *testing.T) {
			for _, c := range admitCases(t) {
				t.Run(c.name, func(t *testing.T) {
					path, outcome, msg := front.run(t, c)
					if outcome != c.want {
						t.Fatalf("outcome %q (%s), want %q", outcome, msg, c.want)
					}
					if c.want != "bound" && !strings.Contains(msg, c.msg) {
						t.Errorf("message %q does not contain %q", msg, c.msg)
					}
					want := slices.Clone(c.after)
					slices.Sort(want)
					if got := boundTo(t, path, admitAddr); !slices.Equal(got, want) {
						t.Errorf("bound to %s afterwards: %v, want %v", admitAddr, got, want)
					}
				})
			}
		})
	}
}

// admitByCLI runs "keys add" with the key in a file.
func admitByCLI(t *testing.T, c admitCase) (path, outcome, msg string) {
	f := newFixture(t, false, "")
	c.stored(t, f.db())
	r := f.run(nil, "keys", "add", admitAddr, f.file("key.asc", c.submit))
	switch {
	case r.code == 0:
		return f.db(), "bound", r.stdout
	case r.code == 1 && strings.Contains(r.stderr, "nothing changed") && strings.Contains(r.stderr, "the key store holds"):
		return f.db(), "stale", r.stderr
	case r.code == 1 && strings.Contains(r.stderr, "nothing changed"):
		return f.db(), "invalid", r.stderr
	}
	return f.db(), "error", r.String()
}

// admitByWeb submits the key, then confirms it with the link from the mail.
func admitByWeb(t *testing.T, c admitCase) (path, outcome, msg string) {
	ctx := context.Background()
	path = filepath.Join(t.TempDir(), "keys.db")
	c.stored(t, path)
	store, err := keys.InitSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	now := c.submitted
	if now.IsZero() {
		now = time.Now()
	}
	mailer := &admitMailer{}
	policy, err := keyPolicy(config.Default())
	if err != nil {
		t.Fatal(err)
	}
	svc, err := web.New(store, mailer, web.Options{
		BaseURL: "https://keys.example.org", Domains: []string{"example.org"}, From: "lacre@example.org",
		TokenTTL: 48 * time.Hour, MaxPendingPerAddress: 3, MaxRequestsPerClient: 10, Policy: policy,
		Now: func() time.Time { return now }, Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	var we *web.Error
	if _, err := svc.Submit(ctx, admitAddr, c.submit, "192.0.2.1"); errors.As(err, &we) && we.Status == 400 {
		return path, "invalid", we.Msg // Submit applies the same rules first
	} else if err != nil {
		t.Fatalf("submit: %v", err)
	}
	token := mailer.token(t, c.secret)
	now = time.Now()
	_, err = svc.Confirm(ctx, token, "192.0.2.1")
	switch {
	case err == nil:
		return path, "bound", ""
	case errors.As(err, &we) && we.Status == 400:
		return path, "invalid", we.Msg
	case errors.As(err, &we) && we.Status == 409:
		return path, "stale", we.Msg
	}
	return path, "error", err.Error()
}

// admitMailer keeps the last confirmation mail.
type admitMailer struct {
	mu  sync.Mutex
	msg []byte
}

func (m *admitMailer) Send(_ context.Context, _ string, _ []string, msg []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.msg = msg
	return nil
}

var admitLinkRE = regexp.MustCompile(`https://keys\.example\.org/confirm\?token=([A-Za-z0-9_-]+)`)

// token decrypts the last mail with secret and returns its link's token.
func (m *admitMailer) token(t *testing.T, secret *openpgp.Entity) string {
	t.Helper()
	m.mu.Lock()
	msg := m.msg
	m.mu.Unlock()
	if msg == nil {
		t.Fatal("no confirmation mail")
	}
	_, body := pgptest.OpenAndDecrypt(t, msg, secret)
	tok := admitLinkRE.FindSubmatch(body)
	if tok == nil {
		t.Fatalf("no confirmation link in:\n%s", body)
	}
	return string(tok[1])
}
