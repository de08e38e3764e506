package web

import (
	"strings"
)

// plainMailbox refuses addresses that are not plain, deliverable mailboxes,
// before any mail is sent to them. The address is handed to the MTA as a
// recipient: whatever routing syntax it carries, the MTA may honour, and
// the confirmation would go somewhere else than the mailbox it is for.
//
//   - a source route ("@relay:user@domain", RFC 5321 §4.1.2, obsolete);
//   - "%" (the "percent hack", user%other@domain, which Postfix and Sendmail
//     may relay onward) and "!" (UUCP bang paths);
//   - quoted local parts ("a@b"@domain): legal, but never a plain mailbox
//     of ours, and the place where "@" and routing hide;
//   - non-ASCII: a UTF-8 local part needs SMTPUTF8 (RFC 6531), which the
//     service does not use (a Unicode domain is fine: it becomes A-labels);
//   - control characters and spaces anywhere;
//   - a local part over 64 octets or an address over 254 (RFC 5321
//     §4.5.3.1.1, §4.5.3.1.3).
//
// It is called on the input and on the normalised form.
func plainMailbox(addr string) error {
	bad := func(why string) error {
		return userError(400, "invalid_address", "not a plain mailbox address: %s", why)
	}
	a := strings.TrimSpace(addr)
	a = strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(a, "<"), ">"))
	for i := 0; i < len(a); i++ {
		if c := a[i]; c < 0x20 || c == 0x7f {
			return bad("it contains a control character")
		}
	}
	if strings.HasPrefix(a, "@") {
		return bad("source routes (@relay:…) are not accepted")
	}
	at := strings.LastIndexByte(a, '@')
	if at <= 0 {
		return userError(400, "invalid_address", "%q is not an e-mail address (want local@domain)", addr)
	}
	local := a[:at]
	if strings.HasPrefix(local, `"`) || strings.ContainsAny(local, `"\`) {
		return bad("quoted local parts are not accepted")
	}
	if len(local) > 64 {
		return bad("the part before the @ is longer than 64 characters")
	}
	if len(a) > 254 {
		return bad("it is longer than 254 characters")
	}
	if local[0] == '.' || local[len(local)-1] == '.' || strings.Contains(local, "..") {
		return bad("misplaced dot before the @")
	}
	for _, r := range local {
		switch {
		case r >= 0x80:
			return bad("non-ASCII characters before the @ are not accepted")
		case r == '%' || r == '!':
			return bad("routing characters (% or !) are not accepted")
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune("#$&'*+-/=?^_`{|}~.", r):
		default:
			return bad("the character " + string(r) + " is not accepted before the @")
		}
	}
	return nil
}
