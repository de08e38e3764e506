// Package config reads, defaults and validates lacre.toml.
//
// Every option has a default (see Default), so an empty file is a valid
// configuration. Unknown keys and bad values are errors that name the key
// and, where it can be found, the line: a typo in a mail gateway's config
// must never silently switch encryption off.
package config

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/BurntSushi/toml"

	"lacre.io/milter/keys"
)

// EnvVar names the environment variable consulted when no -config flag is given.
const EnvVar = "LACRE_CONFIG"

// SearchPaths are tried in order when neither -config nor $LACRE_CONFIG is set.
var SearchPaths = []string{"/etc/lacre/lacre.toml", "/usr/local/etc/lacre/lacre.toml"}

// Config is the whole of lacre.toml.
type Config struct {
	Milter     Milter     `toml:"milter"`
	Log        Log        `toml:"log"`
	Store      Store      `toml:"store"`
	Keys       Keys       `toml:"keys"`
	Encryption Encryption `toml:"encryption"`
	Static     Static     `toml:"static"`
	Aliases    Aliases    `toml:"aliases"`
	Web        Web        `toml:"web"`
	SMIME      SMIME      `toml:"smime"`

	// Path is the file the configuration was read from ("" for defaults).
	// Relative paths inside the file are resolved against its folder.
	Path string `toml:"-"`

	// anchors are the certificates of smime.trust_anchors, read by
	// Validate from anchorsFrom (see TrustAnchorPool).
	anchors     *x509.CertPool
	anchorsFrom string
}

// SMIME holds the options of S/MIME (issue 18): which recipient
// certificates are admitted, and how mail is encrypted to them.
type SMIME struct {
	// TrustAnchors is a PEM file of root certificates, relative to the
	// config file; when set, a certificate is admitted (and used) only
	// with a chain to one of them. "" requires no chain.
	TrustAnchors string `toml:"trust_anchors"`
	// Cipher is the content encryption: "aes-256-cbc" (EnvelopedData) or
	// "aes-256-gcm" (AuthEnvelopedData, RFC 5083).
	Cipher string `toml:"cipher"`
	// RSAPadding is the RSA key transport: "pkcs1v15" or "oaep".
	RSAPadding string `toml:"rsa_padding"`
	// SubjectKeyID names recipients by subject key identifier instead of
	// issuer and serial number.
	SubjectKeyID bool `toml:"subject_key_id"`
}

// The values of SMIME.Cipher and SMIME.RSAPadding.
const (
	CipherAES256CBC = "aes-256-cbc"
	CipherAES256GCM = "aes-256-gcm"
	PaddingPKCS1v15 = "pkcs1v15"
	PaddingOAEP     = "oaep"
)

// Milter holds the options of the milter daemon.
type Milter struct {
	// Listen is "inet:HOST:PORT" or "unix:PATH".
	Listen string `toml:"listen"`
	// MaxMessageSize caps, in bytes, a message with encrypted recipients
	// (it is held in memory); larger ones get 552 5.3.4.
	MaxMessageSize int64 `toml:"max_message_size"`
	// TraceHeader is added to every message the milter encrypted
	// ("X-Lacre: encrypted"); "" adds none.
	TraceHeader string `toml:"trace_header"`
	// MixedLocal says what to do with mail that did not arrive over SMTP
	// (Postfix non_smtpd_milters) whose recipients need different
	// treatment: "hold" (the MTA's hold queue) or "encrypt" (every
	// recipient gets the ciphertext).
	MixedLocal string `toml:"mixed_local"`
	// ShutdownTimeout bounds how long SIGTERM waits for messages in flight.
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
	// LookupTimeout bounds one recipient's lookups at RCPT time (keys,
	// and the expansion of [aliases] with its mailboxes' keys).
	LookupTimeout Duration `toml:"lookup_timeout"`
	// MetricsListen, when not "", serves Prometheus /metrics and /healthz
	// on HOST:PORT.
	MetricsListen string `toml:"metrics_listen"`
	// MaxConnections caps the MTA connections served at once; one more is
	// closed at once (the MTA applies milter_default_action).
	MaxConnections int `toml:"max_connections"`
	// IdleTimeout closes a connection on which no packet has started for
	// this long. It must exceed the MTA's longest legitimate gap.
	IdleTimeout Duration `toml:"idle_timeout"`
	// PacketTimeout closes a connection whose packet, once its first byte
	// has arrived, is not complete within it; each reply (or each MiB of
	// one) must also be taken by the MTA within it.
	PacketTimeout Duration `toml:"packet_timeout"`
}

// Log holds the logging options.
type Log struct {
	// Level is "debug", "info", "warn" or "error".
	Level string `toml:"level"`
	// Format is "text" (key=value) or "json".
	Format string `toml:"format"`
}

// Web holds the options of the key-registration service (lacre-milter web).
type Web struct {
	// Listen is the HTTP listener, HOST:PORT.
	Listen string `toml:"listen"`
	// BaseURL is the service's public URL, for the links in confirmation mail.
	BaseURL string `toml:"base_url"`
	// Domains are the mail domains whose users may register keys; WKD
	// serves them too. The service refuses to start without one.
	Domains []string `toml:"domains"`
	// From is the sender of confirmation mail; "" means lacre@ the first domain.
	From string `toml:"from"`
	// TokenTTL is how long a confirmation link works.
	TokenTTL Duration `toml:"token_ttl"`
	// MaxPendingPerAddress bounds unconfirmed requests per address.
	MaxPendingPerAddress int `toml:"max_pending_per_address"`
	// MaxRequestsPerClient bounds requests per client IP address per hour.
	MaxRequestsPerClient int `toml:"max_requests_per_client"`
	// Templates is a folder whose *.html and *.txt files override the
	// built-in page and mail templates; relative to the config file.
	Templates string `toml:"templates"`
	// TrustedProxies are the reverse proxies (addresses or CIDR prefixes)
	// whose X-Forwarded-For the rate limits believe; the right-most hop
	// that is not one of them is the client.
	TrustedProxies []string `toml:"trusted_proxies"`
	// SecretFile holds the key of the CSRF tokens' HMAC (at least 32
	// bytes); relative to the config file. "" means a random key per start.
	SecretFile string  `toml:"secret_file"`
	SMTP       WebSMTP `toml:"smtp"`
}

// WebSMTP is where the web service hands confirmation mail to.
type WebSMTP struct {
	// Addr is the MTA's SMTP listener, HOST:PORT.
	Addr string `toml:"addr"`
}

// The values of Milter.MixedLocal.
const (
	MixedLocalHold    = "hold"
	MixedLocalEncrypt = "encrypt"
)

// Store holds the options of the key store.
type Store struct {
	// Database is a file path (SQLite), relative to the config file's
	// folder, or a PostgreSQL connection string: a postgres:// URL or the
	// libpq key=value form (see keys.IsPostgresDSN), without a password.
	Database string `toml:"database"`
	// CacheTTL bounds how long a lookup result (including "no key") is reused.
	CacheTTL Duration `toml:"cache_ttl"`
	// PasswordFile holds the PostgreSQL role's password (one line);
	// relative to the config file's folder. PostgreSQL only.
	PasswordFile string `toml:"password_file"`
	// MaxConns bounds the PostgreSQL connection pool.
	MaxConns int `toml:"max_conns"`
	// ConnectTimeout bounds one PostgreSQL connection attempt.
	ConnectTimeout Duration `toml:"connect_timeout"`
	// StatementTimeout is PostgreSQL's statement_timeout for every query.
	StatementTimeout Duration `toml:"statement_timeout"`
}

// Keys holds the rules for accepting keys and matching addresses.
type Keys struct {
	// MinRSABits is the smallest RSA (and DSA/ElGamal) modulus accepted.
	MinRSABits int `toml:"min_rsa_bits"`
	// FoldLocalPartCase makes "Alice@" and "alice@" the same address.
	FoldLocalPartCase bool `toml:"fold_local_part_case"`
	// SubaddressSeparator is the separator of "user+tag@"; "" turns the fallback off.
	SubaddressSeparator string `toml:"subaddress_separator"`
}

// Encryption holds the options of the PGP/MIME output.
type Encryption struct {
	// HideRecipients writes wildcard key IDs (RFC 9580 §5.1) instead of the recipients' ones.
	HideRecipients bool `toml:"hide_recipients"`
	// ProtectHeaders copies Subject, From, To, … into the ciphertext (RFC 9788)
	// and replaces the outer Subject; recipients may override it per address.
	ProtectHeaders bool `toml:"protect_headers"`
	// UnusableKey says what to do with mail for an address whose every key
	// has expired or been revoked since it was registered: "tempfail",
	// "reject" or "clear".
	UnusableKey string `toml:"unusable_key"`
	// PGPFormat is how mail to an OpenPGP key is written for a recipient
	// who has not chosen: "pgp-mime" or "pgp-inline".
	PGPFormat string `toml:"pgp_format"`
}

// Static holds the mappings that gpg-mailgate called enc_keymap and
// enc_domain_keymap, and the addresses that must never be encrypted.
type Static struct {
	// Addresses maps an address to the fingerprints of keys in the store.
	Addresses map[string][]string `toml:"addresses"`
	// Domains maps a domain to the fingerprints of keys in the store.
	Domains map[string][]string `toml:"domains"`
	// NeverEncrypt lists addresses that always receive mail as sent.
	NeverEncrypt []string `toml:"never_encrypt"`
	// Formats maps an address to the format its mail is written in
	// ("pgp-mime", "pgp-inline", "smime"; gpg-mailgate's [pgp_style]); a
	// format the recipient chose ("keys set ADDRESS format") wins.
	Formats map[string]string `toml:"formats"`
}

// Aliases holds the options of recipient expansion: the milter sees each
// recipient as the client wrote it, the MTA delivers it to the mailboxes
// its tables expand it to (canonical maps, virtual aliasing, aliases(5)).
type Aliases struct {
	// Source is "postfix" (expand with Postfix's own tables, found with
	// postconf), "none" (classify each recipient as written) or "auto"
	// ("postfix" on a host where postconf is installed, else "none").
	Source string `toml:"source"`
	// PostfixConfigDir is the Postfix configuration directory (postconf
	// -c); "" means Postfix's default (/etc/postfix).
	PostfixConfigDir string `toml:"postfix_config_dir"`
	// Service is the master.cf service that runs the milter, as postconf
	// -P names it ("smtp/inet"); its -o overrides (e.g.
	// receive_override_options) apply. "" reads main.cf alone.
	Service string `toml:"service"`
	// CacheTTL bounds how long an expansion is reused.
	CacheTTL Duration `toml:"cache_ttl"`
	// Mixed says what to do with a recipient that expands to keyed and
	// unkeyed mailboxes: "reinject" or "defer".
	Mixed string `toml:"mixed"`
	// Reinject is the MTA's SMTP service, HOST:PORT on loopback, that takes
	// the clear copy of a mixed expansion and runs no milter.
	Reinject string `toml:"reinject"`
	// ReinjectTimeout bounds one hand-back of a clear copy.
	ReinjectTimeout Duration `toml:"reinject_timeout"`
}

// The values of Aliases.Source and Aliases.Mixed.
const (
	AliasesAuto     = "auto"
	AliasesPostfix  = "postfix"
	AliasesNone     = "none"
	MixedReinject   = "reinject"
	MixedDefer      = "defer"
	DefaultReinject = "127.0.0.1:10026"
)

// The values of Encryption.UnusableKey.
const (
	UnusableTempfail = "tempfail"
	UnusableReject   = "reject"
	UnusableClear    = "clear"
)

// Default returns the configuration used for every option the file leaves out.
func Default() *Config {
	return &Config{
		Milter: Milter{
			Listen:          "inet:127.0.0.1:8891",
			MaxMessageSize:  64 << 20,
			TraceHeader:     "X-Lacre",
			MixedLocal:      MixedLocalHold,
			ShutdownTimeout: Duration(30 * time.Second),
			LookupTimeout:   Duration(5 * time.Second),
			MaxConnections:  1000,
			IdleTimeout:     Duration(time.Hour),
			PacketTimeout:   Duration(30 * time.Second),
		},
		Log: Log{Level: "info", Format: "text"},
		Web: Web{
			Listen:               "127.0.0.1:8080",
			BaseURL:              "http://127.0.0.1:8080",
			TokenTTL:             Duration(48 * time.Hour),
			MaxPendingPerAddress: 3,
			MaxRequestsPerClient: 10,
			TrustedProxies:       []string{"127.0.0.1", "::1"},
			SMTP:                 WebSMTP{Addr: "127.0.0.1:25"},
		},
		Store: Store{Database: "lacre.db", CacheTTL: Duration(30 * time.Second),
			MaxConns: 10, ConnectTimeout: Duration(5 * time.Second), StatementTimeout: Duration(10 * time.Second)},
		Keys: Keys{
			MinRSABits:          2048,
			FoldLocalPartCase:   true,
			SubaddressSeparator: "+",
		},
		Encryption: Encryption{UnusableKey: UnusableTempfail, PGPFormat: string(keys.FormatPGPMIME)},
		SMIME:      SMIME{Cipher: CipherAES256CBC, RSAPadding: PaddingPKCS1v15},
		Aliases: Aliases{
			Source:          AliasesAuto,
			Service:         "smtp/inet",
			CacheTTL:        Duration(30 * time.Second),
			Mixed:           MixedReinject,
			Reinject:        DefaultReinject,
			ReinjectTimeout: Duration(60 * time.Second),
		},
	}
}

// Duration is a time.Duration written as a Go duration string ("30s", "5m").
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (write e.g. \"30s\" or \"5m\")", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Problem is one thing wrong with a configuration file.
type Problem struct {
	Key  string // dotted TOML key, e.g. "store.cache_ttl"
	Line int    // 0 when unknown
	Msg  string

	// at is the TOML path of the entry at fault, when it is finer than Key
	// (an address inside [static.addresses]); used to find the line.
	at []string
}

func (p Problem) String() string {
	if p.Line > 0 && p.Key == "" {
		return fmt.Sprintf("line %d: %s", p.Line, p.Msg)
	}
	if p.Line > 0 {
		return fmt.Sprintf("line %d: %s: %s", p.Line, p.Key, p.Msg)
	}
	if p.Key == "" {
		return p.Msg
	}
	return fmt.Sprintf("%s: %s", p.Key, p.Msg)
}

// Error lists every problem found in one file, so an operator fixes them
// in one pass instead of one per restart.
type Error struct {
	Path     string
	Problems []Problem
}

func (e *Error) Error() string {
	var b strings.Builder
	name := e.Path
	if name == "" {
		name = "configuration"
	}
	if len(e.Problems) == 1 {
		fmt.Fprintf(&b, "%s: %s", name, e.Problems[0])
		return b.String()
	}
	fmt.Fprintf(&b, "%s: %d problems:", name, len(e.Problems))
	for _, p := range e.Problems {
		fmt.Fprintf(&b, "\n  %s", p)
	}
	return b.String()
}

// Find returns the path of the configuration file to use: flagPath when set,
// else $LACRE_CONFIG, else the first existing file of SearchPaths. It returns
// "" and no error when nothing is found, meaning "run on the defaults".
func Find(flagPath string) (string, error) {
	if flagPath != "" {
		return flagPath, nil
	}
	if p := os.Getenv(EnvVar); p != "" {
		return p, nil
	}
	for _, p := range SearchPaths {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("config: %v", err)
		}
	}
	return "", nil
}

// Load reads and validates the file at path. An empty path yields the
// defaults (with relative paths resolved against the working directory).
// A returned *Error lists every problem found.
func Load(path string) (*Config, error) {
	c := Default()
	if path == "" {
		return c, c.Validate()
	}
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return parse(path, src)
}

func parse(path string, src []byte) (*Config, error) {
	c := Default()
	c.Path = path
	md, err := toml.NewDecoder(bytes.NewReader(src)).Decode(c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			// The byte offset is exact; the reported line is sometimes the
			// next one when the parser trips over a line end.
			line := pe.Position.Line
			if pe.Position.Start > 0 && pe.Position.Start <= len(src) {
				line = 1 + bytes.Count(src[:pe.Position.Start], []byte("\n"))
			}
			// LastKey is the key being read, except in a broken "[table"
			// header, where it is the previous table: leave it out there.
			key := pe.LastKey
			if strings.Contains(pe.Message, "table name") || strings.Contains(pe.Message, "table array name") {
				key = ""
			}
			return nil, &Error{Path: path, Problems: []Problem{{Key: key, Line: line, Msg: pe.Message}}}
		}
		if p, ok := typeProblem(err); ok {
			return nil, &Error{Path: path, Problems: []Problem{p}}
		}
		return nil, &Error{Path: path, Problems: []Problem{{Msg: err.Error()}}}
	}
	var probs []Problem
	for _, k := range md.Undecoded() {
		probs = append(probs, Problem{
			Key:  k.String(),
			Line: lineOf(src, k),
			Msg:  "unknown option (see lacre.toml.example for the options that exist)",
		})
	}
	if err := c.Validate(); err != nil {
		var ce *Error
		if errors.As(err, &ce) {
			for _, p := range ce.Problems {
				if p.Line == 0 && p.at != nil {
					p.Line = lineOf(src, p.at)
				}
				if p.Line == 0 && p.Key != "" {
					p.Line = lineOf(src, strings.Split(p.Key, "."))
				}
				probs = append(probs, p)
			}
		}
	}
	if len(probs) > 0 {
		sort.SliceStable(probs, func(i, j int) bool { return probs[i].Line < probs[j].Line })
		return nil, &Error{Path: path, Problems: probs}
	}
	return c, nil
}

// typeMismatch matches the TOML library's error for a value of the wrong
// type, which carries no structured position.
var typeMismatch = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): incompatible types: TOML value has type (\w+); destination has type (\w+)`)

func typeProblem(err error) (Problem, bool) {
	m := typeMismatch.FindStringSubmatch(err.Error())
	if m == nil {
		return Problem{}, false
	}
	line, _ := strconv.Atoi(m[1])
	want := map[string]string{"integer": "a number", "slice": "a list [ … ]", "string": "a string in quotes",
		"bool": "true or false", "map": "a table", "struct": "a table"}[m[4]]
	if want == "" {
		want = "a " + m[4]
	}
	got := map[string]string{"string": "a string", "integer": "a number", "array": "a list",
		"bool": "a boolean", "float": "a number", "map": "a table", "table": "a table"}[strings.ToLower(m[3])]
	if got == "" {
		got = "a " + m[3]
	}
	return Problem{Key: m[2], Line: line, Msg: fmt.Sprintf("must be %s, not %s", want, got)}, true
}

// Validate checks values that TOML types cannot express. Every problem
// is collected, each with its key (and the line, once parse has it), so
// that check-config reports them all at once.
func (c *Config) Validate() error {
	var p problems
	c.validateMilter(&p)
	c.validateLog(&p)
	c.validateWeb(&p)
	c.validateStore(&p)
	c.validateKeys(&p)
	c.validateStatic(&p)
	c.validateAliases(&p)
	c.validateSMIME(&p)
	if len(p.list) == 0 {
		return nil
	}
	return &Error{Path: c.Path, Problems: p.list}
}

// problems collects what Validate finds.
type problems struct{ list []Problem }

func (p *problems) add(key, format string, args ...any) {
	p.list = append(p.list, Problem{Key: key, Msg: fmt.Sprintf(format, args...)})
}

// at is add for one entry of a map, so the message points at its line.
func (p *problems) at(path []string) func(string, string, ...any) {
	return func(key, format string, args ...any) {
		p.add(key, format, args...)
		p.list[len(p.list)-1].at = path
	}
}

func (c *Config) validateMilter(p *problems) {
	if _, _, err := ParseListen(c.Milter.Listen); err != nil {
		p.add("milter.listen", "%v", err)
	}
	if c.Milter.MaxMessageSize < 1<<20 || c.Milter.MaxMessageSize > 1<<30 {
		p.add("milter.max_message_size", "%d is out of range (1 MiB to 1 GiB, in bytes)", c.Milter.MaxMessageSize)
	}
	if m := c.Milter.MetricsListen; m != "" {
		if _, _, err := net.SplitHostPort(m); err != nil {
			p.add("milter.metrics_listen", "%q: write HOST:PORT, e.g. \"127.0.0.1:9191\", or \"\" for none", m)
		}
	}
	if h := c.Milter.TraceHeader; h != "" && !validHeaderName(h) {
		p.add("milter.trace_header", "%q is not a header field name (letters, digits and '-')", h)
	}
	switch c.Milter.MixedLocal {
	case MixedLocalHold, MixedLocalEncrypt:
	default:
		p.add("milter.mixed_local", "%q is not one of \"hold\", \"encrypt\"", c.Milter.MixedLocal)
	}
	if d := c.Milter.ShutdownTimeout.D(); d < time.Second || d > 10*time.Minute {
		p.add("milter.shutdown_timeout", "%s is out of range (1s to 10m)", d)
	}
	if d := c.Milter.LookupTimeout.D(); d < 100*time.Millisecond || d > 25*time.Second {
		p.add("milter.lookup_timeout", "%s is out of range (100ms to 25s; Postfix waits 30s for a RCPT reply)", d)
	}
	if n := c.Milter.MaxConnections; n < 1 || n > 100000 {
		p.add("milter.max_connections", "%d is out of range (1 to 100000; Postfix opens one per smtpd and cleanup process)", n)
	}
	if d := c.Milter.IdleTimeout.D(); d < 10*time.Minute || d > 24*time.Hour {
		p.add("milter.idle_timeout", "%s is out of range (10m to 24h; the MTA legitimately waits 300s and more between packets, e.g. Postfix's smtpd_timeout plus a message's DATA transfer)", d)
	}
	if d := c.Milter.PacketTimeout.D(); d < time.Second || d > 10*time.Minute {
		p.add("milter.packet_timeout", "%s is out of range (1s to 10m)", d)
	}
}

func (c *Config) validateLog(p *problems) {
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		p.add("log.level", "%q is not one of \"debug\", \"info\", \"warn\", \"error\"", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		p.add("log.format", "%q is not one of \"text\", \"json\"", c.Log.Format)
	}
}

func (c *Config) validateWeb(p *problems) {
	if _, _, err := net.SplitHostPort(c.Web.Listen); err != nil {
		p.add("web.listen", "%q: write HOST:PORT, e.g. \"127.0.0.1:8080\"", c.Web.Listen)
	}
	if u, err := url.Parse(c.Web.BaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		p.add("web.base_url", "%q: write the service's public URL, e.g. \"https://keys.example.org\"", c.Web.BaseURL)
	}
	for _, d := range c.Web.Domains {
		if d == "" || strings.ContainsAny(d, "@ /") {
			p.add("web.domains", "%q is not a domain", d)
		}
	}
	if f := c.Web.From; f != "" && !strings.Contains(f, "@") {
		p.add("web.from", "%q is not an address", f)
	}
	if d := c.Web.TokenTTL.D(); d < 10*time.Minute || d > 30*24*time.Hour {
		p.add("web.token_ttl", "%s is out of range (10m to 720h)", d)
	}
	if n := c.Web.MaxPendingPerAddress; n < 1 || n > 100 {
		p.add("web.max_pending_per_address", "%d is out of range (1 to 100)", n)
	}
	if n := c.Web.MaxRequestsPerClient; n < 1 || n > 10000 {
		p.add("web.max_requests_per_client", "%d is out of range (1 to 10000)", n)
	}
	for _, proxy := range c.Web.TrustedProxies {
		if _, err := ParsePrefix(proxy); err != nil {
			p.add("web.trusted_proxies", "%q: write an IP address or a CIDR prefix, e.g. \"127.0.0.1\" or \"10.0.0.0/8\"", proxy)
		}
	}
	if _, _, err := net.SplitHostPort(c.Web.SMTP.Addr); err != nil {
		p.add("web.smtp.addr", "%q: write HOST:PORT, e.g. \"127.0.0.1:25\"", c.Web.SMTP.Addr)
	}
}

func (c *Config) validateStore(p *problems) {
	if c.Store.Database == "" {
		p.add("store.database", "must name a file, e.g. \"lacre.db\"")
	}
	if c.Store.CacheTTL < 0 || c.Store.CacheTTL.D() > time.Hour {
		p.add("store.cache_ttl", "%s is out of range (0 to 1h; a long TTL delays new keys)", c.Store.CacheTTL.D())
	}
	if !c.StoreIsPostgres() {
		if c.Store.PasswordFile != "" {
			p.add("store.password_file", "is for PostgreSQL; store.database is an SQLite file")
		}
		return
	}
	if err := keys.CheckPostgresDSN(c.Store.Database); err != nil {
		p.add("store.database", "%v", err)
	}
	if c.Store.MaxConns < 1 || c.Store.MaxConns > 1000 {
		p.add("store.max_conns", "%d is out of range (1 to 1000)", c.Store.MaxConns)
	}
	if c.Store.ConnectTimeout.D() < 100*time.Millisecond || c.Store.ConnectTimeout.D() > time.Minute {
		p.add("store.connect_timeout", "%s is out of range (100ms to 1m)", c.Store.ConnectTimeout.D())
	}
	if c.Store.StatementTimeout.D() < 100*time.Millisecond || c.Store.StatementTimeout.D() > 10*time.Minute {
		p.add("store.statement_timeout", "%s is out of range (100ms to 10m)", c.Store.StatementTimeout.D())
	}
}

// StoreIsPostgres reports whether store.database names a PostgreSQL
// database rather than an SQLite file.
func (c *Config) StoreIsPostgres() bool { return keys.IsPostgresDSN(c.Store.Database) }

// PostgresOptions returns the [store] options of a PostgreSQL store.
func (c *Config) PostgresOptions() keys.PostgresOptions {
	return keys.PostgresOptions{
		PasswordFile:     c.resolve(c.Store.PasswordFile),
		MaxConns:         int32(c.Store.MaxConns),
		ConnectTimeout:   c.Store.ConnectTimeout.D(),
		StatementTimeout: c.Store.StatementTimeout.D(),
	}
}

// validateKeys checks [keys] and [encryption].
func (c *Config) validateKeys(p *problems) {
	if c.Keys.MinRSABits < 1024 || c.Keys.MinRSABits > 16384 {
		p.add("keys.min_rsa_bits", "%d is out of range (1024 to 16384; 2048 is the usual floor)", c.Keys.MinRSABits)
	}
	if s := c.Keys.SubaddressSeparator; len(s) > 1 || (s != "" && s[0] >= utf8.RuneSelf) || strings.ContainsAny(s, "@ \t\"") {
		p.add("keys.subaddress_separator", "%q must be one ASCII character other than @, space or quote, or \"\" for none", s)
	}
	switch c.Encryption.UnusableKey {
	case UnusableTempfail, UnusableReject, UnusableClear:
	default:
		p.add("encryption.unusable_key", "%q is not one of \"tempfail\", \"reject\", \"clear\"", c.Encryption.UnusableKey)
	}
	switch keys.Format(c.Encryption.PGPFormat) {
	case keys.FormatPGPMIME, keys.FormatPGPInline:
	default:
		p.add("encryption.pgp_format", "%q is not one of \"pgp-mime\", \"pgp-inline\"", c.Encryption.PGPFormat)
	}
}

func (c *Config) validateStatic(p *problems) {
	// Sorted, so that several problems come in the same order every run.
	for _, addr := range slices.Sorted(maps.Keys(c.Static.Addresses)) {
		at := p.at([]string{"static", "addresses", addr})
		if !strings.Contains(addr, "@") {
			at("static.addresses", "%q is not an address (domains go in [static.domains])", addr)
		}
		checkFingerprints(at, "static.addresses", addr, c.Static.Addresses[addr])
	}
	for _, dom := range slices.Sorted(maps.Keys(c.Static.Domains)) {
		at := p.at([]string{"static", "domains", dom})
		if dom == "" || strings.Contains(dom, "@") {
			at("static.domains", "%q is not a domain", dom)
		}
		checkFingerprints(at, "static.domains", dom, c.Static.Domains[dom])
	}
	for _, addr := range c.Static.NeverEncrypt {
		if !strings.Contains(addr, "@") {
			p.add("static.never_encrypt", "%q is not an address", addr)
		}
	}
	for _, addr := range slices.Sorted(maps.Keys(c.Static.Formats)) {
		at := p.at([]string{"static", "formats", addr})
		if !strings.Contains(addr, "@") {
			at("static.formats", "%q is not an address", addr)
		}
		switch f := keys.Format(c.Static.Formats[addr]); f {
		case keys.FormatPGPMIME, keys.FormatPGPInline, keys.FormatSMIME:
		default:
			at("static.formats", "%q: %q is not one of \"pgp-mime\", \"pgp-inline\", \"smime\"", addr, string(f))
		}
	}
}

// validateSMIME checks [smime] and reads smime.trust_anchors, so that a
// file that cannot be read, or holds no certificate, is a configuration
// error at load (and at every reload), not a surprise at the first key.
func (c *Config) validateSMIME(p *problems) {
	switch c.SMIME.Cipher {
	case CipherAES256CBC, CipherAES256GCM:
	default:
		p.add("smime.cipher", "%q is not one of %q, %q", c.SMIME.Cipher, CipherAES256CBC, CipherAES256GCM)
	}
	switch c.SMIME.RSAPadding {
	case PaddingPKCS1v15, PaddingOAEP:
	default:
		p.add("smime.rsa_padding", "%q is not one of %q, %q", c.SMIME.RSAPadding, PaddingPKCS1v15, PaddingOAEP)
	}
	c.anchors, c.anchorsFrom = nil, ""
	if c.SMIME.TrustAnchors == "" {
		return
	}
	path := c.resolve(c.SMIME.TrustAnchors)
	pool, err := readTrustAnchors(path)
	if err != nil {
		p.add("smime.trust_anchors", "%v", err)
		return
	}
	c.anchors, c.anchorsFrom = pool, path
}

// readTrustAnchors reads a PEM file of certificates. Anything else in it
// (a private key, a certificate request) is an error: the file is
// published configuration and must hold only the roots.
func readTrustAnchors(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	n := 0
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: holds a %q PEM block; write only the root certificates (BEGIN CERTIFICATE) in it", path, b.Type)
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: certificate %d: %v", path, n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("%s: holds no PEM certificate (BEGIN CERTIFICATE); leave smime.trust_anchors empty to require no chain", path)
	}
	if bytes.Count(data, []byte("-----BEGIN ")) != n {
		return nil, fmt.Errorf("%s: holds a PEM block that cannot be read", path)
	}
	return pool, nil
}

// TrustAnchorPool returns the certificates of smime.trust_anchors, or nil
// when it is empty (no chain required). Validate (and so Load) has read
// the file; for a Config changed or made without it, the file is read now.
func (c *Config) TrustAnchorPool() (*x509.CertPool, error) {
	if c.SMIME.TrustAnchors == "" {
		return nil, nil
	}
	path := c.resolve(c.SMIME.TrustAnchors)
	if c.anchors != nil && c.anchorsFrom == path {
		return c.anchors, nil
	}
	pool, err := readTrustAnchors(path)
	if err != nil {
		return nil, fmt.Errorf("smime.trust_anchors: %w", err)
	}
	return pool, nil
}

// TrustAnchorsPath returns smime.trust_anchors resolved against the config
// file's folder ("" when not set).
func (c *Config) TrustAnchorsPath() string { return c.resolve(c.SMIME.TrustAnchors) }

func (c *Config) validateAliases(p *problems) {
	a := c.Aliases
	switch a.Source {
	case AliasesAuto, AliasesPostfix, AliasesNone:
	default:
		p.add("aliases.source", "%q is not one of \"auto\", \"postfix\", \"none\"", a.Source)
	}
	if d := a.PostfixConfigDir; d != "" && !filepath.IsAbs(d) {
		p.add("aliases.postfix_config_dir", "%q: write an absolute path, e.g. \"/etc/postfix\", or \"\" for Postfix's default", d)
	}
	if name, typ, ok := strings.Cut(a.Service, "/"); a.Service != "" && (!ok || name == "" || typ == "" || strings.ContainsAny(a.Service, " \t")) {
		p.add("aliases.service", "%q: write the master.cf service as postconf -P names it, SERVICE/TYPE, e.g. \"smtp/inet\", or \"\" for main.cf alone", a.Service)
	}
	if a.CacheTTL < 0 || a.CacheTTL.D() > time.Hour {
		p.add("aliases.cache_ttl", "%s is out of range (0 to 1h; a long TTL delays table changes)", a.CacheTTL.D())
	}
	switch a.Mixed {
	case MixedReinject, MixedDefer:
	default:
		p.add("aliases.mixed", "%q is not one of \"reinject\", \"defer\"", a.Mixed)
	}
	if host, _, err := net.SplitHostPort(a.Reinject); err != nil {
		p.add("aliases.reinject", "%q: write HOST:PORT, e.g. %q", a.Reinject, DefaultReinject)
	} else if ip, err := netip.ParseAddr(host); host != "localhost" && (err != nil || !ip.IsLoopback()) {
		// The service relays for the milter without authentication: it
		// must not be reachable from elsewhere, nor the copy travel in clear.
		p.add("aliases.reinject", "%q: the re-injection service must be on loopback (127.0.0.1, ::1 or localhost)", a.Reinject)
	}
	if d := a.ReinjectTimeout.D(); d < time.Second || d > 4*time.Minute {
		p.add("aliases.reinject_timeout", "%s is out of range (1s to 4m; Postfix waits 300s for the end-of-message reply)", d)
	}
}

func checkFingerprints(add func(string, string, ...any), key, name string, fprs []string) {
	if len(fprs) == 0 {
		add(key, "%q maps to no fingerprint", name)
	}
	for _, f := range fprs {
		if !keys.IsFingerprint(f) {
			add(key, "%q: %q is not a fingerprint (40 or 64 hex digits; key IDs are too short to be safe)", name, f)
		}
	}
}

func validHeaderName(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return s != ""
}

// ParseListen splits a listen address into a network ("tcp" or "unix") and
// an address for net.Listen.
func ParseListen(s string) (network, address string, err error) {
	kind, rest, ok := strings.Cut(s, ":")
	switch {
	case !ok:
	case kind == "inet" && rest != "":
		if i := strings.LastIndex(rest, ":"); i > 0 && i < len(rest)-1 {
			return "tcp", rest, nil
		}
	case kind == "unix" && rest != "":
		return "unix", rest, nil
	}
	return "", "", fmt.Errorf("%q: write \"inet:HOST:PORT\" or \"unix:/PATH\"", s)
}

// ParsePrefix reads "192.0.2.1" (one address) or "192.0.2.0/24".
func ParsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// SecretPath returns web.secret_file resolved against the config file's
// folder ("" when not set).
func (c *Config) SecretPath() string { return c.resolve(c.Web.SecretFile) }

// TemplatesPath returns web.templates resolved against the config file's
// folder ("" when not set).
func (c *Config) TemplatesPath() string { return c.resolve(c.Web.Templates) }

// DatabasePath returns the store path with a relative path resolved against
// the config file's folder, so the same file works from any working
// directory; a PostgreSQL connection string is returned as it is.
func (c *Config) DatabasePath() string {
	if c.StoreIsPostgres() {
		return c.Store.Database
	}
	return c.resolve(c.Store.Database)
}

func (c *Config) resolve(p string) string {
	if p == "" || filepath.IsAbs(p) || c.Path == "" {
		return p
	}
	return filepath.Join(filepath.Dir(c.Path), p)
}

// lineOf finds the line where key is set in src, for error messages. The
// TOML library reports positions only for syntax errors; this small scan
// covers "key = value", dotted keys, quoted keys and "[table]" headers.
// When the key itself is not found (it sits in an inline table), the line
// of the nearest enclosing key is returned; 0 if none is found.
func lineOf(src []byte, key toml.Key) int {
	for n := len(key); n > 0; n-- {
		if l := lineOfExact(src, strings.Join(key[:n], ".")); l > 0 {
			return l
		}
	}
	return 0
}

func lineOfExact(src []byte, want string) int {
	table := ""
	for i, line := range strings.Split(string(src), "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "[") {
			name := strings.TrimLeft(t, "[")
			if j := strings.Index(name, "]"); j >= 0 {
				name = name[:j]
			}
			table = unquoteKey(name)
			if table == want {
				return i + 1
			}
			continue
		}
		k, _, ok := strings.Cut(t, "=")
		if !ok {
			continue
		}
		full := unquoteKey(k)
		if table != "" {
			full = table + "." + full
		}
		if full == want {
			return i + 1
		}
	}
	return 0
}

// unquoteKey turns a dotted TOML key as written (`a. "b.c" .d`) into the
// pieces joined by dots (a.b.c.d), which is how toml.Key prints unquoted.
func unquoteKey(k string) string {
	var parts []string
	for _, p := range strings.Split(strings.TrimSpace(k), ".") {
		parts = append(parts, strings.Trim(strings.TrimSpace(p), `"'`))
	}
	return strings.Join(parts, ".")
}
