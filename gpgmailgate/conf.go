package gpgmailgate

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/url"
	"regexp"
	"strings"
	"unicode/utf8"

	"lacre.io/milter/keys"
)

// Conf is a gpg-mailgate.conf as Python's RawConfigParser reads it:
// sections, options with lower-cased names, values with continuation
// lines joined.
type Conf struct {
	Sections []*Section
}

// Section is one [section] of a Conf.
type Section struct {
	Name    string
	Line    int
	Options []*Option
}

// Option is one "name = value" (or "name: value") of a section.
type Option struct {
	Name, Value string
	Line        int
}

// ParseConf reads a gpg-mailgate.conf.
func ParseConf(r io.Reader) (*Conf, error) {
	c := &Conf{}
	var sec *Section
	var last *Option
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		raw := sc.Text()
		if !utf8.ValidString(raw) {
			return nil, fmt.Errorf("line %d: not UTF-8 text", n)
		}
		t := strings.TrimSpace(raw)
		if t == "" || t[0] == '#' || t[0] == ';' || strings.HasPrefix(strings.ToLower(t), "rem ") {
			if t == "" {
				last = nil
			}
			continue
		}
		if raw[0] == ' ' || raw[0] == '\t' {
			// A continuation line (RawConfigParser).
			if last == nil {
				return nil, fmt.Errorf("line %d: indented line outside an option", n)
			}
			last.Value += "\n" + t
			continue
		}
		if t[0] == '[' {
			end := strings.IndexByte(t, ']')
			if end < 0 {
				return nil, fmt.Errorf("line %d: %q: a section header without ]", n, t)
			}
			name := t[1:end]
			sec = c.Section(name)
			if sec == nil {
				sec = &Section{Name: name, Line: n}
				c.Sections = append(c.Sections, sec)
			}
			last = nil
			continue
		}
		if sec == nil {
			return nil, fmt.Errorf("line %d: an option before the first [section]", n)
		}
		i := strings.IndexAny(t, "=:")
		if i <= 0 {
			return nil, fmt.Errorf("line %d: %q is neither \"name = value\" nor a [section]", n, t)
		}
		name := strings.ToLower(strings.TrimSpace(t[:i])) // RawConfigParser.optionxform
		value := strings.TrimSpace(t[i+1:])
		// Python 2's parser strips a " ;" comment after a value.
		if j := strings.Index(value, " ;"); j >= 0 {
			value = strings.TrimSpace(value[:j])
		}
		if o := sec.option(name); o != nil {
			o.Value, o.Line = value, n // the last one wins, as in Python 2
			last = o
			continue
		}
		last = &Option{Name: name, Value: value, Line: n}
		sec.Options = append(sec.Options, last)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return c, nil
}

// Section returns the section called name, or nil.
func (c *Conf) Section(name string) *Section {
	for _, s := range c.Sections {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func (s *Section) option(name string) *Option {
	for _, o := range s.Options {
		if o.Name == name {
			return o
		}
	}
	return nil
}

// Get returns the option name of section sec, or nil.
func (c *Conf) Get(sec, name string) *Option {
	if s := c.Section(sec); s != nil {
		return s.option(name)
	}
	return nil
}

// TranslateOptions says what Translate needs from outside the file.
type TranslateOptions struct {
	// Resolve turns a key ID of [enc_keymap] or [enc_domain_keymap] (8
	// or 16 hex digits, or a fingerprint) into the fingerprint of the one
	// key of the store it names; an error (not found, ambiguous) is
	// reported and the entry left out.
	Resolve func(id string) (string, error)
	// StoreDatabase, when not "", is written as [store] database: the
	// store the keys were imported into.
	StoreDatabase string
}

// Translation is a lacre.toml written for a gpg-mailgate.conf.
type Translation struct {
	// TOML is the file, with a comment on every gpg-mailgate option.
	TOML string
	// Problems are entries that could not be translated and need the
	// operator (an unknown key ID, an ambiguous one): the file is
	// usable, but the command fails so that scripts notice.
	Problems []string
}

// reasons for the options that have no lacre-milter equivalent.
const (
	whyDecrypt = "lacre-milter never holds private keys and never decrypts: a gateway that decrypts holds everyone's private keys"
	whyRelay   = "a milter does not re-inject mail; Postfix delivers it. Remove the re-injection service (127.0.0.1:10028 in master.cf) once the milter runs"
	whyLog     = "lacre-milter logs to standard error (journald under systemd), one line per message"
	whyCron    = "there is no cron job: a key is active once its owner follows the confirmation link of \"lacre-milter web\", which always mails one"
	whyTmpl    = "gpg-mailgate's Markdown templates do not apply; [web] templates takes HTML and text templates (see web/templates/)"
)

type translator struct {
	c        *Conf
	opt      TranslateOptions
	problems []string
	notes    []string               // "# [section] option = value: reason" lines for the unmapped part
	set      map[string]string      // "table.key" → TOML value
	comments map[string]string      // "table.key" → comment above it
	static   map[string][][2]string // "addresses", "domains", "formats" → entries
}

// Translate writes a lacre.toml for c.
func Translate(c *Conf, opt TranslateOptions) *Translation {
	t := &translator{c: c, opt: opt, set: map[string]string{}, comments: map[string]string{}, static: map[string][][2]string{}}
	handled := map[string]bool{}
	handle := func(sec, name string, f func(o *Option)) {
		handled[sec+"."+name] = true
		if o := c.Get(sec, name); o != nil {
			f(o)
		}
	}
	src := func(sec string, o *Option) string {
		return fmt.Sprintf("[%s] %s = %s (line %d)", sec, o.Name, oneLine(o.Value), o.Line)
	}

	handle("default", "add_header", func(o *Option) {
		if yes(o) {
			t.put("milter.trace_header", tomlString("X-Lacre"), src("default", o)+": lacre-milter adds \"X-Lacre: encrypted\" where gpg-mailgate added \"X-GPG-Mailgate: Encrypted by GPG Mailgate\"; update filters that match the old header")
		} else {
			t.put("milter.trace_header", tomlString(""), src("default", o)+notYes(o))
		}
	})
	handle("default", "enc_keymap_only", func(o *Option) {
		if yes(o) {
			t.note(src("default", o), "not mapped: lacre-milter always encrypts to an address's own keys in the store, and \"import gnupg\" binds every key of the GnuPG home to its addresses, so more mail is encrypted than before, never less. To keep gpg-mailgate's behaviour, import only the keys [enc_keymap] names")
		} else {
			t.note(src("default", o), "mapped: as in lacre-milter, an address's own keys are used"+notYes(o))
		}
	})
	for _, name := range []string{"dec_keymap_only", "failsave_dec", "no_inline_dec", "dec_regex"} {
		handle("default", name, func(o *Option) { t.note(src("default", o), "not mapped: "+whyDecrypt) })
	}
	handled["default.mime_conversion"] = true
	if o := c.Get("default", "mime_conversion"); o != nil && yes(o) {
		t.put("encryption.pgp_format", tomlString("pgp-mime"), src("default", o)+": PGP/MIME (RFC 3156), lacre-milter's default")
	} else if o != nil {
		t.put("encryption.pgp_format", tomlString("pgp-inline"), src("default", o)+notYes(o)+": gpg-mailgate wrote PGP/inline, so recipients keep getting it. \"pgp-mime\" protects more (attachments' names and the MIME structure): switch when their clients read it, or per address with [static.formats] or \"lacre-milter keys set ADDRESS format pgp-mime\"")
	} else {
		// Not set: gpg-mailgate wrote PGP/inline then, but nobody chose
		// it; lacre-milter's default, PGP/MIME, protects more (as for
		// mail_case_insensitive, the stronger behaviour, explained).
		t.note("[default] mime_conversion (not set)", "not mapped: gpg-mailgate wrote PGP/inline when it was not \"yes\", lacre-milter writes PGP/MIME by default, which protects more (attachments' names and the MIME structure) and every OpenPGP client reads. For recipients whose client reads only PGP/inline, set [static.formats] or \"lacre-milter keys set ADDRESS format pgp-inline\", or pgp_format = \"pgp-inline\" for everyone")
	}
	handle("default", "mail_case_insensitive", func(o *Option) {
		if yes(o) {
			t.put("keys.fold_local_part_case", "true", src("default", o))
		} else {
			t.put("keys.fold_local_part_case", "true", src("default", o)+notYes(o)+": gpg-mailgate compared local parts case-sensitively, so mail to Alice@ went in clear when alice@ had a key. lacre-milter folds case: the same mail is encrypted. Set false only if your mailboxes really differ by case, then run the imports again")
		}
	})
	handle("gpg", "keyhome", func(o *Option) {
		t.note(src("gpg", o), "mapped to the key store: import its keys with \"lacre-milter import gnupg "+oneLine(o.Value)+"\"")
	})
	handle("smime", "cert_path", func(o *Option) {
		t.note(src("smime", o), "mapped to the key store: import its certificates with \"lacre-milter import smime "+oneLine(o.Value)+"\"; each is checked against the address of its file name, which gpg-mailgate never did. As in gpg-mailgate, an address with an OpenPGP key and a certificate gets OpenPGP, unless its format is set to smime")
	})
	handle("mailregister", "webpanel_url", func(o *Option) {
		if u, err := url.Parse(o.Value); err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" {
			t.put("web.base_url", tomlString(o.Value), src("mailregister", o)+": the public URL of \"lacre-milter web\", which replaces gpg-mailgate-web; change it if the new service lives elsewhere")
		} else {
			t.note(src("mailregister", o), "not mapped: not an http(s) URL")
		}
	})
	handle("mailregister", "register_email", func(o *Option) {
		t.note(src("mailregister", o), "not mapped: lacre-milter has no mail registration handler; users register at \"lacre-milter web\"")
	})
	handle("mailregister", "mail_templates", func(o *Option) { t.note(src("mailregister", o), "not mapped: "+whyTmpl) })
	handle("cron", "notification_email", func(o *Option) {
		if strings.Contains(o.Value, "@") && !strings.ContainsAny(o.Value, " \t\n\"") {
			t.put("web.from", tomlString(o.Value), src("cron", o)+": the sender of the confirmation mail")
		} else {
			t.note(src("cron", o), "not mapped: not an address")
		}
	})
	handle("cron", "send_email", func(o *Option) { t.note(src("cron", o), "not mapped: "+whyCron) })
	handle("cron", "mail_templates", func(o *Option) { t.note(src("cron", o), "not mapped: "+whyTmpl) })
	handle("logging", "file", func(o *Option) { t.note(src("logging", o), "not mapped: "+whyLog) })
	handle("logging", "verbose", func(o *Option) {
		if yes(o) {
			t.put("log.level", tomlString("debug"), src("logging", o))
		} else {
			t.put("log.level", tomlString("info"), src("logging", o)+notYes(o))
		}
	})
	for _, name := range []string{"host", "port", "starttls"} {
		handle("relay", name, func(o *Option) { t.note(src("relay", o), "not mapped: "+whyRelay) })
	}
	handle("relay", "enc_port", func(o *Option) {
		host := "127.0.0.1"
		if h := c.Get("relay", "host"); h != nil && h.Value != "" {
			host = h.Value
		}
		if addr := net.JoinHostPort(host, o.Value); validPort(o.Value) {
			t.put("web.smtp.addr", tomlString(addr), src("relay", o)+": where confirmation mail is handed to Postfix")
		} else {
			t.note(src("relay", o), "not mapped: not a port number")
		}
	})
	for _, name := range []string{"enabled", "name", "host", "username", "password"} {
		handle("database", name, func(o *Option) {
			v := oneLine(o.Value)
			if name == "password" {
				v = "(not shown)"
			}
			t.note(fmt.Sprintf("[database] %s = %s (line %d)", o.Name, v, o.Line), "mapped to the key store: import the registrations with \"lacre-milter import gpgmw "+t.dsn()+"\"")
		})
	}
	t.keymap("enc_keymap", "addresses", handled)
	t.keymap("enc_domain_keymap", "domains", handled)
	if s := c.Section("dec_keymap"); s != nil {
		handled["dec_keymap"] = true
		for _, o := range s.Options {
			t.note(src("dec_keymap", o), "not mapped: "+whyDecrypt)
		}
	}
	if s := c.Section("pgp_style"); s != nil {
		handled["pgp_style"] = true
		for _, o := range s.Options {
			t.pgpStyle(o, src("pgp_style", o))
		}
	}
	for _, s := range c.Sections {
		if handled[s.Name] {
			continue
		}
		for _, o := range s.Options {
			if !handled[s.Name+"."+o.Name] {
				t.note(src(s.Name, o), "not mapped: not an option of gpg-mailgate's sample configuration")
			}
		}
	}
	return &Translation{TOML: t.write(), Problems: t.problems}
}

// pgpStyle translates one entry of [pgp_style] into [static.formats].
// gpg-mailgate knew "mime" and "inline" (compared as written) and used
// [default] mime_conversion for anything else, as lacre-milter uses
// pgp_format for an address without an entry.
func (t *translator) pgpStyle(o *Option, where string) {
	var f string
	switch o.Value {
	case "mime":
		f = "pgp-mime"
	case "inline":
		f = "pgp-inline"
	default:
		t.note(where, fmt.Sprintf("not mapped: gpg-mailgate did not know the style %q and used [default] mime_conversion, as lacre-milter uses pgp_format", o.Value))
		return
	}
	if !strings.Contains(o.Name, "@") {
		t.note(where, "not mapped: not an address, so gpg-mailgate never matched it to a recipient")
		return
	}
	t.static["formats"] = append(t.static["formats"], [2]string{o.Name, tomlString(f)})
	t.comments["static.formats."+o.Name] = where
}

func (t *translator) dsn() string {
	get := func(name, def string) string {
		if o := t.c.Get("database", name); o != nil && o.Value != "" {
			return o.Value
		}
		return def
	}
	return fmt.Sprintf("mysql://%s:PASSWORD@%s:3306/%s", url.PathEscape(get("username", "gpgmw")), get("host", "localhost"), url.PathEscape(get("name", "gpgmw")))
}

// keymap translates [enc_keymap] or [enc_domain_keymap] into [static.to].
func (t *translator) keymap(sec, to string, handled map[string]bool) {
	s := t.c.Section(sec)
	if s == nil {
		return
	}
	handled[sec] = true
	for _, o := range s.Options {
		where := fmt.Sprintf("[%s] %s = %s (line %d)", sec, o.Name, oneLine(o.Value), o.Line)
		if to == "addresses" && !strings.Contains(o.Name, "@") || to == "domains" && (o.Name == "" || strings.Contains(o.Name, "@")) {
			t.problem(where, "not mapped: %q is not %s", o.Name, map[string]string{"addresses": "an address", "domains": "a domain"}[to])
			continue
		}
		var fprs []string
		ok := true
		for _, id := range strings.Split(o.Value, ",") {
			id = strings.TrimSpace(id)
			if id == "" {
				continue
			}
			if t.opt.Resolve == nil {
				t.problem(where, "not mapped: key ID %s cannot be resolved without a key store", id)
				ok = false
				break
			}
			f, err := t.opt.Resolve(id)
			if err != nil {
				t.problem(where, "not mapped: %v", err)
				ok = false
				break
			}
			fprs = append(fprs, f)
		}
		if !ok {
			continue
		}
		if len(fprs) == 0 {
			t.problem(where, "not mapped: no key ID")
			continue
		}
		t.static[to] = append(t.static[to], [2]string{o.Name, "[" + strings.Join(quoteAll(fprs), ", ") + "]"})
		t.comments["static."+to+"."+o.Name] = where
	}
}

func (t *translator) put(key, value, comment string) {
	t.set[key] = value
	t.comments[key] = comment
}

func (t *translator) note(where, msg string) {
	t.notes = append(t.notes, where+": "+msg)
}

func (t *translator) problem(where, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	t.notes = append(t.notes, where+": "+msg)
	t.problems = append(t.problems, where+": "+strings.TrimPrefix(msg, "not mapped: "))
}

// The tables of lacre.toml in the order of lacre.toml.example.
var tomlTables = []struct{ name, keys string }{
	{"milter", "trace_header"},
	{"log", "level"},
	{"store", "database"},
	{"keys", "fold_local_part_case"},
	{"encryption", "pgp_format"},
	{"web", "base_url from"},
	{"web.smtp", "addr"},
}

func (t *translator) write() string {
	var b strings.Builder
	b.WriteString("# lacre.toml written by \"lacre-milter import config\" from a gpg-mailgate.conf.\n")
	b.WriteString("# Every option not set here has lacre-milter's default (see lacre.toml.example).\n")
	b.WriteString("# Check it with: lacre-milter -config FILE check-config\n")
	if t.opt.StoreDatabase != "" {
		t.put("store.database", tomlString(t.opt.StoreDatabase), "the key store the keys were imported into")
	}
	for _, tb := range tomlTables {
		var lines []string
		for _, k := range strings.Fields(tb.keys) {
			full := tb.name + "." + k
			v, ok := t.set[full]
			if !ok {
				continue
			}
			lines = append(lines, comment(t.comments[full])+k+" = "+v+"\n")
		}
		if len(lines) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n[%s]\n%s", tb.name, strings.Join(lines, ""))
	}
	for _, to := range []string{"addresses", "domains", "formats"} {
		entries := t.static[to]
		if len(entries) == 0 {
			continue
		}
		switch to {
		case "formats":
			b.WriteString("\n# gpg-mailgate's [pgp_style]: mime is \"pgp-mime\", inline \"pgp-inline\". A\n# format the recipient chooses (lacre-milter keys set ADDRESS format) wins.\n[static.formats]\n")
		default:
			from := map[string]string{"addresses": "enc_keymap", "domains": "enc_domain_keymap"}[to]
			fmt.Fprintf(&b, "\n# gpg-mailgate's [%s], with its key IDs resolved to the fingerprints of\n# the keys in the store (key IDs can be forged; fingerprints cannot).\n[static.%s]\n", from, to)
		}
		for _, e := range entries {
			b.WriteString(comment(t.comments["static."+to+"."+e[0]]) + tomlString(e[0]) + " = " + e[1] + "\n")
		}
	}
	if len(t.notes) > 0 {
		b.WriteString("\n# gpg-mailgate.conf options without a setting above:\n")
		for _, n := range t.notes {
			b.WriteString(comment(n))
		}
	}
	return b.String()
}

// comment turns text into "# " lines of at most about 76 columns.
func comment(text string) string {
	var b strings.Builder
	line := "#"
	for _, w := range strings.Fields(text) {
		if len(line)+1+len(w) > 76 && line != "#" {
			b.WriteString(line + "\n")
			line = "#  "
		}
		line += " " + w
	}
	b.WriteString(line + "\n")
	return b.String()
}

func yes(o *Option) bool { return o.Value == "yes" }

// notYes explains a value that gpg-mailgate read as "no" although it may
// not look like it: gpg-mailgate compares with "yes" literally.
func notYes(o *Option) string {
	if o.Value == "no" {
		return ""
	}
	return fmt.Sprintf(" (gpg-mailgate reads %q as \"no\": only \"yes\" is yes)", o.Value)
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

func validPort(s string) bool {
	if s == "" || len(s) > 5 {
		return false
	}
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
	}
	return n > 0 && n < 65536
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = tomlString(s)
	}
	return out
}

// tomlString writes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\u%04X", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

var hexID = regexp.MustCompile(`^(?:0[xX])?([0-9A-Fa-f]{8}|[0-9A-Fa-f]{16}|[0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})$`)

// ResolveKeyID finds the one key among ks that id names: a short (8 hex
// digits) or long (16) key ID of a primary key, as gpg-mailgate's keymaps
// hold them, or a fingerprint. It refuses an ID that no key or more than
// one key has.
func ResolveKeyID(id string, ks []*keys.Key) (string, error) {
	m := hexID.FindStringSubmatch(strings.TrimSpace(id))
	if m == nil {
		return "", fmt.Errorf("%q is not a key ID (8 or 16 hex digits) or a fingerprint", id)
	}
	want := strings.ToUpper(m[1])
	var found []string
	for _, k := range ks {
		kid := strings.TrimPrefix(k.KeyID(), "0x")
		var match bool
		switch len(want) {
		case 8, 16:
			match = strings.HasSuffix(kid, want)
		default:
			match = k.Fingerprint == want
		}
		if match && !contains(found, k.Fingerprint) {
			found = append(found, k.Fingerprint)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("key %s is not in the key store (import the GnuPG home first: lacre-milter import gnupg DIR)", id)
	case 1:
		return found[0], nil
	default:
		return "", fmt.Errorf("key ID %s is ambiguous: keys %s all have it; write the fingerprint of the right one in [static] by hand", id, strings.Join(found, ", "))
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
