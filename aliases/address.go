package aliases

import (
	"strings"
)

// splitAt splits addr at its last '@' (Postfix's split_at_right): the
// local part and the domain without '@'. hasAt is false for a bare local
// part.
func splitAt(addr string) (local, domain string, hasAt bool) {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return addr, "", false
	}
	return addr[:i], addr[i+1:], true
}

// splitExtension is Postfix's split_addr(3): it splits a local part at the
// first character of delims (recipient_delimiter may hold several). It does
// not split postmaster, mailer-daemon or the double-bounce name, nor, when
// '-' is a delimiter and owner_request_special is on, owner-* and
// *-request; nor when the user part would be empty. ext includes the
// delimiter; ok is false when there is no extension.
func splitExtension(local, delims string, ownerRequestSpecial bool, doubleBounce string) (user, ext string, ok bool) {
	if delims == "" {
		return local, "", false
	}
	if strings.EqualFold(local, "postmaster") || strings.EqualFold(local, "mailer-daemon") ||
		(doubleBounce != "" && strings.EqualFold(local, doubleBounce)) {
		return local, "", false
	}
	if strings.IndexByte(delims, '-') >= 0 && ownerRequestSpecial {
		if len(local) >= 6 && strings.EqualFold(local[:6], "owner-") {
			return local, "", false
		}
		if len(local) > 8 && strings.EqualFold(local[len(local)-8:], "-request") {
			return local, "", false
		}
	}
	i := strings.IndexAny(local, delims)
	if i <= 0 {
		return local, "", false
	}
	return local[:i], local[i:], true
}

// stripExtension is strip_addr(3): addr (user+ext@domain or user+ext)
// without its extension, and the extension. ok is false when there is none.
func stripExtension(addr, delims string, ownerRequestSpecial bool, doubleBounce string) (bare, ext string, ok bool) {
	local, domain, hasAt := splitAt(addr)
	user, ext, ok := splitExtension(local, delims, ownerRequestSpecial, doubleBounce)
	if !ok {
		return addr, "", false
	}
	if hasAt {
		return user + "@" + domain, ext, true
	}
	return user, ext, true
}

// addExtension inserts ext before the '@' of addr (mail_addr_crunch(3)
// propagating an unmatched extension), or appends it to a bare local part.
func addExtension(addr, ext string) string {
	if ext == "" {
		return addr
	}
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return addr[:i] + ext + addr[i:]
	}
	return addr + ext
}

// parseAddressList splits a lookup result or an alias value into its
// members the way Postfix's tok822 parser groups an address list: members
// are separated by commas outside quotes, angle brackets and comments;
// "Name <addr>" yields addr; (comments) are dropped; a member in double
// quotes keeps its content (aliases(5) writes "|command with args" so).
// Whitespace also separates members when a member has no phrase (Postfix
// accepts "a@x b@y" as two addresses).
func parseAddressList(s string) []string {
	var out []string
	var cur strings.Builder
	var inQuote bool
	var depthComment, depthAngle int
	var angle strings.Builder
	hadAngle := false
	// words are the whitespace-separated pieces of the current member
	// outside quotes; a quoted piece is one word.
	var words []string
	flushWord := func() {
		if cur.Len() > 0 {
			words = append(words, cur.String())
			cur.Reset()
		}
	}
	flushMember := func() {
		flushWord()
		if hadAngle {
			if a := strings.TrimSpace(angle.String()); a != "" {
				out = append(out, a)
			}
		} else {
			out = append(out, words...)
		}
		words = words[:0]
		angle.Reset()
		hadAngle = false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inQuote:
			if c == '\\' && i+1 < len(s) {
				i++
				cur.WriteByte(s[i])
				continue
			}
			if c == '"' {
				inQuote = false
				continue
			}
			if depthAngle > 0 {
				angle.WriteByte(c)
			} else {
				cur.WriteByte(c)
			}
		case depthComment > 0:
			if c == '\\' && i+1 < len(s) {
				i++
			} else if c == '(' {
				depthComment++
			} else if c == ')' {
				depthComment--
			}
		case c == '"':
			inQuote = true
		case c == '(':
			depthComment++
		case c == '<':
			depthAngle++
			hadAngle = true
		case c == '>':
			if depthAngle > 0 {
				depthAngle--
			}
		case depthAngle > 0:
			if c != ' ' && c != '\t' {
				angle.WriteByte(c)
			}
		case c == ',':
			flushMember()
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			flushWord()
		default:
			cur.WriteByte(c)
		}
	}
	flushMember()
	res := out[:0]
	for _, a := range out {
		if a = strings.TrimSpace(a); a != "" {
			res = append(res, a)
		}
	}
	return res
}
