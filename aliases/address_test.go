package aliases

import (
	"slices"
	"testing"
)

func TestParseAddressList(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"a@x", []string{"a@x"}},
		{"a@x, b@y,c@z", []string{"a@x", "b@y", "c@z"}},
		{"a@x b@y", []string{"a@x", "b@y"}},
		{`"|/usr/bin/procmail -a x", /var/mail/f, :include:/etc/l`, []string{"|/usr/bin/procmail -a x", "/var/mail/f", ":include:/etc/l"}},
		{"Alice Smith <alice@x>, bob@y (Bob)", []string{"alice@x", "bob@y"}},
		{`"a b"@x`, []string{"a b@x"}},
		{" , ", nil},
	} {
		if got := parseAddressList(c.in); !slices.Equal(got, c.want) {
			t.Errorf("parseAddressList(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// split_addr(3): the first delimiter character starts the extension;
// reserved names and owner-/-request (with '-') are not split.
func TestSplitExtension(t *testing.T) {
	for _, c := range []struct {
		local, delims, user, ext string
	}{
		{"joe+foo", "+", "joe", "+foo"},
		{"joe+foo+bar", "+", "joe", "+foo+bar"},
		{"joe-foo+bar", "+-", "joe", "-foo+bar"},
		{"joe", "+", "joe", ""},
		{"+foo", "+", "+foo", ""},
		{"mailer-daemon", "-", "mailer-daemon", ""}, // reserved: never split
		{"double-bounce", "-", "double-bounce", ""},
		{"postmaster+x", "+", "postmaster", "+x"}, // only the exact name is reserved
		{"owner-list", "-", "owner-list", ""},
		{"list-request", "-", "list-request", ""},
		{"joe-x", "", "joe-x", ""},
	} {
		user, ext, _ := splitExtension(c.local, c.delims, true, "double-bounce")
		if user != c.user || ext != c.ext {
			t.Errorf("splitExtension(%q, %q) = %q %q, want %q %q", c.local, c.delims, user, ext, c.user, c.ext)
		}
	}
}
