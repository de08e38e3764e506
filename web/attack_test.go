package web

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
	"lacre.io/milter/wkd"
)

// encryptedTo returns the key IDs of a mail's session-key packets.
func encryptedTo(t *testing.T, msg []byte) []uint64 {
	t.Helper()
	i := bytes.Index(msg, []byte("-----BEGIN PGP MESSAGE-----"))
	if i < 0 {
		t.Fatal("the mail is not encrypted")
	}
	blk, err := armor.Decode(bytes.NewReader(msg[i:]))
	if err != nil {
		t.Fatal(err)
	}
	var ids []uint64
	r := packet.NewReader(blk.Body)
	for {
		p, err := r.Next()
		if err != nil {
			t.Fatalf("reading the session-key packets: %v", err)
		}
		ek, ok := p.(*packet.EncryptedKey)
		if !ok {
			return ids
		}
		ids = append(ids, ek.KeyId)
	}
}

func encryptionKeyID(t *testing.T, e *openpgp.Entity) uint64 {
	t.Helper()
	for _, sk := range e.Subkeys {
		if sk.PublicKey.PubKeyAlgo.CanEncrypt() {
			return sk.PublicKey.KeyId
		}
	}
	t.Fatal("no encryption subkey")
	return 0
}

// fetchWKD gets an address's key from the fixture's own Web Key
// Directory, as an attacker would.
func fetchWKD(t *testing.T, f *fixture, local string) []byte {
	t.Helper()
	h := f.svc.Handler(&wkd.Handler{Store: f.store, Domains: []string{"example.org"}, Policy: f.svc.opt.Policy})
	req := httptest.NewRequest("GET", "/.well-known/openpgpkey/hu/"+wkd.Hash(local)+"?l="+local, nil)
	req.Host = "example.org"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Fatalf("WKD lookup of %s: %d", local, rec.Code)
	}
	return rec.Body.Bytes()
}

func armorKey(t *testing.T, bin []byte) string {
	t.Helper()
	var b bytes.Buffer
	w, _ := armor.Encode(&b, openpgp.PublicKeyType, nil)
	w.Write(bin)
	w.Close()
	return b.String() + "\n"
}

// TestMultiKeySubmissionProvesEachKey is the attack of issue 12: mallory
// fetches alice's key from our WKD and submits it together with her own
// key carrying a User ID for alice@. Alice can decrypt one mail (the one
// for her own key), follows its link — and only her key is bound: the
// mail for mallory's key is encrypted to mallory's key alone, so alice
// cannot read its link, and mallory cannot read alice's mailbox.
func TestMultiKeySubmissionProvesEachKey(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	ak := []*keys.Key{keystest.Parse(t, alice)}
	f.store.Add(ctx, "alice@example.org", ak, false)
	// Mallory's own key, with a User ID for alice's address.
	mallory, err := openpgp.NewEntity("Alice", "", "alice@example.org", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
		t.Fatal(err)
	}
	mk := []*keys.Key{keystest.Parse(t, mallory)}

	fromWKD := fetchWKD(t, f, "alice")
	both := armorKey(t, fromWKD) + string(testkeys.ArmoredPublic(t, mallory))
	status, out := apiCall(t, f, "/api/v1/submit", map[string]string{"address": "alice@example.org", "key": both})
	if status != 202 {
		t.Fatalf("submission: %d %v", status, out)
	}
	// The answer names both keys.
	if ks, _ := out["keys"].([]any); len(ks) != 2 {
		t.Fatalf("the answer lists %v, want two keys", out["keys"])
	}
	// One mail per key, each encrypted to its key alone, naming it.
	if len(f.mailer.sent) != 2 {
		t.Fatalf("%d mails for a submission of two keys, want one per key", len(f.mailer.sent))
	}
	var forAlice, forMallory []byte
	for _, m := range f.mailer.sent {
		ids := encryptedTo(t, m.msg)
		switch {
		case slices.Equal(ids, []uint64{encryptionKeyID(t, alice)}):
			forAlice = m.msg
		case slices.Equal(ids, []uint64{encryptionKeyID(t, mallory)}):
			forMallory = m.msg
		default:
			t.Fatalf("a confirmation is encrypted to %x", ids)
		}
		if !bytes.Contains(m.msg, []byte("Subject: "+MailSubject)) {
			t.Errorf("the Subject is not the generic one:\n%s", m.msg[:bytes.Index(m.msg, []byte("\r\n\r\n"))])
		}
	}
	if forAlice == nil || forMallory == nil {
		t.Fatal("missing the mail for one of the keys")
	}
	if _, err := pgptest.DecryptFirstBlock(forMallory, alice); err == nil {
		t.Fatal("alice can read the confirmation for mallory's key")
	}
	var plain []byte
	plain, err = pgptest.DecryptFirstBlock(forAlice, alice)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(plain, []byte(ak[0].Fingerprint)) || bytes.Contains(plain, []byte(mk[0].Fingerprint)) {
		t.Fatalf("the mail for alice's key must name its fingerprint, and only it:\n%s", plain)
	}
	// The confirmation page names the key too.
	token := openMail(t, forAlice, alice)
	resp, err := http.Get(f.srv.URL + "/confirm?token=" + token)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(page, []byte(ak[0].Fingerprint)) || bytes.Contains(page, []byte(mk[0].Fingerprint)) {
		t.Fatalf("the confirmation page must name alice's fingerprint only:\n%s", page)
	}
	// Alice, trusting the mail she can read, follows its link.
	if status, out := apiCall(t, f, "/api/v1/confirm", map[string]string{"token": token}); status != 200 {
		t.Fatalf("confirm: %d %v", status, out)
	}
	got, _ := f.store.KeysFor(ctx, "alice@example.org")
	if fps := keys.SortedFingerprints(got); !slices.Equal(fps, []string{ak[0].Fingerprint}) {
		t.Fatalf("after alice confirmed, the address has %v; mallory's key is %s", fps, mk[0].Fingerprint)
	}
}

// TestMultiKeyOwnerBindsEachKey: a user who submits two keys of her own
// gets both, each after its own link; one link binds one key, and an
// earlier key goes at the first confirmation.
func TestMultiKeyOwnerBindsEachKey(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	old := testkeys.Generate(t, testkeys.V6, "bob@example.org")
	ok := []*keys.Key{keystest.Parse(t, old)}
	f.store.Add(ctx, "bob@example.org", ok, false)
	k1 := testkeys.Generate(t, testkeys.Curve25519, "bob@example.org")
	k2 := testkeys.Generate(t, testkeys.RSA3072, "bob@example.org")
	status, out := apiCall(t, f, "/api/v1/submit", map[string]string{"address": "bob@example.org",
		"key": string(testkeys.ArmoredPublic(t, k1)) + string(testkeys.ArmoredPublic(t, k2))})
	if status != 202 {
		t.Fatalf("submission: %d %v", status, out)
	}
	tokens := map[*openpgp.Entity]string{}
	for _, m := range f.mailer.sent {
		for _, e := range []*openpgp.Entity{k1, k2} {
			if _, err := pgptest.DecryptFirstBlock(m.msg, e); err == nil {
				tokens[e] = openMail(t, m.msg, e)
			}
		}
	}
	if len(tokens) != 2 {
		t.Fatalf("%d of 2 keys got a readable confirmation", len(tokens))
	}
	fp := func(e *openpgp.Entity) string { return keystest.Parse(t, e).Fingerprint }
	if status, out := apiCall(t, f, "/api/v1/confirm", map[string]string{"token": tokens[k2]}); status != 200 {
		t.Fatalf("confirm k2: %d %v", status, out)
	}
	got, _ := f.store.KeysFor(ctx, "bob@example.org")
	if fps := keys.SortedFingerprints(got); !slices.Equal(fps, []string{fp(k2)}) {
		t.Fatalf("after the first link: %v, want k2 alone (the old key replaced)", fps)
	}
	if status, out := apiCall(t, f, "/api/v1/confirm", map[string]string{"token": tokens[k1]}); status != 200 {
		t.Fatalf("confirm k1: %d %v", status, out)
	}
	got, _ = f.store.KeysFor(ctx, "bob@example.org")
	want := []string{fp(k1), fp(k2)}
	slices.Sort(want)
	if fps := keys.SortedFingerprints(got); !slices.Equal(fps, want) {
		t.Fatalf("after both links: %v, want %v", fps, want)
	}
}

// sentTo is a helper for tests that look for one mail among several.
func (m *fakeMailer) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.sent)
}

var _ = errors.New
var _ = strings.Contains
