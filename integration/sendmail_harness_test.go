package integration

// A real Sendmail for the integration tests. Debian's sendmail-bin
// conflicts with postfix, so it lives in a debootstrap chroot of its own
// that shares the host's network: the chroot's Sendmail listens on a
// loopback port, talks to lacre-milter on another and relays to the Go
// sink. The chroot is built once and kept in sendmailRootDir; a stamp
// file says what it was built with, so a change to sendmailStamp rebuilds
// it.

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	sendmailRootDir = "/var/tmp/lacre-it/sendmail-bookworm"
	// sendmailStamp names what the chroot holds; change it to rebuild.
	sendmailStamp = "debootstrap minbase bookworm + sendmail-bin sendmail-cf m4, v1\n"
	// sendmailBuildTimeout bounds debootstrap plus the package install
	// (about 45 s here with a nearby mirror).
	sendmailBuildTimeout = 10 * time.Minute
)

// sendmailRoot returns the chroot with Sendmail, building it when it is
// missing or stale, and holds a lock on it until the test ends: one
// Sendmail instance at a time owns the chroot's /dev/log. Without root or
// debootstrap the test is skipped, or fails when CI is set.
func sendmailRoot(t testing.TB) string {
	t.Helper()
	if _, err := exec.LookPath("debootstrap"); err != nil {
		if _, err2 := os.Stat("/usr/sbin/debootstrap"); err2 != nil {
			skipOrFail(t, "debootstrap is not installed (apt-get install debootstrap): it builds the Sendmail chroot")
		}
	}
	if err := os.MkdirAll(filepath.Dir(sendmailRootDir), 0o755); err != nil {
		t.Fatal(err)
	}
	unlock, err := flock(sendmailRootDir+".lock", true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
	if b, err := os.ReadFile(filepath.Join(sendmailRootDir, ".lacre-stamp")); err == nil && string(b) == sendmailStamp {
		return sendmailRootDir
	}
	t.Logf("building the Sendmail chroot in %s (debootstrap; once)", sendmailRootDir)
	start := time.Now()
	if err := buildSendmailRoot(); err != nil {
		t.Fatalf("building the Sendmail chroot: %v", err)
	}
	t.Logf("Sendmail chroot built in %v", time.Since(start).Round(time.Second))
	return sendmailRootDir
}

// skipOrFail skips a test whose tool is missing, except in CI, where a
// missing tool is a failure.
func skipOrFail(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (CI is set: a missing tool is a failure)", reason)
	}
	t.Skipf("%s (set CI=1 to make this a failure)", reason)
}

// buildSendmailRoot debootstraps a minimal Debian into a temporary
// directory next to sendmailRootDir, installs Sendmail there and renames
// the result into place.
func buildSendmailRoot() error {
	ctx, cancel := context.WithTimeout(context.Background(), sendmailBuildTimeout)
	defer cancel()
	tmp := sendmailRootDir + ".new"
	os.RemoveAll(tmp)
	mirror := os.Getenv("LACRE_DEBIAN_MIRROR")
	if mirror == "" {
		mirror = "http://deb.debian.org/debian"
	}
	runCtx := func(name string, args ...string) error {
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
		cmd.WaitDelay = 5 * time.Second
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, tail(string(out), 30))
		}
		return nil
	}
	if err := runCtx("debootstrap", "--variant=minbase", "bookworm", tmp, mirror); err != nil {
		return err
	}
	// No service may start inside the chroot while packages install: it
	// shares the host's network (port 25).
	if err := os.WriteFile(filepath.Join(tmp, "usr/sbin/policy-rc.d"), []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
		return err
	}
	// sendmail-bin's maintainer scripts need /proc.
	proc := filepath.Join(tmp, "proc")
	if err := syscall.Mount("proc", proc, "proc", 0, ""); err != nil {
		return fmt.Errorf("mounting /proc in the chroot: %v", err)
	}
	err := runCtx("chroot", tmp, "apt-get", "install", "-y", "-q", "--no-install-recommends", "sendmail-bin", "sendmail-cf", "m4")
	if uerr := syscall.Unmount(proc, syscall.MNT_DETACH); uerr != nil && err == nil {
		err = fmt.Errorf("unmounting the chroot's /proc: %v", uerr)
	}
	if err != nil {
		return err
	}
	runCtx("chroot", tmp, "apt-get", "clean")
	if err := os.WriteFile(filepath.Join(tmp, ".lacre-stamp"), []byte(sendmailStamp), 0o644); err != nil {
		return err
	}
	os.RemoveAll(sendmailRootDir)
	return os.Rename(tmp, sendmailRootDir)
}

// sendmailOptions configure a Sendmail instance.
type sendmailOptions struct {
	RelayPort int    // the sink: every recipient is relayed to 127.0.0.1:RelayPort
	Milter    string // Sendmail's S= socket, "inet:PORT@127.0.0.1"; "" for none
	// MilterTimeouts is the filter's T= equate; "" means the one the
	// README recommends.
	MilterTimeouts string
}

// sendmailInstance is a running Sendmail daemon in the chroot.
type sendmailInstance struct {
	root     string
	smtpPort int
	cmd      *exec.Cmd
	done     chan struct{}
	syslog   *tailBuffer // what Sendmail logged, read from the chroot's /dev/log
}

// sendmailMC is the test instance's sendmail.mc: Debian's OSTYPE, one
// loopback listener, everything relayed to the sink, lacre as input
// filter with F=T (temporary failure when the filter is unavailable).
// DNS is left out (no canonification, no resolver) so that nothing waits
// for a name server.
const sendmailMC = "divert(-1)\n" +
	"include(`/usr/share/sendmail/cf/m4/cf.m4')dnl\n" +
	"divert(0)dnl\n" +
	"VERSIONID(`lacre integration test')dnl\n" +
	"OSTYPE(`debian')dnl\n" +
	"define(`confDONT_PROBE_INTERFACES', `True')dnl\n" +
	"define(`confDOMAIN_NAME', `mx.sendmail.test')dnl\n" +
	"define(`confSERVICE_SWITCH_FILE', `/etc/mail/service.switch-nodns')dnl\n" +
	"define(`confQUEUE_DIR', `{{.Spool}}')dnl\n" +
	"define(`confPID_FILE', `{{.Spool}}/sendmail.pid')dnl\n" +
	"define(`confHOST_STATUS_DIRECTORY', `')dnl\n" +
	// As Debian's own configuration: Sendmail checks its queue files as
	// TrustedUser when running as root, and the queue belongs to smmta.
	"define(`confTRUSTED_USER', `smmta')dnl\n" +
	"define(`confLOG_LEVEL', `9')dnl\n" +
	"define(`confMILTER_LOG_LEVEL', `6')dnl\n" +
	"define(`confMAX_MESSAGE_SIZE', `60000000')dnl\n" +
	"define(`confTO_IDENT', `0s')dnl\n" +
	"define(`SMART_HOST', `esmtp:[127.0.0.1]')dnl\n" +
	"define(`ESMTP_MAILER_ARGS', `TCP $h {{.RelayPort}}')dnl\n" +
	"DAEMON_OPTIONS(`Family=inet, Name=MTA, Port={{.Port}}, Addr=127.0.0.1')dnl\n" +
	"FEATURE(`no_default_msa')dnl\n" + // no port 587 listener
	"FEATURE(`nocanonify')dnl\n" +
	"FEATURE(`accept_unresolvable_domains')dnl\n" +
	"FEATURE(`promiscuous_relay')dnl\n" + // loopback only, test instance
	"{{.Filter}}" +
	"MAILER(`smtp')dnl\n"

// sendmailMilterTimeouts is what the README recommends: Sendmail's
// default of 10 s for each reply (R) is too short for the end-of-message
// reply of a large message on a busy host; E bounds the whole end of
// message.
const sendmailMilterTimeouts = "C:10s;S:10s;R:2m;E:10m"

var sendmailSeq struct {
	sync.Mutex
	n int
}

// startSendmail writes a configuration for this instance into the
// chroot, starts "sendmail -bD" there (foreground daemon) and waits for
// its port. It is stopped when the test ends, and its syslog lines are
// written to the test log when the test fails.
func startSendmail(t testing.TB, opts sendmailOptions) *sendmailInstance {
	t.Helper()
	root := sendmailRoot(t)
	sendmailSeq.Lock()
	sendmailSeq.n++
	name := fmt.Sprintf("lacre-test-%d-%d", os.Getpid(), sendmailSeq.n)
	sendmailSeq.Unlock()
	si := &sendmailInstance{root: root, smtpPort: freePort(t), syslog: &tailBuffer{max: 1 << 20}}
	spool := "/var/spool/" + name
	if err := os.MkdirAll(filepath.Join(root, spool), 0o750); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("chroot", root, "chown", "smmta:smmsp", spool).CombinedOutput(); err != nil {
		t.Fatalf("chown %s: %v: %s", spool, err, out)
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Join(root, spool)) })
	filter := ""
	if opts.Milter != "" {
		tmo := opts.MilterTimeouts
		if tmo == "" {
			tmo = sendmailMilterTimeouts
		}
		filter = fmt.Sprintf("INPUT_MAIL_FILTER(`lacre', `S=%s, F=T, T=%s')dnl\n", opts.Milter, tmo)
	}
	mc := strings.NewReplacer("{{.Spool}}", spool, "{{.RelayPort}}", fmt.Sprint(opts.RelayPort),
		"{{.Port}}", fmt.Sprint(si.smtpPort), "{{.Filter}}", filter).Replace(sendmailMC)
	mcPath := filepath.Join(spool, "sendmail.mc")
	cfPath := filepath.Join(spool, "sendmail.cf")
	if err := os.WriteFile(filepath.Join(root, mcPath), []byte(mc), 0o644); err != nil {
		t.Fatal(err)
	}
	cf, err := exec.Command("chroot", root, "m4", mcPath).Output()
	if err != nil {
		t.Fatalf("m4 %s: %v", mcPath, err)
	}
	if err := os.WriteFile(filepath.Join(root, cfPath), cf, 0o644); err != nil {
		t.Fatal(err)
	}
	si.listenSyslog(t)

	cmd := exec.Command("chroot", root, "/usr/sbin/sendmail-mta", "-bD", "-C", cfPath)
	cmd.Stdout = si.syslog
	cmd.Stderr = si.syslog
	// Its own process group, so that stopping it also stops the children
	// that deliver in the background; and it dies with the test binary.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting sendmail: %v", err)
	}
	si.cmd, si.done = cmd, make(chan struct{})
	go func() { cmd.Wait(); close(si.done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-si.done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-si.done
		}
		if t.Failed() {
			t.Logf("sendmail log:\n%s", tail(si.syslog.String(), 60))
		}
	})
	if err := waitPort(si.smtpAddr(), 30*time.Second, si.done); err != nil {
		t.Fatalf("sendmail: %v\n%s", err, si.syslog.String())
	}
	return si
}

// listenSyslog receives what Sendmail logs: it writes to /dev/log, which
// in the chroot is a socket of ours.
func (si *sendmailInstance) listenSyslog(t testing.TB) {
	t.Helper()
	path := filepath.Join(si.root, "dev/log")
	os.Remove(path)
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listening on the chroot's /dev/log: %v", err)
	}
	t.Cleanup(func() { c.Close(); os.Remove(path) })
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			line := string(buf[:n])
			// "<22>Nov 26 20:40:01 sendmail[123]: ..." → "sendmail[123]: ..."
			if strings.HasPrefix(line, "<") {
				if i := strings.IndexByte(line, '>'); i > 0 && len(line) > i+1+16 {
					line = line[i+1+16:]
				}
			}
			si.syslog.Write([]byte(strings.TrimRight(line, "\n") + "\n"))
		}
	}()
}

func (si *sendmailInstance) smtpAddr() string { return fmt.Sprintf("127.0.0.1:%d", si.smtpPort) }

// sendSMTP submits msg to the instance over SMTP; see smtpSend.
func (si *sendmailInstance) sendSMTP(t testing.TB, from string, to []string, msg []byte) error {
	t.Helper()
	_, err := smtpSend(si.smtpAddr(), from, to, msg, 3*time.Minute)
	return err
}

// log is what Sendmail has logged so far.
func (si *sendmailInstance) log() string { return si.syslog.String() }

// waitLog waits until Sendmail's log contains substr.
func (si *sendmailInstance) waitLog(t testing.TB, substr string, timeout time.Duration) string {
	t.Helper()
	return waitText(t, "Sendmail log", si.log, substr, timeout)
}
