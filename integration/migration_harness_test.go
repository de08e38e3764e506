package integration

// Private database servers for the migration test: a MariaDB (as
// gpg-mailgate-web used) and a PostgreSQL cluster (as Lacre may use),
// each in a temporary directory, on a free loopback port, stopped when
// the test ends. Without the server programs the test is skipped, or
// fails when CI is set.

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// needTool finds a program or skips (fails under CI) the test.
func needTool(t testing.TB, names ...string) string {
	t.Helper()
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
		if matches, _ := filepath.Glob(n); len(matches) > 0 {
			sort.Strings(matches)
			return matches[len(matches)-1]
		}
		for _, d := range []string{"/usr/sbin", "/usr/bin"} {
			if p := filepath.Join(d, n); isExecutable(p) {
				return p
			}
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed (CI is set: a missing tool is a failure)", names[0])
	}
	t.Skipf("%s is not installed", names[0])
	return ""
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// dbServer is a database server process started by a test.
type dbServer struct {
	dir  string
	port int
	cmd  *exec.Cmd
	done chan struct{}
	log  *tailBuffer
}

func (s *dbServer) start(t testing.TB, what string, cmd *exec.Cmd) {
	t.Helper()
	s.log = &tailBuffer{max: 1 << 20}
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", what, err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	go func() { cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-s.done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", what, tail(s.log.String(), 40))
		}
	})
	if err := waitPort(fmt.Sprintf("127.0.0.1:%d", s.port), time.Minute, s.done); err != nil {
		t.Fatalf("%s: %v\n%s", what, err, tail(s.log.String(), 40))
	}
}

// startMariaDB starts a private MariaDB with a database gpgmw that the
// user gpgmw (password "gpgmw-pw") may use over TCP, and returns its DSN.
func startMariaDB(t testing.TB) (dsn string) {
	t.Helper()
	installDB := needTool(t, "mariadb-install-db", "mysql_install_db")
	server := needTool(t, "mariadbd", "mysqld")
	client := needTool(t, "mariadb", "mysql")
	dir, err := os.MkdirTemp("", "lacre-maria-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	data := filepath.Join(dir, "data")
	if out, err := run(nil, nil, installDB, "--no-defaults", "--datadir="+data, "--user=root",
		"--auth-root-authentication-method=socket", "--skip-test-db"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	s := &dbServer{dir: dir, port: freePort(t)}
	sock := filepath.Join(dir, "sock")
	s.start(t, "mariadbd", exec.Command(server, "--no-defaults", "--datadir="+data, "--socket="+sock,
		"--port="+strconv.Itoa(s.port), "--bind-address=127.0.0.1", "--user=root", "--skip-name-resolve",
		"--pid-file="+filepath.Join(dir, "pid"), "--log-error="+filepath.Join(dir, "error.log"),
		"--innodb-buffer-pool-size=16M", "--skip-log-bin"))
	setup := "CREATE DATABASE gpgmw; CREATE USER 'gpgmw'@'127.0.0.1' IDENTIFIED BY 'gpgmw-pw'; " +
		"GRANT ALL ON gpgmw.* TO 'gpgmw'@'127.0.0.1';"
	if out, err := run(nil, nil, client, "--no-defaults", "--socket="+sock, "-u", "root", "-e", setup); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return fmt.Sprintf("mysql://gpgmw:gpgmw-pw@127.0.0.1:%d/gpgmw", s.port)
}

// startPostgres starts a private PostgreSQL cluster, run by the
// unprivileged user postgres, and returns a DSN for its database postgres.
func startPostgres(t testing.TB) (dsn string) {
	t.Helper()
	initdb := needTool(t, "/usr/lib/postgresql/*/bin/initdb")
	server := filepath.Join(filepath.Dir(initdb), "postgres")
	u, err := user.Lookup("postgres")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("no user postgres (is PostgreSQL installed?): %v", err)
		}
		t.Skipf("no user postgres: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	cred := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	dir, err := os.MkdirTemp("", "lacre-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := exec.CommandContext(ctx, initdb, "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
	c.SysProcAttr, c.Dir = cred, dir
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	s := &dbServer{dir: dir, port: freePort(t)}
	cmd := exec.Command(server, "-D", data, "-p", strconv.Itoa(s.port), "-k", dir,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "shared_buffers=16MB")
	cmd.SysProcAttr, cmd.Dir = &syscall.SysProcAttr{Credential: cred.Credential}, dir
	s.start(t, "postgres", cmd)
	dsn = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
	// The port is open before the cluster accepts sessions ("the
	// database system is starting up").
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		err := db.PingContext(ctx)
		if err == nil {
			return dsn
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgres: %v", err)
		}
	}
}

// execSQL runs statements on a database through database/sql.
func execSQL(t testing.TB, driver, dsn string, stmts ...string) {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, s := range stmts {
		if _, err := db.ExecContext(ctx, s); err != nil {
			t.Fatalf("%s: %v", strings.SplitN(s, "\n", 2)[0], err)
		}
	}
}
