package integration

import (
	"database/sql"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
)

// TestDebianPackage builds the .deb (contrib/deb/build.sh, nfpm), installs
// it on this machine, starts the service as the unit does (user lacre,
// /etc/lacre/lacre.toml) and talks to it over the milter protocol. It
// changes the system (a package, a user), so it runs only in CI or with
// LACRE_TEST_DEB=1.
func TestDebianPackage(t *testing.T) {
	if os.Getenv("CI") == "" && os.Getenv("LACRE_TEST_DEB") == "" {
		t.Skip("installs a system package: runs in CI, or with LACRE_TEST_DEB=1")
	}
	root, _ := filepath.Abs("..")
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = root
		// Never wait for an answer: dpkg asks about changed conffiles.
		cmd.Stdin = nil
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	// Packages of earlier builds would be found too, and the glob's last
	// is not the newest: only this build's package may be there.
	old, _ := filepath.Glob(filepath.Join(root, "dist", "lacre-milter_*_amd64.deb"))
	for _, f := range old {
		os.Remove(f)
	}
	out := run("sh", "contrib/deb/build.sh")
	debs, _ := filepath.Glob(filepath.Join(root, "dist", "lacre-milter_*_amd64.deb"))
	if len(debs) == 0 {
		t.Fatalf("no package built:\n%s", out)
	}
	deb := debs[len(debs)-1]
	exec.Command("dpkg", "--purge", "lacre-milter").Run() // a leftover from an earlier run
	run("dpkg", "-i", "--force-confnew", deb)
	t.Cleanup(func() { exec.Command("dpkg", "--purge", "lacre-milter").Run() })
	// Last (cleanups run in reverse, after the service has stopped): a new
	// installation over the store an older version left. Purging keeps
	// /var/lib/lacre (users' keys), so the next installation finds a store
	// of an older schema; it must bring it up to date, not fail ("store
	// init" refuses an older store, and it once did so here).
	t.Cleanup(func() {
		run("dpkg", "--purge", "lacre-milter")
		olderStore(t, "/var/lib/lacre/lacre.db")
		run("sh", "-c", "chown lacre:lacre /var/lib/lacre/lacre.db*") // as the milter left it
		out := run("dpkg", "-i", "--force-confnew", deb)
		if !strings.Contains(out, "/var/lib/lacre/lacre.db migrated") {
			t.Errorf("installing over an older store did not migrate it:\n%s", out)
		}
		if out := run("setpriv", "--reuid=lacre", "--regid=lacre", "--init-groups", "/usr/bin/lacre-milter", "store", "migrate"); !strings.Contains(out, "up to date") {
			t.Errorf("after installing over an older store: %s", out)
		}
	})

	// A dedicated user, not nobody; the key store directory is its own;
	// the config is readable by it and nobody else.
	if u := run("id", "-un", "lacre"); strings.TrimSpace(u) != "lacre" {
		t.Fatalf("user: %q", u)
	}
	if st := run("stat", "-c", "%U:%G %a", "/var/lib/lacre"); strings.TrimSpace(st) != "lacre:lacre 750" {
		t.Errorf("/var/lib/lacre: %s", st)
	}
	if st := run("stat", "-c", "%U:%G %a", "/etc/lacre/lacre.toml"); strings.TrimSpace(st) != "root:lacre 640" {
		t.Errorf("/etc/lacre/lacre.toml: %s", st)
	}
	for _, f := range []string{"/lib/systemd/system/lacre-milter.service", "/usr/share/man/man8/lacre-milter.8.gz", "/usr/share/doc/lacre-milter/lacre.toml.example"} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("not installed: %v", err)
		}
	}
	if v := run("/usr/bin/lacre-milter", "version"); !strings.HasPrefix(v, "lacre-milter ") {
		t.Errorf("version: %q", v)
	}
	// The packaged configuration expands recipients with this machine's
	// Postfix ([aliases] source = "auto") once it has a main.cf (the
	// harness writes one): then its alias table must exist, as on any
	// Postfix host (newaliases), and check-config, run as lacre, reads it.
	if _, err := os.Stat("/etc/postfix/main.cf"); err == nil {
		if _, err := os.Stat("/etc/aliases"); err != nil {
			if err := os.WriteFile("/etc/aliases", []byte("postmaster: root\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		run("postalias", "/etc/aliases")
	}
	run("setpriv", "--reuid=lacre", "--regid=lacre", "--init-groups", "/usr/bin/lacre-milter", "check-config")

	// Start it as the unit would (no systemd here) and talk to it.
	if c, err := net.DialTimeout("tcp", "127.0.0.1:8891", time.Second); err == nil {
		c.Close()
		t.Fatal("something already listens on 127.0.0.1:8891")
	}
	u, err := user.Lookup("lacre")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	svc := exec.Command("/usr/bin/lacre-milter", "serve")
	svc.Dir = "/"
	svc.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, Pdeathsig: syscall.SIGKILL}
	svcOut := &tailBuffer{max: 1 << 16}
	svc.Stdout, svc.Stderr = svcOut, svcOut
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { svc.Wait(); close(exited) }()
	defer func() {
		svc.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			svc.Process.Kill()
			t.Error("the installed service did not stop on SIGTERM")
		}
		if t.Failed() {
			t.Logf("service output:\n%s", svcOut.String())
		}
	}()
	if err := waitPort("127.0.0.1:8891", 10*time.Second, exited); err != nil {
		t.Fatalf("the installed service does not listen: %v\n%s", err, svcOut.String())
	}
	// An MTA speaking milter protocol 2 (no DATA event): clear mail is
	// accepted at the first header field.
	macros := gomilter.NewMacroBag()
	s, err := gomilter.NewClient("tcp", "127.0.0.1:8891",
		gomilter.WithReadTimeout(5*time.Second), gomilter.WithWriteTimeout(5*time.Second),
		gomilter.WithActions(gomilter.OptAddHeader|gomilter.OptChangeHeader|gomilter.OptChangeBody|gomilter.OptQuarantine),
		gomilter.WithMaximumVersion(2), gomilter.WithProtocols(0x7f),
	).Session(macros)
	if err != nil {
		t.Fatalf("milter handshake with the installed service: %v", err)
	}
	defer s.Close()
	if _, err := s.Conn("client.test", gomilter.FamilyInet, 4000, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	s.Helo("client.test")
	s.Mail("a@example.org", "")
	macros.Set(gomilter.MacroRcptAddr, "b@example.org") // as Postfix sends it before each RCPT
	if a, err := s.Rcpt("b@example.org", ""); err != nil || a.Type != gomilter.ActionContinue {
		t.Fatalf("rcpt: %+v %v", a, err)
	}
	s.DataStart() // sends nothing with protocol 2
	if a, err := s.HeaderField("Subject", "hi", nil); err != nil || a.Type != gomilter.ActionAccept {
		t.Fatalf("clear mail not accepted at the first header: %+v %v", a, err)
	}
	if _, err := os.Stat("/var/lib/lacre/lacre.db"); err != nil {
		t.Errorf("the key store is not in /var/lib/lacre: %v", err)
	}
}

// olderStore turns the SQLite store at path back to the schema before the
// newest migration, as an older lacre-milter left it.
func olderStore(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// v4 (issue 18) added prefs.format.
	if _, err := db.Exec("ALTER TABLE prefs DROP COLUMN format; DELETE FROM schema_version WHERE version > 3"); err != nil {
		t.Fatalf("making %s an older store: %v", path, err)
	}
}
