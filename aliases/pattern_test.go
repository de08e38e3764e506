package aliases

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// patternCorpus: regexp_table(5) and pcre_table(5) tables within the
// in-process subset, and keys; each key's answer must equal postmap -q's.
var patternCorpus = []struct {
	typ, table string
}{
	{"regexp", `# comment
/^re-(.*)@example\.com$/	$1@example.net
/^(.*)\.(.*)@dots\.example$/	${2}-$(1)@example.net
/^(a|ab)(c|bcd)(d*)@amb\.example$/	$1-$2-$3@example.net
/^alt-(a|ab)/	alt-$1@example.net
!/@keep\.example$/	notkeep@example.net
`},
	{"regexp", `if /@cond\.example$/
/^x/	x-in@example.net
endif
/^x/	x-out@example.net
/^CaSe@sensitive\.example$/i	case@example.net
/^money@x$/	a$$b@example.net
/^[[:digit:]]+@num\.example$/	number@example.net
/^[^@]+@list\.example$/	one@example.net,
	two@example.net
`},
	{"pcre", `/^pc\.(\w+)@example\.com$/	$1@example.net
/^(?:foo|bar)\d+@p\.example$/	fb@example.net
/^(.+?)(\+.*)?@lazy\.example$/	$1@example.net
/^Upper@case\.example$/i	upper@example.net
if !/@skip\.example$/
/^y/	y@example.net
endif
/^U(.*)@u\.example$/U	u-$1@example.net
`},
}

var patternKeys = []string{
	"re-zoe@example.com", "RE-Zoe@Example.COM", "re-@example.com",
	"a.b.c@dots.example", "abcd@amb.example", "abd@amb.example",
	"alt-ab@x", "nobody@keep.example", "somebody@elsewhere.example",
	"xray@cond.example", "xray@other.example", "case@sensitive.example", "CaSe@sensitive.example",
	"money@x", "12345@num.example", "12a@num.example", "alice@list.example",
	"pc.yan@example.com", "foo12@p.example", "bar@p.example", "joe+x@lazy.example", "joe@lazy.example",
	"upper@case.example", "UPPER@CASE.EXAMPLE", "yes@skip.example", "yes@x.example",
	"Uabc@u.example", "", "x",
}

func TestPatternAgainstPostmap(t *testing.T) {
	needPostfix(t)
	dir := t.TempDir()
	compared := 0
	var skipped []string
	defer func() {
		t.Logf("%d comparisons, %d left to postmap: %q", compared, len(skipped), skipped)
		if len(skipped) > compared/10 {
			t.Errorf("too many keys outside the subset")
		}
	}()
	for i, c := range patternCorpus {
		e := &pfEnv{t: t, dir: dir}
		name := c.typ + string(rune('a'+i))
		e.write(name, c.table)
		rules, err := parsePatternTable(c.typ == "regexp", c.table)
		if err != nil {
			t.Fatalf("%s table %d outside the subset: %v", c.typ, i, err)
		}
		for _, k := range patternKeys {
			if k == "" {
				continue
			}
			out, err := exec.Command(findBin("", "postmap"), "-q", k, c.typ+":"+e.path(name)).Output()
			want, wantOK := strings.TrimSpace(string(out)), err == nil
			got, ok, err := evalPattern(rules, k)
			compared++
			if errors.Is(err, errUnsupported) {
				skipped = append(skipped, k) // asked through postmap in production
				continue
			}
			if err != nil || ok != wantOK || got != want {
				t.Errorf("%s table %d, key %q: in process %q %v %v; postmap %q %v", c.typ, i, k, got, ok, err, want, wantOK)
			}
		}
	}
}

// Tables outside the subset are recognised (and then asked through
// postmap), never evaluated differently.
func TestPatternUnsupported(t *testing.T) {
	for _, c := range []struct {
		posix bool
		table string
	}{
		{true, `/[\.]x/ y`},       // backslash in brackets: literal in POSIX
		{true, `/\w+@x/ y`},       // GNU extension, not POSIX ERE
		{true, `/a/x y`},          // basic regular expressions
		{true, `|a| y`},           // other delimiter
		{true, `/(a)\1/ y`},       // back-reference
		{false, `/(?<=a)b/ y`},    // look-behind
		{false, `/a++/ y`},        // possessive
		{false, `/a/x y`},         // extended flag
		{false, `/(a)/ $2`},       // no such group
		{false, `/a/ $name`},      // not a number
		{true, "if /a/\n/b/ c\n"}, // if without endif
		{false, `/é/ y`},          // non-ASCII
		{false, `/a\Z/ y`},        // pcre-only escape
	} {
		if _, err := parsePatternTable(c.posix, c.table); !errors.Is(err, errUnsupported) {
			t.Errorf("parsePatternTable(%q) = %v, want errUnsupported", c.table, err)
		}
	}
}

// A table outside the subset is answered by postmap, and Tables() says so.
func TestPatternFallback(t *testing.T) {
	e := newEnv(t, "")
	e.table("", "regexp", "virtual.re", "/^rx@example\\.com$/\trx-target@example.net\n/[\\.]zz@example\\.com$/\tzz@example.net\n")
	p := e.open(PostfixOptions{})
	got, err := p.Expand(context.Background(), "rx@example.com")
	if err != nil || len(got.Targets) != 1 || got.Targets[0].Addr != "rx-target@example.net" {
		t.Fatalf("fallback: %+v %v", got, err)
	}
	for _, tb := range p.Tables() {
		if strings.HasPrefix(tb.Name, "regexp:") && (tb.Method != MethodQuery || !strings.Contains(tb.Note, "bracket")) {
			t.Errorf("Tables(): %+v", tb)
		}
		if strings.HasPrefix(tb.Name, "pcre:") && tb.Method != MethodPattern {
			t.Errorf("Tables(): %+v", tb)
		}
	}
}
