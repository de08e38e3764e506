package gpgmailgate_test

import (
	"bytes"
	"context"
	"database/sql"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/gpgmailgate"
	"lacre.io/milter/internal/gnupgtest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

var policy = keys.Policy{MinRSABits: 2048, Normalizer: keys.Normalizer{FoldLocalPartCase: true, SubaddressSeparator: "+"}}

func newStore(t *testing.T) keys.Store {
	t.Helper()
	s, err := keys.InitSQLite(context.Background(), filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// outcomes maps "address outcome[ (rule)]" for each line, for comparison.
func outcomes(rep *gpgmailgate.Report) []string {
	var out []string
	for _, l := range rep.Lines {
		s := l.Address + " " + string(l.Outcome)
		if l.Outcome == gpgmailgate.Refused {
			s += " (" + string(l.Rule) + ")"
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func bindings(t *testing.T, s keys.Store) []string {
	t.Helper()
	bs, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, b := range bs {
		out = append(out, b.Address+" "+b.Key.Fingerprint+" "+b.Added.String())
	}
	return out
}

// gnupgHome is a gpg-mailgate key home with one key of each kind the
// import must tell apart.
type gnupgHome struct {
	*gnupgtest.Home
	alice, carol, old, rev, bob string
}

func makeHome(t *testing.T, legacy bool) gnupgHome {
	h := gnupgHome{Home: gnupgtest.New(t, legacy)}
	h.alice = h.Key("Alice <alice@example.org>", time.Time{}, "1y")
	h.carol = h.Key("Carol <carol@example.org>", time.Time{}, "never")
	h.AddUserID(h.carol, "Carol at home <Carol@Example.NET>")
	// A User ID revoked since is not an address of the key.
	h.AddUserID(h.carol, "Carol <carol.old@example.org>")
	h.RevokeUserID(h.carol, "Carol <carol.old@example.org>")
	h.old = h.Key("Old <old@example.org>", time.Now().AddDate(-1, 0, 0), "30d")
	h.rev = h.Key("Rev <rev@example.org>", time.Time{}, "1y")
	h.Revoke(h.rev)
	h.bob = h.Key("Bob <bob@elsewhere.test>", time.Time{}, "1y")
	return h
}

func TestImportGnuPGHome(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		name := map[bool]string{false: "keybox", true: "legacy-keyring"}[legacy]
		t.Run(name, func(t *testing.T) {
			h := makeHome(t, legacy)
			file := map[bool]string{false: "pubring.kbx", true: "pubring.gpg"}[legacy]
			if _, err := filepath.Glob(filepath.Join(h.Dir, file)); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			entries, err := gpgmailgate.ReadGnuPGHome(ctx, h.Dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 5 {
				t.Fatalf("read %d keys from %s, want 5", len(entries), file)
			}
			s := newStore(t)
			// A few seconds on: gpg dates a signature one second after the
			// one it follows when both fall in the same second, so the
			// User ID revocation may lie a second in the future.
			im := &gpgmailgate.Importer{Store: s, Policy: policy, Domains: []string{"example.org", "example.net"}, DryRun: true, Now: time.Now().Add(5 * time.Second)}
			want := []string{
				"alice@example.org imported",
				"bob@elsewhere.test refused (domain)",
				"carol.old@example.org skipped",
				"carol@example.net imported",
				"carol@example.org imported",
				"old@example.org refused (expired)",
				"rev@example.org refused (revoked)",
			}
			rep, err := im.Run(ctx, entries)
			if err != nil {
				t.Fatal(err)
			}
			if got := outcomes(rep); !slices.Equal(got, want) {
				t.Fatalf("dry run:\n got %q\nwant %q", got, want)
			}
			if b := bindings(t, s); len(b) != 0 {
				t.Fatalf("the dry run changed the store: %q", b)
			}
			if rep.Refused() != 3 || !strings.Contains(rep.Summary(), "refused 3 (domain 1, expired 1, revoked 1)") {
				t.Errorf("summary %q", rep.Summary())
			}

			im.DryRun = false
			rep, err = im.Run(ctx, entries)
			if err != nil {
				t.Fatal(err)
			}
			if got := outcomes(rep); !slices.Equal(got, want) {
				t.Fatalf("import:\n got %q\nwant %q", got, want)
			}
			before := bindings(t, s)
			if len(before) != 3 {
				t.Fatalf("store after the import: %q", before)
			}
			for _, b := range before {
				if strings.HasPrefix(b, "carol@") && !strings.Contains(b, h.carol) || strings.HasPrefix(b, "alice@") && !strings.Contains(b, h.alice) {
					t.Errorf("wrong key bound: %s", b)
				}
			}

			// Again: nothing changes.
			rep, err = im.Run(ctx, entries)
			if err != nil {
				t.Fatal(err)
			}
			if n := rep.Count(gpgmailgate.Present); n != 3 || rep.Count(gpgmailgate.Skipped) != 1 || rep.Count(gpgmailgate.Imported) != 0 || rep.Count(gpgmailgate.Updated) != 0 {
				t.Errorf("second run: %q", outcomes(rep))
			}
			if after := bindings(t, s); !slices.Equal(before, after) {
				t.Errorf("the second run changed the store:\n%q\n%q", before, after)
			}
		})
	}
}

// A key already bound to an address is not replaced without Replace.
func TestImportDoesNotReplaceSilently(t *testing.T) {
	h := gnupgtest.New(t, false)
	alice := h.Key("Alice <alice@example.org>", time.Time{}, "1y")
	ctx := context.Background()
	s := newStore(t)
	other := keysParse(t, testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")))
	if err := keys.Admit(ctx, s, policy, keys.Admission{Address: "alice@example.org", Keys: other}, time.Now()); err != nil {
		t.Fatal(err)
	}
	entries, err := gpgmailgate.ReadGnuPGHome(ctx, h.Dir)
	if err != nil {
		t.Fatal(err)
	}
	im := &gpgmailgate.Importer{Store: s, Policy: policy}
	rep, err := im.Run(ctx, entries)
	if err != nil {
		t.Fatal(err)
	}
	if got := outcomes(rep); !slices.Equal(got, []string{"alice@example.org refused (already-bound)"}) {
		t.Fatalf("got %q", got)
	}
	ks, _ := s.KeysFor(ctx, "alice@example.org")
	if len(ks) != 1 || ks[0].Fingerprint != other[0].Fingerprint {
		t.Fatalf("the stored key changed: %v", ks)
	}
	im.Replace = true
	rep, err = im.Run(ctx, entries)
	if err != nil {
		t.Fatal(err)
	}
	if got := outcomes(rep); !slices.Equal(got, []string{"alice@example.org imported"}) {
		t.Fatalf("with Replace: %q", got)
	}
	ks, _ = s.KeysFor(ctx, "alice@example.org")
	if len(ks) != 1 || ks[0].Fingerprint != alice {
		t.Fatalf("with Replace, alice has %v, want only %s", ks, alice)
	}
}

func keysParse(t *testing.T, data []byte) []*keys.Key {
	t.Helper()
	ks, err := keys.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// lacreSQLiteSchema is the table as Lacre's SQLAlchemy model creates it in
// SQLite (no AUTO_INCREMENT: an INTEGER PRIMARY KEY is the row id).
const lacreSQLiteSchema = `CREATE TABLE gpgmw_keys (
	id INTEGER NOT NULL, 
	email VARCHAR(256), 
	publickey TEXT, 
	confirm VARCHAR(32), 
	status INTEGER NOT NULL, 
	time DATETIME DEFAULT (CURRENT_TIMESTAMP), 
	PRIMARY KEY (id)
)`

// TestGpgmwSemantics checks cron.py's rules on a real SQLite table.
func TestGpgmwSemantics(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "gpgmw.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(lacreSQLiteSchema); err != nil {
		t.Fatal(err)
	}
	pub := func(addr string) string {
		// A new key each time (Generate caches one per address).
		return string(testkeys.ArmoredPublic(t, testkeys.Expiring(t, addr, time.Now().Add(-time.Hour).Truncate(time.Second), 365*24*time.Hour)))
	}
	aliceOld, aliceNew := pub("alice@example.org"), pub("alice@example.org")
	if aliceOld == aliceNew {
		t.Fatal("the two keys of alice are the same")
	}
	rows := []struct {
		email, key, confirm string
		status              int
	}{
		{"alice@example.org", aliceOld, "", 1},                       // 1: imported earlier
		{"alice@example.org", aliceNew, "", 0},                       // 2: newer, confirmed: wins
		{"Alice@Example.org", pub("alice@example.org"), "tok123", 0}, // 3: unconfirmed
		{"bob@example.org", pub("bob@example.org"), "tok456", 0},     // 4: unconfirmed
		{"carol@example.org", pub("carol@example.org"), "", 1},       // 5: imported …
		{"carol@example.org", "", "", 2},                             // 6: … then deletion requested
		{"dave@example.org", pub("dave@example.org"), "", 1},         // 7: imported …
		{"dave@example.org", "  \n", "", 0},                          // 8: … then an empty key: unbind
		{"erin@example.org", pub("mallory@example.org"), "", 0},      // 9: someone else's key
		{"frank@example.org", "", "", 1},                             // 10: imported, key cleared
		{"gina@example.org", string(testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.Revoked, "gina@example.org"))), "", 1}, // 11: revoked since
		{"", pub("hank@example.org"), "", 0}, // 12: no address: binds nothing
	}
	for _, r := range rows {
		if _, err := db.Exec("INSERT INTO gpgmw_keys (email, publickey, confirm, status) VALUES (?, ?, ?, ?)", r.email, r.key, r.confirm, r.status); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	ro, _, err := gpgmailgate.OpenDSN(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	read, err := gpgmailgate.ReadRows(ctx, ro, gpgmailgate.DefaultTable)
	if err != nil {
		t.Fatal(err)
	}
	if len(read) != len(rows) {
		t.Fatalf("read %d rows, want %d", len(read), len(rows))
	}
	s := newStore(t)
	dave := keysParse(t, []byte(rows[6].key))
	if err := keys.Admit(ctx, s, policy, keys.Admission{Address: "dave@example.org", Keys: dave}, time.Now()); err != nil {
		t.Fatal(err)
	}
	im := &gpgmailgate.Importer{Store: s, Policy: policy}
	rep, err := im.Run(ctx, gpgmailgate.RowEntries(read, policy.Normalizer.Normalize))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		" skipped", // row 12
		"alice@example.org imported",
		"alice@example.org skipped", // row 1, superseded
		"alice@example.org skipped", // row 3, unconfirmed
		"bob@example.org skipped",
		"carol@example.org skipped", // row 5, deletion requested
		"carol@example.org skipped", // row 6: no key to delete
		"dave@example.org refused (already-bound)",
		"dave@example.org skipped", // row 7 superseded
		"erin@example.org refused (user-id)",
		"frank@example.org skipped",
		"gina@example.org refused (revoked)",
	}
	if got := outcomes(rep); !slices.Equal(got, want) {
		t.Fatalf("\n got %q\nwant %q\n%s", got, want, lines(rep))
	}
	if want := "skipped 8 (deletion requested 1, imported row with its publickey cleared 1, no email address in the row 1, no key 1, superseded 2, unconfirmed 2)"; !strings.Contains(rep.Summary(), want) {
		t.Errorf("summary %q lacks %q", rep.Summary(), want)
	}
	ks, _ := s.KeysFor(ctx, "alice@example.org")
	if len(ks) != 1 || ks[0].Fingerprint != keysParse(t, []byte(aliceNew))[0].Fingerprint {
		t.Errorf("alice is bound to %v, want the key of row 2", ks)
	}
	// With Replace, the empty confirmed key of row 8 removes dave's key.
	im.Replace = true
	rep, err = im.Run(ctx, gpgmailgate.RowEntries(read, policy.Normalizer.Normalize))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(outcomes(rep), "dave@example.org unbound") || !slices.Contains(outcomes(rep), "alice@example.org already present") {
		t.Fatalf("with Replace: %q", outcomes(rep))
	}
	if ks, _ := s.KeysFor(ctx, "dave@example.org"); len(ks) != 0 {
		t.Errorf("dave still has %v", ks)
	}
}

func lines(rep *gpgmailgate.Report) string {
	var b strings.Builder
	rep.Write(&b)
	return b.String()
}

// A refreshed copy of a stored key (a new expiry) updates the store; an
// older copy than the store's is already present, and changes nothing.
func TestImportRefreshedKey(t *testing.T) {
	h := gnupgtest.New(t, false)
	alice := h.Key("Alice <alice@example.org>", time.Time{}, "1y")
	ctx := context.Background()
	s := newStore(t)
	// gpg may date a new self-signature a second ahead (see above).
	im := &gpgmailgate.Importer{Store: s, Policy: policy, Now: time.Now().Add(5 * time.Second)}
	before, err := gpgmailgate.ReadGnuPGHome(ctx, h.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.Run(ctx, before); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // a later self-signature
	h.SetExpiry(alice, "2y")
	after, err := gpgmailgate.ReadGnuPGHome(ctx, h.Dir)
	if err != nil {
		t.Fatal(err)
	}
	im.Now = time.Now().Add(5 * time.Second)
	rep, err := im.Run(ctx, after)
	if err != nil {
		t.Fatal(err)
	}
	if got := outcomes(rep); !slices.Equal(got, []string{"alice@example.org updated"}) {
		t.Fatalf("refreshed copy: %q", got)
	}
	stored, err := s.KeyByFingerprint(ctx, alice)
	if err != nil {
		t.Fatal(err)
	}
	if exp := stored.Expires(); time.Until(exp) < 400*24*time.Hour {
		t.Errorf("the store's copy expires %v, want the new expiry (2y)", exp)
	}
	rep, err = im.Run(ctx, before)
	if err != nil {
		t.Fatal(err)
	}
	if got := outcomes(rep); !slices.Equal(got, []string{"alice@example.org already present"}) || !strings.Contains(lines(rep), "the store's copy is newer") {
		t.Fatalf("older copy: %q\n%s", got, lines(rep))
	}
	if again, _ := s.KeyByFingerprint(ctx, alice); !bytes.Equal(again.Raw, stored.Raw) {
		t.Errorf("the older copy replaced the newer one")
	}
}
