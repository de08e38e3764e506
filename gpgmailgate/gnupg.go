package gpgmailgate

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The keyring files of a GnuPG home directory that hold public keys:
// the keybox of GnuPG ≥ 2.1 and the keyring of earlier versions (which
// GnuPG 2 still uses when there is no keybox).
var keyringFiles = []string{"pubring.kbx", "pubring.gpg"}

// gpgTimeout bounds each gpg run.
const gpgTimeout = 2 * time.Minute

// ReadGnuPGHome returns the entries of every public key in the GnuPG
// home directory dir, one per key, for the addresses of its User IDs.
//
// It runs the gpg binary on a private copy of the directory's keyring
// files, so the operator's directory is never written to (gpg updates
// its trust database and lock files even when only listing). The copy
// holds no gpg.conf and no private keys.
func ReadGnuPGHome(ctx context.Context, dir string) ([]Entry, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory (want a GnuPG home, e.g. /var/gpgmailgate/.gnupg)", dir)
	}
	gpg, err := exec.LookPath("gpg")
	if err != nil {
		return nil, fmt.Errorf("the gpg command is needed to read a GnuPG home directory (apt-get install gnupg): %w", err)
	}
	tmp, err := os.MkdirTemp("", "lacre-import-gnupg-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	found := false
	for _, name := range keyringFiles {
		err := copyFile(filepath.Join(dir, name), filepath.Join(tmp, name))
		switch {
		case err == nil:
			found = true
		case errors.Is(err, fs.ErrNotExist):
		default:
			return nil, err
		}
	}
	if !found {
		return nil, fmt.Errorf("%s holds no public keyring (%s)", dir, strings.Join(keyringFiles, " or "))
	}
	g := gpgRunner{path: gpg, home: tmp}
	list, err := g.run(ctx, "--with-colons", "--fixed-list-mode", "--list-keys")
	if err != nil {
		return nil, err
	}
	fprs, err := primaryFingerprints(list)
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, f := range fprs {
		data, err := g.run(ctx, "--export", f)
		if err != nil {
			return nil, err
		}
		if len(data) == 0 {
			return nil, fmt.Errorf("gpg --export %s: no output", f)
		}
		out = append(out, Entry{Origin: "gnupg", Data: data})
	}
	return out, nil
}

// gpgRunner runs gpg on one home directory, with no user options and no
// agent.
type gpgRunner struct{ path, home string }

func (g gpgRunner) run(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, gpgTimeout)
	defer cancel()
	all := append([]string{"--homedir", g.home, "--no-options", "--batch", "--no-tty", "--no-autostart",
		"--no-permission-warning", "--trust-model", "always", "--no-auto-check-trustdb"}, args...)
	cmd := exec.CommandContext(ctx, g.path, all...)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GNUPGHOME=") && !strings.HasPrefix(kv, "LC_") && !strings.HasPrefix(kv, "LANG=") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("gpg %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// primaryFingerprints reads "gpg --with-colons --list-keys": the "fpr"
// record that follows each "pub" record is the primary key's.
func primaryFingerprints(list []byte) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(list))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	wantFpr := false
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		switch f[0] {
		case "pub":
			wantFpr = true
		case "fpr":
			if wantFpr && len(f) > 9 && f[9] != "" {
				out = append(out, f[9])
			}
			wantFpr = false
		case "sub", "uid", "uat":
			wantFpr = false
		}
	}
	return out, sc.Err()
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
