package keys

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Normalizer turns the many spellings of an address into the one used as
// the store's key, so that "Alice@EXAMPLE.org" and "alice@example.org"
// find the same key. The zero value lower-cases and IDNA-encodes the
// domain only: local parts are compared as written, with no subaddress
// fallback.
type Normalizer struct {
	// FoldLocalPartCase lower-cases the local part. RFC 5321 §2.4 lets a
	// server treat local parts case-sensitively, but virtually none does.
	FoldLocalPartCase bool
	// SubaddressSeparator, when not "", makes "user+tag@" fall back to "user@".
	SubaddressSeparator string
}

// idnaProfile converts U-labels to A-labels (RFC 5891) the way resolvers
// do, so a domain written in Unicode and in punycode is the same key.
var idnaProfile = idna.New(idna.MapForLookup(), idna.Transitional(false), idna.StrictDomainName(false), idna.VerifyDNSLength(true))

// Normalize returns the canonical form of addr: angle brackets and
// surrounding space removed, domain lower-cased and IDNA-encoded, local
// part folded when configured. It does not strip a subaddress; see Candidates.
func (n Normalizer) Normalize(addr string) (string, error) {
	bad := func(format string, args ...any) (string, error) {
		return "", &AddressError{fmt.Sprintf(format, args...)}
	}
	a := strings.TrimSpace(addr)
	a = strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(a, "<"), ">"))
	// A source route ("@relay1,@relay2:user@domain", RFC 5321 §4.1.2) is
	// obsolete and ignored by MTAs when delivering: drop it (all of it,
	// also when written with colons instead of commas).
	for strings.HasPrefix(a, "@") {
		i := strings.IndexByte(a, ':')
		if i < 0 {
			break
		}
		a = a[i+1:]
	}
	at := strings.LastIndexByte(a, '@')
	if at <= 0 || at == len(a)-1 {
		return bad("%q is not an e-mail address (want local@domain)", addr)
	}
	local, domain := a[:at], a[at+1:]
	// Spaces, controls, quotes and brackets may only appear inside a
	// properly quoted local part (RFC 5321 §4.1.2); never in the domain.
	quoted := len(local) >= 2 && local[0] == '"' && local[len(local)-1] == '"'
	if !utf8.ValidString(a) || strings.ContainsFunc(domain, forbidden) || (!quoted && strings.ContainsFunc(local, forbidden)) {
		return bad("%q is not an e-mail address (contains a space, control character, quote or bracket)", addr)
	}
	if strings.HasPrefix(domain, "[") {
		// An address literal (RFC 5321 §4.1.3) is not a name: keep it as is.
		domain = strings.ToLower(domain)
	} else {
		// IDNA mapping (UTS 46) may produce dots and other ASCII from
		// Unicode (U+3002 is a dot, U+FF20 an "@"): check what comes out,
		// so that normalising a normalised address changes nothing.
		d, err := idnaProfile.ToASCII(domain)
		if err != nil {
			return bad("%q: domain %q is not valid: %v", addr, domain, err)
		}
		d = strings.ToLower(strings.TrimRight(d, "."))
		if d == "" {
			return bad("%q: the domain is empty", addr)
		}
		for i := 0; i < len(d); i++ {
			c := d[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
				return bad("%q: domain %q is not a host name", addr, domain)
			}
		}
		domain = d
	}
	if quoted {
		// "alice"@example.org and "a\lice"@example.org are
		// alice@example.org: undo quoted pairs and drop quotes that are
		// not needed (RFC 5321 §4.1.2), so all find the same key.
		inner, ok := unquote(local[1 : len(local)-1])
		if !ok {
			return bad("%q is not an e-mail address (a broken quoted local part)", addr)
		}
		if isDotAtom(inner) {
			local = inner
		} else {
			local = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(inner) + `"`
		}
	} else if !isDotAtom(local) {
		// "alice(c)", "alice\", "a,b": not an RFC 5321 Dot-string. MTAs
		// parse such spellings their own way (Postfix strips the comment
		// and delivers to alice), so guessing here could say "no key" for
		// a keyed mailbox: refuse instead.
		return bad("%q is not an e-mail address (the local part is neither a dot-atom nor quoted)", addr)
	}
	if n.FoldLocalPartCase {
		local = strings.ToLower(local)
	}
	return local + "@" + domain, nil
}

// unquote undoes the quoted pairs of a quoted string's content (RFC 5321
// §4.1.2 QcontentSMTP); ok is false for a lone backslash at the end or an
// unescaped quote.
func unquote(s string) (string, bool) {
	if !strings.ContainsAny(s, `\"`) {
		return s, true
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if i+1 == len(s) {
				return "", false
			}
			i++
		case '"':
			return "", false
		}
		b.WriteByte(s[i])
	}
	return b.String(), true
}

// forbidden reports characters that cannot appear unquoted in an address.
func forbidden(r rune) bool {
	return unicode.IsSpace(r) || unicode.IsControl(r) || r == '<' || r == '>' || r == '"' || r == utf8.RuneError
}

// isDotAtom reports whether s is an RFC 5322 §3.2.3 dot-atom, i.e. a local
// part that needs no quotes.
func isDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for _, r := range s {
		if forbidden(r) {
			return false
		}
		if r < 0x80 && !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			strings.ContainsRune("!#$%&'*+-/=?^_`{|}~.", r)) {
			return false
		}
	}
	return true
}

// AddressError says an address could not be normalised. Such an address
// (e.g. "<postmaster>" without a domain, which RFC 5321 §4.5.1 allows)
// can have no key: nothing can be registered for it.
type AddressError struct{ msg string }

func (e *AddressError) Error() string { return e.msg }

// Candidates returns the normalised forms of addr to look up, most specific
// first: the address itself, then, for "user+tag@domain", "user@domain".
func (n Normalizer) Candidates(addr string) ([]string, error) {
	a, err := n.Normalize(addr)
	if err != nil {
		return nil, err
	}
	out := []string{a}
	if sep := n.SubaddressSeparator; sep != "" {
		at := strings.LastIndexByte(a, '@')
		local := a[:at]
		if i := strings.Index(local, sep); i > 0 && !strings.HasPrefix(local, `"`) {
			out = append(out, local[:i]+a[at:])
		}
	}
	return out, nil
}

// NormalizeDomain returns the canonical form of a domain, as Normalize
// gives it inside an address (lower case, IDNA A-labels, no final dot).
func (n Normalizer) NormalizeDomain(domain string) (string, error) {
	a, err := n.Normalize("x@" + domain)
	if err != nil || strings.Contains(domain, "@") {
		return "", &AddressError{fmt.Sprintf("%q is not a domain", domain)}
	}
	return Domain(a), nil
}

// Domain returns the domain part of a normalised address.
func Domain(normalized string) string {
	return normalized[strings.LastIndexByte(normalized, '@')+1:]
}
