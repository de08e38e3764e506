package crypto

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// delivered applies res to the original message and returns what the MTA
// would deliver.
func delivered(t testing.TB, fields []Field, res *Result) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := WriteMessage(&b, Apply(fields, res.Changes), res.Body); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// checkInner asserts that the decrypted entity is the original Content-*
// fields followed by the original body byte for byte.
func checkInner(t testing.TB, name string, inner []byte, fields []Field, body []byte, protect bool) {
	t.Helper()
	protect = oracleProtects(fields, protect)
	i := bytes.Index(inner, []byte("\r\n\r\n"))
	if i < 0 {
		t.Fatalf("%s: inner entity has no header/body separator", name)
	}
	ih, ib := inner[:i+2], inner[i+4:]
	if !bytes.Equal(ib, body) {
		t.Fatalf("%s: inner body differs from the original (len %d vs %d)", name, len(ib), len(body))
	}
	innerFields, rest := Split(inner)
	if !bytes.Equal(rest, body) {
		t.Fatalf("%s: inner entity does not split into its fields and the body", name)
	}
	// Every original Content-* field is inside, value for value.
	for _, f := range fields {
		if isContentField(f.Name) && !strings.EqualFold(f.Name, "Content-Type") {
			if v, ok := get(innerFields, f.Name); !ok || unfold(v) != unfold(f.Value) {
				t.Errorf("%s: inner %s = %q, want %q", name, f.Name, v, f.Value)
			}
		}
	}
	ct, ok := get(innerFields, "Content-Type")
	if !ok {
		t.Fatalf("%s: inner entity has no Content-Type:\n%s", name, ih)
	}
	if orig, ok := get(fields, "Content-Type"); ok {
		if !strings.HasPrefix(unfold(ct), unfold(orig)) && !strings.HasPrefix(unfold(ct), strings.TrimRight(unfold(orig), "; ")) {
			t.Errorf("%s: inner Content-Type %q does not keep the original %q", name, ct, orig)
		}
	} else if err := oracleDefaultType(ct, body); err != nil {
		t.Errorf("%s: %v", name, err)
	}
	_, params := mediaType(ct)
	if protect {
		if params["protected-headers"] != "v1" || params["hp"] != "cipher" {
			t.Errorf("%s: protected headers but inner Content-Type %q", name, ct)
		}
		for _, pf := range ProtectedFields() {
			if v, ok := get(fields, pf); ok {
				if iv, _ := get(innerFields, pf); iv != strings.ReplaceAll(v, "\r\n", "\r\n") {
					t.Errorf("%s: protected %s = %q, want %q", name, pf, iv, v)
				}
			}
		}
	} else if _, ok := get(innerFields, "Subject"); ok || params["hp"] != "" {
		t.Errorf("%s: headers copied inside without header protection", name)
	}
}

func TestEncryptRoundTrip(t *testing.T) {
	kinds := []testkeys.Kind{testkeys.Curve25519, testkeys.RSA3072, testkeys.V6}
	msgs := corpus(!testing.Short())
	for _, kind := range kinds {
		key, secret := keystest.Key(t, kind, "alice@example.org")
		for _, protect := range []bool{false, true} {
			for _, m := range msgs {
				t.Run(fmt.Sprintf("%v/protect=%v/%s", kind, protect, m.name), func(t *testing.T) {
					fields, body := Split(m.raw)
					res, err := Encrypt(fields, body, []*keys.Key{key}, Options{ProtectHeaders: protect})
					if err != nil {
						t.Fatal(err)
					}
					hdr, ct := pgptest.Open(t, delivered(t, fields, res))
					inner, md := pgptest.Decrypt(t, ct, secret)
					checkInner(t, m.name, inner, fields, body, protect)
					if !md.IsEncrypted || md.DecryptedWith.Entity != secret {
						t.Errorf("not decrypted with the recipient's key")
					}
					wantSubject, _ := get(fields, "Subject")
					if oracleProtects(fields, protect) {
						wantSubject = ObscuredSubject
					}
					wantWhy := ""
					if protect && oracleSigned(fields) {
						wantWhy = UnprotectedSigned
					}
					if res.Unprotected != wantWhy {
						t.Errorf("Result.Unprotected = %q, want %q", res.Unprotected, wantWhy)
					}
					if got := hdr.Get("Subject"); squash(got) != squash(wantSubject) {
						t.Errorf("outer Subject = %q, want %q", got, wantSubject)
					}
					// Transport and envelope fields stay outside, unchanged.
					for _, name := range []string{"Received", "From", "To", "Date", "Message-ID"} {
						if v, _ := get(fields, name); squash(hdr.Get(name)) != squash(v) {
							t.Errorf("outer %s = %q, want %q", name, hdr.Get(name), v)
						}
					}
				})
			}
		}
	}
}

// TestEncryptPacketChoices checks the OpenPGP choices of DESIGN.md §3:
// AES-256, SEIPDv2 only when every key advertises it, CRC24 only with v1,
// key IDs visible unless hidden.
func TestEncryptPacketChoices(t *testing.T) {
	rsa, rsaSecret := keystest.Key(t, testkeys.RSA3072, "alice@example.org")
	x, xSecret := keystest.Key(t, testkeys.Curve25519, "bob@example.org")
	v6, v6Secret := keystest.Key(t, testkeys.V6, "carol@example.org")
	v6b, v6bSecret := keystest.Key(t, testkeys.V6, "dave@example.org")
	fields, body := Split(corpus(false)[0].raw)
	tests := []struct {
		name    string
		to      []*keys.Key
		secrets []*openpgp.Entity
		hide    bool
		v2      bool
	}{
		{"one v4 RSA", []*keys.Key{rsa}, []*openpgp.Entity{rsaSecret}, false, false},
		{"v4 RSA and X25519", []*keys.Key{rsa, x}, []*openpgp.Entity{rsaSecret, xSecret}, false, false},
		{"v4 hidden", []*keys.Key{rsa, x}, []*openpgp.Entity{rsaSecret, xSecret}, true, false},
		{"v6 only", []*keys.Key{v6, v6b}, []*openpgp.Entity{v6Secret, v6bSecret}, false, true},
		{"v6 hidden", []*keys.Key{v6, v6b}, []*openpgp.Entity{v6Secret, v6bSecret}, true, true},
		{"v6 and v4 fall back to v1", []*keys.Key{v6, x}, []*openpgp.Entity{v6Secret, xSecret}, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Encrypt(fields, body, tc.to, Options{HideRecipients: tc.hide})
			if err != nil {
				t.Fatal(err)
			}
			_, ct := pgptest.Open(t, delivered(t, fields, res))
			hasCRC := bytes.Contains(ct, []byte("\r\n=")) && bytes.Index(ct, []byte("\r\n=")) > bytes.LastIndex(ct, []byte("\r\n-----END"))-8
			if hasCRC == tc.v2 {
				t.Errorf("CRC24 line present = %v with SEIPDv2 = %v", hasCRC, tc.v2)
			}
			blk, err := armor.Decode(bytes.NewReader(ct))
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := io.ReadAll(blk.Body)
			var pkesk []*packet.EncryptedKey
			pr := packet.NewReader(bytes.NewReader(raw))
			for {
				p, err := pr.Next()
				if err != nil {
					t.Fatalf("packets: %v", err)
				}
				if ek, ok := p.(*packet.EncryptedKey); ok {
					pkesk = append(pkesk, ek)
					continue
				}
				se, ok := p.(*packet.SymmetricallyEncrypted)
				if !ok {
					t.Fatalf("unexpected packet %T", p)
				}
				if got := se.Version == 2; got != tc.v2 {
					t.Errorf("SEIPD version %d, want v2=%v", se.Version, tc.v2)
				}
				if se.Version == 2 && se.Cipher != packet.CipherAES256 {
					t.Errorf("SEIPDv2 cipher %v, want AES-256", se.Cipher)
				}
				break
			}
			if len(pkesk) != len(tc.to) {
				t.Fatalf("%d PKESK packets for %d recipients", len(pkesk), len(tc.to))
			}
			for _, ek := range pkesk {
				if hidden := ek.KeyId == 0; hidden != tc.hide {
					t.Errorf("PKESK key ID %016X, hidden want %v", ek.KeyId, tc.hide)
				}
			}
			for _, s := range tc.secrets {
				inner, _ := pgptest.Decrypt(t, ct, s)
				checkInner(t, tc.name, inner, fields, body, false)
			}
			if !tc.v2 { // with v1 the cipher is inside the session key packet
				ek := pkesk[0]
				for _, k := range tc.secrets[0].DecryptionKeys(0, time.Time{}, nil) {
					if ek.Decrypt(k.PrivateKey, nil) == nil {
						break
					}
				}
				if ek.CipherFunc != packet.CipherAES256 {
					t.Errorf("session cipher %v, want AES-256", ek.CipherFunc)
				}
			}
		})
	}
}

func TestEncryptRefusesUnusableKeys(t *testing.T) {
	fields, body := Split(corpus(false)[0].raw)
	if _, err := Encrypt(fields, body, nil, Options{}); err != ErrNoKeys {
		t.Errorf("no keys: err = %v, want ErrNoKeys", err)
	}
	for _, kind := range []testkeys.Kind{testkeys.ExpiredSubkey, testkeys.Revoked, testkeys.RSA1024, testkeys.SignOnly} {
		k, _ := keystest.Key(t, kind, "alice@example.org")
		if res, err := Encrypt(fields, body, []*keys.Key{k}, Options{}); err == nil {
			t.Errorf("%v: encrypted (%d bytes) to an unusable key", kind, len(res.Body))
		} else {
			t.Logf("%v: %v", kind, err)
		}
	}
}

func TestOuterChanges(t *testing.T) {
	fields := []Field{
		{"From", "a@example.net"},
		{"Content-Type", "text/plain"},
		{"Content-Transfer-Encoding", "8bit"},
		{"Subject", "secret"},
		{"content-type", "text/html"}, // a malformed second Content-Type
		{"Content-Disposition", "inline"},
	}
	got := outerChanges(fields, "B", true)
	want := []Change{
		{Set, "Content-Type", 1, `multipart/encrypted; protocol="application/pgp-encrypted"; boundary="B"`},
		{Set, "Subject", 1, ObscuredSubject},
		{Delete, "Content-Disposition", 1, ""},
		{Delete, "content-type", 2, ""},
		{Delete, "Content-Transfer-Encoding", 1, ""},
		{Add, "MIME-Version", 0, "1.0"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("changes:\n got %v\nwant %v", got, want)
	}
	out := Apply(fields, got)
	wantFields := []Field{{"From", "a@example.net"}, {"Content-Type", want[0].Value}, {"Subject", "[...]"}, {"MIME-Version", "1.0"}}
	if fmt.Sprint(out) != fmt.Sprint(wantFields) {
		t.Fatalf("applied:\n got %v\nwant %v", out, wantFields)
	}
}

// squash collapses folding and runs of white space, to compare header
// values across parsers that unfold differently.
func squash(s string) string { return strings.Join(strings.Fields(s), " ") }

func TestEncryptDeduplicatesKeys(t *testing.T) {
	k, secret := keystest.Key(t, testkeys.Curve25519, "alice@example.org")
	fields, body := Split(corpus(false)[0].raw)
	res, err := Encrypt(fields, body, []*keys.Key{k, k, k}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, ct := pgptest.Open(t, delivered(t, fields, res))
	blk, _ := armor.Decode(bytes.NewReader(ct))
	raw, _ := io.ReadAll(blk.Body)
	n := 0
	for pr := packet.NewReader(bytes.NewReader(raw)); ; n++ {
		p, err := pr.Next()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := p.(*packet.EncryptedKey); !ok {
			break
		}
	}
	if n != 1 {
		t.Errorf("%d session-key packets for one distinct key", n)
	}
	inner, _ := pgptest.Decrypt(t, ct, secret)
	checkInner(t, "dedup", inner, fields, body, false)
}

// TestEncryptMemoryIsLinear fails if encryption starts copying the body
// around: everything Encrypt allocates for an 8 MiB body must stay under
// 1.6 × its size (the result alone is about 1.37 ×).
func TestEncryptMemoryIsLinear(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts under -race are the detector's; the plain test run checks this")
	}
	k, _ := keystest.Key(t, testkeys.Curve25519, "alice@example.org")
	fields, _ := Split([]byte(crlf(stdHeader + "Subject: mem\n\n")))
	for _, size := range []int{1 << 20, 8 << 20} {
		body := pseudoRandom(size, 7)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		res, err := Encrypt(fields, body, []*keys.Key{k}, Options{})
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatal(err)
		}
		alloc := after.TotalAlloc - before.TotalAlloc
		ratio := float64(alloc) / float64(size)
		t.Logf("%d MiB body: %d bytes allocated (%.2f × the body), result %.2f ×", size>>20, alloc, ratio, float64(len(res.Body))/float64(size))
		if ratio > 1.6 {
			t.Errorf("%d MiB body: allocated %.2f × the body, want ≤ 1.6 ×", size>>20, ratio)
		}
	}
}

// TestEncryptConcurrentlyToOneKey: sessions share a key through the lookup
// cache, and go-crypto records its signature checks in the key while it
// encrypts. Under -race this fails unless Encrypt holds the key's lock for
// that work; every ciphertext must decrypt either way.
func TestEncryptConcurrentlyToOneKey(t *testing.T) {
	// Keys whose signatures nobody has checked yet (keys.Parse checks
	// some), so that go-crypto checks them during the concurrent calls.
	unchecked := func(kind testkeys.Kind, address string) (*keys.Key, *openpgp.Entity) {
		k, secret := keystest.Key(t, kind, address)
		forget := func(sigs []*packet.VerifiableSignature) {
			for _, s := range sigs {
				s.Valid = nil
			}
		}
		keys.WithEntities([]*keys.Key{k}, func(es []*openpgp.Entity) error {
			e := es[0]
			forget(e.DirectSignatures)
			for _, id := range e.Identities {
				forget(id.SelfCertifications)
			}
			for _, sk := range e.Subkeys {
				forget(sk.Bindings)
			}
			return nil
		})
		return k, secret
	}
	k, secret := unchecked(testkeys.Curve25519, "alice@example.org")
	other, _ := unchecked(testkeys.RSA3072, "bob@example.org")
	fields, body := Split([]byte("From: a@example.net\r\nSubject: s\r\n\r\nshared key\r\n"))
	var wg sync.WaitGroup
	results := make(chan *Result, 16)
	for i := range 16 {
		to := []*keys.Key{k}
		if i%2 == 1 {
			to = []*keys.Key{other, k} // two locks, in another order than given
		}
		wg.Go(func() {
			res, err := Encrypt(fields, body, to, Options{Now: time.Now()})
			if err != nil {
				t.Error(err)
				return
			}
			results <- res
		})
	}
	wg.Wait()
	close(results)
	n := 0
	for res := range results {
		var msg bytes.Buffer
		WriteMessage(&msg, Apply(fields, res.Changes), res.Body)
		_, inner := pgptest.OpenAndDecrypt(t, msg.Bytes(), secret)
		if !bytes.HasSuffix(inner, body) {
			t.Fatalf("decrypted %q", inner)
		}
		n++
	}
	if n != 16 {
		t.Fatalf("%d results", n)
	}
}
