package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"lacre.io/milter/internal/testkeys"
)

// postfixConfig writes a Postfix configuration directory with a hash
// virtual_alias_maps table (postmap) and returns it. Without Postfix the
// test is skipped, except in CI.
func postfixConfig(t *testing.T, virtual string) string {
	t.Helper()
	postmap, err := exec.LookPath("postmap")
	if err != nil {
		postmap = "/usr/sbin/postmap"
	}
	if _, err := os.Stat(postmap); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("postmap not found (CI is set: Postfix must be installed): %v", err)
		}
		t.Skip("Postfix is not installed")
	}
	dir := t.TempDir()
	main := "compatibility_level = 3.6\nmydestination =\nalias_maps =\nvirtual_alias_maps = hash:" + filepath.Join(dir, "virtual") + "\n"
	if err := os.WriteFile(filepath.Join(dir, "main.cf"), []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "master.cf"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "virtual"), []byte(virtual), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(postmap, "-c", dir, "hash:"+filepath.Join(dir, "virtual")).CombinedOutput(); err != nil {
		t.Fatalf("postmap: %v %s", err, out)
	}
	// Postfix re-reads a file changed within the last second until it
	// has "cooled down" (about 2 s per postconf call).
	past := time.Now().Add(-time.Minute)
	for _, f := range []string{"main.cf", "master.cf", "virtual", "virtual.db"} {
		os.Chtimes(filepath.Join(dir, f), past, past)
	}
	return dir
}

// TestKeysShowExpansion: "keys show" prints the expansion of an address
// and the decision for each mailbox; "check-config" lists the tables and
// looks each up once.
func TestKeysShowExpansion(t *testing.T) {
	dir := postfixConfig(t, "info@example.org alice@example.org, carol@example.org\n"+
		"team@example.org alice@example.org, bob@example.net\n"+
		"bound@example.org bob@example.net\n")
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	carol := testkeys.Generate(t, testkeys.Curve25519, "carol@example.org")
	bound := testkeys.Generate(t, testkeys.Curve25519, "bound@example.org")
	f := newFixture(t, false, "\n[aliases]\nsource = \"postfix\"\npostfix_config_dir = \""+dir+"\"\nservice = \"\"\nreinject = \"127.0.0.1:1\"\n")
	f.add("alice@example.org", alice)
	f.add("carol@example.org", carol)
	f.add("bound@example.org", bound)

	got, r := f.show("info@example.org")
	want := map[string][]string{
		"address":  {"info@example.org"},
		"expands":  {"to 2 target(s)"},
		"target":   {"mailbox alice@example.org: encrypt to 1 key(s) (store alice@example.org)", "mailbox carol@example.org: encrypt to 1 key(s) (store carol@example.org)"},
		"decision": {"encrypt to the keys of all 2 mailbox(es), one ciphertext"},
	}
	for k, v := range want {
		if len(got[k]) != len(v) || (len(v) > 0 && got[k][0] != v[0]) || got[k][len(got[k])-1] != v[len(v)-1] {
			t.Errorf("%s: got %q, want %q\n%s", k, got[k], v, r.stdout)
		}
	}
	got, r = f.show("team@example.org")
	if d := got["decision"]; len(d) != 1 || d[0] != "split: the 1 keyed mailbox(es) get the ciphertext, one clear copy for the 1 other(s) is handed back to 127.0.0.1:1" {
		t.Errorf("team@: %q\n%s", d, r.stdout)
	}
	got, r = f.show("bound@example.org")
	if e := got["expands"]; len(e) != 1 || e[0] != "not consulted: keys bound to the address as written win" {
		t.Errorf("bound@: %q\n%s", e, r.stdout)
	}
	got, r = f.show("nobody@example.org")
	if e := got["expands"]; len(e) != 1 || e[0] != "no (no table rewrites it)" {
		t.Errorf("nobody@: %q\n%s", e, r.stdout)
	}

	r = f.must(nil, "check-config")
	wantContains(t, "check-config", r.stdout, "aliases.source  postfix ("+dir+", service )",
		"virtual_alias_maps", "hash:"+filepath.Join(dir, "virtual"), "(one lookup in each: OK)",
		"aliases.reinject  127.0.0.1:1: NOT ANSWERING")

	// A table that cannot be read fails check-config (mail would wait).
	if err := os.WriteFile(filepath.Join(dir, "virtual.db"), []byte("not a database"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = f.run(nil, "check-config")
	wantCode(t, r, 1)
	wantContains(t, "check-config stderr", r.stderr, "a table cannot be read", "virtual_alias_maps")
}
