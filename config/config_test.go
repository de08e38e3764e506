package config

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/internal/smimetest"
)

// toml joins lines with "\n", so that a case's line numbers are its
// indexes plus one and can be read off the table.
func tomlLines(lines ...string) string { return strings.Join(lines, "\n") + "\n" }

// Fingerprints that pass keys.IsFingerprint.
const (
	fprV4 = "0123456789ABCDEF0123456789ABCDEF01234567"
	fprV6 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)

// writeConfig writes src to a lacre.toml in a fresh folder and returns its path.
func writeConfig(t *testing.T, src string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "lacre.toml")
	if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// configError returns err as a *Error, failing the test if it is not one.
func configError(t *testing.T, err error) *Error {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %T %q is not a *config.Error", err, err)
	}
	return ce
}

func TestLoadEmptyFileIsDefault(t *testing.T) {
	for _, tc := range []struct{ name, src string }{
		{"empty", ""},
		{"blank lines", "\n\n\n"},
		{"comments only", "# lacre.toml\n\n# [milter]\n# listen = \"inet:0.0.0.0:25\"\n"},
		{"empty tables", "[milter]\n[store]\n[keys]\n[encryption]\n[static]\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeConfig(t, tc.src)
			c, err := Load(p)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := Default()
			want.Path = p
			if !reflect.DeepEqual(c, want) {
				t.Errorf("Load(%q) =\n%+v\nwant the defaults\n%+v", tc.src, c, want)
			}
			if got, want := c.DatabasePath(), filepath.Join(filepath.Dir(p), "lacre.db"); got != want {
				t.Errorf("DatabasePath() = %q, want %q", got, want)
			}
		})
	}
}

func TestLoadNoPathIsDefault(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatalf("Load(\"\"): %v", err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Errorf("Load(\"\") = %+v, want %+v", c, Default())
	}
	if c.Path != "" || c.DatabasePath() != "lacre.db" {
		t.Errorf("Path %q, DatabasePath %q; want \"\" and relative \"lacre.db\"", c.Path, c.DatabasePath())
	}
}

func TestLoadMissingFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "missing.toml")
	_, err := Load(p)
	if err == nil {
		t.Fatal("Load of a missing file succeeded")
	}
	t.Logf("message: %v", err)
	if !strings.HasPrefix(err.Error(), "config: ") || !strings.Contains(err.Error(), p) {
		t.Errorf("error %q should start with \"config: \" and name %q", err, p)
	}
	if !errors.Is(err, os.ErrNotExist) {
		// Not required, but callers cannot tell "missing" from "unreadable".
		t.Logf("note: error does not wrap os.ErrNotExist (it is formatted with %%v)")
	}
}

func TestLoadEveryOption(t *testing.T) {
	src := tomlLines(
		`# every option, none at its default`,
		`[milter]`,
		`listen = "unix:/run/lacre/milter.sock"`,
		`max_message_size = 10485760`,
		`trace_header = "X-Encrypted-By"`,
		`mixed_local = "encrypt"`,
		`shutdown_timeout = "1m"`,
		`lookup_timeout = "2s"`,
		`max_connections = 200`,
		`idle_timeout = "2h"`,
		`packet_timeout = "10s"`,
		``,
		`[log]`,
		`level = "debug"`,
		`format = "json"`,
		``,
		`[store]`,
		`database = "/var/lib/lacre/keys.db"`,
		`cache_ttl = "5m"`,
		`max_conns = 20`,
		`connect_timeout = "2s"`,
		`statement_timeout = "3s"`,
		``,
		`[keys]`,
		`min_rsa_bits = 3072`,
		`fold_local_part_case = false`,
		`subaddress_separator = "-"`,
		``,
		`[encryption]`,
		`hide_recipients = true`,
		`protect_headers = true`,
		`unusable_key = "reject"`,
		`pgp_format = "pgp-inline"`,
		``,
		`[static]`,
		`never_encrypt = ["postmaster@example.org", "abuse@example.org"]`,
		``,
		`[static.formats]`,
		`"carol@example.org" = "smime"`,
		`"dave@example.org" = "pgp-mime"`,
		``,
		`[static.addresses]`,
		`"alice@example.org" = ["`+fprV4+`"]`,
		`"bob@example.org" = ["0123 4567 89AB CDEF 0123  4567 89AB CDEF 0123 4567", "`+fprV6+`"]`,
		``,
		`[static.domains]`,
		`"example.net" = ["`+fprV6+`"]`,
		``,
		`[aliases]`,
		`source = "none"`,
		`postfix_config_dir = "/etc/postfix-out"`,
		`service = "127.0.0.1:10025/inet"`,
		`cache_ttl = "1m"`,
		`mixed = "defer"`,
		`reinject = "[::1]:10027"`,
		`reinject_timeout = "2m"`,
		``,
		`[web]`,
		`listen = "0.0.0.0:8443"`,
		`base_url = "https://keys.example.org"`,
		`domains = ["example.org", "example.net"]`,
		`from = "keys@example.org"`,
		`token_ttl = "24h"`,
		`max_pending_per_address = 2`,
		`max_requests_per_client = 50`,
		`templates = "templates"`,
		`trusted_proxies = ["10.0.0.0/8"]`,
		`secret_file = "secret"`,
		``,
		`[web.smtp]`,
		`addr = "[::1]:587"`,
		``,
		`[smime]`,
		`trust_anchors = "roots.pem"`,
		`cipher = "aes-256-gcm"`,
		`rsa_padding = "oaep"`,
		`subject_key_id = true`,
	)
	p := writeConfig(t, src)
	root := smimetest.New(t, smimetest.Spec{CA: true, CommonName: "Lacre test root"})
	if err := os.WriteFile(filepath.Join(filepath.Dir(p), "roots.pem"), root.PEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := &Config{
		Milter: Milter{Listen: "unix:/run/lacre/milter.sock", MaxMessageSize: 10 << 20, TraceHeader: "X-Encrypted-By",
			MixedLocal: "encrypt", ShutdownTimeout: Duration(time.Minute), LookupTimeout: Duration(2 * time.Second),
			MaxConnections: 200, IdleTimeout: Duration(2 * time.Hour), PacketTimeout: Duration(10 * time.Second)},
		Log: Log{Level: "debug", Format: "json"},
		Web: Web{Listen: "0.0.0.0:8443", BaseURL: "https://keys.example.org", Domains: []string{"example.org", "example.net"},
			From: "keys@example.org", TokenTTL: Duration(24 * time.Hour), MaxPendingPerAddress: 2, MaxRequestsPerClient: 50,
			Templates: "templates", TrustedProxies: []string{"10.0.0.0/8"}, SecretFile: "secret", SMTP: WebSMTP{Addr: "[::1]:587"}},
		Store: Store{Database: "/var/lib/lacre/keys.db", CacheTTL: Duration(5 * time.Minute),
			MaxConns: 20, ConnectTimeout: Duration(2 * time.Second), StatementTimeout: Duration(3 * time.Second)},
		Keys: Keys{MinRSABits: 3072, FoldLocalPartCase: false, SubaddressSeparator: "-"},
		Encryption: Encryption{
			HideRecipients: true,
			ProtectHeaders: true,
			UnusableKey:    UnusableReject,
			PGPFormat:      "pgp-inline",
		},
		Static: Static{
			Addresses: map[string][]string{
				"alice@example.org": {fprV4},
				"bob@example.org":   {"0123 4567 89AB CDEF 0123  4567 89AB CDEF 0123 4567", fprV6},
			},
			Domains:      map[string][]string{"example.net": {fprV6}},
			NeverEncrypt: []string{"postmaster@example.org", "abuse@example.org"},
			Formats:      map[string]string{"carol@example.org": "smime", "dave@example.org": "pgp-mime"},
		},
		SMIME: SMIME{TrustAnchors: "roots.pem", Cipher: "aes-256-gcm", RSAPadding: "oaep", SubjectKeyID: true},
		Aliases: Aliases{Source: "none", PostfixConfigDir: "/etc/postfix-out", Service: "127.0.0.1:10025/inet",
			CacheTTL: Duration(time.Minute), Mixed: "defer", Reinject: "[::1]:10027", ReinjectTimeout: Duration(2 * time.Minute)},
		Path: p,
	}
	// The trust anchors were read: the pool holds the root.
	if c.anchors == nil || c.anchorsFrom != filepath.Join(filepath.Dir(p), "roots.pem") {
		t.Fatalf("smime.trust_anchors not read: %v from %q", c.anchors, c.anchorsFrom)
	}
	if _, err := root.Cert.Verify(x509.VerifyOptions{Roots: c.anchors, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("the pool does not hold the root: %v", err)
	}
	if pool, err := c.TrustAnchorPool(); err != nil || pool != c.anchors {
		t.Errorf("TrustAnchorPool() = %v, %v", pool, err)
	}
	want.anchors, want.anchorsFrom = c.anchors, c.anchorsFrom
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Load =\n%+v\nwant\n%+v", c, want)
	}
	if got := c.DatabasePath(); got != "/var/lib/lacre/keys.db" {
		t.Errorf("DatabasePath() = %q, want the absolute path unchanged", got)
	}

	// An empty separator is allowed and turns the subaddress fallback off.
	c, err = parse("lacre.toml", []byte("[keys]\nsubaddress_separator = \"\"\n"))
	if err != nil || c.Keys.SubaddressSeparator != "" {
		t.Errorf("subaddress_separator = \"\": %v, %q", err, c.Keys.SubaddressSeparator)
	}
}

// wantProblem is one expected Problem; msg is a substring of Problem.Msg.
type wantProblem struct {
	key  string
	line int
	msg  string
}

func TestConfigProblems(t *testing.T) {
	const unknown = "unknown option"
	for _, tc := range []struct {
		name string
		src  string
		want []wantProblem
		// bug, when set, describes a known defect of config.go: the
		// subtest is skipped while the problems differ from want.
		bug string
	}{
		// [aliases].
		{
			name: "aliases: every value wrong",
			src: tomlLines(`[aliases]`, `source = "sendmail"`, `postfix_config_dir = "etc/postfix"`, `service = "smtp"`,
				`cache_ttl = "2h"`, `mixed = "encrypt"`, `reinject = "192.0.2.1:10026"`, `reinject_timeout = "10m"`),
			want: []wantProblem{{"aliases.source", 2, `"postfix", "none"`}, {"aliases.postfix_config_dir", 3, "absolute"},
				{"aliases.service", 4, "SERVICE/TYPE"}, {"aliases.cache_ttl", 5, "out of range"},
				{"aliases.mixed", 6, `"reinject", "defer"`}, {"aliases.reinject", 7, "loopback"},
				{"aliases.reinject_timeout", 8, "out of range"}},
		},
		{
			name: "aliases: reinject without a port",
			src:  tomlLines(`[aliases]`, `reinject = "localhost"`),
			want: []wantProblem{{"aliases.reinject", 2, "HOST:PORT"}},
		},
		// Unknown keys.
		{
			name: "unknown key at top level",
			src:  tomlLines(`# lacre`, ``, `colour = "blue"`),
			want: []wantProblem{{"colour", 3, unknown}},
		},
		{
			name: "option written outside its table",
			src:  tomlLines(`listen = "inet:127.0.0.1:8891"`, `[milter]`),
			want: []wantProblem{{"listen", 1, unknown}},
		},
		{
			name: "unknown key in a table",
			src:  tomlLines(`[milter]`, `listen = "inet:127.0.0.1:8891"`, `listn = "inet:127.0.0.1:8892"`),
			want: []wantProblem{{"milter.listn", 3, unknown}},
		},
		{
			name: "key of another table",
			src:  tomlLines(`[store]`, `database = "a.db"`, `[milter]`, `database = "b.db"`),
			want: []wantProblem{{"milter.database", 4, unknown}},
		},
		{
			name: "unknown key without spaces and with a comment",
			src:  tomlLines(`[keys]`, `min_rsa_bits=2048`, `fold_case=true # typo`),
			want: []wantProblem{{"keys.fold_case", 3, unknown}},
		},
		{
			name: "quoted unknown key",
			src:  tomlLines(`[encryption]`, `"hide" = true`),
			want: []wantProblem{{"encryption.hide", 2, unknown}},
		},
		{
			name: "table header with spaces and a comment",
			src:  tomlLines(`[ encryption ] # output`, `protect_headers = true`, `protect_subject = true`),
			want: []wantProblem{{"encryption.protect_subject", 3, unknown}},
		},
		{
			name: "unknown table",
			src:  tomlLines(`[milter]`, `listen = "inet:127.0.0.1:8891"`, `[tls]`, `cert = "x.pem"`),
			want: []wantProblem{{"tls", 3, unknown}, {"tls.cert", 4, unknown}},
		},
		{
			name: "unknown key in a nested table",
			src:  tomlLines(`[store]`, `database = "lacre.db"`, `[store.cache]`, `ttl = "5s"`),
			want: []wantProblem{{"store.cache", 3, unknown}, {"store.cache.ttl", 4, unknown}},
		},
		{
			name: "unknown dotted key at top level",
			src:  tomlLines(`milter.listen = "inet:127.0.0.1:8891"`, `milter.lisen = "inet:127.0.0.1:8892"`),
			want: []wantProblem{{"milter.lisen", 2, unknown}},
		},
		{
			name: "unknown dotted key in a table",
			src:  tomlLines(`[store]`, `database = "lacre.db"`, `cache.ttl = "5s"`),
			want: []wantProblem{{"store.cache.ttl", 3, unknown}},
			bug: "lineOf finds no line for a dotted key inside a table (table \"store\", key \"cache.ttl\"): " +
				"the message has no line number",
		},
		{
			name: "unknown key in an inline table",
			src:  tomlLines(`# listener`, `milter = { listen = "inet:127.0.0.1:8891", lisen = "x" }`),
			want: []wantProblem{{"milter.lisen", 2, unknown}},
			bug:  "lineOf does not look inside inline tables: the message has no line number",
		},
		{
			name: "unknown keys in several tables",
			src:  tomlLines(`[milter]`, `foo = 1`, `[store]`, `foo = 2`),
			want: []wantProblem{{"milter.foo", 2, unknown}, {"store.foo", 4, unknown}},
		},

		// Bad values.
		{
			name: "listen without port",
			src:  tomlLines(`[milter]`, `listen = "inet:127.0.0.1"`),
			want: []wantProblem{{"milter.listen", 2, `"inet:127.0.0.1": write "inet:HOST:PORT" or "unix:/PATH"`}},
		},
		{
			name: "listen of kind tcp",
			src:  tomlLines(`[milter]`, `listen = "tcp:127.0.0.1:8891"`),
			want: []wantProblem{{"milter.listen", 2, `"tcp:127.0.0.1:8891": write`}},
		},
		{
			name: "unusable_key maybe",
			src:  tomlLines(`[encryption]`, `hide_recipients = true`, `unusable_key = "maybe"`),
			want: []wantProblem{{"encryption.unusable_key", 3, `"maybe" is not one of "tempfail", "reject", "clear"`}},
		},
		{
			name: "min_rsa_bits 512",
			src:  tomlLines(`[keys]`, `min_rsa_bits = 512`),
			want: []wantProblem{{"keys.min_rsa_bits", 2, "512 is out of range (1024 to 16384"}},
		},
		{
			name: "cache_ttl not a Go duration",
			src:  tomlLines(`[store]`, `cache_ttl = "5 minutes"`),
			want: []wantProblem{{"store.cache_ttl", 2, `"5 minutes" is not a duration (write e.g. "30s" or "5m")`}},
		},
		{
			name: "cache_ttl a number",
			src:  tomlLines(`[store]`, `cache_ttl = 300`),
			want: []wantProblem{{"store.cache_ttl", 2, `"300" is not a duration`}},
		},
		{
			name: "cache_ttl out of range",
			src:  tomlLines(`[store]`, `database = "lacre.db"`, `cache_ttl = "2h"`),
			want: []wantProblem{{"store.cache_ttl", 3, "out of range (0 to 1h"}},
		},
		{
			name: "cache_ttl negative",
			src:  tomlLines(`[store]`, `cache_ttl = "-1s"`),
			want: []wantProblem{{"store.cache_ttl", 2, "-1s is out of range"}},
		},
		{
			name: "database empty",
			src:  tomlLines(`[store]`, `database = ""`),
			want: []wantProblem{{"store.database", 2, `must name a file`}},
		},
		{
			name: "subaddress_separator ++",
			src:  tomlLines(`[keys]`, `subaddress_separator = "++"`),
			want: []wantProblem{{"keys.subaddress_separator", 2, `"++" must be one ASCII character other than @, space or quote`}},
		},
		{
			name: "subaddress_separator non-ASCII",
			src:  tomlLines(`[keys]`, `subaddress_separator = "é"`),
			want: []wantProblem{{"keys.subaddress_separator", 2, `"é" must be one ASCII character`}},
			bug: "the length check counts bytes, so the one-character \"é\" is refused with " +
				"\"must be one character\", which contradicts the input",
		},
		{
			name: "fingerprint too short (inline table)",
			src:  tomlLines(`[static]`, `domains = { "example.org" = ["0123456789ABCDEF"] }`),
			want: []wantProblem{{"static.domains", 2, `"example.org": "0123456789ABCDEF" is not a fingerprint (40 or 64 hex digits`}},
		},
		{
			name: "fingerprint too short",
			src: tomlLines(`[static.domains]`, `"example.net" = ["`+fprV4+`"]`,
				`"example.org" = ["0123456789ABCDEF"]`),
			want: []wantProblem{{"static.domains", 3, `"example.org": "0123456789ABCDEF" is not a fingerprint`}},
			bug: "problems inside [static.addresses] / [static.domains] carry the line of the table " +
				"header, not of the entry",
		},
		{
			name: "static address without @ (inline table)",
			src:  tomlLines(`[static]`, `addresses = { "alice" = ["`+fprV4+`"] }`),
			want: []wantProblem{{"static.addresses", 2, `"alice" is not an address (domains go in [static.domains])`}},
		},
		{
			name: "static address without @",
			src: tomlLines(`[static.addresses]`, `"bob@example.org" = ["`+fprV4+`"]`,
				`"alice" = ["`+fprV4+`"]`),
			want: []wantProblem{{"static.addresses", 3, `"alice" is not an address`}},
			bug: "problems inside [static.addresses] / [static.domains] carry the line of the table " +
				"header, not of the entry",
		},
		{
			name: "static address with no fingerprint",
			src:  tomlLines(`[static]`, `addresses = { "alice@example.org" = [] }`),
			want: []wantProblem{{"static.addresses", 2, `"alice@example.org" maps to no fingerprint`}},
		},
		{
			name: "static domain with @",
			src:  tomlLines(`[static]`, `domains = { "alice@example.org" = ["`+fprV4+`"] }`),
			want: []wantProblem{{"static.domains", 2, `"alice@example.org" is not a domain`}},
		},
		{
			name: "never_encrypt entry without @",
			src:  tomlLines(`[static]`, `never_encrypt = ["postmaster"]`),
			want: []wantProblem{{"static.never_encrypt", 2, `"postmaster" is not an address`}},
		},
		{
			name: "wrong TOML type",
			src:  tomlLines(`[keys]`, `min_rsa_bits = "2048"`),
			want: []wantProblem{{"keys.min_rsa_bits", 2, "string"}},
			bug: "type mismatches are not toml.ParseError, so the Problem has no key and no line and " +
				"the message is the library's (\"toml: line 2 (last key ...): incompatible types: " +
				"TOML value has type string; destination has type integer\")",
		},

		// Several problems at once, reported in line order although found
		// in another order (unknown keys first, then Validate's order).
		{
			name: "several problems in line order",
			src: tomlLines(
				`[encryption]`,                // 1
				`unusable_key = "maybe"`,      // 2
				`[milter]`,                    // 3
				`listen = "inet:8891"`,        // 4
				`[store]`,                     // 5
				`cache_ttl = "2h"`,            // 6
				`colour = "blue"`,             // 7
				`[keys]`,                      // 8
				`min_rsa_bits = 512`,          // 9
				`subaddress_separator = "++"`, // 10
			),
			want: []wantProblem{
				{"encryption.unusable_key", 2, `"maybe"`},
				{"milter.listen", 4, `"inet:8891"`},
				{"store.cache_ttl", 6, "out of range"},
				{"store.colour", 7, unknown},
				{"keys.min_rsa_bits", 9, "512"},
				{"keys.subaddress_separator", 10, `"++"`},
			},
		},

		// TOML syntax errors carry the parser's line.
		{
			name: "syntax error: unterminated string",
			src:  tomlLines(`[milter]`, `listen = "inet:127.0.0.1:8891`),
			want: []wantProblem{{"milter.listen", 2, "newline"}},
		},
		{
			name: "syntax error: duplicate key",
			src:  tomlLines(`[milter]`, `listen = "inet:127.0.0.1:8891"`, `listen = "inet:127.0.0.1:8892"`),
			want: []wantProblem{{"milter.listen", 3, "already been defined"}},
		},
		{
			name: "syntax error: unterminated table header",
			src:  tomlLines(`# lacre`, `[milter`, `listen = "inet:127.0.0.1:8891"`),
			want: []wantProblem{{"", 2, "table name"}},
		},
		{
			name: "syntax error: two values",
			src:  tomlLines(``, ``, `[keys]`, `min_rsa_bits = 2048 4096`),
			// The parser's LastKey is the table, not the key.
			want: []wantProblem{{"keys", 4, "newline"}},
		},
		{
			name: "syntax error: key without value",
			src:  tomlLines(`# lacre`, `[milter]`, `listen =`, `x = 1`),
			want: []wantProblem{{"milter.listen", 3, "expected value"}},
		},
		{
			name: "syntax error: key without equals sign",
			src:  tomlLines(`# lacre`, `[milter]`, `listen`, `x = 1`),
			// The parser's LastKey is the table, not the key.
			want: []wantProblem{{"milter", 3, "expected '.' or '='"}},
			bug: "parse subtracts one from the line of every message containing \"got '\\n'\", but here " +
				"the parser's line (3) was right, so the message points at the [milter] header on line 2; " +
				"pe.Position.Start points at the newline on line 3 in both this case and the unclosed [table]",
		},
		{
			name: "syntax error: unterminated array-of-tables header",
			src:  tomlLines(`# lacre`, `[[milter]`, `x = 1`),
			want: []wantProblem{{"", 2, "table array name"}},
		},
		{
			name: "syntax error: blank key",
			src:  tomlLines(`= 1`),
			want: []wantProblem{{"", 1, "blank"}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse("lacre.toml", []byte(tc.src))
			ce := configError(t, err)
			t.Logf("message:\n%v", err)
			if ce.Path != "lacre.toml" {
				t.Errorf("Path = %q, want lacre.toml", ce.Path)
			}
			var diffs []string
			if len(ce.Problems) != len(tc.want) {
				diffs = append(diffs, "wrong number of problems")
			}
			for i, p := range ce.Problems {
				if i >= len(tc.want) {
					break
				}
				w := tc.want[i]
				if p.Key != w.key || p.Line != w.line || !strings.Contains(p.Msg, w.msg) {
					diffs = append(diffs, "problem "+p.String()+" is not "+
						(Problem{Key: w.key, Line: w.line, Msg: "…" + w.msg + "…"}).String())
				}
				if strings.Contains(p.String(), ": :") {
					diffs = append(diffs, "message has an empty key: "+p.String())
				}
			}
			for _, d := range diffs {
				t.Error(d)
			}
		})
	}
}

// A syntax error reported before the parser has read a key has no key.
// The message must name the line of the broken table header and must not
// read "line 3: : expected ...".
func TestConfigSyntaxErrorWithoutKeyReadsWell(t *testing.T) {
	src := tomlLines(`# lacre`, `[milter`, `listen = "inet:127.0.0.1:8891"`)
	_, err := parse("lacre.toml", []byte(src))
	ce := configError(t, err)
	t.Logf("message: %v", err)
	if ce.Problems[0].Line != 2 || strings.Contains(err.Error(), ": :") {
		t.Errorf("input %q gives %q; want \"lacre.toml: line 2: expected '.' or ']' to end table name, "+
			"but got '\\n' instead\"", src, err.Error())
	}
}

// Problems of map entries must come in a stable order: the operator
// compares the output of two runs after fixing one entry.
func TestConfigProblemsOrderIsStable(t *testing.T) {
	src := tomlLines(
		`[static.addresses]`,
		`"alice" = ["0123"]`,
		`"bob@example.org" = []`,
		`"carol" = ["`+fprV4+`"]`,
		`"dave" = ["`+fprV4+`"]`,
		`"erin" = ["`+fprV4+`"]`,
	)
	_, err := parse("lacre.toml", []byte(src))
	first := configError(t, err).Error()
	t.Logf("message:\n%s", first)
	for range 50 {
		_, err := parse("lacre.toml", []byte(src))
		if got := err.Error(); got != first {
			t.Fatalf("problems of [static.addresses] come in a different order between runs:\n%s\n--- then ---\n%s", first, got)
		}
	}
}

func TestConfigErrorFormat(t *testing.T) {
	one := &Error{Path: "/etc/lacre/lacre.toml", Problems: []Problem{{Key: "keys.min_rsa_bits", Line: 7, Msg: "512 is out of range"}}}
	if got, want := one.Error(), "/etc/lacre/lacre.toml: line 7: keys.min_rsa_bits: 512 is out of range"; got != want {
		t.Errorf("one problem: %q, want %q", got, want)
	}
	two := &Error{Problems: []Problem{{Key: "milter.listen", Msg: "bad"}, {Msg: "no key"}}}
	if got, want := two.Error(), "configuration: 2 problems:\n  milter.listen: bad\n  no key"; got != want {
		t.Errorf("two problems: %q, want %q", got, want)
	}
	t.Logf("messages:\n%v\n%v", one, two)
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		modify func(c *Config)
		want   []string // keys of the problems, in order
	}{
		{"defaults", func(c *Config) {}, nil},
		{"listen unix", func(c *Config) { c.Milter.Listen = "unix:/run/lacre.sock" }, nil},
		{"listen empty", func(c *Config) { c.Milter.Listen = "" }, []string{"milter.listen"}},
		{"listen no port", func(c *Config) { c.Milter.Listen = "inet:localhost" }, []string{"milter.listen"}},
		{"database empty", func(c *Config) { c.Store.Database = "" }, []string{"store.database"}},
		{"cache_ttl 0", func(c *Config) { c.Store.CacheTTL = 0 }, nil},
		{"cache_ttl 1h", func(c *Config) { c.Store.CacheTTL = Duration(time.Hour) }, nil},
		{"cache_ttl 1h+1ns", func(c *Config) { c.Store.CacheTTL = Duration(time.Hour + 1) }, []string{"store.cache_ttl"}},
		{"cache_ttl negative", func(c *Config) { c.Store.CacheTTL = -1 }, []string{"store.cache_ttl"}},
		{"min_rsa_bits 1024", func(c *Config) { c.Keys.MinRSABits = 1024 }, nil},
		{"min_rsa_bits 16384", func(c *Config) { c.Keys.MinRSABits = 16384 }, nil},
		{"min_rsa_bits 1023", func(c *Config) { c.Keys.MinRSABits = 1023 }, []string{"keys.min_rsa_bits"}},
		{"min_rsa_bits 16385", func(c *Config) { c.Keys.MinRSABits = 16385 }, []string{"keys.min_rsa_bits"}},
		{"min_rsa_bits 0", func(c *Config) { c.Keys.MinRSABits = 0 }, []string{"keys.min_rsa_bits"}},
		{"separator none", func(c *Config) { c.Keys.SubaddressSeparator = "" }, nil},
		{"separator -", func(c *Config) { c.Keys.SubaddressSeparator = "-" }, nil},
		{"separator ++", func(c *Config) { c.Keys.SubaddressSeparator = "++" }, []string{"keys.subaddress_separator"}},
		{"separator @", func(c *Config) { c.Keys.SubaddressSeparator = "@" }, []string{"keys.subaddress_separator"}},
		{"separator space", func(c *Config) { c.Keys.SubaddressSeparator = " " }, []string{"keys.subaddress_separator"}},
		{"separator tab", func(c *Config) { c.Keys.SubaddressSeparator = "\t" }, []string{"keys.subaddress_separator"}},
		{"separator quote", func(c *Config) { c.Keys.SubaddressSeparator = `"` }, []string{"keys.subaddress_separator"}},
		{"unusable_key reject", func(c *Config) { c.Encryption.UnusableKey = UnusableReject }, nil},
		{"unusable_key clear", func(c *Config) { c.Encryption.UnusableKey = UnusableClear }, nil},
		{"unusable_key empty", func(c *Config) { c.Encryption.UnusableKey = "" }, []string{"encryption.unusable_key"}},
		{"unusable_key upper case", func(c *Config) { c.Encryption.UnusableKey = "Reject" }, []string{"encryption.unusable_key"}},
		{"static ok", func(c *Config) {
			c.Static.Addresses = map[string][]string{"a@example.org": {fprV4, fprV6}}
			c.Static.Domains = map[string][]string{"example.org": {fprV4}}
			c.Static.NeverEncrypt = []string{"postmaster@example.org"}
		}, nil},
		{"static address without @", func(c *Config) {
			c.Static.Addresses = map[string][]string{"alice": {fprV4}}
		}, []string{"static.addresses"}},
		{"static address without fingerprint", func(c *Config) {
			c.Static.Addresses = map[string][]string{"a@example.org": nil}
		}, []string{"static.addresses"}},
		{"static address with key ID", func(c *Config) {
			c.Static.Addresses = map[string][]string{"a@example.org": {"89ABCDEF01234567"}}
		}, []string{"static.addresses"}},
		{"static address without @ and with a bad fingerprint", func(c *Config) {
			c.Static.Addresses = map[string][]string{"alice": {"xyz"}}
		}, []string{"static.addresses", "static.addresses"}},
		{"static domain empty", func(c *Config) {
			c.Static.Domains = map[string][]string{"": {fprV4}}
		}, []string{"static.domains"}},
		{"static domain with @", func(c *Config) {
			c.Static.Domains = map[string][]string{"a@example.org": {fprV4}}
		}, []string{"static.domains"}},
		{"static domain without fingerprint", func(c *Config) {
			c.Static.Domains = map[string][]string{"example.org": {}}
		}, []string{"static.domains"}},
		{"never_encrypt without @", func(c *Config) { c.Static.NeverEncrypt = []string{"postmaster"} }, []string{"static.never_encrypt"}},
		{"everything wrong", func(c *Config) {
			c.Milter.Listen = "tcp:1.2.3.4:25"
			c.Store.Database = ""
			c.Store.CacheTTL = Duration(2 * time.Hour)
			c.Keys.MinRSABits = 512
			c.Keys.SubaddressSeparator = "++"
			c.Encryption.UnusableKey = "maybe"
		}, []string{"milter.listen", "store.database", "store.cache_ttl", "keys.min_rsa_bits",
			"keys.subaddress_separator", "encryption.unusable_key"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.modify(c)
			err := c.Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			ce := configError(t, err)
			t.Logf("message:\n%v", err)
			var got []string
			for _, p := range ce.Problems {
				got = append(got, p.Key)
				if p.Line != 0 {
					t.Errorf("Validate set line %d; only parse knows lines", p.Line)
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("problem keys %q, want %q", got, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "configuration: ") {
				t.Errorf("a Config without Path should be called \"configuration\": %q", err)
			}
		})
	}
}

func TestFind(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "lacre.toml")
	if err := os.WriteFile(existing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other.toml")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.toml")
	// A path below a regular file fails with ENOTDIR, not ErrNotExist.
	notDir := filepath.Join(existing, "lacre.toml")

	for _, tc := range []struct {
		name    string
		flag    string
		env     string
		search  []string
		want    string
		wantErr bool
	}{
		{name: "flag wins over env and search", flag: "/flag.toml", env: "/env.toml", search: []string{existing}, want: "/flag.toml"},
		{name: "flag need not exist", flag: missing, want: missing},
		{name: "env wins over search", env: "/env.toml", search: []string{existing}, want: "/env.toml"},
		{name: "env need not exist", env: missing, want: missing},
		{name: "first existing search path", search: []string{missing, other, existing}, want: other},
		{name: "search order", search: []string{existing, other}, want: existing},
		{name: "nothing found", search: []string{missing, filepath.Join(dir, "nope", "lacre.toml")}, want: ""},
		{name: "no search paths", search: nil, want: ""},
		{name: "unreadable search path", search: []string{notDir, existing}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(EnvVar, tc.env)
			saved := SearchPaths
			SearchPaths = tc.search
			t.Cleanup(func() { SearchPaths = saved })

			got, err := Find(tc.flag)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("Find = %q, want an error", got)
				}
				t.Logf("message: %v", err)
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("Find(%q) with %s=%q, SearchPaths %q = %q, %v; want %q", tc.flag, EnvVar, tc.env, tc.search, got, err, tc.want)
			}
		})
	}
}

func TestParseListen(t *testing.T) {
	for _, tc := range []struct {
		in, network, address string
	}{
		{"inet:127.0.0.1:8891", "tcp", "127.0.0.1:8891"},
		{"inet:localhost:25", "tcp", "localhost:25"},
		{"inet:[::1]:8891", "tcp", "[::1]:8891"},
		{"inet:0.0.0.0:0", "tcp", "0.0.0.0:0"},
		{"unix:/run/lacre/milter.sock", "unix", "/run/lacre/milter.sock"},
		{"unix:milter.sock", "unix", "milter.sock"},
		{"unix:/path:with:colons", "unix", "/path:with:colons"},
		// Errors.
		{"", "", ""},
		{"inet", "", ""},
		{"inet:", "", ""},
		{"inet:127.0.0.1", "", ""}, // no port
		{"inet:8891", "", ""},      // no host
		{"inet::8891", "", ""},     // empty host: HOST:PORT asks for one
		{"inet:127.0.0.1:", "", ""},
		{"tcp:127.0.0.1:8891", "", ""},
		{"inet6:[::1]:8891", "", ""},
		{"local:/run/lacre.sock", "", ""},
		{"INET:127.0.0.1:8891", "", ""},
		{"unix:", "", ""},
		{"127.0.0.1:8891", "", ""},
		{"/run/lacre.sock", "", ""},
	} {
		t.Run(tc.in, func(t *testing.T) {
			network, address, err := ParseListen(tc.in)
			if tc.network == "" {
				if err == nil {
					t.Fatalf("ParseListen(%q) = %q, %q; want an error", tc.in, network, address)
				}
				t.Logf("message: %v", err)
				if network != "" || address != "" {
					t.Errorf("error with results %q, %q", network, address)
				}
				if !strings.Contains(err.Error(), `"`+tc.in+`"`) {
					t.Errorf("error %q does not quote the input", err)
				}
				return
			}
			if err != nil || network != tc.network || address != tc.address {
				t.Errorf("ParseListen(%q) = %q, %q, %v; want %q, %q", tc.in, network, address, err, tc.network, tc.address)
			}
		})
	}
}

func TestDatabasePath(t *testing.T) {
	for _, tc := range []struct {
		path, database, want string
	}{
		{"/etc/lacre/lacre.toml", "lacre.db", "/etc/lacre/lacre.db"},
		{"/etc/lacre/lacre.toml", "db/keys.db", "/etc/lacre/db/keys.db"},
		{"/etc/lacre/lacre.toml", "./keys.db", "/etc/lacre/keys.db"},
		{"/etc/lacre/lacre.toml", "../lib/keys.db", "/etc/lib/keys.db"},
		{"/etc/lacre/lacre.toml", "/var/lib/lacre/keys.db", "/var/lib/lacre/keys.db"},
		{"/etc/lacre/lacre.toml", "", ""},
		{"conf/lacre.toml", "lacre.db", "conf/lacre.db"},
		{"lacre.toml", "lacre.db", "lacre.db"},
		{"lacre.toml", "/abs.db", "/abs.db"},
		{"", "lacre.db", "lacre.db"}, // defaults: relative to the working directory
		{"", "db/keys.db", "db/keys.db"},
		{"", "/var/lib/lacre/keys.db", "/var/lib/lacre/keys.db"},
		{"", "", ""},
	} {
		c := Default()
		c.Path = tc.path
		c.Store.Database = tc.database
		if got := c.DatabasePath(); got != tc.want {
			t.Errorf("Path %q, database %q: DatabasePath() = %q, want %q", tc.path, tc.database, got, tc.want)
		}
	}
}

func TestDuration(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{"30s", 30 * time.Second, false},
		{"5m", 5 * time.Minute, false},
		{"1h30m", 90 * time.Minute, false},
		{"1.5s", 1500 * time.Millisecond, false},
		{"250ms", 250 * time.Millisecond, false},
		{"0", 0, false},
		{"-5s", -5 * time.Second, false}, // parsed; Validate refuses it
		{"", 0, true},
		{"30", 0, true},
		{"5 minutes", 0, true},
		{"5 m", 0, true},
		{"5min", 0, true},
		{"1d", 0, true},
		{"PT5M", 0, true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			d := Duration(42)
			err := d.UnmarshalText([]byte(tc.in))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("UnmarshalText(%q) = %v, want an error", tc.in, d.D())
				}
				t.Logf("message: %v", err)
				if d != 42 {
					t.Errorf("failed UnmarshalText changed the value to %v", d.D())
				}
				if !strings.Contains(err.Error(), `"`+tc.in+`"`) {
					t.Errorf("error %q does not quote the input", err)
				}
				return
			}
			if err != nil || d.D() != tc.want {
				t.Fatalf("UnmarshalText(%q) = %v, %v; want %v", tc.in, d.D(), err, tc.want)
			}
			text, err := d.MarshalText()
			if err != nil {
				t.Fatal(err)
			}
			var back Duration
			if err := back.UnmarshalText(text); err != nil || back != d {
				t.Errorf("MarshalText %q does not round-trip: %v, %v", text, back.D(), err)
			}
		})
	}
	if got, _ := Duration(90 * time.Second).MarshalText(); string(got) != "1m30s" {
		t.Errorf("MarshalText(90s) = %q, want 1m30s", got)
	}
}
