package keys_test

// The hostile key corpus (testdata/hostile/keys, see its README.md): every
// file goes the way a submitted key goes (Parse, Policy.Validate for the
// address, the SQLite store, the resolver) and must end either in a
// *keys.RejectError that names a rule, or in a key that encrypts. Each
// case is bounded in time and memory, and a hang fails the case by name.
//
// This is an external test package so that accepted keys can be used with
// package crypto, which imports keys.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/crypto"
	"lacre.io/milter/internal/hostiletest"
	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// hostileKeyAddr is the address every key of the corpus is made for.
const hostileKeyAddr = "hostile@example.org"

const hostileKeyDir = "../testdata/hostile/keys"

// hostileKeyExpect is the outcome expected of each committed key: the
// rule that rejects it, or "" for a key that is accepted and encrypts.
// A file not listed here is still run and must meet the general rule
// (a named rule, or a key that encrypts).
var hostileKeyExpect = map[string]keys.Rule{
	"bad-armor-checksum.asc": "", // RFC 9580 §6.1: the CRC is not checked; the self-signatures are

	"certification-flood.pgp":                 "",
	"empty.pgp":                               keys.RuleFormat,
	"garbage-after-key.pgp":                   keys.RuleFormat,
	"garbage-around-armor.asc":                "",
	"huge-packet-length.pgp":                  "", // the packet reads completely; the stored copy is re-encoded
	"huge-user-id-length.pgp":                 keys.RuleFormat,
	"many-subkeys.pgp":                        "",
	"partial-length-key-packet.pgp":           "", // go-crypto reads it; the stored copy is re-encoded
	"rsa-20000-bit-noise.pgp":                 keys.RuleSelfSig,
	"thousands-of-user-ids.pgp":               "",
	"too-large-user-attribute.pgp":            keys.RuleTooLarge,
	"truncated-armor.asc":                     keys.RuleFormat,
	"truncated.pgp":                           keys.RuleFormat,
	"unknown-algorithm-encryption-subkey.pgp": keys.RuleEncryption,
	"unknown-packet-types.pgp":                "",
	"unknown-primary-algorithm.pgp":           keys.RuleFormat,
	"unknown-signature-algorithm.pgp":         keys.RuleFormat,
	"v6.asc":                                  "",
	"wrong-armor-type.asc":                    keys.RuleFormat,
}

// Bounds of one key case (Parse, Validate, the SQLite store, a lookup
// and one small encryption):
//
//   - CPU time (user+system of the whole process, getrusage) at most
//     hostileKeyCPU: the slowest case, 2,000 self-signed User IDs (every
//     self-signature verified once at submission and once more when the
//     lookup parses the stored key), takes about 0.4 s of CPU. CPU time,
//     unlike wall time, does not grow when other processes share the
//     machine; a quadratic blow-up still breaks it by far.
//   - wall time at most hostileWall: a loaded 2-core machine may be
//     slow, but not this slow; it catches waiting and sleeping.
//   - bytes allocated (runtime.MemStats.TotalAlloc, whole process) at
//     most hostileKeyAllocPerByte times the key file plus
//     hostileKeyAllocConst. go-crypto allocates about 45 bytes per byte of
//     a signature-dense key each time it parses and verifies it (observed
//     worst: 90 bytes per byte over the two parses).
//
// Under the race detector (about ten times slower) the time bounds are
// not asserted; the hang bound still is.
const (
	hostileKeyCPU          = 2 * time.Second
	hostileWall            = 15 * time.Second
	hostileKeyAllocPerByte = 200
	hostileKeyAllocConst   = 8 << 20
	// hostileHang fails a case that has not returned, naming it, instead
	// of letting it hang the package until go test's timeout.
	hostileHang = 60 * time.Second
)

func hostilePolicy() keys.Policy { return defaultOptions().Policy }

// hostileOptions are the default resolver options with the clock now.
func hostileOptions(now func() time.Time) keys.ResolverOptions {
	o := defaultOptions()
	o.Now = now
	return o
}

// hostileKeyShape checks that an accepted key still is what makes its
// case hostile, so that the corpus cannot quietly become harmless.
var hostileKeyShape = map[string]func(e *openpgp.Entity) error{
	"v6.asc": func(e *openpgp.Entity) error {
		if e.PrimaryKey.Version != 6 {
			return fmt.Errorf("a v%d key", e.PrimaryKey.Version)
		}
		return nil
	},
	"thousands-of-user-ids.pgp": func(e *openpgp.Entity) error {
		if len(e.Identities) < 2000 {
			return fmt.Errorf("only %d User IDs", len(e.Identities))
		}
		return nil
	},
	"many-subkeys.pgp": func(e *openpgp.Entity) error {
		if len(e.Subkeys) < 1000 {
			return fmt.Errorf("only %d subkeys", len(e.Subkeys))
		}
		return nil
	},
	"certification-flood.pgp": func(e *openpgp.Entity) error {
		n := 0
		for _, id := range e.Identities {
			n += len(id.OtherCertifications)
		}
		if n < 1000 {
			return fmt.Errorf("only %d third-party certifications", n)
		}
		return nil
	},
}

// hostileKeyOutcome is what the submission path made of one key file.
type hostileKeyOutcome struct {
	err    error       // the first error, as the CLI would print it
	keys   []*keys.Key // the parsed keys, when accepted
	looked *keys.Recipient
	res    *crypto.Result
	fields []crypto.Field
	body   []byte
}

// hostileKeySubmit does what 'lacre-milter keys add' does (Parse, then
// Validate every key for the address, then the store), then what the
// milter does (a lookup, and an encryption to what it found).
func hostileKeySubmit(st keys.Store, data []byte, now time.Time) (out hostileKeyOutcome) {
	ctx := context.Background()
	p := hostilePolicy()
	ks, err := keys.Parse(data)
	if err != nil {
		out.err = err
		return out
	}
	for _, k := range ks {
		if err := p.Validate(k, hostileKeyAddr, now); err != nil {
			out.err = err
			return out
		}
	}
	out.keys = ks
	if err := st.Add(ctx, hostileKeyAddr, ks, true); err != nil {
		out.err = fmt.Errorf("store: %w", err)
		return out
	}
	r, err := keys.NewResolver(st, hostileOptions(func() time.Time { return now }))
	if err != nil {
		out.err = err
		return out
	}
	l, err := r.Resolve(ctx, hostileKeyAddr)
	if err != nil {
		out.err = fmt.Errorf("lookup: %w", err)
		return out
	}
	out.looked = l
	out.fields, out.body = crypto.Split([]byte("From: a@example.net\r\nTo: " + hostileKeyAddr +
		"\r\nSubject: to a hostile key\r\nContent-Type: text/plain\r\n\r\nsecret text\r\n"))
	out.res, err = crypto.Encrypt(out.fields, out.body, l.Keys, crypto.Options{Now: now})
	if err != nil {
		out.err = fmt.Errorf("encrypt: %w", err)
	}
	return out
}

// hostileCheckKeyOutcome checks the general rule and, if known, the
// expected outcome. It returns the rule ("" when accepted).
func hostileCheckKeyOutcome(t *testing.T, name string, out hostileKeyOutcome) keys.Rule {
	t.Helper()
	want, known := hostileKeyExpect[name]
	if out.err != nil {
		var rej *keys.RejectError
		if !errors.As(out.err, &rej) || rej.Rule == "" || rej.Msg == "" {
			t.Errorf("%s: error %q (%T) names no rule", name, out.err, out.err)
			return "?"
		}
		t.Logf("%s: rejected, rule %q: %v", name, rej.Rule, out.err)
		if known && rej.Rule != want {
			t.Errorf("%s: rejected by rule %q (%v), want %s", name, rej.Rule, out.err, hostileWant(want))
		}
		return rej.Rule
	}
	if known && want != "" {
		t.Errorf("%s: accepted, want rule %q", name, want)
	}
	if out.looked == nil || len(out.looked.Keys) != len(out.keys) || len(out.looked.Unusable) != 0 {
		t.Fatalf("%s: accepted, but the lookup found %+v", name, out.looked)
	}
	// The ciphertext is addressed to each key's encryption subkey.
	var m bytes.Buffer
	crypto.WriteMessage(&m, crypto.Apply(out.fields, out.res.Changes), out.res.Body)
	_, armored := pgptest.Open(t, m.Bytes())
	ids := hostilePKESKIDs(t, armored)
	for _, k := range out.keys {
		keys.WithEntities([]*keys.Key{k}, func(es []*openpgp.Entity) error {
			ek, ok := es[0].EncryptionKey(time.Now(), nil)
			if !ok {
				t.Fatalf("%s: accepted key %s has no encryption key", name, k.KeyID())
			}
			if !ids[ek.PublicKey.KeyId] {
				t.Errorf("%s: no session key for the encryption subkey %X (found %v)", name, ek.PublicKey.KeyId, ids)
			}
			return nil
		})
	}
	if shape := hostileKeyShape[name]; shape != nil {
		keys.WithEntities(out.keys[:1], func(es []*openpgp.Entity) error {
			if err := shape(es[0]); err != nil {
				t.Errorf("%s: no longer hostile: %v", name, err)
			}
			return nil
		})
	}
	t.Logf("%s: accepted, %d key(s), encrypts", name, len(out.keys))
	return ""
}

func hostileWant(r keys.Rule) string {
	if r == "" {
		return "accepted"
	}
	return fmt.Sprintf("rule %q", r)
}

// hostilePKESKIDs returns the key IDs of the session-key packets.
func hostilePKESKIDs(t *testing.T, armored []byte) map[uint64]bool {
	t.Helper()
	blk, err := armor.Decode(bytes.NewReader(armored))
	if err != nil {
		t.Fatal(err)
	}
	ids := map[uint64]bool{}
	r := packet.NewReader(blk.Body)
	for {
		p, err := r.Next()
		if err != nil {
			t.Fatalf("reading the ciphertext: %v", err)
		}
		ek, ok := p.(*packet.EncryptedKey)
		if !ok {
			return ids
		}
		ids[ek.KeyId] = true
	}
}

func hostileOpenStore(t *testing.T) keys.Store {
	t.Helper()
	st, err := keys.InitSQLite(context.Background(), filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestHostileKeys runs every committed key of the corpus.
func TestHostileKeys(t *testing.T) {
	st := hostileOpenStore(t)
	names, _ := hostiletest.Files(t, hostileKeyDir)
	for name := range hostileKeyExpect {
		if _, err := os.Stat(filepath.Join(hostileKeyDir, name)); err != nil {
			t.Errorf("%s: listed in hostileKeyExpect but not in %s", name, hostileKeyDir)
		}
	}
	var worst hostiletest.Measure
	worstShare, worstName := 0.0, ""
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(hostileKeyDir, name))
			if err != nil {
				t.Fatal(err)
			}
			var out hostileKeyOutcome
			m := hostiletest.Run(t, name, hostileHang, func() { out = hostileKeySubmit(st, data, time.Now()) })
			share := m.Check(t, name, hostiletest.Bounds{CPU: hostileKeyCPU, Wall: hostileWall, Alloc: uint64(hostileKeyAllocPerByte*len(data) + hostileKeyAllocConst)})
			hostileCheckKeyOutcome(t, name, out)
			worst.CPU, worst.Wall = max(worst.CPU, m.CPU), max(worst.Wall, m.Wall)
			if share > worstShare {
				worstShare, worstName = share, name
			}
		})
	}
	t.Logf("worst case: %v CPU, %v wall; %.0f%% of the allocation bound (%s)",
		worst.CPU.Round(time.Millisecond), worst.Wall.Round(time.Millisecond), 100*worstShare, worstName)
}

// TestHostileKeysGenerated runs the generator (gen.go -keys -secrets) into
// a temporary directory: every freshly made case must get the same
// outcome as the committed file of that name (the corpus has not drifted
// from its generator), and every accepted one must decrypt with its
// secret key, which exists only in the temporary directory.
func TestHostileKeysGenerated(t *testing.T) {
	if testing.Short() && hostiletest.Race() {
		// About 17 s under the race detector; TestHostileKeys still runs
		// every committed key.
		t.Skip("slow under -race -short")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	tmp := t.TempDir()
	cmd := exec.Command(goTool, "run", "../testdata/hostile/gen.go", "-keys", "-secrets", "-dir", tmp)
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gen.go -keys: %v\n%s", err, out)
	}
	fresh, _ := hostiletest.Files(t, filepath.Join(tmp, "keys"))
	committed, _ := hostiletest.Files(t, hostileKeyDir)
	if strings.Join(fresh, " ") != strings.Join(committed, " ") {
		t.Errorf("gen.go makes %q, the corpus has %q: regenerate it (go run testdata/hostile/gen.go -keys)", fresh, committed)
	}
	st := hostileOpenStore(t)
	now := time.Now()
	for _, name := range fresh {
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(tmp, "keys", name))
			if err != nil {
				t.Fatal(err)
			}
			var out hostileKeyOutcome
			m := hostiletest.Run(t, name, hostileHang, func() { out = hostileKeySubmit(st, data, now) })
			m.Check(t, name, hostiletest.Bounds{CPU: hostileKeyCPU, Wall: hostileWall, Alloc: uint64(hostileKeyAllocPerByte*len(data) + hostileKeyAllocConst)})
			rule := hostileCheckKeyOutcome(t, name, out)
			if old, err := os.ReadFile(filepath.Join(hostileKeyDir, name)); err == nil {
				var was hostileKeyOutcome
				hostiletest.Run(t, name, hostileHang, func() { was = hostileKeySubmit(st, old, now) })
				if r := hostileRuleOf(was.err); r != rule {
					t.Errorf("%s: the generator's key is %s, the committed one %s", name, hostileWant(rule), hostileWant(r))
				}
			}
			if rule != "" {
				return
			}
			secret, err := os.ReadFile(filepath.Join(tmp, "secret", strings.TrimSuffix(name, filepath.Ext(name))+".pgp"))
			if err != nil {
				t.Fatalf("%s: accepted, but the generator wrote no secret key: %v", name, err)
			}
			ring, err := openpgp.ReadKeyRing(bytes.NewReader(secret))
			if err != nil {
				t.Fatal(err)
			}
			var msg bytes.Buffer
			crypto.WriteMessage(&msg, crypto.Apply(out.fields, out.res.Changes), out.res.Body)
			_, inner := pgptest.OpenAndDecrypt(t, msg.Bytes(), ring...)
			if _, body := crypto.Split(inner); !bytes.Equal(body, out.body) {
				t.Errorf("%s: decrypted body %q, want %q", name, body, out.body)
			}
		})
	}
}

func hostileRuleOf(err error) keys.Rule {
	var rej *keys.RejectError
	if errors.As(err, &rej) {
		return rej.Rule
	}
	if err != nil {
		return "?"
	}
	return ""
}

// hostileExpiringKey makes a Curve25519 key for address, created at
// created (whole seconds), whose primary key expires life later.
func hostileExpiringKey(t *testing.T, address string, created time.Time, life time.Duration) (*keys.Key, *openpgp.Entity) {
	t.Helper()
	e := testkeys.Expiring(t, address, created, life)
	k := keystest.Parse(t, e)
	if got := k.Expires(); !got.Equal(created.Add(life)) {
		t.Fatalf("the key expires at %v, want %v", got, created.Add(life))
	}
	return k, e
}

// TestHostileKeyExpiresWhileCached: a key added while valid encrypts;
// once it has expired, the next lookup must say so (every key unusable,
// rule "expired", so the milter applies [encryption] unusable_key), even
// though the resolver answered for that address moments before and its
// cache (30 s by default) still holds that answer. Encrypt itself must
// refuse the expired key too.
func TestHostileKeyExpiresWhileCached(t *testing.T) {
	const addr = "soon@example.org"
	ctx := context.Background()
	created := time.Now().Truncate(time.Second)
	k, secret := hostileExpiringKey(t, addr, created, 3*time.Second)
	now := created.Add(time.Second)
	p := hostilePolicy()
	if err := p.Validate(k, addr, now); err != nil {
		t.Fatalf("the key is refused while valid: %v", err)
	}
	st := hostileOpenStore(t)
	if err := st.Add(ctx, addr, []*keys.Key{k}, false); err != nil {
		t.Fatal(err)
	}
	c := hostileOptions(func() time.Time { return now })
	if c.CacheTTL < 10*time.Second {
		t.Fatalf("the default cache TTL is %v; the test wants one longer than the key's remaining life", c.CacheTTL)
	}
	r, err := keys.NewResolver(st, c)
	if err != nil {
		t.Fatal(err)
	}
	fields, body := crypto.Split([]byte("To: " + addr + "\r\nSubject: s\r\n\r\nsecret text\r\n"))
	l, err := r.Resolve(ctx, addr)
	if err != nil || len(l.Keys) != 1 {
		t.Fatalf("lookup while valid: %+v, %v", l, err)
	}
	res, err := crypto.Encrypt(fields, body, l.Keys, crypto.Options{Now: now})
	if err != nil {
		t.Fatalf("encrypt while valid: %v", err)
	}
	var msg bytes.Buffer
	crypto.WriteMessage(&msg, crypto.Apply(fields, res.Changes), res.Body)
	if _, inner := pgptest.OpenAndDecrypt(t, msg.Bytes(), secret); !bytes.HasSuffix(inner, body) {
		t.Fatalf("decrypted %q", inner)
	}

	now = created.Add(4 * time.Second) // expired one second ago; the cached answer is 3 s old
	l, err = r.Resolve(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Keys) != 0 || !l.AllUnusable() || l.Unusable[0].Rule != keys.RuleExpired {
		t.Errorf("lookup after expiry: %d usable keys, unusable %v; want none usable and rule %q", len(l.Keys), l.Unusable, keys.RuleExpired)
	}
	if _, err := crypto.Encrypt(fields, body, []*keys.Key{k}, crypto.Options{Now: now}); err == nil {
		t.Errorf("Encrypt encrypted to a key that had expired")
	}
	if err := p.Validate(k, addr, now); hostileRuleOf(err) != keys.RuleExpired {
		t.Errorf("Validate after expiry: %v, want rule %q", err, keys.RuleExpired)
	}
}

// TestHostileConcurrentLookupsAcrossExpiry: many sessions look up and
// encrypt to the same cached key at once, before and after it expires.
// Before, every lookup finds the key and every encryption succeeds; after,
// none does. (Under -race this also checks that re-checking cached keys,
// which go-crypto verifies lazily, is safe to do concurrently.)
func TestHostileConcurrentLookupsAcrossExpiry(t *testing.T) {
	const addr = "soon@example.org"
	ctx := context.Background()
	created := time.Now().Truncate(time.Second)
	k, _ := hostileExpiringKey(t, addr, created, 3*time.Second)
	st := keystest.NewStore() // hands out the same *Key to every lookup
	if err := st.Add(ctx, addr, []*keys.Key{k}, false); err != nil {
		t.Fatal(err)
	}
	var clock atomic.Int64
	clock.Store(created.Add(time.Second).UnixNano())
	r, err := keys.NewResolver(st, hostileOptions(func() time.Time { return time.Unix(0, clock.Load()) }))
	if err != nil {
		t.Fatal(err)
	}
	fields, body := crypto.Split([]byte("To: " + addr + "\r\n\r\nsecret\r\n"))
	phase := func(valid bool) {
		t.Helper()
		now := time.Unix(0, clock.Load())
		const sessions, lookups = 8, 20
		var wg sync.WaitGroup
		errs := make(chan error, sessions*lookups) // room for every lookup: no goroutine blocks
		for range sessions {
			wg.Go(func() {
				for range lookups {
					l, err := r.Resolve(ctx, addr)
					switch {
					case err != nil:
						errs <- err
					case valid && len(l.Keys) != 1:
						errs <- fmt.Errorf("while valid: %d keys, unusable %v", len(l.Keys), l.Unusable)
					case !valid && !l.AllUnusable():
						errs <- fmt.Errorf("after expiry: %d usable keys", len(l.Keys))
					case valid:
						if _, err := crypto.Encrypt(fields, body, l.Keys, crypto.Options{Now: now}); err != nil {
							errs <- err
						}
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}
	phase(true)
	clock.Store(created.Add(5 * time.Second).UnixNano())
	phase(false)
}
