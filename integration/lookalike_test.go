package integration

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/crypto"
	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// TestLookalikesThroughPostfix: mail that only looks encrypted (issue
// 11) reaches a keyed recipient encrypted, through a real Postfix; a
// genuine PGP/MIME message passes byte for byte. The decision is made at
// end of message, from the body, and logged with at=eom.
func TestLookalikesThroughPostfix(t *testing.T) {
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	s := startSink(t)
	m := startMilter(t, "")
	m.keysAdd(t, "alice@example.org", testkeys.ArmoredPublic(t, alice))
	p := startPostfix(t, postfixOptions{RelayPort: s.port, SMTPDMilters: m.addr()})

	const secret = "The launch code is 1234.\r\nDo not pass it on.\r\n"
	for _, tc := range []struct {
		id, fields, body string
	}{
		{"lookalike-multipart", "MIME-Version: 1.0\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"b\"\n", secret},
		{"lookalike-pkcs7", "MIME-Version: 1.0\nContent-Type: application/pkcs7-mime\n", secret},
		{"lookalike-p7m", "MIME-Version: 1.0\nContent-Type: application/octet-stream; name=\"letter.p7m\"\n", secret},
		{"lookalike-armour", "MIME-Version: 1.0\nContent-Type: text/plain\n",
			"-----BEGIN PGP MESSAGE-----\r\n\r\n" + secret + "-----END PGP MESSAGE-----\r\n"},
	} {
		t.Run(tc.id, func(t *testing.T) {
			msg := message(tc.id, "alice@example.org", tc.fields, tc.body)
			id, err := p.sendSMTPID(t, "sender@example.com", []string{"alice@example.org"}, msg)
			if err != nil {
				t.Fatal(err)
			}
			got := byMessageID(t, s, tc.id).Data
			if bytes.Contains(got, []byte("launch code")) {
				t.Fatalf("clear text delivered:\n%s", got)
			}
			checkDecrypts(t, got, msg, alice)
			checkActionAt(t, m, id, "encrypted", "")
		})
	}

	t.Run("genuine PGP/MIME passes unchanged", func(t *testing.T) {
		ks, err := keys.Parse(testkeys.Public(t, alice))
		if err != nil || len(ks) != 1 {
			t.Fatalf("parse alice's key: %v", err)
		}
		plain := message("genuine", "alice@example.org", "MIME-Version: 1.0\nContent-Type: text/plain\n", secret)
		fields, body := crypto.Split(plain)
		res, err := crypto.Encrypt(fields, body, ks, crypto.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var msg bytes.Buffer
		if err := crypto.WriteMessage(&msg, crypto.Apply(fields, res.Changes), res.Body); err != nil {
			t.Fatal(err)
		}
		id, err := p.sendSMTPID(t, "sender@example.com", []string{"alice@example.org"}, msg.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		got := byMessageID(t, s, "genuine").Data
		checkRelayed(t, got, msg.Bytes())
		if _, inner := pgptest.OpenAndDecrypt(t, got, alice); !bytes.HasSuffix(inner, []byte(secret)) {
			t.Errorf("the relayed message does not decrypt to the original")
		}
		checkActionAt(t, m, id, "already-encrypted", "eom")
	})
}

// checkActionAt finds lacre-milter's log line for the message with queue
// id id and checks its action and, if at is not empty, the stage that
// decided.
func checkActionAt(t *testing.T, m *milterProc, id, action, at string) {
	t.Helper()
	if id == "" {
		t.Fatal("no queue id")
	}
	prefix := "queue_id=" + id + " action=" + action + " "
	logs := waitText(t, "lacre-milter output", m.out.String, prefix, 5*time.Second)
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, prefix) && at != "" && !strings.HasSuffix(line, " at="+at) {
			t.Errorf("%s not decided at %s: %s", action, at, line)
		}
	}
}
