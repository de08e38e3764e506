package aliases

import (
	"strings"
	"testing"
)

// FuzzParseAddressList: any alias value or lookup result parses without
// panicking into trimmed, non-empty members.
func FuzzParseAddressList(f *testing.F) {
	for _, s := range []string{"a@x, b@y", `"|cmd a", /f, :include:/l`, "N <a@x> (c)", `"a\"b"@x`, "<<>>,,(", `\alice`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, m := range parseAddressList(s) {
			if m == "" || m != strings.TrimSpace(m) {
				t.Fatalf("member %q of %q", m, s)
			}
		}
	})
}

// FuzzPatternTable: a regexp or pcre table either is refused or parses
// into rules that evaluate any key without panicking.
func FuzzPatternTable(f *testing.F) {
	for _, s := range []string{"/^(.*)@x$/ $1@y", "if /a/\n/b/ c\nendif", "!/a/ b", "/[[:alpha:]]/i ${1}", "/(a|ab)/U $(1)$$"} {
		f.Add(s, "a@x", true)
	}
	f.Fuzz(func(t *testing.T, table, key string, posix bool) {
		rules, err := parsePatternTable(posix, table)
		if err != nil {
			return
		}
		_, _, _ = evalPattern(rules, key)
	})
}

func FuzzSplitExtension(f *testing.F) {
	f.Add("joe+foo", "+-")
	f.Fuzz(func(t *testing.T, local, delims string) {
		user, ext, ok := splitExtension(local, delims, true, "double-bounce")
		if ok && user+ext != local {
			t.Fatalf("%q %q -> %q %q", local, delims, user, ext)
		}
		if !ok && (user != local || ext != "") {
			t.Fatalf("%q %q -> %q %q without extension", local, delims, user, ext)
		}
	})
}
