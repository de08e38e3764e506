package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"lacre.io/milter/config"
	"lacre.io/milter/gpgmailgate"
	"lacre.io/milter/keys"
)

// importTimeout bounds a whole import (reading the source and the store).
const importTimeout = 30 * time.Minute

func importGnuPG(e *env, args []string) error {
	fs := e.flags("import gnupg")
	dry := fs.Bool("dry-run", false, "print what would change, change nothing")
	replace := fs.Bool("replace", false, "unbind an address's other keys, as \"keys add -replace\" does")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("want one GnuPG home directory: %w", errUsage)
	}
	ctx, cancel := context.WithTimeout(context.Background(), importTimeout)
	defer cancel()
	entries, err := gpgmailgate.ReadGnuPGHome(ctx, pos[0])
	if err != nil {
		return fmt.Errorf("nothing changed: %w", err)
	}
	fmt.Fprintf(e.stdout, "GnuPG home %s: %d public key(s)\n", pos[0], len(entries))
	return e.runImport(ctx, entries, *dry, *replace)
}

// importSMIME imports gpg-mailgate's [smime] cert_path: one certificate
// file per address, named by it (gpgmailgate.ReadCertDir).
func importSMIME(e *env, args []string) error {
	fs := e.flags("import smime")
	dry := fs.Bool("dry-run", false, "print what would change, change nothing")
	replace := fs.Bool("replace", false, "unbind an address's other certificates, as \"keys add -replace\" does (its OpenPGP keys stay)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("want one directory (gpg-mailgate's [smime] cert_path): %w", errUsage)
	}
	entries, err := gpgmailgate.ReadCertDir(pos[0])
	if err != nil {
		return fmt.Errorf("nothing changed: %w", err)
	}
	fmt.Fprintf(e.stdout, "certificate directory %s: %d file(s)\n", pos[0], len(entries))
	ctx, cancel := context.WithTimeout(context.Background(), importTimeout)
	defer cancel()
	return e.runImport(ctx, entries, *dry, *replace)
}

func importGpgmw(e *env, args []string) error {
	fs := e.flags("import gpgmw")
	dry := fs.Bool("dry-run", false, "print what would change, change nothing")
	replace := fs.Bool("replace", false, "unbind an address's other keys, and remove the keys of an address the database says has none")
	table := fs.String("table", gpgmailgate.DefaultTable, "the registrations table")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("want one DSN (mysql://USER:PASS@HOST:PORT/DB, postgres://…, or an SQLite file): %w", errUsage)
	}
	c, err := e.loadConfig()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), importTimeout)
	defer cancel()
	db, what, err := gpgmailgate.OpenDSN(pos[0])
	if err != nil {
		return fmt.Errorf("nothing changed: %w", err)
	}
	defer db.Close()
	rows, err := gpgmailgate.ReadRows(ctx, db, *table)
	if err != nil {
		return fmt.Errorf("nothing changed: %s: %w", what, err)
	}
	fmt.Fprintf(e.stdout, "%s, table %s: %d row(s)\n", what, *table, len(rows))
	norm := normalizer(c)
	return e.runImport(ctx, gpgmailgate.RowEntries(rows, norm.Normalize), *dry, *replace)
}

// runImport brings entries into the configured store through
// keys.Admit and prints the report. Anything refused is an error, so
// that the exit status tells scripts.
func (e *env) runImport(ctx context.Context, entries []gpgmailgate.Entry, dry, replace bool) error {
	c, s, r, err := e.open()
	if err != nil {
		return err
	}
	defer s.Close()
	domains, err := webDomains(c, r.Policy().Normalizer)
	if err != nil {
		return err
	}
	im := &gpgmailgate.Importer{Store: s, Policy: r.Policy(), Domains: domains, Replace: replace, DryRun: dry}
	rep, err := im.Run(ctx, entries)
	if rep != nil {
		rep.Write(e.stdout)
	}
	if err != nil {
		return fmt.Errorf("stopped: the lines above were done, the rest not: %w", err)
	}
	if n := rep.Refused(); n > 0 {
		return fmt.Errorf("%d refused (see above)", n)
	}
	return nil
}

func webDomains(c *config.Config, n keys.Normalizer) ([]string, error) {
	var out []string
	for _, d := range c.Web.Domains {
		nd, err := n.NormalizeDomain(d)
		if err != nil {
			return nil, fmt.Errorf("web.domains: %v", err)
		}
		out = append(out, nd)
	}
	return out, nil
}

func importConfig(e *env, args []string) error {
	pos, err := parseFlags(e.flags("import config"), args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("want the gpg-mailgate.conf file: %w", errUsage)
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return err
	}
	conf, err := gpgmailgate.ParseConf(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", pos[0], err)
	}
	c, s, _, err := e.open()
	if err != nil {
		return fmt.Errorf("the key store resolves [enc_keymap]'s key IDs: %w", err)
	}
	defer s.Close()
	bs, err := s.List(context.Background())
	if err != nil {
		return err
	}
	var stored []*keys.Key
	for _, b := range bs {
		stored = append(stored, b.Key)
	}
	// The printed file names the store the keys are in: a file path made
	// absolute (the new file may live elsewhere), a database URL as is.
	dbPath := c.Store.Database
	if !strings.Contains(dbPath, "://") {
		if dbPath, err = filepath.Abs(c.DatabasePath()); err != nil {
			return err
		}
	}
	tr := gpgmailgate.Translate(conf, gpgmailgate.TranslateOptions{
		Resolve:       func(id string) (string, error) { return gpgmailgate.ResolveKeyID(id, stored) },
		StoreDatabase: dbPath,
	})
	// What is printed must load: check it as check-config would.
	if err := checkTOML(tr.TOML); err != nil {
		return fmt.Errorf("the translation does not load (a bug; please report it): %w", err)
	}
	fmt.Fprint(e.stdout, tr.TOML)
	for _, p := range tr.Problems {
		fmt.Fprintf(e.stderr, "lacre-milter import config: %s\n", p)
	}
	if len(tr.Problems) > 0 {
		return fmt.Errorf("%d option(s) need your attention (see above, and the comments in the output)", len(tr.Problems))
	}
	return nil
}

// checkTOML loads text with the config package, as the daemon will.
func checkTOML(text string) error {
	dir, err := os.MkdirTemp("", "lacre-import-config-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, "lacre.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		return err
	}
	c, err := config.Load(p)
	if err != nil {
		return err
	}
	opt, err := resolverOptions(c)
	if err != nil {
		return err
	}
	return opt.Check()
}
