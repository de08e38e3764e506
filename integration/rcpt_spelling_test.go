package integration

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/internal/testkeys"
)

// TestRecipientSpellings is issue 11's second finding, through a real
// Postfix: the milter must classify a recipient as Postfix delivers it,
// not as the client spelt it. Six spellings of alice's address reached her
// mailbox in clear when the raw RCPT argument was classified. Each
// spelling below, and a bounded set of random ones, is sent to Postfix;
// whatever Postfix delivers to alice must decrypt with her key, and the
// spellings Postfix is known to deliver to alice must be delivered.
func TestRecipientSpellings(t *testing.T) {
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	s := startSink(t)
	m := startMilter(t, "")
	m.keysAdd(t, "alice@example.org", testkeys.ArmoredPublic(t, alice))
	p := startPostfix(t, postfixOptions{RelayPort: s.port, SMTPDMilters: m.addr()})

	// delivered: Postfix delivers these to alice (the six, and
	// spellings of the same address that any parser must get right).
	delivered := []string{
		`alice(c)@example.org`,
		`alice@(c)example.org`,
		`alice@example.org(c)`,
		`"a\lice"@example.org`,
		`"alice"@"example.org"`,
		`alice\@example.org`,
		`alice@example.org`,
		`ALICE@EXAMPLE.ORG`,
		`"alice"@example.org`,
		`alice@example.org.`,
		`@relay.example:alice@example.org`,
		`alice+tag@example.org`,
		` alice@example.org`,
		`alice @example.org`,
		`alice@ example.org`,
	}
	n := 0
	try := func(spelling string, mustDeliver bool) {
		t.Helper()
		n++
		id := fmt.Sprintf("spelling-%d", n)
		msg := message(id, "alice@example.org", textFields, textBody)
		_, err := smtpSend(p.smtpAddr(), "sender@example.com", []string{spelling}, msg, p.smtpTimeout)
		var se *sendError
		switch {
		case err == nil:
		case errors.As(err, &se):
			// Postfix (or the milter, with a 4xx) refused it: nothing was
			// delivered, so nothing leaked.
			if mustDeliver {
				t.Errorf("RCPT TO:<%s> was refused: %v", spelling, err)
			}
			return
		default:
			t.Fatalf("RCPT TO:<%s>: %v", spelling, err)
		}
		got := byMessageID(t, s, id)
		toAlice := false
		for _, to := range got.To {
			a := strings.ToLower(to)
			if a == "alice@example.org" || strings.HasPrefix(a, "alice+") && strings.HasSuffix(a, "@example.org") {
				toAlice = true
			}
		}
		if mustDeliver && !toAlice {
			t.Errorf("RCPT TO:<%s> was delivered to %v, not alice", spelling, got.To)
		}
		if !toAlice {
			t.Logf("RCPT TO:<%s>: delivered to %v", spelling, got.To)
			return
		}
		if _, err := decryptMessage(t, got.Data, alice); err != nil {
			t.Errorf("RCPT TO:<%s> reached %v NOT ENCRYPTED to alice's key: %v", spelling, got.To, err)
		}
	}
	for _, sp := range delivered {
		try(sp, true)
	}

	// Random spellings: alice's address with comments, quotes, escapes,
	// case changes, spaces and routes put in at random places. Bounded:
	// 40 messages. The seed is logged to replay a failure.
	seed := uint64(time.Now().UnixNano())
	t.Logf("random spellings with seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	for range 40 {
		try(mutateAddress(rng, "alice@example.org"), false)
	}
}

// mutateAddress applies two to four random RFC 5321/5322 oddities to addr.
func mutateAddress(rng *rand.Rand, addr string) string {
	edits := []func(string) string{
		func(a string) string { i := rng.IntN(len(a) + 1); return a[:i] + "(x)" + a[i:] },
		func(a string) string { i := rng.IntN(len(a) + 1); return a[:i] + " " + a[i:] },
		func(a string) string { i := rng.IntN(len(a)); return a[:i] + `\` + a[i:] },
		func(a string) string { return strings.ToUpper(a[:1]) + a[1:] },
		func(a string) string { return strings.Replace(a, "@", `"@"`, 1) },
		func(a string) string {
			at := strings.LastIndexByte(a, '@')
			if at < 0 {
				return a
			}
			return `"` + a[:at] + `"` + a[at:]
		},
		func(a string) string { return "@r.example:" + a },
		func(a string) string { return a + "." },
		func(a string) string { return strings.Replace(a, "alice", "alice+t", 1) },
		func(a string) string { return strings.Replace(a, "@", "%example.org@", 1) },
	}
	for range 2 + rng.IntN(3) {
		addr = edits[rng.IntN(len(edits))](addr)
	}
	return addr
}
