package crypto

// What readers see (issue 15): the interop corpus, encrypted with and
// without header protection, delivered into a Maildir and read there by
// real mail clients, as Debian 12 packages them:
//
//   - notmuch 0.37 (GMime 3.2, gpgme) with index.decrypt=true: the Subject
//     it shows and answers to (notmuch show, notmuch reply), the text of
//     every message converted from its charset, attachments byte for byte
//     (notmuch show --part), and a sender's PGP/MIME signature still good
//     after encryption.
//   - NeoMutt 20220429 with gpgme (crypt_use_gpgme) and
//     crypt_protected_headers_read, driven headless under tmux: the Subject
//     and the text of the pager (readers_neomutt_test.go).
//
// Each client gets a GnuPG home with the recipient's secret key and the
// signer's public key, and no network. A missing tool skips the test,
// except under CI, where it fails.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// readersCase is one delivered message of the mail-client tests.
type readersCase struct {
	name    string
	id      string // Message-ID without the angle brackets
	protect bool
	// subject is what a reader must show as the Subject (decoded).
	subject string
	// text is a piece of the message text a reader must show (decoded to
	// UTF-8); "" when the message has none.
	text string
	// attachment is an attachment's content a reader must hand out byte for
	// byte; nil when there is none.
	attachment []byte
	// signed: the body carries a real signature by the test's signer.
	signed bool
	// fields are the original header fields.
	fields []Field
	// raw is the delivered (encrypted) message.
	raw []byte
}

// readersText is the piece of text each corpus message must show.
var readersText = map[string]string{
	"ascii":                "this is plain text.",
	"utf8-8bit":            "Grüße aus Köln — 東京 — Ελληνικά 🙂",
	"quoted-printable":     "Grüße, a soft line break and a trailing space",
	"base64-attachment":    "See attached.",
	"alternative-html":     "Hi *there*",
	"multipart-signed":     "Signed text, whitespace matters:",
	"no-content-type":      "Just text, no MIME headers.",
	"lf-line-ends":         "line one\nline two",
	"mixed-line-ends":      "CRLF line",
	"folded-2047-headers":  "body",
	"no-final-newline":     "last line without end",
	"no-mime-utf8":         "Backup für Größe ✓",
	"no-mime-latin1":       "Backup f", // with no charset, readers guess (notmuch: U+FFFD)
	"outlook-thread-topic": "The numbers are in.",
	"real-signed":          "Signed by Bob: Grüße ✓",
}

// readersEnv is a GnuPG home with the recipient's secret key and the
// signer's public key, and a Maildir holding every case.
type readersEnv struct {
	home, gnupg, maildir string
	cases                []readersCase
	signer               *openpgp.Entity
	gpg                  string
}

// readersSigned returns a PGP/MIME signed message (RFC 3156 §5) whose
// signature by signer is real.
func readersSigned(t *testing.T, signer *openpgp.Entity) []byte {
	t.Helper()
	signedPart := crlf("Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n" +
		"Signed by Bob: Grüße ✓\n")
	var sig bytes.Buffer
	if err := openpgp.ArmoredDetachSign(&sig, []*openpgp.Entity{signer}, strings.NewReader(signedPart), nil); err != nil {
		t.Fatal(err)
	}
	return []byte(crlf(stdHeader+"Subject: =?UTF-8?Q?signed_and_secret_=E2=9C=93?=\nThread-Topic: signed and secret\n"+
		"MIME-Version: 1.0\nContent-Type: multipart/signed; micalg=pgp-sha256;\n protocol=\"application/pgp-signature\"; boundary=\"rs\"\n\n"+
		"--rs\n") + signedPart + crlf("\n--rs\nContent-Type: application/pgp-signature; name=\"signature.asc\"\n\n") +
		crlf(sig.String()) + crlf("\n--rs--\n"))
}

// readersSetup encrypts the corpus (and a really signed message) to a new
// key, with and without header protection, into a Maildir, and imports the
// keys into a GnuPG home.
func readersSetup(t *testing.T, gpg, gpgconf string) *readersEnv {
	t.Helper()
	key, secret := keystest.Key(t, testkeys.Curve25519, "alice@example.org")
	signer := testkeys.Generate(t, testkeys.Curve25519, "bob@example.net")
	env := &readersEnv{home: t.TempDir(), gnupg: gpgHome(t, gpgconf), signer: signer, gpg: gpg}
	env.maildir = filepath.Join(env.home, "mail")
	for _, d := range []string{"cur", "new", "tmp"} {
		if err := os.MkdirAll(filepath.Join(env.maildir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range [][]byte{testkeys.ArmoredSecret(t, secret), testkeys.ArmoredPublic(t, signer)} {
		if _, stderr, err := runTool(env.gnupg, k, gpg, "--homedir", env.gnupg, "--batch", "--import"); err != nil {
			t.Fatalf("gpg --import: %v\n%s", err, stderr)
		}
	}
	msgs := append(corpus(false), testMessage{"real-signed", readersSigned(t, signer)})
	dec := mime.WordDecoder{}
	for i, m := range msgs {
		fields, body := Split(m.raw)
		for _, protect := range []bool{false, true} {
			id := fmt.Sprintf("readers-%d-%v@example.net", i, protect)
			// A Message-ID of its own for every case (notmuch keeps one
			// message per Message-ID).
			var fs []Field
			for _, f := range fields {
				if !strings.EqualFold(f.Name, "Message-ID") {
					fs = append(fs, f)
				}
			}
			fs = append(fs, Field{"Message-ID", "<" + id + ">"})
			res, err := Encrypt(fs, body, []*keys.Key{key}, Options{ProtectHeaders: protect})
			if err != nil {
				t.Fatal(err)
			}
			c := readersCase{name: fmt.Sprintf("%s/protect=%v", m.name, protect), id: id, protect: protect,
				text: readersText[m.name], signed: m.name == "real-signed", fields: fs, raw: delivered(t, fs, res)}
			if s, ok := get(fs, "Subject"); ok {
				if c.subject, err = dec.DecodeHeader(unfold(s)); err != nil {
					t.Fatalf("%s: Subject %q: %v", m.name, s, err)
				}
			}
			if m.name == "base64-attachment" {
				c.attachment = pseudoRandom(3000, 1)
			}
			name := filepath.Join(env.maildir, "cur", fmt.Sprintf("%d.%d.readers:2,S", 1700000000+i, len(env.cases)))
			if err := os.WriteFile(name, c.raw, 0o600); err != nil {
				t.Fatal(err)
			}
			env.cases = append(env.cases, c)
		}
	}
	return env
}

// run runs a mail client with the test's GnuPG home, a UTF-8 locale, no
// network and a timeout.
func (env *readersEnv) run(extraEnv []string, stdin []byte, path string, args ...string) (stdout, stderr []byte, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), interopTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + env.home, "GNUPGHOME=" + env.gnupg,
		"LANG=C.UTF-8", "LC_ALL=C.UTF-8", "TZ=UTC"}, extraEnv...)
	cmd.Dir = env.home
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s: timed out after %v: %w", filepath.Base(path), interopTimeout, err)
	}
	return out.Bytes(), errb.Bytes(), err
}

// notmuchPart is a MIME part of notmuch show --format=json.
type notmuchPart struct {
	ID          int             `json:"id"`
	ContentType string          `json:"content-type"`
	Content     json.RawMessage `json:"content"`
	Filename    string          `json:"filename"`
	SigStatus   []struct {
		Status      string `json:"status"`
		Fingerprint string `json:"fingerprint"`
	} `json:"sigstatus"`
}

// notmuchMessage is a message of notmuch show --format=json.
type notmuchMessage struct {
	ID      string            `json:"id"`
	Headers map[string]string `json:"headers"`
	Body    []notmuchPart     `json:"body"`
	Crypto  struct {
		Decrypted *struct {
			Status     string            `json:"status"`
			HeaderMask map[string]string `json:"header-mask"`
		} `json:"decrypted"`
		Signed *struct {
			Status []struct {
				Status string `json:"status"`
			} `json:"status"`
		} `json:"signed"`
	} `json:"crypto"`
}

// walk calls fn for every part of the tree, depth first.
func (p notmuchPart) walk(fn func(notmuchPart)) {
	fn(p)
	var kids []notmuchPart
	if len(p.Content) > 0 && p.Content[0] == '[' && json.Unmarshal(p.Content, &kids) == nil {
		for _, k := range kids {
			k.walk(fn)
		}
	}
}

// notmuchFind returns the message object with the given id anywhere in
// notmuch's JSON output (threads nest messages and their replies; with
// --entire-thread=false the other messages of a thread are null).
func notmuchFind(v any, id string) map[string]any {
	switch v := v.(type) {
	case []any:
		for _, e := range v {
			if m := notmuchFind(e, id); m != nil {
				return m
			}
		}
	case map[string]any:
		if v["id"] == id {
			if _, ok := v["headers"]; ok {
				return v
			}
		}
	}
	return nil
}

// notmuchShow returns the message notmuch show finds for id.
func notmuchShow(t *testing.T, env *readersEnv, notmuch string, nmEnv []string, id string) notmuchMessage {
	t.Helper()
	out, stderr, err := env.run(nmEnv, nil, notmuch, "show", "--format=json", "--decrypt=true", "--verify", "--entire-thread=false", "id:"+id)
	if err != nil {
		t.Fatalf("notmuch show: %v\n%s", err, stderr)
	}
	var all any
	if err := json.Unmarshal(out, &all); err != nil {
		t.Fatalf("notmuch show: %v\n%.2000s", err, out)
	}
	obj := notmuchFind(all, id)
	if obj == nil {
		t.Fatalf("notmuch show: no message %s in\n%.2000s", id, out)
	}
	raw, _ := json.Marshal(obj)
	var m notmuchMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("notmuch show: %v", err)
	}
	return m
}

func TestReadersNotmuch(t *testing.T) {
	notmuch := lookTool(t, "notmuch")
	gpg := lookTool(t, "gpg")
	gpgconf := lookTool(t, "gpgconf")
	t.Parallel()
	env := readersSetup(t, gpg, gpgconf)
	out, _, _ := env.run(nil, nil, notmuch, "--version")
	t.Logf("%s", bytes.TrimSpace(out))
	config := filepath.Join(env.home, "notmuch-config")
	if err := os.WriteFile(config, []byte("[database]\npath="+env.maildir+"\n[user]\nname=Alice\nprimary_email=alice@example.org\n"+
		"[new]\ntags=inbox;\n[index]\ndecrypt=true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	nmEnv := []string{"NOTMUCH_CONFIG=" + config}
	if _, stderr, err := env.run(nmEnv, nil, notmuch, "new", "--quiet"); err != nil {
		t.Fatalf("notmuch new: %v\n%s", err, stderr)
	}
	for _, c := range env.cases {
		t.Run(c.name, func(t *testing.T) {
			m := notmuchShow(t, env, notmuch, nmEnv, c.id)
			if m.Crypto.Decrypted == nil || m.Crypto.Decrypted.Status != "full" {
				t.Errorf("notmuch did not decrypt the message: %+v", m.Crypto.Decrypted)
			}
			// The Subject shown, and the one a reply answers.
			if got := m.Headers["Subject"]; got != c.subject {
				t.Errorf("notmuch shows Subject %q, want %q", got, c.subject)
			}
			// notmuch reply gives a front end (notmuch-emacs) the original
			// message's headers, the protected ones, to build the reply
			// from; its own reply Subject is built from the outer header on
			// purpose, so that a protected Subject never leaks into a reply
			// that may go out unencrypted (notmuch's T356 "protected subject
			// does not leak by default in replies").
			out, stderr, err := env.run(nmEnv, nil, notmuch, "reply", "--format=json", "--decrypt=true", "id:"+c.id)
			if err != nil {
				t.Fatalf("notmuch reply: %v\n%s", err, stderr)
			}
			var reply struct {
				Headers  map[string]string `json:"reply-headers"`
				Original notmuchMessage    `json:"original"`
			}
			if err := json.Unmarshal(out, &reply); err != nil {
				t.Fatalf("notmuch reply: %v\n%.2000s", err, out)
			}
			if got := reply.Original.Headers["Subject"]; got != c.subject {
				t.Errorf("notmuch reply: the original's Subject is %q, want %q", got, c.subject)
			}
			outer := c.subject
			if oracleProtects(c.fields, c.protect) {
				outer = ObscuredSubject
			}
			wantRe := "Re: " + outer
			if strings.HasPrefix(strings.ToLower(outer), "re:") {
				wantRe = outer
			}
			if got, _ := (&mime.WordDecoder{}).DecodeHeader(reply.Headers["Subject"]); got != wantRe {
				t.Errorf("notmuch reply: Subject %q, want %q", got, wantRe)
			}
			// The text, converted from its charset.
			var texts []string
			var attachments []notmuchPart
			for _, p := range m.Body {
				p.walk(func(p notmuchPart) {
					var s string
					if strings.HasPrefix(p.ContentType, "text/plain") && json.Unmarshal(p.Content, &s) == nil {
						texts = append(texts, s)
					}
					if p.Filename != "" {
						attachments = append(attachments, p)
					}
				})
			}
			all := strings.ReplaceAll(strings.Join(texts, "\n"), "\r\n", "\n")
			if c.text != "" && !strings.Contains(all, c.text) {
				t.Errorf("notmuch shows the text %q, want it to contain %q", all, c.text)
			}
			if strings.ContainsRune(all, '\uFFFD') && c.name != "no-mime-latin1/protect=false" && c.name != "no-mime-latin1/protect=true" {
				t.Errorf("notmuch shows replacement characters: %q", all)
			}
			// Attachments byte for byte.
			if c.attachment != nil {
				var att *notmuchPart
				for i := range attachments {
					if attachments[i].Filename == "data.bin" {
						att = &attachments[i]
					}
				}
				if att == nil {
					t.Fatalf("notmuch shows no attachment data.bin: %+v", attachments)
				}
				got, stderr, err := env.run(nmEnv, nil, notmuch, "show", "--decrypt=true", fmt.Sprintf("--part=%d", att.ID), "id:"+c.id)
				if err != nil {
					t.Fatalf("notmuch show --part=%d: %v\n%s", att.ID, err, stderr)
				}
				if !bytes.Equal(got, c.attachment) {
					t.Errorf("notmuch gives the attachment as %d bytes, differing from the %d sent", len(got), len(c.attachment))
				}
			}
			// A sender's signature survives encryption: notmuch (gpgme)
			// finds it good.
			if c.signed {
				good := false
				for _, p := range m.Body {
					p.walk(func(p notmuchPart) {
						for _, s := range p.SigStatus {
							good = good || s.Status == "good"
						}
					})
				}
				if !good {
					t.Errorf("notmuch does not find the sender's signature good: %+v", m.Body)
				}
				// ...and as the message's own signature (the cryptographic
				// envelope), not as a nested part's.
				if m.Crypto.Signed == nil || len(m.Crypto.Signed.Status) == 0 || m.Crypto.Signed.Status[0].Status != "good" {
					t.Errorf("notmuch does not show the message as signed: %+v", m.Crypto.Signed)
				}
			}
		})
	}
	// Hidden recipients (docs/encryption.md): gpg under gpgme tries every
	// secret key on a wildcard key ID, unless gpg.conf says
	// skip-hidden-recipients. (notmuch keeps the session keys of what it
	// indexed, so each case is a message notmuch has not seen yet.)
	t.Run("hidden-recipients", func(t *testing.T) {
		key, _ := keystest.Key(t, testkeys.Curve25519, "alice@example.org")
		deliver := func(id string) {
			fields, body := Split(corpus(false)[0].raw)
			var fs []Field
			for _, f := range fields {
				if !strings.EqualFold(f.Name, "Message-ID") {
					fs = append(fs, f)
				}
			}
			fs = append(fs, Field{"Message-ID", "<" + id + ">"})
			res, err := Encrypt(fs, body, []*keys.Key{key}, Options{HideRecipients: true})
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(env.maildir, "cur", id+":2,S"), delivered(t, fs, res), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, stderr, err := env.run(nmEnv, nil, notmuch, "new", "--quiet"); err != nil {
				t.Fatalf("notmuch new: %v\n%s", err, stderr)
			}
		}
		deliver("readers-hidden-1@example.net")
		if m := notmuchShow(t, env, notmuch, nmEnv, "readers-hidden-1@example.net"); m.Crypto.Decrypted == nil || m.Crypto.Decrypted.Status != "full" {
			t.Errorf("notmuch (gpgme) did not decrypt a hidden-recipient message: %+v", m.Crypto.Decrypted)
		}
		if err := os.WriteFile(filepath.Join(env.gnupg, "gpg.conf"), []byte("skip-hidden-recipients\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		deliver("readers-hidden-2@example.net")
		if m := notmuchShow(t, env, notmuch, nmEnv, "readers-hidden-2@example.net"); m.Crypto.Decrypted != nil {
			t.Errorf("notmuch decrypted a hidden-recipient message with skip-hidden-recipients in gpg.conf: %+v", m.Crypto.Decrypted)
		}
	})
}

// readersSignedParts returns the signed entity and the signature of a
// multipart/signed message, as raw bytes.
func readersSignedParts(t *testing.T, msg []byte) (signed, sig []byte) {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/signed" {
		t.Fatalf("decrypted Content-Type %q (%v), want multipart/signed", m.Header.Get("Content-Type"), err)
	}
	body, _ := io.ReadAll(m.Body)
	// RFC 3156 §5: the signed data is everything between the first
	// boundary line and the CRLF before the next one.
	delim := []byte("--" + params["boundary"] + "\r\n")
	start := bytes.Index(body, delim)
	end := bytes.Index(body, []byte("\r\n--"+params["boundary"]+"\r\n"))
	if start < 0 || end < start {
		t.Fatalf("no signed part in %q", body)
	}
	signed = body[start+len(delim) : end]
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	if _, err := mr.NextRawPart(); err != nil {
		t.Fatal(err)
	}
	p, err := mr.NextRawPart()
	if err != nil {
		t.Fatal(err)
	}
	sig, _ = io.ReadAll(p)
	return signed, sig
}

// TestReadersSignatureVerifiesInGnuPG: a signed message encrypted with
// header protection asked for decrypts in gpg to a multipart/signed whose
// signature gpg still finds good.
func TestReadersSignatureVerifiesInGnuPG(t *testing.T) {
	gpg := lookTool(t, "gpg")
	gpgconf := lookTool(t, "gpgconf")
	t.Parallel()
	key, secret := keystest.Key(t, testkeys.Curve25519, "alice@example.org")
	signer := testkeys.Generate(t, testkeys.Curve25519, "bob@example.net")
	home := gpgHome(t, gpgconf)
	common := []string{"--homedir", home, "--batch", "--no-tty", "--disable-dirmngr", "--no-auto-key-retrieve"}
	for _, k := range [][]byte{testkeys.ArmoredSecret(t, secret), testkeys.ArmoredPublic(t, signer)} {
		if _, stderr, err := runTool(home, k, gpg, append(common, "--import")...); err != nil {
			t.Fatalf("gpg --import: %v\n%s", err, stderr)
		}
	}
	fields, body := Split(readersSigned(t, signer))
	for _, protect := range []bool{false, true} {
		res, err := Encrypt(fields, body, []*keys.Key{key}, Options{ProtectHeaders: protect})
		if err != nil {
			t.Fatal(err)
		}
		_, ct := pgptest.Open(t, delivered(t, fields, res))
		plain, stderr, err := runTool(home, ct, gpg, append(common, "--decrypt")...)
		if err != nil {
			t.Fatalf("protect=%v: gpg --decrypt: %v\n%s", protect, err, stderr)
		}
		signed, sig := readersSignedParts(t, plain)
		dir := t.TempDir()
		data, sigFile := filepath.Join(dir, "data"), filepath.Join(dir, "data.asc")
		if err := os.WriteFile(data, signed, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(sigFile, sig, 0o600); err != nil {
			t.Fatal(err)
		}
		_, stderr, err = runTool(home, nil, gpg, append(common, "--status-fd", "2", "--verify", sigFile, data)...)
		if err != nil || !bytes.Contains(stderr, []byte("[GNUPG:] GOODSIG ")) {
			t.Errorf("protect=%v: gpg does not find the signature good: %v\n%s", protect, err, stderr)
		}
	}
}
