// Package integration holds the end-to-end tests of lacre-milter: mail goes
// through a real Postfix, which consults the milter under test and relays
// what it would deliver to an SMTP sink written in Go, where the tests
// inspect (and decrypt) it.
//
// How the tests run:
//
//   - They need root (Postfix's master runs as root) and Postfix (Debian's
//     postfix package; no configuration of the system instance is needed).
//     Without either, every test is skipped, unless the environment
//     variable CI is non-empty: in CI a missing MTA is a failure.
//   - TestMain builds lacre-milter once for the whole package.
//   - Each test that calls startPostfix gets a private Postfix instance: its
//     own config, queue and data directories in one of a few fixed slots
//     under $TMPDIR/lacre-it (so the system's /etc/postfix/main.cf lists a
//     fixed set of alternate_config_directories), its own maillog file,
//     and an smtpd on a free loopback port. Nothing listens beyond
//     127.0.0.1. Every process a test starts is stopped by t.Cleanup, also
//     when the test fails; then the tail of Postfix's log and the milter's
//     output are written to the test log.
//
// Run them with
//
//	sudo go test ./integration -v
//
// (the harness alone: -run Harness).
package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Bounds of every wait in the harness.
const (
	postfixStartTimeout = 20 * time.Second // postfix start, until smtpd accepts
	postfixStopTimeout  = 10 * time.Second // postfix stop, until master is gone
	milterStartTimeout  = 10 * time.Second // lacre-milter serve, until it accepts
	milterStopTimeout   = 10 * time.Second // SIGTERM, before SIGKILL
	commandTimeout      = 60 * time.Second // postqueue, sendmail, postsuper, lacre-milter keys …
	slotWaitTimeout     = 2 * time.Minute  // all Postfix slots taken by other tests
)

// postfixSlots is the number of Postfix instances that may run at once
// (across test processes). Each slot's config directory is listed once in
// the system main.cf.
const postfixSlots = 8

var (
	// milterBin is the lacre-milter binary TestMain built; if the build
	// failed, buildErr says why and startMilter fails the test with it (so
	// that tests which need no milter still run).
	milterBin string
	buildErr  error

	// Postfix's commands, found by TestMain.
	postfixCmd, postconfCmd, postqueueCmd, postsuperCmd, sendmailCmd string

	// Owner of the data directories.
	postfixUID, postfixGID int

	// baseDir holds the slots: baseDir/pfN (instance) and baseDir/pfN.lock.
	baseDir = filepath.Join(os.TempDir(), "lacre-it")
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	if reason := setup(); reason != "" {
		if os.Getenv("CI") != "" {
			fmt.Fprintf(os.Stderr, "FAIL: integration tests cannot run: %s\n(CI is set: in CI the integration tests must run, a missing MTA is a failure)\n", reason)
			return 1
		}
		fmt.Fprintf(os.Stderr, "SKIP: integration tests skipped: %s\n(set CI=1 to make this a failure)\n", reason)
		return 0
	}
	dir, err := os.MkdirTemp("", "lacre-it-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	milterBin = filepath.Join(dir, "lacre-milter")
	if goCmd, err := exec.LookPath("go"); err != nil {
		buildErr = fmt.Errorf("building lacre-milter: the go command is not in PATH: %v", err)
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		out, err := exec.CommandContext(ctx, goCmd, "build", "-o", milterBin, "lacre.io/milter/cmd/lacre-milter").CombinedOutput()
		cancel()
		if err != nil {
			buildErr = fmt.Errorf("go build lacre.io/milter/cmd/lacre-milter: %v\n%s", err, out)
			fmt.Fprintf(os.Stderr, "integration: %v\n(tests that need the milter will fail)\n", buildErr)
		}
	}
	return m.Run()
}

// recordInputs looks at the module's source files and Postfix's programs
// so that "go test" caches a result of this package only as long as none
// of them changed: the milter is built by a subprocess, which the go
// command does not see (this package imports none of the milter's code).
// It must run inside a test: before m.Run, file accesses are not recorded.
// The start* helpers call it once.
func recordInputs() { inputsOnce.Do(recordInputsNow) }

var inputsOnce sync.Once

func recordInputsNow() {
	os.Getenv("CI")
	root, err := filepath.Abs("..")
	if err != nil {
		return
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return
	}
	filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if (strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go")) || name == "go.mod" || name == "go.sum" {
			os.Stat(path)
		}
		return nil
	})
	for _, p := range []string{"/usr/sbin/postfix", "/usr/lib/postfix/sbin/master", "/usr/lib/postfix/sbin/smtpd", "/usr/lib/postfix/sbin/cleanup"} {
		os.Stat(p)
	}
}

// setup checks that Postfix can run here and lists the slots' config
// directories in the system main.cf. It returns why the tests cannot run,
// or "".
func setup() string {
	if os.Geteuid() != 0 {
		return "not running as root (Postfix's master must start as root)"
	}
	for _, c := range []struct {
		name string
		p    *string
	}{{"postfix", &postfixCmd}, {"postconf", &postconfCmd}, {"postqueue", &postqueueCmd}, {"postsuper", &postsuperCmd}, {"sendmail", &sendmailCmd}} {
		p, err := lookSbin(c.name)
		if err != nil {
			return fmt.Sprintf("Postfix is not installed (%s not found; apt-get install postfix)", c.name)
		}
		*c.p = p
	}
	u, err := user.Lookup("postfix")
	if err != nil {
		return "Postfix is not installed properly: no user postfix"
	}
	postfixUID, _ = strconv.Atoi(u.Uid)
	postfixGID, _ = strconv.Atoi(u.Gid)
	if _, err := user.LookupGroup("postdrop"); err != nil {
		return "Postfix is not installed properly: no group postdrop"
	}
	if err := listSlots(); err != nil {
		return err.Error()
	}
	return ""
}

// lookSbin finds a Postfix command in PATH or /usr/sbin (not in a
// non-root PATH on Debian).
func lookSbin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	p := filepath.Join("/usr/sbin", name)
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return p, nil
	}
	return "", fmt.Errorf("%s not found", name)
}

// listSlots makes sure the default /etc/postfix/main.cf exists and lists
// every slot's config directory in alternate_config_directories.
//
// Postfix's set-gid commands (postqueue, postdrop behind sendmail) run by a
// non-root user accept -c/-C/MAIL_CONFIG only for a directory listed there,
// by exact name (a parent directory is not enough). postfix(1) run by root
// does not check it, but the listing costs nothing and keeps a non-root
// postqueue working for someone inspecting a test instance.
func listSlots() error {
	if err := os.MkdirAll(baseDir, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(baseDir, 0o755); err != nil {
		return err
	}
	// Serialise concurrent test processes editing main.cf.
	unlock, err := flock(filepath.Join(baseDir, "setup.lock"), true)
	if err != nil {
		return err
	}
	defer unlock()
	const mainCF = "/etc/postfix/main.cf"
	if _, err := os.Stat(mainCF); errors.Is(err, os.ErrNotExist) {
		// Debian's "No configuration" leaves no main.cf; postconf needs one.
		if err := os.WriteFile(mainCF, []byte("# Created by the lacre-milter integration tests, for alternate_config_directories.\ncompatibility_level = 3.6\n"), 0o644); err != nil {
			return fmt.Errorf("creating %s: %v", mainCF, err)
		}
	}
	out, err := exec.Command(postconfCmd, "-h", "alternate_config_directories").CombinedOutput()
	if err != nil {
		return fmt.Errorf("postconf -h alternate_config_directories: %v: %s", err, out)
	}
	have := strings.FieldsFunc(string(out), func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
	list := append([]string(nil), have...)
	for i := 0; i < postfixSlots; i++ {
		d := slotPath(i).configDir()
		if !contains(list, d) {
			list = append(list, d)
		}
	}
	if len(list) == len(have) {
		return nil
	}
	if out, err := exec.Command(postconfCmd, "-e", "alternate_config_directories = "+strings.Join(list, ", ")).CombinedOutput(); err != nil {
		return fmt.Errorf("postconf -e alternate_config_directories: %v: %s", err, out)
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// flock takes an exclusive flock(2) on path (created if needed); with wait
// false it fails at once if another process holds it.
func flock(path string, wait bool) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	how := syscall.LOCK_EX
	if !wait {
		how |= syscall.LOCK_NB
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitPort waits until something accepts TCP connections on addr, or
// until done is closed (the process died) or timeout passes.
func waitPort(addr string, timeout time.Duration, done <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing accepts connections on %s after %v: %v", addr, timeout, err)
		}
		select {
		case <-done:
			return fmt.Errorf("the process exited before accepting connections on %s", addr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// run runs a command with a bounded time and returns its combined output.
func run(stdin []byte, env []string, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	// A daemon that inherited the output pipe must not hold us up.
	cmd.WaitDelay = 5 * time.Second
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %v: %s", filepath.Base(name), strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// ---------------------------------------------------------------------
// Postfix

// slotDir is the directory of Postfix slot i.
type slotDir string

func (d slotDir) configDir() string { return filepath.Join(string(d), "etc") }

func slotPath(i int) slotDir { return slotDir(filepath.Join(baseDir, fmt.Sprintf("pf%d", i))) }

// postfixOptions configures a private Postfix instance.
type postfixOptions struct {
	// RelayPort is the port on 127.0.0.1 that all mail is relayed to
	// (relayhost = [127.0.0.1]:RelayPort): the sink's port. Required.
	RelayPort int
	// SMTPDMilters and NonSMTPDMilters become smtpd_milters and
	// non_smtpd_milters, e.g. m.addr() ("inet:127.0.0.1:PORT").
	SMTPDMilters, NonSMTPDMilters string
	// Main adds or overrides main.cf settings (name → value).
	Main map[string]string
	// Master adds master.cf lines (e.g. a second smtpd with -o options).
	Master []string
	// Setup, when set, runs after main.cf and master.cf are written and
	// before Postfix starts, with the instance's config directory (e.g.
	// to write lookup tables there and postmap them; main.cf may name
	// them as $config_directory/NAME).
	Setup func(configDir string) error
}

// postfixInstance is a running private Postfix.
type postfixInstance struct {
	t         testing.TB
	name      string // syslog_name, e.g. "lacre-it-pf3"
	dir       string // the slot directory
	configDir string // main.cf, master.cf
	queueDir  string
	dataDir   string
	logFile   string // maillog_file
	smtpPort  int    // smtpd on 127.0.0.1
	main      map[string]string

	// smtpTimeout bounds each step of sendSMTP (the final reply to DATA
	// waits for the milter's end-of-message work).
	smtpTimeout time.Duration

	unlock func()
}

// defaultMain is the main.cf of every instance, before options.
func defaultMain(p *postfixInstance, relayPort int) map[string]string {
	return map[string]string{
		"compatibility_level": "3.6",
		"queue_directory":     p.queueDir,
		"data_directory":      p.dataDir,
		// No syslog here: Postfix logs through postlogd (master.cf) into
		// this file. A maillog_file outside /var must be covered by
		// maillog_file_prefixes, or postlogd refuses it.
		"maillog_file":          p.logFile,
		"maillog_file_prefixes": "/var, /dev/stdout, " + baseDir,
		"syslog_name":           p.name,
		// Loopback only.
		"inet_interfaces": "127.0.0.1",
		"inet_protocols":  "ipv4",
		"myhostname":      "mx.test",
		"myorigin":        "$myhostname",
		// Deliver nothing locally: every recipient is relayed to the sink.
		"mydestination":        "",
		"relay_domains":        "",
		"local_recipient_maps": "",
		"alias_maps":           "",
		"alias_database":       "",
		"relayhost":            fmt.Sprintf("[127.0.0.1]:%d", relayPort),
		"mynetworks":           "127.0.0.0/8",
		// The submitting client is in mynetworks; anyone else is refused.
		"smtpd_relay_restrictions": "permit_mynetworks, reject",
		"smtp_tls_security_level":  "none",
		"smtpd_tls_security_level": "none",
		"smtp_dns_support_level":   "disabled",
		// What DESIGN.md asks of operators.
		"milter_default_action": "tempfail",
		"milter_protocol":       "6",
		"smtpd_milters":         "",
		"non_smtpd_milters":     "",
		// Retry deferred mail quickly.
		"minimal_backoff_time": "1s",
		"maximal_backoff_time": "5s",
		"queue_run_delay":      "1s",
		"in_flow_delay":        "0",
		// A 20 MB attachment, base64-encoded and then armoured (+37 %),
		// is about 38 MB. Local/virtual delivery refuse to start if their
		// mailbox limits are below message_size_limit.
		"message_size_limit":    "52428800",
		"mailbox_size_limit":    "0",
		"virtual_mailbox_limit": "0",
		"biff":                  "no",
		"append_dot_mydomain":   "no",
		"readme_directory":      "no",
		"smtpd_banner":          "$myhostname ESMTP",
	}
}

// masterCF is the instance's master.cf: its smtpd, then the services of
// contrib/postfix/master-services.cf (the demo and the benchmark use the
// same file), then extra lines.
func masterCF(smtpPort int, extra []string) string {
	services, err := os.ReadFile(filepath.Join("..", "contrib", "postfix", "master-services.cf"))
	if err != nil {
		panic(fmt.Sprintf("the Postfix services template: %v", err))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "127.0.0.1:%d inet n - n - - smtpd\n", smtpPort)
	b.Write(services)
	for _, l := range extra {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}

// startPostfix starts a private Postfix instance and stops it when the
// test ends.
func startPostfix(t testing.TB, opts postfixOptions) *postfixInstance {
	t.Helper()
	recordInputs()
	if opts.RelayPort == 0 {
		t.Fatalf("startPostfix: RelayPort (the sink's port) is required")
	}
	slot, dir, unlock := acquireSlot(t)
	p := &postfixInstance{
		t:           t,
		name:        fmt.Sprintf("lacre-it-pf%d", slot),
		dir:         dir,
		configDir:   filepath.Join(dir, "etc"),
		queueDir:    filepath.Join(dir, "queue"),
		dataDir:     filepath.Join(dir, "data"),
		logFile:     filepath.Join(dir, "maillog"),
		smtpTimeout: 5 * time.Minute,
		unlock:      unlock,
	}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("Postfix %s log (%s), last lines:\n%s", p.name, p.logFile, tail(p.log(), 150))
		}
		p.unlock()
	})
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ { // a new port if someone took ours
		p.smtpPort = freePort(t)
		if lastErr = p.configure(opts); lastErr != nil {
			t.Fatalf("configuring Postfix: %v", lastErr)
		}
		if lastErr = p.start(); lastErr == nil {
			return p
		}
		p.stop()
	}
	t.Fatalf("starting Postfix: %v\nlog:\n%s", lastErr, tail(p.log(), 50))
	return nil
}

// acquireSlot takes a free slot (flock, so also across test processes),
// stops whatever a crashed earlier run left running in it, and empties it.
func acquireSlot(t testing.TB) (int, string, func()) {
	t.Helper()
	deadline := time.Now().Add(slotWaitTimeout)
	for {
		for i := 0; i < postfixSlots; i++ {
			dir := string(slotPath(i))
			unlock, err := flock(dir+".lock", false)
			if err != nil {
				continue
			}
			etc := filepath.Join(dir, "etc")
			if pid := masterPID(filepath.Join(dir, "queue"), etc); pid > 0 {
				t.Logf("stopping a Postfix master (pid %d) left running in %s", pid, dir)
				stopMaster(pid, etc)
			}
			if err := os.RemoveAll(dir); err != nil {
				unlock()
				t.Fatalf("emptying %s: %v", dir, err)
			}
			return i, dir, unlock
		}
		if time.Now().After(deadline) {
			t.Fatalf("all %d Postfix slots in %s are in use for %v", postfixSlots, baseDir, slotWaitTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// configure writes the instance's directories, main.cf and master.cf.
func (p *postfixInstance) configure(opts postfixOptions) error {
	if err := os.RemoveAll(p.dir); err != nil {
		return err
	}
	for _, d := range []string{p.dir, p.configDir, p.queueDir, p.dataDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		// Postfix's daemons (user postfix) read main.cf and walk into the
		// queue: the whole path must be searchable.
		if err := os.Chmod(d, 0o755); err != nil {
			return err
		}
	}
	if err := os.Chown(p.dataDir, postfixUID, postfixGID); err != nil {
		return err
	}
	if err := os.Chmod(p.dataDir, 0o700); err != nil {
		return err
	}
	p.main = defaultMain(p, opts.RelayPort)
	p.main["smtpd_milters"] = opts.SMTPDMilters
	p.main["non_smtpd_milters"] = opts.NonSMTPDMilters
	for k, v := range opts.Main {
		p.main[k] = v
	}
	if err := p.writeMain(); err != nil {
		return err
	}
	if err := writeCold(filepath.Join(p.configDir, "master.cf"), []byte(masterCF(p.smtpPort, opts.Master))); err != nil {
		return err
	}
	if opts.Setup != nil {
		return opts.Setup(p.configDir)
	}
	return nil
}

func (p *postfixInstance) writeMain() error {
	names := make([]string, 0, len(p.main))
	for k := range p.main {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("# Written by the lacre-milter integration test harness.\n")
	for _, k := range names {
		fmt.Fprintf(&b, "%s = %s\n", k, p.main[k])
	}
	return writeCold(filepath.Join(p.configDir, "main.cf"), []byte(b.String()))
}

// writeCold writes a Postfix configuration file with a modification time
// in the past. Postfix reads a file changed within the last second or so
// as "hot" (being edited): it re-reads it every 300 ms until it has cooled
// down, which made every postconf call of "postfix start" wait ~2 s.
func writeCold(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return err
	}
	past := time.Now().Add(-time.Minute)
	return os.Chtimes(path, past, past)
}

// start runs "postfix start" (which creates the queue's subdirectories
// with the right owners) and waits until smtpd accepts connections.
func (p *postfixInstance) start() error {
	if _, err := run(nil, nil, postfixCmd, "-c", p.configDir, "start"); err != nil {
		return err
	}
	// "postfix start" waits for master's initialisation (master -w), so
	// the listener exists; check anyway, bounded.
	return waitPort(p.smtpAddr(), postfixStartTimeout, nil)
}

// stop stops the instance and waits for its master to exit (SIGKILL to
// its process group if it does not). Safe to call more than once.
func (p *postfixInstance) stop() {
	if pid := masterPID(p.queueDir, p.configDir); pid > 0 {
		stopMaster(pid, p.configDir)
	}
}

// stopMaster runs "postfix stop" and waits for master pid to exit,
// killing its process group after postfixStopTimeout.
func stopMaster(pid int, configDir string) {
	run(nil, nil, postfixCmd, "-c", configDir, "stop")
	deadline := time.Now().Add(postfixStopTimeout)
	for isMaster(pid, configDir) {
		if time.Now().After(deadline) {
			// master called setsid(): its children share its process group.
			syscall.Kill(-pid, syscall.SIGKILL)
			syscall.Kill(pid, syscall.SIGKILL)
			time.Sleep(100 * time.Millisecond)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// masterPID returns the pid of the running master of this instance, or 0.
func masterPID(queueDir, configDir string) int {
	b, err := os.ReadFile(filepath.Join(queueDir, "pid", "master.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || !isMaster(pid, configDir) {
		return 0
	}
	return pid
}

// isMaster tells whether pid is a live (not zombie) Postfix master of the
// instance in configDir (postfix(1) passes MAIL_CONFIG down to master).
func isMaster(pid int, configDir string) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || !strings.Contains(s[:i], "(master") {
		return false
	}
	if f := strings.Fields(s[i+1:]); len(f) == 0 || f[0] == "Z" || f[0] == "X" {
		return false
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return false
	}
	for _, kv := range bytes.Split(env, []byte{0}) {
		if string(kv) == "MAIL_CONFIG="+configDir {
			return true
		}
	}
	return false
}

// smtpAddr is the instance's smtpd, "127.0.0.1:PORT".
func (p *postfixInstance) smtpAddr() string { return fmt.Sprintf("127.0.0.1:%d", p.smtpPort) }

// sendSMTP submits msg over SMTP to the instance's smtpd. A 4xx/5xx
// reply (to any RCPT, to DATA or after the final dot) is returned as a
// *sendError holding one *smtpError per refusal (errors.As finds the
// first). Recipients that were accepted get the message even when others
// were refused. Bare LF line ends in msg are sent as CRLF.
func (p *postfixInstance) sendSMTP(t testing.TB, from string, to []string, msg []byte) error {
	t.Helper()
	_, err := smtpSend(p.smtpAddr(), from, to, msg, p.smtpTimeout)
	return err
}

// sendSMTPID is sendSMTP that also returns Postfix's queue id from the
// final "250 2.0.0 Ok: queued as ID".
func (p *postfixInstance) sendSMTPID(t testing.TB, from string, to []string, msg []byte) (string, error) {
	t.Helper()
	return smtpSend(p.smtpAddr(), from, to, msg, p.smtpTimeout)
}

// sendmail submits msg with Postfix's sendmail command (the non_smtpd
// path: postdrop → maildrop → pickup → cleanup with non_smtpd_milters).
func (p *postfixInstance) sendmail(t testing.TB, from string, to []string, msg []byte) error {
	t.Helper()
	args := append([]string{"-C", p.configDir, "-f", from, "-i", "--"}, to...)
	_, err := run(msg, []string{"MAIL_CONFIG=" + p.configDir}, sendmailCmd, args...)
	return err
}

// flush asks the queue manager to retry all deferred mail now.
func (p *postfixInstance) flush() error {
	_, err := run(nil, nil, postqueueCmd, "-c", p.configDir, "-f")
	return err
}

// postsuper runs postsuper on the instance, e.g. ("-H", "ALL") to release
// the hold queue or ("-d", "ALL") to delete everything.
func (p *postfixInstance) postsuper(t testing.TB, args ...string) {
	t.Helper()
	if _, err := run(nil, nil, postsuperCmd, append([]string{"-c", p.configDir}, args...)...); err != nil {
		t.Fatal(err)
	}
}

// queueEntry is one message of "postqueue -j".
type queueEntry struct {
	QueueName    string           `json:"queue_name"` // incoming, active, deferred, hold, maildrop
	QueueID      string           `json:"queue_id"`
	ArrivalTime  int64            `json:"arrival_time"`
	MessageSize  int64            `json:"message_size"`
	ForcedExpire bool             `json:"forced_expire"`
	Sender       string           `json:"sender"`
	Recipients   []queueRecipient `json:"recipients"`
}

type queueRecipient struct {
	Address     string `json:"address"`
	DelayReason string `json:"delay_reason"`
}

// queue lists every message in the instance's queues, hold included.
func (p *postfixInstance) queue(t testing.TB) []queueEntry {
	t.Helper()
	out, err := run(nil, nil, postqueueCmd, "-c", p.configDir, "-j")
	if err != nil {
		t.Fatal(err)
	}
	var q []queueEntry
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 16<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var e queueEntry
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatalf("postqueue -j: %v: %q", err, line)
		}
		q = append(q, e)
	}
	return q
}

// waitQueue polls the queue until cond holds, failing the test after
// timeout.
func (p *postfixInstance) waitQueue(t testing.TB, timeout time.Duration, what string, cond func([]queueEntry) bool) []queueEntry {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		q := p.queue(t)
		if cond(q) {
			return q
		}
		if time.Now().After(deadline) {
			t.Fatalf("Postfix queue: not %s within %v; queue: %+v", what, timeout, q)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// log returns the instance's maillog so far.
func (p *postfixInstance) log() string {
	b, _ := os.ReadFile(p.logFile)
	return string(b)
}

// waitLog waits until the maillog contains substr and returns the log.
func (p *postfixInstance) waitLog(t testing.TB, substr string, timeout time.Duration) string {
	t.Helper()
	return waitText(t, "Postfix log", p.log, substr, timeout)
}

// waitText polls read until its text contains substr and returns the
// text; after timeout it fails the test with the text's last lines.
func waitText(t testing.TB, what string, read func() string, substr string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		l := read()
		if strings.Contains(l, substr) {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q within %v; last lines:\n%s", what, substr, timeout, tail(l, 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// setMain changes main.cf settings and restarts the instance (queue kept,
// same port). Not "postfix reload": after a reload, idle smtpd processes
// of the old configuration go on accepting the next connections.
func (p *postfixInstance) setMain(t testing.TB, settings map[string]string) {
	t.Helper()
	for k, v := range settings {
		p.main[k] = v
	}
	if err := p.writeMain(); err != nil {
		t.Fatal(err)
	}
	p.restart(t)
}

// restart stops the instance and starts it again with its configuration
// and queue.
func (p *postfixInstance) restart(t testing.TB) {
	t.Helper()
	p.stop()
	if err := p.start(); err != nil {
		t.Fatalf("restarting Postfix: %v\nlog:\n%s", err, tail(p.log(), 50))
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "")
}

// ---------------------------------------------------------------------
// lacre-milter

// milterProc is a lacre-milter serve process.
type milterProc struct {
	t          testing.TB
	dir        string // working directory, config and key store
	configPath string
	port       int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	err  error         // cmd.Wait's result
	out  *tailBuffer
}

// noAliasesTOML switches recipient expansion off in a milter config that
// has no [aliases] table of its own (see startMilter).
const noAliasesTOML = "\n[aliases]\nsource = \"none\"\n"

// startMilter writes configTOML to a file in a temporary directory, with
// [milter] listen on a free loopback port and [store] database = "keys.db"
// added (configTOML must not set those two), and [aliases] source = "none"
// unless configTOML has an [aliases] table, starts "lacre-milter -config
// FILE serve" and waits until it accepts connections. The process is
// stopped (SIGTERM, then SIGKILL) when the test ends, and its output is
// written to the test log.
func startMilter(t testing.TB, configTOML string) *milterProc {
	t.Helper()
	recordInputs()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	m := &milterProc{t: t, dir: t.TempDir(), port: freePort(t), out: &tailBuffer{max: 4 << 20}}
	m.configPath = filepath.Join(m.dir, "lacre.toml")
	cfg := withTableKey(configTOML, "milter", "listen", strconv.Quote(fmt.Sprintf("inet:127.0.0.1:%d", m.port)))
	cfg = withTableKey(cfg, "store", "database", `"keys.db"`)
	if !strings.Contains(cfg, "[aliases]") {
		// The default, source = "auto", would read the system's
		// Postfix, not the test's instance: tests of the expansion set
		// [aliases] themselves (aliases_test.go).
		cfg = withTableKey(cfg, "aliases", "source", `"none"`)
	}
	if err := os.WriteFile(m.configPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if m.running() {
			if err := m.stop(); err != nil {
				t.Errorf("lacre-milter: %v", err)
			}
		}
		if out := m.out.String(); out != "" {
			t.Logf("lacre-milter output:\n%s", out)
		}
	})
	// The store is made once, as an operator does; "serve" (also on a
	// restart) never creates one.
	if out, err := m.cli(nil, "store", "init"); err != nil {
		t.Fatalf("lacre-milter store init: %v\n%s", err, out)
	}
	m.start(t)
	return m
}

// withTableKey adds "key = value" to [table] in a TOML text: after the
// table's header if it has one, else in a new table at the end.
func withTableKey(toml, table, key, value string) string {
	lines := strings.Split(toml, "\n")
	for i, l := range lines {
		l = strings.TrimSpace(l)
		if j := strings.IndexByte(l, '#'); j >= 0 {
			l = strings.TrimSpace(l[:j])
		}
		if l == "["+table+"]" {
			out := append([]string(nil), lines[:i+1]...)
			out = append(out, key+" = "+value)
			return strings.Join(append(out, lines[i+1:]...), "\n")
		}
	}
	return strings.TrimRight(toml, "\n") + fmt.Sprintf("\n\n[%s]\n%s = %s\n", table, key, value)
}

// addr is the milter's address in Postfix's notation, for smtpd_milters.
// logSays reports whether the milter's log contains s within a second: the
// log reaches the harness through a pipe, so a line the milter wrote
// before answering the MTA may arrive here just after the answer.
func (m *milterProc) logSays(s string) bool {
	for deadline := time.Now().Add(time.Second); ; time.Sleep(20 * time.Millisecond) {
		if strings.Contains(m.out.String(), s) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

func (m *milterProc) addr() string { return fmt.Sprintf("inet:127.0.0.1:%d", m.port) }

// start starts the process (again, after stop or kill) on the same port
// and configuration.
func (m *milterProc) start(t testing.TB) {
	t.Helper()
	m.mu.Lock()
	cmd := exec.Command(milterBin, "-config", m.configPath, "serve")
	cmd.Dir = m.dir
	cmd.Stdout = m.out
	cmd.Stderr = m.out
	// Dies with the test binary, whatever happens to the cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		m.mu.Unlock()
		t.Fatalf("starting lacre-milter: %v", err)
	}
	done := make(chan struct{})
	m.cmd, m.done, m.err = cmd, done, nil
	m.mu.Unlock()
	go func() {
		err := cmd.Wait()
		m.mu.Lock()
		m.err = err
		m.mu.Unlock()
		close(done)
	}()
	if err := waitPort(fmt.Sprintf("127.0.0.1:%d", m.port), milterStartTimeout, done); err != nil {
		m.kill()
		t.Fatalf("lacre-milter serve: %v; output:\n%s", err, m.out.String())
	}
}

func (m *milterProc) running() bool {
	m.mu.Lock()
	done := m.done
	m.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits; after milterStopTimeout it sends SIGKILL.
// It returns an error if the process needed SIGKILL or exited with a
// failure status.
func (m *milterProc) stop() error {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	if cmd == nil {
		return nil
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(milterStopTimeout):
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("did not exit within %v of SIGTERM; killed", milterStopTimeout)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return fmt.Errorf("after SIGTERM: %v", m.err)
	}
	return nil
}

// kill sends SIGKILL (a crash, for fault tests) and waits for the exit.
func (m *milterProc) kill() {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-done
}

// restart stops the process (SIGTERM) and starts it again.
func (m *milterProc) restart(t testing.TB) {
	t.Helper()
	if err := m.stop(); err != nil {
		t.Errorf("lacre-milter: %v", err)
	}
	m.start(t)
}

// cli runs "lacre-milter -config FILE ARGS..." with stdin and returns its
// combined output.
func (m *milterProc) cli(stdin []byte, args ...string) (string, error) {
	if buildErr != nil {
		return "", buildErr
	}
	out, err := run(stdin, nil, milterBin, append([]string{"-config", m.configPath}, args...)...)
	return string(out), err
}

// keysAdd binds an armoured (or binary) public key to address in the
// milter's key store ("keys add ADDRESS -"). The running milter sees it
// once its lookup cache expires ([store] cache_ttl).
func (m *milterProc) keysAdd(t testing.TB, address string, armoredKey []byte) {
	t.Helper()
	if _, err := m.cli(armoredKey, "keys", "add", address, "-"); err != nil {
		t.Fatal(err)
	}
}

// tailBuffer is a goroutine-safe writer that keeps the last max bytes.
type tailBuffer struct {
	mu      sync.Mutex
	max     int
	b       []byte
	dropped int
}

func (w *tailBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b = append(w.b, p...)
	if over := len(w.b) - w.max; over > 0 {
		w.dropped += over
		w.b = append(w.b[:0], w.b[over:]...)
	}
	return len(p), nil
}

func (w *tailBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dropped > 0 {
		return fmt.Sprintf("[%d bytes dropped]\n%s", w.dropped, w.b)
	}
	return string(w.b)
}
