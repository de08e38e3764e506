package main

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"net/mail"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/config"
	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
)

// result is what one in-process run of the CLI produced.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout:\n%s--- stderr:\n%s", r.code, r.stdout, r.stderr)
}

// cli runs the command with args and stdin (nil: empty).
func cli(t *testing.T, stdin []byte, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(args, bytes.NewReader(stdin), &out, &errOut)
	return result{code, out.String(), errOut.String()}
}

// fixture is a temporary folder holding a lacre.toml whose store is the
// relative "keys.db", and says where "-config" goes on the command line.
type fixture struct {
	t     *testing.T
	dir   string
	cfg   string
	after bool // -config after the command's arguments, not before the command
}

// placements runs body once with -config before the command and once
// with it after the command's arguments.
func placements(t *testing.T, body func(t *testing.T, after bool)) {
	for _, after := range []bool{false, true} {
		name := "config-before"
		if after {
			name = "config-after"
		}
		t.Run(name, func(t *testing.T) { body(t, after) })
	}
}

const baseConfig = "[store]\ndatabase = \"keys.db\"\n"

// noAliases ends every fixture's file unless it has an [aliases] table:
// the tests must not read the system's Postfix (the expansion's own
// tests: TestAliasOptions, TestKeysShowExpansion, integration/aliases_test.go).
const noAliases = "\n[aliases]\nsource = \"none\"\n"

func newFixture(t *testing.T, after bool, extra string) *fixture {
	t.Helper()
	t.Setenv(config.EnvVar, "") // never pick up the developer's configuration
	f := &fixture{t: t, dir: t.TempDir(), after: after}
	f.cfg = filepath.Join(f.dir, "lacre.toml")
	f.writeConfig(extra)
	// Every command but "store init" refuses a missing store; a test of a
	// broken configuration gets no store, as "store init" would refuse it.
	if _, err := config.Load(f.cfg); err == nil {
		f.must(nil, "store", "init")
	}
	return f
}

// newFixtureNoStore is newFixture without "store init".
func newFixtureNoStore(t *testing.T, after bool, extra string) *fixture {
	t.Helper()
	t.Setenv(config.EnvVar, "")
	f := &fixture{t: t, dir: t.TempDir(), after: after}
	f.cfg = filepath.Join(f.dir, "lacre.toml")
	f.writeConfig(extra)
	return f
}

func (f *fixture) writeConfig(extra string) {
	f.t.Helper()
	text := baseConfig + extra
	if !strings.Contains(extra, "[aliases]") {
		text += noAliases
	}
	if err := os.WriteFile(f.cfg, []byte(text), 0o600); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) db() string { return filepath.Join(f.dir, "keys.db") }

// file writes data to a file in the fixture's folder and returns its path.
func (f *fixture) file(name string, data []byte) string {
	f.t.Helper()
	p := filepath.Join(f.dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *fixture) args(args []string) []string {
	if f.after {
		return append(slices.Clone(args), "-config", f.cfg)
	}
	return append([]string{"-config", f.cfg}, args...)
}

func (f *fixture) run(stdin []byte, args ...string) result {
	f.t.Helper()
	return cli(f.t, stdin, f.args(args)...)
}

// must runs a command that has to succeed.
func (f *fixture) must(stdin []byte, args ...string) result {
	f.t.Helper()
	r := f.run(stdin, args...)
	if r.code != 0 {
		f.t.Fatalf("%q: %v", args, r)
	}
	return r
}

// add binds the public key of e to address.
func (f *fixture) add(address string, e *openpgp.Entity) {
	f.t.Helper()
	f.must(testkeys.ArmoredPublic(f.t, e), "keys", "add", address, "-")
}

// row is one line of "keys list" (without its KIND and FORMAT: fullRow).
type row struct{ address, fingerprint, added, expires, state string }

// fullRow is one line of "keys list" with every column, and the detail
// line a certificate's row has ("" for an OpenPGP key).
type fullRow struct {
	row
	kind, format, detail string
}

// list runs "keys list" and parses its table.
func (f *fixture) list() ([]row, result) {
	f.t.Helper()
	full, r := f.listFull()
	var rows []row
	for _, fr := range full {
		rows = append(rows, fr.row)
	}
	return rows, r
}

// listFull is list with every column.
func (f *fixture) listFull() ([]fullRow, result) {
	f.t.Helper()
	r := f.must(nil, "keys", "list")
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if got := strings.Join(strings.Fields(lines[0]), " "); got != "ADDRESS KIND FORMAT FINGERPRINT ADDED EXPIRES STATE" {
		f.t.Fatalf("keys list header = %q", lines[0])
	}
	var rows []fullRow
	for _, l := range lines[1:] {
		if strings.HasPrefix(l, " ") {
			if len(rows) == 0 || rows[len(rows)-1].kind != "x509" {
				f.t.Fatalf("keys list: a detail line %q not after a certificate", l)
			}
			rows[len(rows)-1].detail = strings.TrimSpace(l)
			continue
		}
		fs := strings.Fields(l)
		if len(fs) < 7 {
			f.t.Fatalf("keys list row %q has fewer than 7 columns", l)
		}
		rows = append(rows, fullRow{row{fs[0], fs[3], fs[4], fs[5], strings.Join(fs[6:], " ")}, fs[1], fs[2], ""})
	}
	return rows, r
}

// show runs "keys show" and returns its labelled lines ("source" →
// ["store (alice@example.org)"]), white space squashed.
func (f *fixture) show(address string) (map[string][]string, result) {
	f.t.Helper()
	r := f.must(nil, "keys", "show", address)
	m := map[string][]string{}
	for _, l := range strings.Split(r.stdout, "\n") {
		if l == "" || l[0] == ' ' {
			continue
		}
		label, v, ok := strings.Cut(l, ":")
		if !ok {
			f.t.Fatalf("keys show line without a label: %q", l)
		}
		m[label] = append(m[label], squash(v))
	}
	return m, r
}

func squash(s string) string { return strings.Join(strings.Fields(s), " ") }

func fpr(e *openpgp.Entity) string {
	return strings.ToUpper(hex.EncodeToString(e.PrimaryKey.Fingerprint))
}

func keyID(e *openpgp.Entity) string { return "0x" + strings.ToUpper(e.PrimaryKey.KeyIdString()) }

func wantCode(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d\n%v", r.code, code, r)
	}
}

func wantContains(t *testing.T, what, got string, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(got, s) {
			t.Errorf("%s does not contain %q:\n%s", what, s, got)
		}
	}
}

func today() string { return time.Now().UTC().Format("2006-01-02") }

// --- top level -------------------------------------------------------------

func TestTopLevel(t *testing.T) {
	t.Setenv(config.EnvVar, "")
	allCommands := []string{"keys add", "keys list", "keys show", "keys remove", "keys set", "encrypt", "check-config", "version"}
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string // substrings
		stderr []string
		quiet  string // "stdout" or "stderr": must stay empty
	}{
		{name: "help", args: []string{"help"}, code: 0,
			stdout: append([]string{"usage: lacre-milter [-config FILE] COMMAND [ARGS]", "$LACRE_CONFIG"}, allCommands...), quiet: "stderr"},
		// -h and --help are the flag package's: usage on stderr, exit 0.
		{name: "--help", args: []string{"--help"}, code: 0,
			stderr: append([]string{"usage: lacre-milter [-config FILE] COMMAND [ARGS]"}, allCommands...), quiet: "stdout"},
		{name: "-h", args: []string{"-h"}, code: 0,
			stderr: append([]string{"usage: lacre-milter [-config FILE] COMMAND [ARGS]"}, allCommands...), quiet: "stdout"},
		// No arguments runs serve (tested in integration/); serve takes none.
		{name: "serve with an argument", args: []string{"serve", "now"}, code: 2,
			stderr: []string{"usage: lacre-milter serve", `unexpected argument "now"`}, quiet: "stdout"},
		{name: "unknown command", args: []string{"frobnicate", "now"}, code: 2,
			stderr: []string{`lacre-milter: unknown command "frobnicate now" (try "lacre-milter help")`}, quiet: "stdout"},
		{name: "unknown global flag", args: []string{"-nope", "version"}, code: 2,
			stderr: []string{"flag provided but not defined: -nope"}, quiet: "stdout"},
		{name: "keys alone", args: []string{"keys"}, code: 2,
			stderr: []string{
				"lacre-milter keys: want one of:\n",
				"  lacre-milter keys add [-replace] ADDRESS FILE|-\n",
				"  lacre-milter keys list \n",
				"  lacre-milter keys show [-export] ADDRESS\n",
				"  lacre-milter keys remove ADDRESS [FINGERPRINT]\n",
				"  lacre-milter keys set ADDRESS protect-headers on|off|default | ADDRESS format pgp-mime|pgp-inline|smime|default\n",
			}, quiet: "stdout"},
		{name: "keys with an unknown subcommand", args: []string{"keys", "frob"}, code: 2,
			stderr: []string{"lacre-milter keys: want one of:", "lacre-milter keys add"}, quiet: "stdout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := cli(t, nil, tc.args...)
			wantCode(t, r, tc.code)
			wantContains(t, "stdout", r.stdout, tc.stdout...)
			wantContains(t, "stderr", r.stderr, tc.stderr...)
			if tc.quiet == "stdout" && r.stdout != "" || tc.quiet == "stderr" && r.stderr != "" {
				t.Errorf("%s should be empty\n%v", tc.quiet, r)
			}
		})
	}
	t.Run("keys alone lists no other command", func(t *testing.T) {
		r := cli(t, nil, "keys")
		if strings.Contains(r.stderr, "encrypt") || strings.Contains(r.stderr, "check-config") {
			t.Errorf("the keys group lists commands outside it:\n%s", r.stderr)
		}
	})
	t.Run("version", func(t *testing.T) {
		f := newFixture(t, false, "")
		for _, args := range [][]string{{"version"}, f.args([]string{"version"})} {
			r := cli(t, nil, args...)
			wantCode(t, r, 0)
			if !regexp.MustCompile(`^lacre-milter \S+\n$`).MatchString(r.stdout) || r.stderr != "" {
				t.Errorf("%q: want one line \"lacre-milter VERSION\"\n%v", args, r)
			}
		}
		f.after = true
		if r := f.run(nil, "version"); r.code != 0 || !strings.HasPrefix(r.stdout, "lacre-milter ") {
			t.Errorf("version -config FILE:\n%v", r)
		}
	})
	t.Run("version with an extra argument", func(t *testing.T) {
		r := cli(t, nil, "version", "extra")
		wantCode(t, r, 2)
		wantContains(t, "stderr", r.stderr, "usage: lacre-milter version")
	})
}

// --- configuration -----------------------------------------------------------

// TestRelativeDatabase checks that the relative store.database lands next
// to the configuration file, not in the working directory.
func TestRelativeDatabase(t *testing.T) {
	placements(t, func(t *testing.T, after bool) {
		f := newFixture(t, after, "")
		wd := t.TempDir()
		t.Chdir(wd)
		alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
		f.add("alice@example.org", alice)
		if _, err := os.Stat(f.db()); err != nil {
			t.Errorf("the store is not next to the configuration: %v", err)
		}
		if _, err := os.Stat(filepath.Join(wd, "keys.db")); err == nil {
			t.Errorf("the store was created in the working directory %s", wd)
		}
		r := f.must(nil, "check-config")
		wantContains(t, "check-config", r.stdout, "store.database  "+f.db()+"\n")

		// A relative -config path works from another folder too.
		t.Chdir(filepath.Dir(f.dir))
		r = cli(t, nil, "-config", filepath.Join(filepath.Base(f.dir), "lacre.toml"), "keys", "list")
		wantCode(t, r, 0)
		wantContains(t, "keys list", r.stdout, fpr(alice))
	})
}

func TestCheckConfig(t *testing.T) {
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	carol := testkeys.Generate(t, testkeys.Curve25519, "carol@example.org")
	placements(t, func(t *testing.T, after bool) {
		t.Run("good file, no store yet", func(t *testing.T) {
			f := newFixtureNoStore(t, after, "[milter]\nlisten = \"unix:/run/lacre.sock\"\n")
			r := f.run(nil, "check-config")
			wantCode(t, r, 0)
			wantContains(t, "stdout", r.stdout,
				"configuration OK ("+f.cfg+")\n",
				"milter.listen   unix:/run/lacre.sock\n",
				"store.database  "+f.db()+"\n",
				`(the key store does not exist yet; "lacre-milter store init" creates it)`)
			if r.stderr != "" {
				t.Errorf("stderr: %s", r.stderr)
			}
			if _, err := os.Stat(f.db()); err == nil {
				t.Errorf("check-config created the store")
			}
		})
		t.Run("good file with store and a static mapping to a stored key", func(t *testing.T) {
			f := newFixture(t, after, "[static.addresses]\n\"team@example.org\" = [\""+strings.ToLower(fpr(alice))+"\"]\n")
			f.add("alice@example.org", alice)
			r := f.run(nil, "check-config")
			wantCode(t, r, 0)
			wantContains(t, "stdout", r.stdout, "configuration OK ("+f.cfg+")\n")
			if strings.Contains(r.stdout, "does not exist") {
				t.Errorf("claims the store does not exist:\n%s", r.stdout)
			}
		})
		tests := []struct {
			name   string
			config string
			stderr []string
		}{
			{"unknown key", "\n[keys]\nmin_rsa_bit = 2048\n",
				[]string{"lacre-milter check-config: ", "lacre.toml: line 5: keys.min_rsa_bit: unknown option"}},
			{"unknown table", "[smtp]\nport = 25\n",
				[]string{"line 4: smtp.port: unknown option"}},
			{"bad value", "[encryption]\nunusable_key = \"bounce\"\n",
				[]string{`line 4: encryption.unusable_key: "bounce" is not one of`}},
			{"key ID instead of fingerprint", "[static.domains]\n\"example.com\" = [\"0x1234567890ABCDEF\"]\n",
				[]string{`"example.com": "0x1234567890ABCDEF" is not a fingerprint`}},
			{"two problems", "[keys]\nmin_rsa_bits = 512\n[milter]\nlisten = \"localhost\"\n",
				[]string{"2 problems:", "line 4: keys.min_rsa_bits: 512 is out of range", "line 6: milter.listen"}},
			{"TOML syntax error", "[milter]\nlisten = \"inet:127.0.0.1:25\n", []string{"lacre.toml: line 4: milter.listen: strings cannot contain newlines"}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				f := newFixture(t, after, tc.config)
				r := f.run(nil, "check-config")
				wantCode(t, r, 1)
				wantContains(t, "stderr", r.stderr, tc.stderr...)
				wantContains(t, "stderr", r.stderr, f.cfg)
				if strings.Contains(r.stdout, "OK") {
					t.Errorf("says OK for a bad file:\n%s", r.stdout)
				}
			})
		}
		t.Run("unclosed table header", func(t *testing.T) {
			f := newFixture(t, after, "[keys\nmin_rsa_bits = 2048\n")
			r := f.run(nil, "check-config")
			wantCode(t, r, 1)
			if !strings.Contains(r.stderr, "lacre.toml: line 3: ") || strings.Contains(r.stderr, "store") {
				t.Errorf("unclosed table header on line 3 reported as: %s", r.stderr)
			}
		})
		t.Run("one address spelled twice", func(t *testing.T) {
			// Caught by the resolver's options, not by config.Validate,
			// also before there is a store.
			fp := strings.Repeat("AB", 20)
			f := newFixtureNoStore(t, after, "[static.addresses]\n\"Alice@example.org\" = [\""+fp+"\"]\n\"alice@EXAMPLE.org\" = [\""+fp+"\"]\n")
			r := f.run(nil, "check-config")
			wantCode(t, r, 1)
			wantContains(t, "stderr", r.stderr, `static.addresses: "Alice@example.org" and "alice@EXAMPLE.org" are the same address (alice@example.org)`)
		})
		t.Run("static mapping to a key not in the store", func(t *testing.T) {
			f := newFixture(t, after, "[static.addresses]\n\"carol@example.org\" = [\""+fpr(carol)+"\"]\n"+
				"[static.domains]\n\"example.net\" = [\""+fpr(alice)+"\"]\n")
			f.add("alice@example.org", alice)
			r := f.run(nil, "check-config")
			wantCode(t, r, 1)
			wantContains(t, "stderr", r.stderr,
				"mail for these would wait in the queue",
				"static.addresses carol@example.org: key "+fpr(carol)+" is not in the key store")
			if strings.Contains(r.stderr, "static.domains") {
				t.Errorf("reports the domain mapping, whose key is in the store:\n%s", r.stderr)
			}
			// The resolver agrees: mail to carol cannot be decided.
			r = f.run(nil, "keys", "show", "carol@example.org")
			wantCode(t, r, 1)
			wantContains(t, "keys show stderr", r.stderr, "carol@example.org maps to "+fpr(carol))
			r = f.run([]byte("Subject: x\r\n\r\nx\r\n"), "encrypt", "carol@example.org")
			wantCode(t, r, 1)
			if r.stdout != "" {
				t.Errorf("encrypt wrote output for an undecidable recipient:\n%s", r.stdout)
			}
			// Adding the key fixes it.
			f.add("carol@example.org", carol)
			wantCode(t, f.run(nil, "check-config"), 0)
		})
		t.Run("failing check does not also say OK", func(t *testing.T) {
			f := newFixture(t, after, "[static.addresses]\n\"carol@example.org\" = [\""+fpr(carol)+"\"]\n")
			f.add("alice@example.org", alice)
			r := f.run(nil, "check-config")
			wantCode(t, r, 1)
			if strings.Contains(r.stdout, "configuration OK") {
				t.Errorf("a failing check-config also said OK: %q", r.stdout)
			}
		})
		t.Run("missing file", func(t *testing.T) {
			f := newFixtureNoStore(t, after, "")
			f.cfg = filepath.Join(f.dir, "nope.toml")
			r := f.run(nil, "check-config")
			wantCode(t, r, 1)
			wantContains(t, "stderr", r.stderr, "nope.toml", "no such file or directory")
		})
		t.Run("extra argument", func(t *testing.T) {
			f := newFixture(t, after, "")
			r := f.run(nil, "check-config", "extra")
			wantCode(t, r, 2)
			wantContains(t, "stderr", r.stderr, "usage: lacre-milter check-config", `unexpected argument "extra"`)
		})
	})
}

// --- keys add ----------------------------------------------------------------

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// addedLine is what "keys add" prints for a key without expiry.
func addedLine(address string, e *openpgp.Entity) string {
	return address + ": added " + keyID(e) + " " + fpr(e) + " (expires never)\n"
}

func TestKeysAdd(t *testing.T) {
	const addr = "alice@example.org"
	x := testkeys.Generate(t, testkeys.Curve25519, addr)
	rsa := testkeys.Generate(t, testkeys.RSA3072, addr)
	placements(t, func(t *testing.T, after bool) {
		good := []struct {
			name    string
			address string // as given on the command line
			data    []byte
			stdin   bool
			want    []*openpgp.Entity
		}{
			{"Curve25519 file", addr, testkeys.ArmoredPublic(t, x), false, []*openpgp.Entity{x}},
			{"RSA-3072 file", addr, testkeys.ArmoredPublic(t, rsa), false, []*openpgp.Entity{rsa}},
			{"Curve25519 stdin", addr, testkeys.ArmoredPublic(t, x), true, []*openpgp.Entity{x}},
			{"RSA-3072 stdin", addr, testkeys.ArmoredPublic(t, rsa), true, []*openpgp.Entity{rsa}},
			{"binary key file", addr, testkeys.Public(t, x), false, []*openpgp.Entity{x}},
			{"two armoured blocks with text around", addr,
				concat([]byte("exported by gpg\n"), testkeys.ArmoredPublic(t, x), []byte("\nand another:\n"), testkeys.ArmoredPublic(t, rsa)),
				false, []*openpgp.Entity{x, rsa}},
			{"two binary keys on stdin", addr, concat(testkeys.Public(t, rsa), testkeys.Public(t, x)), true, []*openpgp.Entity{rsa, x}},
			{"address in other case", "ALICE@Example.ORG", testkeys.ArmoredPublic(t, x), false, []*openpgp.Entity{x}},
			{"address in angle brackets", " <alice@EXAMPLE.org> ", testkeys.ArmoredPublic(t, x), true, []*openpgp.Entity{x}},
		}
		for _, tc := range good {
			t.Run(tc.name, func(t *testing.T) {
				f := newFixture(t, after, "")
				var r result
				if tc.stdin {
					r = f.run(tc.data, "keys", "add", tc.address, "-")
				} else {
					r = f.run(nil, "keys", "add", tc.address, f.file("key.asc", tc.data))
				}
				wantCode(t, r, 0)
				var want string
				var wantRows []row
				for _, e := range tc.want {
					want += addedLine(addr, e)
					wantRows = append(wantRows, row{addr, fpr(e), today(), "never", "ok"})
				}
				if r.stdout != want || r.stderr != "" {
					t.Errorf("output:\n%v\nwant stdout:\n%s", r, want)
				}
				rows, _ := f.list()
				slices.SortFunc(rows, func(a, b row) int { return strings.Compare(a.fingerprint, b.fingerprint) })
				slices.SortFunc(wantRows, func(a, b row) int { return strings.Compare(a.fingerprint, b.fingerprint) })
				if !slices.Equal(rows, wantRows) {
					t.Errorf("keys list:\n got %v\nwant %v", rows, wantRows)
				}
			})
		}

		bad := []struct {
			name    string
			address string
			data    func(t *testing.T) []byte
			reason  []string
		}{
			{"secret key", addr, func(t *testing.T) []byte { return testkeys.ArmoredSecret(t, x) },
				[]string{"this is a secret (private) key; submit only the public key"}},
			{"binary secret key", addr, func(t *testing.T) []byte { return testkeys.Secret(t, x) },
				[]string{"key " + keyID(x) + ": contains secret key material"}},
			{"expired encryption subkey", addr, func(t *testing.T) []byte {
				return testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.ExpiredSubkey, addr))
			}, []string{"no valid encryption subkey", "expired on " + testkeys.ExpiredSubkeyExpiry.Format("2006-01-02")}},
			{"revoked", addr, func(t *testing.T) []byte {
				return testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.Revoked, addr))
			}, []string{"the key has been revoked", `(reason: "test")`}},
			{"other address's User ID", addr, func(t *testing.T) []byte {
				return testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.Curve25519, "mallory@example.net"))
			}, []string{"no User ID carries the address alice@example.org (the key has: mallory@example.net)"}},
			{"subaddress is not the User ID", "alice+tag@example.org", func(t *testing.T) []byte { return testkeys.ArmoredPublic(t, x) },
				[]string{"no User ID carries the address alice+tag@example.org"}},
			{"weak RSA-1024", addr, func(t *testing.T) []byte {
				return testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.RSA1024, addr))
			}, []string{"RSA 1024 bits, below the minimum of 2048"}},
			{"sign-only", addr, func(t *testing.T) []byte {
				return testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.SignOnly, addr))
			}, []string{"no encryption subkey"}},
			{"garbage", addr, func(t *testing.T) []byte { return []byte("this is not a key\n") },
				[]string{"not a valid OpenPGP public key"}},
			{"empty", addr, func(t *testing.T) []byte { return nil },
				[]string{"no OpenPGP public key found in the data"}},
			{"damaged armour", addr, func(t *testing.T) []byte {
				return []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!!\n-----END PGP PUBLIC KEY BLOCK-----\n")
			}, []string{"nothing changed"}},
			{"a PGP message, not a key", addr, func(t *testing.T) []byte {
				return []byte("-----BEGIN PGP MESSAGE-----\n\nwcBMA0XWSzMuQWbcAQf/\n=abcd\n-----END PGP MESSAGE-----\n")
			}, []string{`the armour block is a "PGP MESSAGE"`}},
			{"good key followed by a revoked one", addr, func(t *testing.T) []byte {
				return concat(testkeys.ArmoredPublic(t, rsa), testkeys.ArmoredPublic(t, testkeys.Generate(t, testkeys.Revoked, addr)))
			}, []string{"the key has been revoked"}},
		}
		for _, tc := range bad {
			for _, stdin := range []bool{false, true} {
				name := tc.name + "/file"
				if stdin {
					name = tc.name + "/stdin"
				}
				t.Run(name, func(t *testing.T) {
					f := newFixture(t, after, "")
					f.add(addr, x)
					f.add("bob@example.org", testkeys.Generate(t, testkeys.Curve25519, "bob@example.org"))
					_, before := f.list()
					var r result
					if stdin {
						r = f.run(tc.data(t), "keys", "add", tc.address, "-")
					} else {
						r = f.run(nil, "keys", "add", tc.address, f.file("key.asc", tc.data(t)))
					}
					wantCode(t, r, 1)
					wantContains(t, "stderr", r.stderr, "lacre-milter keys add: nothing changed: ")
					wantContains(t, "stderr", r.stderr, tc.reason...)
					if r.stdout != "" {
						t.Errorf("stdout on failure: %q", r.stdout)
					}
					if _, now := f.list(); now.stdout != before.stdout {
						t.Errorf("the store changed:\nbefore:\n%s\nafter:\n%s", before.stdout, now.stdout)
					}
				})
			}
		}

		t.Run("replace", func(t *testing.T) {
			f := newFixture(t, after, "")
			bob := testkeys.Generate(t, testkeys.Curve25519, "bob@example.org")
			f.add(addr, x)
			f.add("bob@example.org", bob)
			// Without -replace a second key joins the first.
			r := f.must(nil, "keys", "add", addr, f.file("rsa.asc", testkeys.ArmoredPublic(t, rsa)))
			if strings.Contains(r.stdout, "removed") {
				t.Errorf("removed keys without -replace:\n%s", r.stdout)
			}
			rows, _ := f.list()
			if len(rows) != 3 {
				t.Fatalf("after adding a second key: %v", rows)
			}
			// -replace (here after the positional arguments) leaves only the new one.
			f.must(nil, "keys", "remove", addr, fpr(rsa))
			r = f.must(nil, "keys", "add", addr, f.file("rsa.asc", testkeys.ArmoredPublic(t, rsa)), "-replace")
			if want := addedLine(addr, rsa) + addr + ": other keys removed\n"; r.stdout != want {
				t.Errorf("stdout %q, want %q", r.stdout, want)
			}
			rows, _ = f.list()
			want := []row{{addr, fpr(rsa), today(), "never", "ok"}, {"bob@example.org", fpr(bob), today(), "never", "ok"}}
			if !slices.Equal(rows, want) {
				t.Errorf("keys list:\n got %v\nwant %v", rows, want)
			}
			// -replace before the arguments, with the same key: still one key.
			f.must(testkeys.ArmoredPublic(t, rsa), "keys", "add", "-replace", addr, "-")
			if rows, _ := f.list(); !slices.Equal(rows, want) {
				t.Errorf("keys list after replacing with the same key:\n got %v\nwant %v", rows, want)
			}
		})
		t.Run("missing file", func(t *testing.T) {
			f := newFixtureNoStore(t, after, "")
			r := f.run(nil, "keys", "add", addr, filepath.Join(f.dir, "nope.asc"))
			wantCode(t, r, 1)
			wantContains(t, "stderr", r.stderr, "lacre-milter keys add: ", "nope.asc", "no such file or directory")
			if _, err := os.Stat(f.db()); err == nil {
				t.Errorf("a failed add created the store")
			}
		})
		t.Run("not an address", func(t *testing.T) {
			f := newFixture(t, after, "")
			r := f.run(testkeys.ArmoredPublic(t, x), "keys", "add", "alice", "-")
			wantCode(t, r, 1)
			wantContains(t, "stderr", r.stderr, `"alice" is not an e-mail address`)
		})
		t.Run("usage", func(t *testing.T) {
			f := newFixture(t, after, "")
			for _, args := range [][]string{{"keys", "add", addr}, {"keys", "add"}, {"keys", "add", addr, "a", "b"}} {
				r := f.run(nil, args...)
				wantCode(t, r, 2)
				wantContains(t, "stderr", r.stderr, "usage: lacre-milter keys add [-replace] ADDRESS FILE|-\n", "want an address and a key file")
			}
			r := f.run(nil, "keys", "add", "-force", addr, "-")
			wantCode(t, r, 2)
			wantContains(t, "stderr", r.stderr, "flag provided but not defined: -force")
		})
	})
}

// --- keys list / show / remove / set ----------------------------------------

func TestKeysListShowRemoveSet(t *testing.T) {
	a1 := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	a2 := testkeys.Generate(t, testkeys.RSA3072, "alice@example.org")
	bob := testkeys.Generate(t, testkeys.Curve25519, "bob@example.org")
	placements(t, func(t *testing.T, after bool) {
		f := newFixture(t, after, "")

		t.Run("empty list", func(t *testing.T) {
			rows, r := f.list()
			if len(rows) != 0 || !strings.Contains(r.stderr, "(no keys; add one with: lacre-milter keys add ADDRESS FILE)") {
				t.Errorf("empty store:\n%v", r)
			}
		})
		f.add("alice@example.org", a1)
		f.add("alice@example.org", a2)
		f.add("bob@example.org", bob)

		t.Run("list", func(t *testing.T) {
			rows, r := f.list()
			want := []row{
				{"alice@example.org", fpr(a1), today(), "never", "ok"},
				{"alice@example.org", fpr(a2), today(), "never", "ok"},
				{"bob@example.org", fpr(bob), today(), "never", "ok"},
			}
			if !slices.Equal(rows, want) {
				t.Errorf("keys list:\n got %v\nwant %v\n%v", rows, want, r)
			}
			if r.stderr != "" {
				t.Errorf("stderr: %s", r.stderr)
			}
		})

		showTests := []struct {
			name, address string
			want          map[string][]string
		}{
			{"stored address", "alice@example.org", map[string][]string{
				"address": {"alice@example.org"},
				"action":  {"encrypt to 2 key(s)"},
				"source":  {"store (alice@example.org)"},
				"format":  {"pgp-mime (encryption.pgp_format)"},
				"headers": {"protected = false"},
				"key":     {fpr(a1) + " ok", fpr(a2) + " ok"},
			}},
			{"subaddress falls back", "alice+tag@example.org", map[string][]string{
				"address": {"alice+tag@example.org"},
				"action":  {"encrypt to 2 key(s)"},
				"source":  {"store (alice@example.org)"},
				"format":  {"pgp-mime (encryption.pgp_format)"},
				"headers": {"protected = false"},
				"key":     {fpr(a1) + " ok", fpr(a2) + " ok"},
			}},
			{"other case", "<Bob@EXAMPLE.org>", map[string][]string{
				"address": {"bob@example.org"},
				"action":  {"encrypt to 1 key(s)"},
				"source":  {"store (bob@example.org)"},
				"format":  {"pgp-mime (encryption.pgp_format)"},
				"headers": {"protected = false"},
				"key":     {fpr(bob) + " ok"},
			}},
			{"no key", "carol@example.org", map[string][]string{
				"address": {"carol@example.org"},
				"action":  {"pass unchanged (no key for carol@example.org)"},
			}},
		}
		for _, tc := range showTests {
			t.Run("show/"+tc.name, func(t *testing.T) {
				got, r := f.show(tc.address)
				for k, v := range tc.want {
					if !slices.Equal(got[k], v) {
						t.Errorf("%s: got %q, want %q\n%s", k, got[k], v, r.stdout)
					}
				}
				for k := range got {
					if _, ok := tc.want[k]; !ok {
						t.Errorf("unexpected line %s: %q", k, got[k])
					}
				}
			})
		}
		t.Run("show/uid and dates", func(t *testing.T) {
			_, r := f.show("bob@example.org")
			wantContains(t, "keys show", r.stdout, "uid "+testkeys.UserID("bob@example.org")+"\n",
				"created "+bob.PrimaryKey.CreationTime.UTC().Format("2006-01-02")+", expires never\n")
		})
		t.Run("show/export", func(t *testing.T) {
			for _, tc := range []struct {
				args []string
				want []string
			}{
				{[]string{"keys", "show", "-export", "bob@example.org"}, []string{fpr(bob)}},
				{[]string{"keys", "show", "alice+x@example.org", "-export"}, []string{fpr(a1), fpr(a2)}},
			} {
				r := f.must(nil, tc.args...)
				var got []string
				rest := []byte(r.stdout)
				for len(bytes.TrimSpace(rest)) > 0 {
					blk, err := armor.Decode(bytes.NewReader(rest))
					if err != nil {
						t.Fatalf("%q: export is not armour: %v\n%s", tc.args, err, r.stdout)
					}
					if blk.Type != openpgp.PublicKeyType {
						t.Errorf("armour type %q", blk.Type)
					}
					el, err := openpgp.ReadKeyRing(blk.Body)
					if err != nil {
						t.Fatalf("%q: exported key does not parse: %v", tc.args, err)
					}
					for _, e := range el {
						if e.PrivateKey != nil {
							t.Errorf("export contains a secret key")
						}
						got = append(got, fpr(e))
					}
					end := bytes.Index(rest, []byte("-----END PGP PUBLIC KEY BLOCK-----"))
					if end < 0 {
						t.Fatalf("no END line")
					}
					rest = rest[end+len("-----END PGP PUBLIC KEY BLOCK-----"):]
				}
				if !slices.Equal(got, tc.want) {
					t.Errorf("%q: exported %v, want %v", tc.args, got, tc.want)
				}
			}
			r := f.run(nil, "keys", "show", "-export", "carol@example.org")
			wantCode(t, r, 1)
			wantContains(t, "stderr", r.stderr, "carol@example.org: no usable key to export")
			if r.stdout != "" {
				t.Errorf("stdout: %q", r.stdout)
			}
		})
		t.Run("show/errors", func(t *testing.T) {
			r := f.run(nil, "keys", "show", "not an address")
			wantCode(t, r, 1)
			wantContains(t, "stderr", r.stderr, `"not an address" is not an e-mail address`)
			r = f.run(nil, "keys", "show")
			wantCode(t, r, 2)
			wantContains(t, "stderr", r.stderr, "usage: lacre-milter keys show [-export] ADDRESS\n", "want one address")
		})

		t.Run("set protect-headers", func(t *testing.T) {
			steps := []struct {
				args     []string
				config   string // written before the step when not ""
				code     int
				out      string
				alice    string // "headers" of keys show alice+tag@ afterwards
				bobAfter string
			}{
				{[]string{"Alice@Example.org", "protect-headers", "on"}, "", 0, "alice@example.org: protect-headers on\n", "protected = true", "protected = false"},
				{[]string{"alice@example.org", "protect-headers", "OFF"}, "", 0, "alice@example.org: protect-headers off\n", "protected = false", "protected = false"},
				// Off is the recipient's choice, so the operator's default no longer applies.
				{nil, "[encryption]\nprotect_headers = true\n", 0, "", "protected = false", "protected = true"},
				{[]string{"alice@example.org", "protect-headers", "default"}, "", 0, "alice@example.org: protect-headers default\n", "protected = true", "protected = true"},
				{nil, "", 0, "", "protected = false", "protected = false"}, // back to the file without the default
				{[]string{"alice@example.org", "protect-headers", "maybe"}, "", 2, "", "protected = false", "protected = false"},
				{[]string{"alice@example.org", "colour", "red"}, "", 2, "", "protected = false", "protected = false"},
				{[]string{"alice@example.org", "protect-headers"}, "", 2, "", "protected = false", "protected = false"},
				{[]string{"alice@example.org", "protect-headers", "yes"}, "", 0, "alice@example.org: protect-headers yes\n", "protected = true", "protected = false"},
			}
			for i, s := range steps {
				if s.args == nil {
					f.writeConfig(s.config)
				} else {
					r := f.run(nil, append([]string{"keys", "set"}, s.args...)...)
					if r.code != s.code || r.stdout != s.out {
						t.Fatalf("step %d %q: want exit %d stdout %q\n%v", i, s.args, s.code, s.out, r)
					}
					if s.code == 2 {
						wantContains(t, "stderr", r.stderr, "usage: lacre-milter keys set ADDRESS protect-headers on|off|default | ADDRESS format pgp-mime|pgp-inline|smime|default\n")
					}
				}
				if got, _ := f.show("alice+tag@example.org"); !slices.Equal(got["headers"], []string{s.alice}) {
					t.Errorf("step %d %q: alice+tag headers %q, want %q", i, s.args, got["headers"], s.alice)
				}
				if got, _ := f.show("bob@example.org"); !slices.Equal(got["headers"], []string{s.bobAfter}) {
					t.Errorf("step %d %q: bob headers %q, want %q", i, s.args, got["headers"], s.bobAfter)
				}
			}
			f.must(nil, "keys", "set", "alice@example.org", "protect-headers", "default")
		})

		t.Run("remove", func(t *testing.T) {
			steps := []struct {
				args   []string
				code   int
				stdout string
				stderr string
				rows   []string // fingerprints left, in list order
			}{
				{[]string{"alice@example.org", strings.ToLower(fpr(a1))}, 0,
					"alice@example.org: removed 1 key(s); mail to it is no longer encrypted with them\n", "", []string{fpr(a2), fpr(bob)}},
				{[]string{"alice@example.org", fpr(a1)}, 1, "",
					"lacre-milter keys remove: alice@example.org has no key " + fpr(a1), []string{fpr(a2), fpr(bob)}},
				{[]string{"alice@example.org", fpr(bob)}, 1, "",
					"alice@example.org has no key " + fpr(bob), []string{fpr(a2), fpr(bob)}},
				{[]string{"alice@example.org", keyID(a2)}, 2, "",
					"is not a fingerprint (40 or 64 hex digits", []string{fpr(a2), fpr(bob)}},
				{[]string{"alice@example.org", strings.Repeat("G", 40)}, 2, "",
					"usage: lacre-milter keys remove ADDRESS [FINGERPRINT]\n", []string{fpr(a2), fpr(bob)}},
				{nil, 2, "", "want an address and optionally a fingerprint", []string{fpr(a2), fpr(bob)}},
				{[]string{"ALICE@example.org"}, 0,
					"alice@example.org: removed 1 key(s); mail to it is no longer encrypted with them\n", "", []string{fpr(bob)}},
				{[]string{"alice@example.org"}, 1, "", "lacre-milter keys remove: alice@example.org has no keys\n", []string{fpr(bob)}},
				{[]string{"bob@example.org", spaced(fpr(bob))}, 0,
					"bob@example.org: removed 1 key(s); mail to it is no longer encrypted with them\n", "", nil},
			}
			for i, s := range steps {
				r := f.run(nil, append([]string{"keys", "remove"}, s.args...)...)
				if r.code != s.code || r.stdout != s.stdout || !strings.Contains(r.stderr, s.stderr) {
					t.Fatalf("step %d %q: want exit %d, stdout %q, stderr containing %q\n%v", i, s.args, s.code, s.stdout, s.stderr, r)
				}
				rows, _ := f.list()
				var got []string
				for _, rw := range rows {
					got = append(got, rw.fingerprint)
				}
				if !slices.Equal(got, s.rows) {
					t.Fatalf("step %d %q: keys list %v, want %v", i, s.args, got, s.rows)
				}
			}
			got, _ := f.show("alice@example.org")
			if !slices.Equal(got["action"], []string{"pass unchanged (no key for alice@example.org)"}) {
				t.Errorf("after removing alice's keys: %q", got["action"])
			}
		})
	})
}

// spaced writes a fingerprint the way gpg groups it.
func spaced(f string) string {
	var parts []string
	for i := 0; i < len(f); i += 4 {
		parts = append(parts, f[i:i+4])
	}
	return strings.Join(parts, " ")
}

// TestUnusableKey covers a key that was valid when added and is not now
// (here: the operator raised min_rsa_bits).
func TestUnusableKey(t *testing.T) {
	rsa := testkeys.Generate(t, testkeys.RSA3072, "alice@example.org")
	placements(t, func(t *testing.T, after bool) {
		f := newFixture(t, after, "")
		f.add("alice@example.org", rsa)
		f.writeConfig("[keys]\nmin_rsa_bits = 4096\n")
		reason := "the primary key is RSA 3072 bits, below the minimum of 4096"
		rows, _ := f.list()
		if want := []row{{"alice@example.org", fpr(rsa), today(), "never", "UNUSABLE: " + reason}}; !slices.Equal(rows, want) {
			t.Errorf("keys list:\n got %v\nwant %v", rows, want)
		}
		got, r := f.show("alice@example.org")
		if !slices.Equal(got["action"], []string{`every key is unusable: encryption.unusable_key = "tempfail" applies`}) ||
			!slices.Equal(got["key"], []string{keyID(rsa) + " UNUSABLE: " + reason}) {
			t.Errorf("keys show:\n%s", r.stdout)
		}
		r = f.run([]byte("Subject: x\r\n\r\nx\r\n"), "encrypt", "alice@example.org")
		wantCode(t, r, 1)
		wantContains(t, "stderr", r.stderr, "alice@example.org: the milter would not encrypt its mail (its keys are unusable: key "+keyID(rsa)+": "+reason+")")
		if r.stdout != "" {
			t.Errorf("stdout: %q", r.stdout)
		}
		r = f.run(nil, "keys", "show", "-export", "alice@example.org")
		wantCode(t, r, 1)
	})
}

// --- encrypt -------------------------------------------------------------------

const plainCRLF = "Received: from mx.example.net by mail.example.org; Mon, 2 Mar 2026 10:00:00 +0000\r\n" +
	"From: Bob <bob@example.net>\r\n" +
	"To: Alice <alice@example.org>\r\n" +
	"Subject: Quarterly numbers\r\n" +
	"Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n" +
	"Message-ID: <1@example.net>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"Content-Transfer-Encoding: 8bit\r\n" +
	"\r\n" +
	"Hello Alice,\r\n\r\nthe numbers: 42 \u20ac, gr\u00fc\u00dfe.\r\nFrom here on, trailing space \r\n.\r\n\r\n-- \r\nBob\r\n"

const plainLF = "From: bob@example.net\n" +
	"To: carol@example.org, alice@example.org\n" +
	"Subject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\n" +
	"Date: Mon, 2 Mar 2026 10:00:00 +0000\n" +
	"Message-ID: <2@example.net>\n" +
	"\n" +
	"no MIME header, LF line ends\nand no final newline"

const multipartMixed = "From: bob@example.net\r\n" +
	"To: alice+tag@example.org\r\n" +
	"Subject: report\r\n" +
	"Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n" +
	"Message-ID: <3@example.net>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: multipart/mixed;\r\n boundary=\"XYZ\"\r\n" +
	"\r\n" +
	"--XYZ\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n" +
	"--XYZ\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n" +
	"Content-Disposition: attachment; filename=\"a.bin\"\r\n\r\nAAECAwQFBgcICQ==\r\n--XYZ--\r\n"

// alreadyEncrypted and inlinePGP carry the framing of an encrypted
// message (a session-key packet, then an encrypted-data packet, of
// filler): crypto.AlreadyEncrypted reads the structure, it decrypts
// nothing.
const alreadyEncrypted = "From: bob@example.net\r\n" +
	"To: alice@example.org\r\n" +
	"Subject: already\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n\tboundary=\"B\"\r\n" +
	"\r\n" +
	"--B\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n" +
	"--B\r\nContent-Type: application/octet-stream\r\n\r\n" +
	"-----BEGIN PGP MESSAGE-----\r\n\r\nwSkDQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQtIpARcX\r\n" +
	"FxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxc=\r\n=4/vX\r\n-----END PGP MESSAGE-----\r\n" +
	"\r\n--B--\r\n"

const inlinePGP = "From: bob@example.net\n" +
	"To: alice@example.org\n" +
	"Subject: inline\n" +
	"\n" +
	"-----BEGIN PGP MESSAGE-----\n\nwSkDQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQtIpARcX\n" +
	"FxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxc=\n=4/vX\n-----END PGP MESSAGE-----\n"

// bodyOf returns the body of a raw message: what follows the first empty line.
func bodyOf(t *testing.T, msg string) []byte {
	t.Helper()
	i, n := strings.Index(msg, "\r\n\r\n"), 4
	if j := strings.Index(msg, "\n\n"); j >= 0 && (i < 0 || j < i) {
		i, n = j, 2
	}
	if i < 0 {
		t.Fatalf("message has no body")
	}
	return []byte(msg[i+n:])
}

// pkeskKeyIDs returns the key IDs of the ciphertext's session key packets.
func pkeskKeyIDs(t *testing.T, armored []byte) []uint64 {
	t.Helper()
	blk, err := armor.Decode(bytes.NewReader(armored))
	if err != nil {
		t.Fatal(err)
	}
	var ids []uint64
	pr := packet.NewReader(blk.Body)
	for {
		p, err := pr.Next()
		if err != nil {
			t.Fatalf("packets: %v", err)
		}
		ek, ok := p.(*packet.EncryptedKey)
		if !ok {
			return ids
		}
		ids = append(ids, ek.KeyId)
	}
}

func TestEncrypt(t *testing.T) {
	alice := testkeys.Generate(t, testkeys.RSA3072, "alice@example.org")
	bob := testkeys.Generate(t, testkeys.Curve25519, "bob@example.org")
	placements(t, func(t *testing.T, after bool) {
		f := newFixture(t, after, "")
		f.add("alice@example.org", alice)
		f.add("bob@example.org", bob)

		tests := []struct {
			name      string
			msg       string
			args      []string
			secrets   []*openpgp.Entity
			protect   bool
			hidden    bool
			innerType string // inner Content-Type, "" for the original's
		}{
			{"CRLF text to alice", plainCRLF, []string{"alice@example.org"}, []*openpgp.Entity{alice}, false, false, ""},
			{"LF, no MIME header, to bob", plainLF, []string{"Bob@Example.org"}, []*openpgp.Entity{bob}, false, false, "text/plain; charset=us-ascii"},
			{"multipart to a subaddress", multipartMixed, []string{"alice+tag@example.org"}, []*openpgp.Entity{alice}, false, false, ""},
			{"two recipients", plainCRLF, []string{"alice@example.org", "bob@example.org"}, []*openpgp.Entity{alice, bob}, false, false, ""},
			{"hidden recipients", plainCRLF, []string{"-hide-recipients", "alice@example.org", "bob@example.org"}, []*openpgp.Entity{alice, bob}, false, true, ""},
			{"protected headers", plainCRLF, []string{"bob@example.org", "-protect-headers"}, []*openpgp.Entity{bob}, true, false, ""},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				r := f.run([]byte(tc.msg), append([]string{"encrypt"}, tc.args...)...)
				wantCode(t, r, 0)
				if r.stderr != "" {
					t.Errorf("stderr: %s", r.stderr)
				}
				hdr, ct := pgptest.Open(t, []byte(r.stdout))
				orig, err := mail.ReadMessage(strings.NewReader(tc.msg))
				if err != nil {
					t.Fatal(err)
				}
				for _, name := range []string{"Received", "From", "To", "Date", "Message-ID"} {
					if squash(hdr.Get(name)) != squash(orig.Header.Get(name)) {
						t.Errorf("outer %s = %q, want %q", name, hdr.Get(name), orig.Header.Get(name))
					}
				}
				wantSubject := orig.Header.Get("Subject")
				if tc.protect {
					wantSubject = "[...]"
				}
				if hdr.Get("Subject") != wantSubject {
					t.Errorf("outer Subject = %q, want %q", hdr.Get("Subject"), wantSubject)
				}
				ids := pkeskKeyIDs(t, ct)
				if len(ids) != len(tc.secrets) {
					t.Errorf("%d session key packets for %d recipients", len(ids), len(tc.secrets))
				}
				for _, id := range ids {
					if (id == 0) != tc.hidden {
						t.Errorf("PKESK key ID %016X, want hidden=%v", id, tc.hidden)
					}
				}
				want := bodyOf(t, tc.msg)
				for _, s := range tc.secrets {
					inner, _ := pgptest.Decrypt(t, ct, s)
					i := bytes.Index(inner, []byte("\r\n\r\n"))
					if i < 0 {
						t.Fatalf("inner entity has no header/body separator:\n%q", inner)
					}
					ih, ib := inner[:i+2], inner[i+4:]
					if !bytes.Equal(ib, want) {
						t.Errorf("decrypted body differs from the original:\n got %q\nwant %q", ib, want)
					}
					im, err := mail.ReadMessage(bytes.NewReader(inner))
					if err != nil {
						t.Fatalf("inner entity: %v\n%s", err, ih)
					}
					wantType := orig.Header.Get("Content-Type")
					if tc.innerType != "" {
						wantType = tc.innerType
					}
					gotType := im.Header.Get("Content-Type")
					if tc.protect {
						if !strings.Contains(gotType, `protected-headers="v1"`) || im.Header.Get("Subject") != orig.Header.Get("Subject") {
							t.Errorf("protected headers: inner Content-Type %q, Subject %q", gotType, im.Header.Get("Subject"))
						}
						gotType = strings.TrimSuffix(gotType, `; protected-headers="v1"; hp="cipher"`)
					} else if _, ok := im.Header["Subject"]; ok {
						t.Errorf("Subject copied inside without header protection")
					}
					if squash(gotType) != squash(wantType) {
						t.Errorf("inner Content-Type = %q, want %q", gotType, wantType)
					}
					if cte := orig.Header.Get("Content-Transfer-Encoding"); im.Header.Get("Content-Transfer-Encoding") != cte {
						t.Errorf("inner Content-Transfer-Encoding = %q, want %q", im.Header.Get("Content-Transfer-Encoding"), cte)
					}
				}
			})
		}

		t.Run("recipient's protect-headers choice", func(t *testing.T) {
			f.must(nil, "keys", "set", "bob@example.org", "protect-headers", "on")
			defer f.must(nil, "keys", "set", "bob@example.org", "protect-headers", "default")
			r := f.must([]byte(plainCRLF), "encrypt", "bob@example.org")
			hdr, ct := pgptest.Open(t, []byte(r.stdout))
			if hdr.Get("Subject") != "[...]" {
				t.Errorf("outer Subject = %q", hdr.Get("Subject"))
			}
			inner, _ := pgptest.Decrypt(t, ct, bob)
			im, err := mail.ReadMessage(bytes.NewReader(inner))
			if err != nil {
				t.Fatal(err)
			}
			if im.Header.Get("Subject") != "Quarterly numbers" {
				t.Errorf("inner Subject = %q", im.Header.Get("Subject"))
			}
		})

		passTests := []struct{ name, msg string }{
			{"multipart/encrypted", alreadyEncrypted},
			{"inline PGP message", inlinePGP},
		}
		for _, tc := range passTests {
			t.Run("already encrypted/"+tc.name, func(t *testing.T) {
				r := f.run([]byte(tc.msg), "encrypt", "alice@example.org")
				wantCode(t, r, 0)
				if r.stdout != tc.msg {
					t.Errorf("already encrypted message changed:\n got %q\nwant %q", r.stdout, tc.msg)
				}
				wantContains(t, "stderr", r.stderr, "lacre-milter encrypt: already encrypted; written unchanged")
			})
		}

		failTests := []struct {
			name   string
			args   []string
			code   int
			stderr string
		}{
			{"recipient without key", []string{"carol@example.org"}, 1,
				"lacre-milter encrypt: carol@example.org: the milter would not encrypt its mail (it has no key)\n"},
			{"one of two without key", []string{"alice@example.org", "Carol@Example.org"}, 1,
				"carol@example.org: the milter would not encrypt its mail (it has no key)"},
			{"not an address", []string{"carol"}, 1, `"carol" is not an e-mail address`},
			{"no recipient", nil, 2, "usage: lacre-milter encrypt [-protect-headers] [-hide-recipients] ADDRESS... < MESSAGE\n  want at least one recipient address\n"},
			{"unknown flag", []string{"-sign", "alice@example.org"}, 2, "flag provided but not defined: -sign"},
		}
		for _, tc := range failTests {
			t.Run(tc.name, func(t *testing.T) {
				r := f.run([]byte(plainCRLF), append([]string{"encrypt"}, tc.args...)...)
				wantCode(t, r, tc.code)
				wantContains(t, "stderr", r.stderr, tc.stderr)
				if r.stdout != "" {
					t.Errorf("wrote a message on failure:\n%s", r.stdout)
				}
			})
		}

		t.Run("never_encrypt", func(t *testing.T) {
			f.writeConfig("[static]\nnever_encrypt = [\"bob@example.org\"]\n")
			defer f.writeConfig("")
			r := f.run([]byte(plainCRLF), "encrypt", "bob@example.org")
			wantCode(t, r, 1)
			wantContains(t, "stderr", r.stderr, "bob@example.org: the milter would not encrypt its mail ([static] never_encrypt lists it)")
			got, _ := f.show("bob@example.org")
			if !slices.Equal(got["action"], []string{"pass unchanged ([static] never_encrypt lists bob@example.org)"}) {
				t.Errorf("keys show action %q", got["action"])
			}
		})

		t.Run("static mapping", func(t *testing.T) {
			f.writeConfig("[static.domains]\n\"example.com\" = [\"" + fpr(bob) + "\"]\n")
			defer f.writeConfig("")
			got, _ := f.show("anyone@example.com")
			if !slices.Equal(got["source"], []string{"static-domain (example.com)"}) {
				t.Errorf("keys show source %q", got["source"])
			}
			r := f.must([]byte(plainCRLF), "encrypt", "anyone@example.com")
			_, ct := pgptest.Open(t, []byte(r.stdout))
			inner, _ := pgptest.Decrypt(t, ct, bob)
			if !bytes.HasSuffix(inner, bodyOf(t, plainCRLF)) {
				t.Errorf("decrypted entity does not end with the body")
			}
		})
	})
}
