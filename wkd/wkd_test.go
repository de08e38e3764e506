package wkd

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/smimetest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

func TestHashDraftExample(t *testing.T) {
	// draft-koch-openpgp-webkey-service §3.1: "Joe.Doe@Example.ORG".
	if got, want := Hash("Joe.Doe"), "iy9q119eutrkn8s1mk4r39qejnbu3n5q"; got != want {
		t.Fatalf("Hash(Joe.Doe) = %s, want %s", got, want)
	}
}

// TestHashMatchesGnuPG compares with gpg-wks-client, the reference
// implementation's client (Debian's gpg-wks-client).
func TestHashMatchesGnuPG(t *testing.T) {
	tool := "/usr/lib/gnupg/gpg-wks-client"
	if _, err := os.Stat(tool); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("gpg-wks-client is required in CI: %v", err)
		}
		t.Skipf("gpg-wks-client not installed: %v", err)
	}
	for _, local := range []string{"alice", "Joe.Doe", "a", "first.last+tag", "UPPER", "x_y-z", "0123456789", strings.Repeat("l", 64)} {
		out, err := exec.Command(tool, "--print-wkd-hash", local+"@example.org").Output()
		if err != nil {
			t.Fatal(err)
		}
		want, _, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
		if got := Hash(local); got != want {
			t.Errorf("Hash(%q) = %s, gpg-wks-client says %s", local, got, want)
		}
	}
}

func TestHandler(t *testing.T) {
	ctx := context.Background()
	norm := keys.Normalizer{FoldLocalPartCase: true, SubaddressSeparator: "+"}
	// Alice's key also carries a private address; WKD must not reveal it
	// (a fresh entity: the shared testkeys ones must not be changed).
	e, err := openpgp.NewEntity("Alice", "", "alice@example.org", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.AddUserId("Alice", "private", "alice.private@example.net", nil); err != nil {
		t.Fatal(err)
	}
	ks := []*keys.Key{keystest.Parse(t, e)}
	store := keystest.NewStore()
	store.Add(ctx, "alice@example.org", ks, false)
	old := []*keys.Key{keystest.Parse(t, testkeys.Generate(t, testkeys.ExpiredSubkey, "old@example.org"))}
	store.Add(ctx, "old@example.org", old, false)
	// An S/MIME certificate is never served: WKD is for OpenPGP keys. An
	// address with only a certificate has nothing to publish; beside a
	// key, the key alone is served.
	certFor := func(addr string) *keys.Key {
		ks, err := keys.ParseAny(smimetest.New(t, smimetest.Spec{Key: smimetest.RSA2048, Addresses: []string{addr}}).PEM(), addr, norm)
		if err != nil {
			t.Fatal(err)
		}
		return ks[0]
	}
	store.Add(ctx, "cert@example.org", []*keys.Key{certFor("cert@example.org")}, false)
	store.Add(ctx, "alice@example.org", []*keys.Key{certFor("alice@example.org")}, false)
	h := &Handler{Store: store, Domains: []string{"example.org"}, Policy: keys.Policy{MinRSABits: 2048, Normalizer: norm}}
	srv := httptest.NewServer(h)
	defer srv.Close()

	get := func(host, path string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	alice := Hash("alice")
	for _, tc := range []struct {
		name, host, path string
		status           int
	}{
		{"direct", "example.org", "/.well-known/openpgpkey/hu/" + alice + "?l=alice", 200},
		{"direct, other case", "Example.ORG:443", "/.well-known/openpgpkey/hu/" + Hash("Alice") + "?l=Alice", 200},
		{"advanced", "openpgpkey.example.org", "/.well-known/openpgpkey/example.org/hu/" + alice + "?l=alice", 200},
		{"policy direct", "example.org", "/.well-known/openpgpkey/policy", 200},
		{"policy advanced", "openpgpkey.example.org", "/.well-known/openpgpkey/example.org/policy", 200},
		{"without l", "example.org", "/.well-known/openpgpkey/hu/" + alice, 404},
		{"hash of another local part", "example.org", "/.well-known/openpgpkey/hu/" + Hash("bob") + "?l=alice", 404},
		{"unknown address", "example.org", "/.well-known/openpgpkey/hu/" + Hash("bob") + "?l=bob", 404},
		{"unusable key", "example.org", "/.well-known/openpgpkey/hu/" + Hash("old") + "?l=old", 404},
		{"certificate only", "example.org", "/.well-known/openpgpkey/hu/" + Hash("cert") + "?l=cert", 404},
		{"domain not served", "example.net", "/.well-known/openpgpkey/hu/" + alice + "?l=alice", 404},
		{"other path", "example.org", "/.well-known/openpgpkey/submission-address", 404},
		{"not WKD", "example.org", "/index.html", 404},
	} {
		status, body := get(tc.host, tc.path)
		if status != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, status, tc.status)
			continue
		}
		if status == 200 && strings.Contains(tc.path, "/hu/") {
			got, err := keys.Parse(body)
			if err != nil || len(got) != 1 || got[0].Fingerprint != ks[0].Fingerprint {
				t.Errorf("%s: served key does not parse back: %v", tc.name, err)
				continue
			}
			if uids := got[0].UserIDs(); len(uids) != 1 || !strings.Contains(uids[0], "alice@example.org") {
				t.Errorf("%s: served User IDs %v, want only alice@example.org's", tc.name, uids)
			}
			if strings.Contains(string(body), "private") {
				t.Errorf("%s: the other address leaked", tc.name)
			}
		}
	}
	store.SetFail(io.ErrUnexpectedEOF)
	if status, _ := get("example.org", "/.well-known/openpgpkey/hu/"+alice+"?l=alice"); status != 503 {
		t.Errorf("store down: status %d, want 503", status)
	}
}
