// Package pgtest runs private PostgreSQL clusters for tests: Debian's
// postgresql package's initdb and pg_ctl, in a temporary directory, as an
// unprivileged user (tests run as root in CI, and PostgreSQL refuses to
// run as root), listening on a free loopback port only. No mock: the
// tests talk to a real server, which they stop and restart at will.
//
// Without the binaries a test skips, except under CI (the CI environment
// variable set), where it fails: CI installs postgresql.
package pgtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"lacre.io/milter/keys"
)

// Server is one private cluster.
type Server struct {
	Port   int
	dir    string // owned by the server's user
	bin    string
	cred   *syscall.Credential
	pwfile string // the superuser's password, readable by the tests
	admin  string

	mu      sync.Mutex
	running bool
	dbs     int
}

// Admin is the superuser of every private cluster.
const Admin = "lacre_admin"

// Bin returns the directory of Debian's PostgreSQL server binaries, or
// "" when none is installed.
func Bin() string {
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(m) == 0 {
		return ""
	}
	// The highest version wins (the glob sorts "15" before "9", but
	// Debian ships one major at a time).
	return filepath.Dir(m[len(m)-1])
}

// Need skips t, or fails it under CI, when PostgreSQL is not installed.
func Need(t testing.TB) string {
	t.Helper()
	bin := Bin()
	if bin == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb); CI must install postgresql")
		}
		t.Skip("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb); apt-get install postgresql")
	}
	return bin
}

// Start initialises and starts a cluster, stopped and removed when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := StartServer(Need(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Destroy)
	return s
}

// StartServer is Start without a test, for TestMain: the caller calls
// Destroy.
func StartServer(bin string) (*Server, error) {
	s := &Server{bin: bin, admin: Admin}
	dir, err := os.MkdirTemp("", "lacre-pg-")
	if err != nil {
		return nil, err
	}
	s.dir = dir
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			if u, err = user.Lookup("nobody"); err != nil {
				os.RemoveAll(dir)
				return nil, fmt.Errorf("pgtest: no unprivileged user (postgres, nobody) to run the server as: %w", err)
			}
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	// The password file the server's initdb reads, and the one the tests
	// give lacre (keys.PostgresOptions.PasswordFile): the same content.
	pw := fmt.Sprintf("pw-%d-%d", os.Getpid(), time.Now().UnixNano())
	s.pwfile = filepath.Join(dir, "admin.pw")
	if err := os.WriteFile(s.pwfile, []byte(pw+"\n"), 0o600); err != nil {
		return nil, err
	}
	if s.cred != nil {
		os.Chown(s.pwfile, int(s.cred.Uid), int(s.cred.Gid))
	}
	out, err := s.run("initdb", "-D", s.data(), "-U", s.admin, "--pwfile", s.pwfile,
		"--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: initdb: %v\n%s", err, out)
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s.Port = port
	conf := fmt.Sprintf("listen_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\nfsync = off\nmax_connections = 200\nlog_min_messages = warning\n", port, dir)
	f, err := os.OpenFile(filepath.Join(s.data(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteString(conf)
		f.Close()
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := s.StartErr(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

func (s *Server) data() string { return filepath.Join(s.dir, "data") }

// run runs a server binary as the server's user.
func (s *Server) run(name string, args ...string) ([]byte, error) {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8")
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	return cmd.CombinedOutput()
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// StartErr starts the stopped server and waits until it accepts
// connections.
func (s *Server) StartErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	out, err := s.run("pg_ctl", "-D", s.data(), "-l", filepath.Join(s.dir, "server.log"), "-w", "-t", "60", "start")
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
		return fmt.Errorf("pgtest: pg_ctl start: %v\n%s\n%s", err, out, log)
	}
	s.running = true
	return nil
}

// StartAgain starts the stopped server.
func (s *Server) StartAgain(t testing.TB) {
	t.Helper()
	if err := s.StartErr(); err != nil {
		t.Fatal(err)
	}
}

// Stop stops the server with mode "fast" (sessions are ended, as on a
// service stop) or "immediate" (as a crash).
func (s *Server) Stop(t testing.TB, mode string) {
	t.Helper()
	if err := s.stop(mode); err != nil {
		t.Fatal(err)
	}
}

func (s *Server) stop(mode string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running {
		return nil
	}
	out, err := s.run("pg_ctl", "-D", s.data(), "-m", mode, "-w", "-t", "60", "stop")
	if err != nil {
		return fmt.Errorf("pgtest: pg_ctl stop: %v\n%s", err, out)
	}
	s.running = false
	return nil
}

// Restart stops the server (mode fast) and starts it again.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop(t, "fast")
	s.StartAgain(t)
}

// Destroy stops the server and removes its files.
func (s *Server) Destroy() {
	s.stop("immediate")
	os.RemoveAll(s.dir)
}

// Options are the PostgresOptions that log in as the superuser.
func (s *Server) Options() keys.PostgresOptions {
	return keys.PostgresOptions{PasswordFile: s.pwfile}
}

// PasswordFile is the superuser's password file.
func (s *Server) PasswordFile() string { return s.pwfile }

// DSN is the URL of database db for user (no password: see Options and
// WritePassword).
func (s *Server) DSN(user, db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", user, s.Port, db)
}

// AdminDSN is DSN for the superuser.
func (s *Server) AdminDSN(db string) string { return s.DSN(s.admin, db) }

// Exec runs SQL as the superuser in database db.
func (s *Server) Exec(t testing.TB, db, sql string, args ...any) {
	t.Helper()
	if err := s.ExecErr(db, sql, args...); err != nil {
		t.Fatalf("pgtest: %s: %v", sql, err)
	}
}

// ExecErr is Exec returning the error.
func (s *Server) ExecErr(db, sql string, args ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pw, err := os.ReadFile(s.pwfile)
	if err != nil {
		return err
	}
	cfg, err := pgx.ParseConfig(s.AdminDSN(db))
	if err != nil {
		return err
	}
	cfg.Password = strings.TrimSpace(string(pw))
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// NewDB creates a fresh, empty database and returns its name.
func (s *Server) NewDB(t testing.TB) string {
	t.Helper()
	s.mu.Lock()
	s.dbs++
	name := fmt.Sprintf("t%d", s.dbs)
	s.mu.Unlock()
	s.Exec(t, "postgres", "CREATE DATABASE "+name)
	return name
}

// NewStore creates a database with an initialised lacre schema and
// returns its DSN (superuser).
func (s *Server) NewStore(t testing.TB) string {
	t.Helper()
	dsn := s.AdminDSN(s.NewDB(t))
	if _, err := keys.InitPostgres(context.Background(), dsn, s.Options()); err != nil {
		t.Fatal(err)
	}
	return dsn
}

// CreateRole creates a login role with a password and returns the path
// of a password file for it (mode 0600, in the server's directory).
func (s *Server) CreateRole(t testing.TB, name string) string {
	t.Helper()
	pw := fmt.Sprintf("%s-%d", name, time.Now().UnixNano())
	s.Exec(t, "postgres", fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", name, pw))
	f := filepath.Join(s.dir, name+".pw")
	if err := os.WriteFile(f, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// Dir is the server's directory (for files the tests need next to it).
func (s *Server) Dir() string { return s.dir }
