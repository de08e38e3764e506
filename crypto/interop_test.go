package crypto

// Interoperability: every message this package writes must decrypt, byte
// for byte, in the independent OpenPGP implementations recipients use.
// These tests run the command-line tools of three of them, as packaged by
// Debian 12:
//
//   - GnuPG (gpg 2.2.40): RSA3072 and Curve25519 keys, visible and hidden
//     recipients (gpg tries every secret key on a wildcard key ID by
//     itself; --try-all-secrets is not needed). It cannot read v6 keys
//     ("packet(5) with unknown version 6").
//   - Sequoia (sq 0.27, sequoia-openpgp 1.12): RSA3072 and Curve25519,
//     visible and hidden. It cannot read v6 keys ("Unsupported Cert:
//     Unsupported primary key"). sq 0.27 is stateless: "importing" the
//     key means writing it to a file that every sq decrypt is given.
//   - RNP (rnp 0.16.3): RSA3072 and Curve25519, visible recipients only.
//     RNP cannot decrypt hidden recipients without --allow-hidden, which
//     0.16 does not have (it came with 0.17); the test checks that such a
//     message indeed fails, which is why HideRecipients is off by default.
//     It cannot read v6 keys ("wrong key packet version").
//
// V6 keys are tried with every tool all the same: the import is attempted,
// and when a newer tool accepts the key the whole matrix runs for it; when
// it refuses, the test logs why. SEIPDv2 output is therefore covered by
// go-crypto only (encrypt_test.go) on these tool versions.
//
// Each tool gets its own temporary home directory, no network access and a
// timeout per invocation; the gpg-agent is killed at the end. A missing tool
// skips its test, except under CI (CI set), where it fails.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// interopTimeout bounds every single tool invocation.
const interopTimeout = 60 * time.Second

// interopKinds are the key kinds tried with every tool.
var interopKinds = []testkeys.Kind{testkeys.RSA3072, testkeys.Curve25519, testkeys.V6}

// Body lengths. The armour packs 48 bytes per line and pads the last group
// of 3, so lengths around multiples of 3 and 48 matter; together with the
// contiguous run 0..49 (every residue modulo 48 for a key whose session-key
// packet has a fixed size) and packetLengthSizes they also cover the
// one/two/five-octet packet length encodings and the 32 KiB buffers of the
// writers.
var (
	interopSizesAll = func() []int {
		var s []int
		for n := range 50 {
			s = append(s, n)
		}
		return append(s, 63, 64, 65, 95, 96, 97, 1000, 4095, 4096, 4097, 8191, 8192, 8193,
			32767, 32768, 32769, 65535, 65536, 65537, 1<<20+3)
	}()
	interopSizesSubset = []int{0, 1, 2, 3, 46, 47, 48, 49, 50, 4096, 32769, 65537, 1<<20 + 3}
)

// lookTool finds a tool on PATH. Without it the test is skipped, except in
// CI, where a skipped interoperability test would pass unnoticed.
func lookTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is required in CI: %v", name, err)
		}
		t.Skipf("%s not installed: %v", name, err)
	}
	return p
}

// runTool runs one command with home as HOME (and GNUPGHOME), a minimal
// environment, stdin as its input and a timeout.
func runTool(home string, stdin []byte, path string, args ...string) (stdout, stderr []byte, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), interopTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "GNUPGHOME=" + home, "LC_ALL=C", "TZ=UTC"}
	cmd.Dir = home
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	// A daemon that inherited the pipes (gpg-agent) must not hold Wait.
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s: timed out after %v: %w", filepath.Base(path), interopTimeout, err)
	}
	return out.Bytes(), errb.Bytes(), err
}

// logVersion logs the first line of a tool's version output.
func logVersion(t *testing.T, path string, args ...string) {
	t.Helper()
	out, stderr, err := runTool(t.TempDir(), nil, path, args...)
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", path, args, err, stderr)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	t.Logf("%s: %s", path, line)
}

// interopRing is one tool with one secret key imported.
type interopRing struct {
	tool string
	// decrypt decrypts an armoured message; hidden says whether it was
	// encrypted with wildcard key IDs.
	decrypt func(ct []byte, hidden bool) (plain, stderr []byte, err error)
	// check, when set, inspects the tool's diagnostics of a successful run.
	check func(t *testing.T, stderr []byte, hidden bool)
	// decryptWith, when set, decrypts with extra options.
	decryptWith func(ct []byte, extra ...string) (plain, stderr []byte, err error)
}

// interopTool describes how to test one tool.
type interopTool struct {
	name string
	// load imports a secret key; an error means the tool refused the key.
	load func(t *testing.T, secret []byte) (*interopRing, []byte, error)
	// hidden says whether the tool is expected to decrypt hidden recipients.
	hidden bool
	sizes  []int
	// extra runs further checks per key kind.
	extra func(t *testing.T, ring *interopRing, key *keys.Key)
}

// interopCase is one message to encrypt and decrypt.
type interopCase struct {
	name    string
	fields  []Field
	body    []byte
	protect bool
}

// sizeFields is the header of the messages of the size series.
func sizeFields() []Field {
	fields, _ := Split([]byte(crlf(stdHeader + "Subject: sizes\nMIME-Version: 1.0\n" +
		"Content-Type: application/octet-stream\nContent-Transfer-Encoding: binary\n\n")))
	return fields
}

// packetLengthSizes returns the body lengths of a size-series message
// whose literal data packet or SEIPDv1 packet has a length at an OpenPGP
// length-encoding boundary (191/192 and 8383/8384, RFC 9580 §4.2.1.1) or
// whose encrypted stream crosses the 32 KiB CFB buffer. It mirrors the
// layout writeSEIPDv1 produces for v4 keys.
func packetLengthSizes() []int {
	inner := len(innerHeader(sizeFields(), nil, false))
	lenOfLen := func(n int) int {
		switch {
		case n < 192:
			return 1
		case n < 8384:
			return 2
		}
		return 5
	}
	targets := map[int]bool{191: true, 192: true, 8383: true, 8384: true}
	var sizes []int
	for n := 0; n < 34000; n++ {
		lit := 6 + inner + n                           // format, name length, date, data
		seipd := 1 + 18 + 1 + lenOfLen(lit) + lit + 22 // version, prefix, literal packet, MDC packet
		cfb := seipd - 1
		if targets[lit] || targets[seipd] || (cfb >= 32767 && cfb <= 32769) {
			sizes = append(sizes, n)
		}
	}
	return sizes
}

// interopCases returns the messages for one tool, key kind and mode.
func interopCases(sizes []int) []interopCase {
	var cs []interopCase
	for _, m := range corpus(false) {
		fields, body := Split(m.raw)
		for _, protect := range []bool{false, true} {
			cs = append(cs, interopCase{fmt.Sprintf("corpus/%s/protect=%v", m.name, protect), fields, body, protect})
		}
	}
	seen := map[int]bool{}
	for _, n := range append(append([]int(nil), sizes...), packetLengthSizes()...) {
		if seen[n] {
			continue
		}
		seen[n] = true
		// Random bytes: CR, LF and NUL must come back untouched too.
		cs = append(cs, interopCase{fmt.Sprintf("size=%d", n), sizeFields(), pseudoRandom(n+8, uint64(n))[:n], false})
	}
	return cs
}

// interopShortCase is the one message per tool, kind and mode of -short.
func interopShortCase() interopCase {
	m := corpus(false)[1] // utf8-8bit
	fields, body := Split(m.raw)
	return interopCase{"corpus/" + m.name + "/protect=true", fields, body, true}
}

// runInteropTool runs the matrix of one tool: every key kind it imports,
// visible (and, where supported, hidden) recipients, every message.
func runInteropTool(t *testing.T, tool interopTool) {
	for _, kind := range interopKinds {
		t.Run(kind.String(), func(t *testing.T) {
			key, secret := keystest.Key(t, kind, "alice@example.org")
			ring, stderr, err := tool.load(t, testkeys.ArmoredSecret(t, secret))
			if err != nil {
				if kind == testkeys.V6 {
					t.Logf("%s does not read v6 keys, so V6 is not covered: %v\n%s", tool.name, err, stderr)
					return
				}
				t.Fatalf("%s: importing the %v secret key: %v\nstderr:\n%s", tool.name, kind, err, stderr)
			}
			modes := []bool{false}
			if tool.hidden {
				modes = append(modes, true)
			}
			cases := []interopCase{interopShortCase()}
			if !testing.Short() {
				cases = interopCases(tool.sizes)
			}
			for _, hidden := range modes {
				mode := "visible"
				if hidden {
					mode = "hidden"
				}
				t.Run(mode, func(t *testing.T) {
					for _, c := range cases {
						t.Run(c.name, func(t *testing.T) { interopDecrypt(t, ring, key, hidden, c) })
					}
				})
			}
			if tool.extra != nil {
				tool.extra(t, ring, key)
			}
		})
	}
}

// interopEncrypt encrypts c to key and returns the armoured ciphertext as
// delivered in the PGP/MIME message.
func interopEncrypt(t *testing.T, key *keys.Key, hidden bool, c interopCase) []byte {
	t.Helper()
	res, err := Encrypt(c.fields, c.body, []*keys.Key{key}, Options{HideRecipients: hidden, ProtectHeaders: c.protect})
	if err != nil {
		t.Fatal(err)
	}
	_, ct := pgptest.Open(t, delivered(t, c.fields, res))
	return ct
}

// interopDecrypt encrypts one message, has the tool decrypt it and checks
// the result byte for byte.
func interopDecrypt(t *testing.T, ring *interopRing, key *keys.Key, hidden bool, c interopCase) {
	t.Helper()
	ct := interopEncrypt(t, key, hidden, c)
	plain, stderr, err := ring.decrypt(ct, hidden)
	if err != nil {
		t.Fatalf("%s could not decrypt (%d bytes of armour): %v\nstderr:\n%s", ring.tool, len(ct), err, stderr)
	}
	defer func() {
		if t.Failed() {
			want := append(innerHeader(c.fields, c.body, c.protect && !signedBody(c.fields)), c.body...)
			i := 0
			for i < len(plain) && i < len(want) && plain[i] == want[i] {
				i++
			}
			t.Logf("%s output: %d bytes, expected %d, first difference at byte %d\nstderr:\n%s",
				ring.tool, len(plain), len(want), i, stderr)
		}
	}()
	if ring.check != nil {
		ring.check(t, stderr, hidden)
	}
	checkInner(t, c.name, plain, c.fields, c.body, c.protect)
}

// gpgHome makes a GnuPG home directory with a short path: gpg-agent's
// socket lives in it (unless /run/user exists), and a Unix socket path may
// not exceed about 107 bytes, which t.TempDir() can. At cleanup it stops
// the agent and removes the directory.
func gpgHome(t *testing.T, gpgconf string) string {
	t.Helper()
	home, err := os.MkdirTemp("", "g")
	if err == nil && len(home) > 64 {
		os.Remove(home)
		home, err = os.MkdirTemp("/tmp", "g")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, stderr, err := runTool(home, nil, gpgconf, "--homedir", home, "--kill", "all"); err != nil {
			t.Errorf("gpgconf --kill all: %v\n%s", err, stderr)
		}
		os.RemoveAll(home)
	})
	return home
}

func TestInteropGnuPG(t *testing.T) {
	gpg := lookTool(t, "gpg")
	gpgconf := lookTool(t, "gpgconf")
	t.Parallel()
	logVersion(t, gpg, "--version")
	runInteropTool(t, interopTool{
		name: "gpg",
		load: func(t *testing.T, secret []byte) (*interopRing, []byte, error) {
			home := gpgHome(t, gpgconf)
			common := []string{"--homedir", home, "--batch", "--yes", "--pinentry-mode", "loopback", "--no-tty",
				"--disable-dirmngr", "--no-auto-key-retrieve", "--no-auto-key-locate"}
			if _, stderr, err := runTool(home, secret, gpg, append(common, "--import")...); err != nil {
				return nil, stderr, err
			}
			// gpg exits 0 from an import that read no key at all; make sure
			// the secret key is there.
			out, stderr, err := runTool(home, nil, gpg, append(common, "--with-colons", "--list-secret-keys")...)
			if err == nil && !bytes.Contains(out, []byte("\nssb:")) {
				err = errors.New("no secret subkey after import")
			}
			if err != nil {
				return nil, append(out, stderr...), err
			}
			return &interopRing{
				tool: "gpg",
				decrypt: func(ct []byte, hidden bool) ([]byte, []byte, error) {
					return runTool(home, ct, gpg, append(common, "--status-fd", "2", "--decrypt")...)
				},
				decryptWith: func(ct []byte, extra ...string) ([]byte, []byte, error) {
					args := append(append(append([]string(nil), common...), extra...), "--status-fd", "2", "--decrypt")
					return runTool(home, ct, gpg, args...)
				},
				check: func(t *testing.T, stderr []byte, hidden bool) {
					t.Helper()
					// The status lines say whether the integrity check ran
					// and whether gpg saw a wildcard key ID.
					for _, s := range []string{"[GNUPG:] DECRYPTION_OKAY", "[GNUPG:] GOODMDC"} {
						if !bytes.Contains(stderr, []byte(s)) {
							t.Errorf("gpg status has no %q", s)
						}
					}
					if got := bytes.Contains(stderr, []byte("[GNUPG:] ENC_TO 0000000000000000 ")); got != hidden {
						t.Errorf("gpg saw a wildcard key ID: %v, want %v", got, hidden)
					}
				},
			}, nil, nil
		},
		hidden: true,
		sizes:  interopSizesAll,
		extra: func(t *testing.T, ring *interopRing, key *keys.Key) {
			// gpg tries every secret key on a wildcard key ID unless told
			// --skip-hidden-recipients (docs/encryption.md): then it must fail.
			t.Run("hidden-with-skip-hidden-recipients-fails", func(t *testing.T) {
				c := interopShortCase()
				plain, stderr, err := ring.decryptWith(interopEncrypt(t, key, true, c), "--skip-hidden-recipients")
				if err == nil || len(plain) > 0 {
					t.Fatalf("gpg --skip-hidden-recipients decrypted a hidden-recipient message (err %v, %d bytes)\nstderr:\n%s", err, len(plain), stderr)
				}
				t.Logf("gpg --skip-hidden-recipients refused as expected: %v: %s", err, bytes.TrimSpace(stderr))
			})
		},
	})
}

func TestInteropSequoia(t *testing.T) {
	sq := lookTool(t, "sq")
	t.Parallel()
	logVersion(t, sq, "--version")
	runInteropTool(t, interopTool{
		name: "sq",
		load: func(t *testing.T, secret []byte) (*interopRing, []byte, error) {
			home := t.TempDir()
			keyFile := filepath.Join(home, "key.asc")
			if err := os.WriteFile(keyFile, secret, 0o600); err != nil {
				t.Fatal(err)
			}
			// sq keeps no keyring; inspect checks that it can parse the key.
			if _, stderr, err := runTool(home, nil, sq, "inspect", keyFile); err != nil {
				return nil, stderr, err
			}
			return &interopRing{
				tool: "sq",
				decrypt: func(ct []byte, hidden bool) ([]byte, []byte, error) {
					return runTool(home, ct, sq, "decrypt", "--recipient-key", keyFile)
				},
			}, nil, nil
		},
		hidden: true,
		sizes:  interopSizesSubset,
	})
}

func TestInteropRNP(t *testing.T) {
	rnp := lookTool(t, "rnp")
	rnpkeys := lookTool(t, "rnpkeys")
	t.Parallel()
	logVersion(t, rnp, "--version")
	// rnp 0.17 and later decrypt hidden recipients when asked to.
	help, _, _ := runTool(t.TempDir(), nil, rnp, "--help")
	allowHidden := bytes.Contains(help, []byte("--allow-hidden"))
	t.Logf("rnp has --allow-hidden: %v", allowHidden)
	runInteropTool(t, interopTool{
		name: "rnp",
		load: func(t *testing.T, secret []byte) (*interopRing, []byte, error) {
			home := t.TempDir()
			keyFile := filepath.Join(t.TempDir(), "key.asc")
			if err := os.WriteFile(keyFile, secret, 0o600); err != nil {
				t.Fatal(err)
			}
			if out, stderr, err := runTool(home, nil, rnpkeys, "--homedir", home, "--import", keyFile); err != nil {
				return nil, append(out, stderr...), err
			}
			return &interopRing{
				tool: "rnp",
				decrypt: func(ct []byte, hidden bool) ([]byte, []byte, error) {
					args := []string{"--homedir", home, "--decrypt"}
					if hidden {
						args = append(args, "--allow-hidden")
					}
					return runTool(home, ct, rnp, args...)
				},
			}, nil, nil
		},
		hidden: allowHidden,
		sizes:  interopSizesSubset,
		extra: func(t *testing.T, ring *interopRing, key *keys.Key) {
			// Without --allow-hidden, RNP must fail on wildcard key IDs:
			// this is why HideRecipients is not the default.
			t.Run("hidden-without-allow-hidden-fails", func(t *testing.T) {
				c := interopShortCase()
				plain, stderr, err := ring.decrypt(interopEncrypt(t, key, true, c), false)
				if err == nil || len(plain) > 0 {
					t.Fatalf("rnp without --allow-hidden decrypted a hidden-recipient message (err %v, %d bytes)\nstderr:\n%s", err, len(plain), stderr)
				}
				t.Logf("rnp refused as expected: %v: %s", err, bytes.TrimSpace(stderr))
			})
		},
	})
}
