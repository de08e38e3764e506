package aliases

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// needPostfix skips (fails under CI) when the Postfix tools, or the table
// types the tests build, are missing.
func needPostfix(t testing.TB) {
	t.Helper()
	for _, bin := range []string{"postconf", "postmap", "postalias"} {
		if _, err := exec.LookPath(bin); err != nil {
			if _, err := os.Stat("/usr/sbin/" + bin); err != nil {
				missing(t, bin+" not installed")
			}
		}
	}
	out, err := exec.Command(findBin("", "postconf"), "-m").Output()
	if err != nil {
		missing(t, "postconf -m: "+err.Error())
	}
	for _, typ := range []string{"lmdb", "hash", "regexp", "pcre"} {
		if !slices.Contains(strings.Fields(string(out)), typ) {
			missing(t, "postfix map type "+typ+" missing (apt-get install postfix-lmdb postfix-pcre)")
		}
	}
}

func missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// pfEnv is a private Postfix configuration directory with its tables.
type pfEnv struct {
	t   testing.TB
	dir string
}

func (e *pfEnv) path(name string) string { return filepath.Join(e.dir, name) }

func (e *pfEnv) write(name, content string) {
	e.t.Helper()
	if err := os.WriteFile(e.path(name), []byte(content), 0o644); err != nil {
		e.t.Fatal(err)
	}
	if name == "main.cf" {
		// Postfix programs wait until a freshly written main.cf has
		// settled (about 2s): make it look older.
		old := time.Now().Add(-time.Minute)
		if err := os.Chtimes(e.path(name), old, old); err != nil {
			e.t.Fatal(err)
		}
	}
}

// table writes a source file and builds it with postmap (or postalias).
func (e *pfEnv) table(tool, typ, name, content string) {
	e.t.Helper()
	e.write(name, content)
	if tool == "" {
		return // regexp, pcre: no build step
	}
	out, err := exec.Command(findBin("", tool), "-c", e.dir, typ+":"+e.path(name)).CombinedOutput()
	if err != nil {
		e.t.Fatalf("%s %s:%s: %v\n%s", tool, typ, name, err, out)
	}
}

const testMaster = `smtp      inet  n       -       n       -       -       smtpd
127.0.0.1:10025 inet n  -       n       -       -       smtpd
  -o receive_override_options=no_address_mappings
altsmtp   inet  n       -       n       -       -       smtpd
  -o cleanup_service_name=altcleanup
cleanup   unix  n       -       n       -       0       cleanup
altcleanup unix n       -       n       -       0       cleanup
  -o virtual_alias_maps=inline:{{info@example.com=alt@example.net}}
local     unix  -       n       n       -       -       local
`

// newEnv writes main.cf (extra lines appended), master.cf and the test
// tables, modelled on the examples of virtual(5), canonical(5) and
// aliases(5).
func newEnv(t testing.TB, extra string) *pfEnv {
	t.Helper()
	needPostfix(t)
	e := &pfEnv{t: t, dir: t.TempDir()}
	d := e.dir
	e.write("master.cf", testMaster)
	e.write("main.cf", `compatibility_level = 3.6
myhostname = mx.example.org
mydomain = example.org
myorigin = example.org
mydestination = example.org, localhost, order.example, .sub.example.org
inet_interfaces = loopback-only
proxy_interfaces =
recipient_delimiter = +
propagate_unmatched_extensions = canonical, virtual
virtual_alias_expansion_limit = 20
recipient_canonical_maps = hash:`+d+`/rcanon
canonical_maps = hash:`+d+`/canon
virtual_alias_maps = lmdb:`+d+`/virtual, regexp:`+d+`/virtual.re, pcre:`+d+`/virtual.pcre
alias_maps = hash:`+d+`/aliases
alias_database = hash:`+d+`/aliases
`+extra)
	e.table("postmap", "hash", "rcanon", `Old.Name@example.com	new.name@example.com
new.name@example.com	newest@example.net
`)
	e.table("postmap", "hash", "canon", `cn@example.com	cn-target@example.com
`)
	var big []string
	for i := range 25 {
		big = append(big, fmt.Sprintf("m%d@example.net", i))
	}
	e.table("postmap", "lmdb", "virtual", `info@example.com	alice@example.net
sales@example.com	bob@example.net, carol@example.net
  dave@example.net
Mixed@Example.COM	mixed-target@example.net
chain1@example.com	chain2@example.com
chain2@example.com	chain3@example.com
chain3@example.com	dave@example.net
loopa@example.com	loopb@example.com
loopb@example.com	loopa@example.com
self@example.com	self@example.com, eve@example.net
joe@example.com	joe.real@example.net
joe+special@example.com	special@example.net
webmaster	web@example.net
fwd@example.com	@example.net
known@catch.example	known-target@example.net
@catch.example	catchall@example.net
big@example.com	`+strings.Join(big, ", ")+`
cn-target@example.com	frank@example.net
localalias@example.com	team@example.org
o1+ext@order.example	t1@example.net
o1@order.example	wrong1@example.net
o2@order.example	t2@example.net
o2+ext	wrong2@example.net
o3+ext	t3@example.net
o3	wrong3@example.net
o4	t4@example.net
@order.example	t5@example.net
`)
	e.table("", "regexp", "virtual.re", `/^re-(.*)@example\.com$/	$1@example.net
/^rx@example\.com$/	rx-target@example.net
`)
	e.table("", "pcre", "virtual.pcre", `/^pc\.(\w+)@example\.com$/	$1@example.net
`)
	e.table("postalias", "hash", "aliases", `root: alice
team: alice, bob@example.net, "|/usr/bin/procmail -a team", /var/mail/archive, :include:/etc/postfix/team.list
owner-team: alice
selfie: selfie, gina@example.net
aloop1: aloop2
aloop2: aloop1
deep1: deep2
deep2: deep3
deep3: henry@example.net
tagged: ivan
`)
	return e
}

func (e *pfEnv) open(opts PostfixOptions) *Postfix {
	e.t.Helper()
	opts.ConfigDir = e.dir
	p, err := NewPostfix(context.Background(), opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

func mb(addrs ...string) []Target {
	var out []Target
	for _, a := range addrs {
		out = append(out, Target{Addr: a, Kind: Mailbox})
	}
	return out
}

type expCase struct {
	in   string
	want []Target // nil with err: error expected
	err  error    // errors.Is target
	same bool     // unexpanded: Targets = [in], Expanded false
}

func runCases(t *testing.T, p *Postfix, cases []expCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			got, err := p.Expand(context.Background(), c.in)
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("Expand(%q) = %+v, %v; want error %v", c.in, got, err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Expand(%q): %v", c.in, err)
			}
			if got.Input != c.in {
				t.Errorf("Input = %q", got.Input)
			}
			if c.same {
				if got.Expanded || !slices.Equal(got.Targets, mb(c.in)) {
					t.Errorf("Expand(%q) = %+v; want unexpanded", c.in, got)
				}
				return
			}
			if !got.Expanded || !slices.Equal(got.Targets, c.want) {
				t.Errorf("Expand(%q) =\n  %+v (expanded %v)\nwant\n  %+v", c.in, got.Targets, got.Expanded, c.want)
			}
		})
	}
}

// TestExpandPostfixSemantics is the table of cases from virtual(5),
// canonical(5) and aliases(5), against tables built by postmap/postalias.
func TestExpandPostfixSemantics(t *testing.T) {
	e := newEnv(t, "")
	t.Run("in-process", func(t *testing.T) { testSemantics(t, e.open(PostfixOptions{})) })
	t.Run("postmap", func(t *testing.T) { testSemantics(t, e.open(PostfixOptions{NoPatternInProcess: true})) })
}

func testSemantics(t *testing.T, p *Postfix) {
	cmd := Target{Addr: "|/usr/bin/procmail -a team", Kind: Command}
	file := Target{Addr: "/var/mail/archive", Kind: File}
	incl := Target{Addr: ":include:/etc/postfix/team.list", Kind: Include}
	runCases(t, p, []expCase{
		// virtual(5): user@domain, multi-address results (continued line).
		{in: "info@example.com", want: mb("alice@example.net")},
		{in: "sales@example.com", want: mb("bob@example.net", "carol@example.net", "dave@example.net")},
		// Keys of fixed tables are folded to lower case (postmap folds
		// when building, cleanup when looking up).
		{in: "INFO@Example.Com", want: mb("alice@example.net")},
		{in: "mixed@example.com", want: mb("mixed-target@example.net")},
		// Chains three deep; a loop hits virtual_alias_recursion_limit
		// (Postfix defers: 4.6.0); an address that maps to itself stays.
		{in: "chain1@example.com", want: mb("dave@example.net")},
		{in: "loopa@example.com", err: ErrLimit},
		{in: "self@example.com", want: mb("self@example.com", "eve@example.net")},
		// virtual_alias_expansion_limit (20 here): 25 addresses.
		{in: "big@example.com", err: ErrLimit},
		// Extension: user+ext@domain, then user@domain with the unmatched
		// extension propagated (propagate_unmatched_extensions=virtual).
		{in: "joe+special@example.com", want: mb("special@example.net")},
		{in: "joe+foo@example.com", want: mb("joe.real+foo@example.net")},
		// The search order with an extension in a local domain:
		// user+ext@domain, user@domain, user+ext, user, @domain.
		{in: "o1+ext@order.example", want: mb("t1@example.net")},
		{in: "o2+ext@order.example", want: mb("t2+ext@example.net")},
		{in: "o3+ext@order.example", want: mb("t3@example.net")},
		{in: "o4+ext@order.example", want: mb("t4+ext@example.net")},
		{in: "o5+ext@order.example", want: mb("t5@example.net")},
		// The bare user form only for local domains ($mydestination,
		// $inet_interfaces literals, $myorigin).
		{in: "webmaster@example.org", want: mb("web@example.net")},
		{in: "webmaster@[127.0.0.1]", want: mb("web@example.net")},
		{in: "webmaster@x.sub.example.org", want: mb("web@example.net")},
		{in: "webmaster@example.com", same: true},
		{in: "o4+ext@remote.example", same: true},
		// @domain catch-all, after the specific entry.
		{in: "known@catch.example", want: mb("known-target@example.net")},
		{in: "anyone@catch.example", want: mb("catchall@example.net")},
		// An @otherdomain result keeps the user.
		{in: "fwd@example.com", want: mb("fwd@example.net")},
		// regexp and pcre tables see the full address only, in its case.
		{in: "re-zoe@example.com", want: mb("zoe@example.net")},
		{in: "RX@EXAMPLE.COM", want: mb("rx-target@example.net")},
		{in: "rx+tag@example.com", same: true},
		{in: "pc.yan@example.com", want: mb("yan@example.net")},
		// recipient_canonical_maps (recursively), then canonical_maps,
		// then virtual_alias_maps.
		{in: "old.name@example.com", want: mb("newest@example.net")},
		{in: "cn@example.com", want: mb("frank@example.net")},
		// aliases(5) for local domains: local part folded, extension
		// searched, |command, /file and :include: returned not followed,
		// owner- alias, a name listing itself, chains, loops.
		{in: "root@example.org", want: mb("alice@example.org")},
		{in: "ROOT@Example.ORG", want: mb("alice@example.org")},
		{in: "root+foo@example.org", want: mb("alice@example.org")},
		{in: "root", want: mb("alice@example.org")},
		{in: "team@example.org", want: append(mb("alice@example.org", "bob@example.net"), cmd, file, incl)},
		{in: "selfie@example.org", want: mb("selfie@example.org", "gina@example.net")},
		{in: "deep1@example.org", want: mb("henry@example.net")},
		{in: "aloop1@example.org", err: ErrLimit},
		{in: "tagged+x@example.org", want: mb("ivan@example.org")},
		// virtual into a local alias.
		{in: "localalias@example.com", want: append(mb("alice@example.org", "bob@example.net"), cmd, file, incl)},
		// Nothing matches: unexpanded.
		{in: "nobody@example.net", same: true},
		{in: "alice@example.org", same: true},
	})
}

// TestExpandVariants: propagate_unmatched_extensions without virtual,
// alias propagation, $myorigin outside $mydestination, several delimiter
// characters.
func TestExpandVariants(t *testing.T) {
	e := newEnv(t, `propagate_unmatched_extensions = canonical, alias
recipient_delimiter = +-
myorigin = origin.example
`)
	e.table("postmap", "hash", "domains", "dyn.example\tx\n")
	main := mustRead(t, e.path("main.cf"))
	e.write("main.cf", main+"mydestination = example.org, localhost, hash:"+e.path("domains")+", !neg.example, .example\n")
	p := e.open(PostfixOptions{})
	runCases(t, p, []expCase{
		// mydestination with a table, a negation before a wildcard.
		{in: "webmaster@dyn.example", want: mb("web@example.net")},
		{in: "webmaster@other.example", want: mb("web@example.net")},
		{in: "webmaster@neg.example", same: true},
		{in: "joe+foo@example.com", want: mb("joe.real@example.net")},
		{in: "joe-foo@example.com", want: mb("joe.real@example.net")},
		{in: "webmaster@origin.example", want: mb("web@example.net")},
		// alias propagation: root+foo -> alice+foo (alice@$myorigin,
		// not local now, so a mailbox elsewhere).
		{in: "root+foo@example.org", want: mb("alice+foo@origin.example")},
		// local(8) splices the first delimiter character (resolve.c).
		{in: "root-foo@example.org", want: mb("alice+foo@origin.example")},
		// owner- with '-' a delimiter: not split (owner_request_special).
		{in: "owner-team@example.org", want: mb("alice@origin.example")},
	})
}

// TestServiceOverrides: master.cf -o overrides of the milter's smtpd.
func TestServiceOverrides(t *testing.T) {
	e := newEnv(t, "")
	// altsmtp hands mail to altcleanup, whose virtual_alias_maps differ.
	p := e.open(PostfixOptions{Service: "altsmtp"})
	runCases(t, p, []expCase{
		{in: "info@example.com", want: mb("alt@example.net")},
		{in: "sales@example.com", same: true},
	})
	// no_address_mappings: the mapping happens after the content filter,
	// in the default cleanup: expand as it will.
	p = e.open(PostfixOptions{Service: "127.0.0.1:10025"})
	if !p.noMapSt {
		t.Error("no_address_mappings not seen")
	}
	runCases(t, p, []expCase{{in: "info@example.com", want: mb("alice@example.net")}})
	if _, err := NewPostfix(context.Background(), PostfixOptions{ConfigDir: e.dir, Service: "nosuch"}); err == nil {
		t.Error("unknown service accepted")
	}
}

func TestTablesAndCheck(t *testing.T) {
	e := newEnv(t, "")
	p := e.open(PostfixOptions{})
	var got []string
	for _, tb := range p.Tables() {
		got = append(got, tb.Param+" "+tb.Name+" "+tb.Method)
	}
	d := e.dir
	want := []string{
		"recipient_canonical_maps hash:" + d + "/rcanon memory",
		"canonical_maps hash:" + d + "/canon memory",
		"virtual_alias_maps lmdb:" + d + "/virtual memory",
		"virtual_alias_maps regexp:" + d + "/virtual.re pattern",
		"virtual_alias_maps pcre:" + d + "/virtual.pcre pattern",
		"alias_maps hash:" + d + "/aliases memory",
	}
	if !slices.Equal(got, want) {
		t.Errorf("Tables() =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if err := p.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	os.Remove(e.path("virtual.pcre"))
	os.Remove(e.path("aliases.db"))
	p = e.open(PostfixOptions{})
	err := p.Check(context.Background())
	var te *TableError
	if !errors.As(err, &te) || !strings.Contains(err.Error(), "virtual.pcre") || !strings.Contains(err.Error(), "aliases") {
		t.Fatalf("Check with missing tables = %v", err)
	}
}

// TestTableRebuiltWhileRunning: a table rebuilt with postmap is used
// within CacheTTL.
func TestTableRebuiltWhileRunning(t *testing.T) {
	e := newEnv(t, "")
	ttl := 300 * time.Millisecond
	p := e.open(PostfixOptions{CacheTTL: ttl})
	ctx := context.Background()
	runCases(t, p, []expCase{{in: "info@example.com", want: mb("alice@example.net")}})
	src, _ := os.ReadFile(e.path("virtual"))
	e.table("postmap", "lmdb", "virtual", strings.Replace(string(src), "info@example.com\talice@example.net", "info@example.com\tnew-alice@example.net", 1))
	e.table("", "regexp", "virtual.re", "/^rx@example\\.com$/\trx-new@example.net\n")
	// The expansion cache holds the old answer for at most ttl, and a
	// table is stat()ed at most once a second (min(1s, ttl) here): after
	// that, the first expansion must see the rebuilt tables.
	time.Sleep(ttl + 50*time.Millisecond)
	a, err := p.Expand(ctx, "info@example.com")
	b, err2 := p.Expand(ctx, "rx@example.com")
	if err != nil || err2 != nil {
		t.Fatal(err, err2)
	}
	if !slices.Equal(a.Targets, mb("new-alice@example.net")) || !slices.Equal(b.Targets, mb("rx-new@example.net")) {
		t.Fatalf("after rebuild and CacheTTL: %+v %+v", a.Targets, b.Targets)
	}
}

// TestTableUnreadable: a table that disappears or cannot be read is an
// error (a temporary failure), never "no match": each table alone, after
// it was read once (in memory, or cached answers of postmap -q).
func TestTableUnreadable(t *testing.T) {
	all := []string{"info@example.com", "rx@example.com", "root@example.org"}
	for file, reach := range map[string][]string{
		"virtual.lmdb": all, "virtual.re": all, "rcanon.db": all,
		"aliases.db": {"root@example.org"}, // only local domains reach alias_maps
	} {
		t.Run(file, func(t *testing.T) {
			e := newEnv(t, "")
			ttl := 200 * time.Millisecond
			p := e.open(PostfixOptions{CacheTTL: ttl})
			ctx := context.Background()
			for _, a := range []string{"info@example.com", "rx@example.com", "root@example.org"} {
				if _, err := p.Expand(ctx, a); err != nil {
					t.Fatal(err)
				}
			}
			if os.Geteuid() != 0 {
				if err := os.Chmod(e.path(file), 0); err != nil {
					t.Fatal(err)
				}
			} else if err := os.Remove(e.path(file)); err != nil {
				// root reads mode 000 files: remove the file instead.
				t.Fatal(err)
			}
			time.Sleep(ttl + 1100*time.Millisecond) // TTL and the stat interval
			for _, a := range reach {
				got, err := p.Expand(ctx, a)
				var te *TableError
				if !errors.As(err, &te) || !strings.Contains(te.Table, strings.TrimSuffix(strings.TrimSuffix(file, ".db"), ".lmdb")) {
					t.Errorf("Expand(%q) with %s unreadable = %+v, %v; want its TableError", a, file, got, err)
				}
			}
		})
	}
}

// TestCorruptTable: a file postmap cannot read (root can read mode 000,
// so garbage stands in for an unreadable file) is an error.
func TestCorruptTable(t *testing.T) {
	e := newEnv(t, "")
	if err := os.WriteFile(e.path("virtual.lmdb"), []byte("not an lmdb file"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := e.open(PostfixOptions{})
	_, err := p.Expand(context.Background(), "nobody@example.net")
	var te *TableError
	if !errors.As(err, &te) {
		t.Fatalf("corrupt table: %v", err)
	}
}

// countingPostmap is a postmap wrapper that logs each run.
func countingPostmap(t *testing.T, dir string) (bin string, runs func() []string) {
	t.Helper()
	logf := filepath.Join(dir, "postmap.log")
	bin = filepath.Join(dir, "postmap-counting")
	script := "#!/bin/sh\necho \"$*\" >> " + logf + "\nexec " + findBin("", "postmap") + " \"$@\"\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, func() []string {
		b, _ := os.ReadFile(logf)
		return strings.Split(strings.TrimSpace(string(b)), "\n")
	}
}

// TestConcurrentCallersShareOneLookup: a burst for one address forks one
// postmap; the candidate keys of one address go in one run.
func TestConcurrentCallersShareOneLookup(t *testing.T) {
	e := newEnv(t, "")
	e.write("main.cf", strings.Replace(mustRead(t, e.path("main.cf")),
		"virtual_alias_maps = lmdb:", "virtual_alias_maps = unionmap:{hash:"+e.dir+"/vq}, lmdb:", 1))
	e.table("postmap", "hash", "vq", "q@example.com\tq-target@example.net\n@qdomain.example\tqcatch@example.net\n")
	bin, runs := countingPostmap(t, e.dir)
	p := e.open(PostfixOptions{Postmap: bin, NoPatternInProcess: true})
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := p.Expand(ctx, "rx@example.com")
			if err == nil && !slices.Equal(got.Targets, mb("rx-target@example.net")) {
				err = fmt.Errorf("got %+v", got.Targets)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	count := func(sub string) int {
		n := 0
		for _, r := range runs() {
			if strings.Contains(r, sub) {
				n++
			}
		}
		return n
	}
	// Two addresses are looked up: rx@example.com and its result
	// rx-target@example.net (which maps to nothing): two runs, not 100.
	if n := count("-q - regexp:"); n != 2 {
		t.Errorf("regexp table asked %d times for two addresses; runs:\n%s", n, strings.Join(runs(), "\n"))
	}
	// unionmap is a fixed-key table answered by queries: one run with all
	// candidate keys of a+x@qdomain.example (found at @qdomain.example),
	// one for its result qcatch@example.net; key by key would take five.
	before := count("-q - unionmap:")
	got, err := p.Expand(ctx, "a+x@qdomain.example")
	if err != nil || !slices.Equal(got.Targets, mb("qcatch@example.net")) {
		t.Fatalf("unionmap: %+v %v", got, err)
	}
	if n := count("-q - unionmap:") - before; n != 2 {
		t.Errorf("unionmap asked %d times for two addresses", n)
	}
	if got, err := p.Expand(ctx, "q+x@example.com"); err != nil || !slices.Equal(got.Targets, mb("q-target+x@example.net")) {
		t.Errorf("unionmap with extension: %+v %v", got, err)
	}
}

func mustRead(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestAgainstPostmap cross-checks the in-memory table with postmap -q for
// every key of the virtual table.
func TestAgainstPostmap(t *testing.T) {
	e := newEnv(t, "")
	p := e.open(PostfixOptions{})
	tb, _ := p.tables.get("lmdb:" + e.path("virtual"))
	for _, line := range strings.Split(mustRead(t, e.path("virtual")), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(line, " ") {
			continue
		}
		out, err := exec.Command(findBin("", "postmap"), "-c", e.dir, "-q", f[0], "lmdb:"+e.path("virtual")).Output()
		if err != nil {
			t.Fatalf("postmap -q %s: %v", f[0], err)
		}
		got, ok, err := tb.lookup(context.Background(), tb.foldKey(f[0]), nil)
		if err != nil || !ok || got != strings.TrimSpace(string(out)) {
			t.Errorf("%s: memory %q %v %v, postmap %q", f[0], got, ok, err, out)
		}
	}
}

func TestExpandHeedsContext(t *testing.T) {
	e := newEnv(t, "")
	p := e.open(PostfixOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Expand(ctx, "info@example.com"); err == nil {
		t.Fatal("cancelled context: no error")
	}
}

// TestCached: Cached answers from the expansion cache only: nothing
// before the first Expand, the same expansion as Expand after it (its
// own copy of Targets), nothing once CacheTTL has passed or with the
// cache off.
func TestCached(t *testing.T) {
	e := newEnv(t, "")
	now := time.Unix(1_700_000_000, 0)
	p := e.open(PostfixOptions{CacheTTL: time.Minute, now: func() time.Time { return now }})
	ctx := context.Background()
	const addr = "info@example.com"
	if got, ok := p.Cached(addr); ok {
		t.Fatalf("Cached before any Expand: %+v", got)
	}
	want, err := p.Expand(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := p.Cached(addr)
	if !ok || !got.Expanded || got.Input != want.Input || !slices.Equal(got.Targets, want.Targets) {
		t.Fatalf("Cached after Expand: %+v, %v; want %+v", got, ok, want)
	}
	got.Targets[0].Addr = "mallory@example.net"
	if again, _ := p.Cached(addr); !slices.Equal(again.Targets, want.Targets) {
		t.Fatalf("a caller's change of Targets reached the cache: %+v", again.Targets)
	}
	if got, ok := p.Cached("other@example.com"); ok {
		t.Fatalf("Cached for an address never expanded: %+v", got)
	}
	now = now.Add(time.Minute)
	if got, ok := p.Cached(addr); ok {
		t.Fatalf("Cached after CacheTTL: %+v", got)
	}

	off := e.open(PostfixOptions{CacheTTL: -1})
	if _, err := off.Expand(ctx, addr); err != nil {
		t.Fatal(err)
	}
	if got, ok := off.Cached(addr); ok {
		t.Fatalf("Cached with the cache off: %+v", got)
	}
}
