// Command lacre-milter is the Lacre OpenPGP encryption gateway: the milter
// daemon and the operator's tools for its key store, in one binary.
//
// Usage:
//
//	lacre-milter [-config FILE] COMMAND [ARGS]
//
// Run "lacre-milter help" for the commands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"lacre.io/milter/config"
	"lacre.io/milter/keys"
)

// version is set at build time with -ldflags "-X main.version=…"; without
// it the module version (or "devel") from the build info is shown.
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// env is what a command may touch of the outside world; tests give their own.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	configFlag     string
}

// errUsage marks errors that are the caller's wrong invocation (exit 2).
var errUsage = errors.New("usage")

type command struct {
	name, args, help string
	run              func(e *env, args []string) error
}

func commands() []command {
	return []command{
		{"serve", "[-init]", "run the milter on [milter] listen (the default command); -init first creates the key store if there is none", serve},
		{"web", "", "run the key-registration service and Web Key Directory on [web] listen", webCmd},
		{"keys add", "[-replace] ADDRESS FILE|-", "validate the OpenPGP public key(s) or the S/MIME certificate (PEM, DER or PKCS #7; a chain is allowed) in FILE (or stdin) and bind them to ADDRESS; -replace unbinds the address's other keys of the same kind", keysAdd},
		{"keys list", "", "list every address and its keys (OpenPGP or X.509), the format of its mail and their state now", keysList},
		{"keys show", "[-export] ADDRESS", "show how mail to ADDRESS is encrypted, and why; -export prints the keys used (ASCII armour, PEM for certificates)", keysShow},
		{"keys remove", "ADDRESS [FINGERPRINT]", "unbind one key, or every key, from ADDRESS", keysRemove},
		{"keys set", "ADDRESS protect-headers on|off|default | ADDRESS format pgp-mime|pgp-inline|smime|default", "set a recipient's own choice of header protection, or of the format of its mail", keysSet},
		{"encrypt", "[-protect-headers] [-hide-recipients] ADDRESS... < MESSAGE", "encrypt a message (RFC 5322, on stdin) for the recipients' keys, as the milter would, to stdout", encryptCmd},
		{"store init", "", "create the key store (store.database) if there is none; no other command creates one", storeInit},
		{"store migrate", "", "bring an existing key store's schema up to date (back it up first)", storeMigrate},
		{"store backup", "FILE", "write a consistent copy of the SQLite key store to the new FILE, while it is in use", storeBackup},
		{"store copy", "FROM TO", "copy every key binding and preference from one store to another, empty one (each an SQLite path or a PostgreSQL connection string)", storeCopy},
		{"import gnupg", "[-dry-run] [-replace] DIR", "bind the public keys of a GnuPG home (gpg-mailgate's [gpg] keyhome) to the addresses of their User IDs, as \"keys add\" would", importGnuPG},
		{"import smime", "[-dry-run] [-replace] DIR", "bind the S/MIME certificates of gpg-mailgate's [smime] cert_path (one PEM file per address, named by it) to their addresses, as \"keys add\" would", importSMIME},
		{"import gpgmw", "[-dry-run] [-replace] [-table NAME] DSN", "import the confirmed keys of gpg-mailgate-web's database (mysql://USER:PASS@HOST:PORT/DB, postgres://…, or an SQLite file)", importGpgmw},
		{"import config", "FILE", "print a lacre.toml for gpg-mailgate.conf FILE, resolving its key IDs against the key store", importConfig},
		{"check-config", "", "validate the configuration and say which file was used", checkConfig},
		{"version", "", "print the version", printVersion},
	}
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	global := flag.NewFlagSet("lacre-milter", flag.ContinueOnError)
	global.SetOutput(stderr)
	global.StringVar(&e.configFlag, "config", "", "configuration `FILE` (default: $LACRE_CONFIG, then "+strings.Join(config.SearchPaths, ", ")+")")
	global.Usage = func() { usage(stderr) }
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	args = global.Args()
	if len(args) == 0 {
		args = []string{"serve"} // the daemon is what runs without a command
	}
	if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		return 0
	}
	for _, c := range commands() {
		words := strings.Fields(c.name)
		if len(args) < len(words) || strings.Join(args[:len(words)], " ") != c.name {
			continue
		}
		err := c.run(e, args[len(words):])
		switch {
		case err == nil:
			return 0
		case errors.Is(err, errUsage):
			fmt.Fprintf(stderr, "usage: lacre-milter %s %s\n", c.name, c.args)
			if msg := strings.TrimSuffix(err.Error(), ": "+errUsage.Error()); msg != errUsage.Error() {
				fmt.Fprintf(stderr, "  %s\n", msg)
			}
			return 2
		case errors.Is(err, flag.ErrHelp):
			return 0
		default:
			fmt.Fprintf(stderr, "lacre-milter %s: %v\n", c.name, err)
			return 1
		}
	}
	// "lacre-milter keys" alone: show the commands of that group.
	var group []command
	for _, c := range commands() {
		if strings.HasPrefix(c.name, args[0]+" ") {
			group = append(group, c)
		}
	}
	if len(group) > 0 {
		fmt.Fprintf(stderr, "lacre-milter %s: want one of:\n", args[0])
		for _, c := range group {
			fmt.Fprintf(stderr, "  lacre-milter %s %s\n", c.name, c.args)
		}
		return 2
	}
	fmt.Fprintf(stderr, "lacre-milter: unknown command %q (try \"lacre-milter help\")\n", strings.Join(args, " "))
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: lacre-milter [-config FILE] COMMAND [ARGS]\n\ncommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-13s %s\n      %s\n", c.name, c.args, c.help)
	}
	fmt.Fprintf(w, "\nThe configuration is -config FILE, else $%s, else the first of %s;\nwithout one, the defaults apply (see lacre.toml.example).\n",
		config.EnvVar, strings.Join(config.SearchPaths, ", "))
}

// flags returns a FlagSet for a subcommand that also accepts -config, so
// both "lacre-milter -config F keys list" and "lacre-milter keys list
// -config F" work.
func (e *env) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("lacre-milter "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.StringVar(&e.configFlag, "config", e.configFlag, "configuration `FILE`")
	return fs
}

// noArgs parses the flags of a command that takes no arguments.
func (e *env) noArgs(name string, args []string) error {
	pos, err := parseFlags(e.flags(name), args)
	if err == nil && len(pos) > 0 {
		err = fmt.Errorf("unexpected argument %q: %w", pos[0], errUsage)
	}
	return err
}

// parseFlags parses args, allowing flags after the positional arguments
// ("keys add alice@example.org key.asc -replace").
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%v: %w", err, errUsage)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "-" || !strings.HasPrefix(args[0], "-") {
			pos = append(pos, args[0])
			args = args[1:]
			if len(args) == 0 {
				return pos, nil
			}
			continue
		}
	}
}

// loadConfig finds and loads the configuration.
func (e *env) loadConfig() (*config.Config, error) {
	path, err := config.Find(e.configFlag)
	if err != nil {
		return nil, err
	}
	return config.Load(path)
}

func checkConfig(e *env, args []string) error {
	if err := e.noArgs("check-config", args); err != nil {
		return err
	}
	c, err := e.loadConfig()
	if err != nil {
		return err
	}
	src := c.Path
	if src == "" {
		src = "no file found; defaults"
	}
	// The static maps' own consistency (duplicates after normalisation,
	// overlaps) does not need the store.
	opt, err := resolverOptions(c)
	if err != nil {
		return err
	}
	if err := opt.Check(); err != nil {
		return err
	}
	storeNote := "  (the key store does not exist yet; \"lacre-milter store init\" creates it)\n"
	if c.StoreIsPostgres() {
		// Connect: a wrong password, an unreachable server or a schema
		// of another version is what an operator wants to hear now, not
		// at the first mail.
		s, r, err := openResolver(c)
		if err != nil {
			return err
		}
		defer s.Close()
		if err := checkStatic(c, s, r); err != nil {
			return err
		}
		pg := s.(*keys.PostgresStore)
		v, err := pg.SchemaVersion(context.Background())
		if err != nil {
			return err
		}
		storeNote = fmt.Sprintf("  store           %s, schema version %d (connected)\n", pg.Name(), v)
	} else if _, err := os.Stat(c.DatabasePath()); err == nil {
		// With a store present, also check that every key the static maps
		// name is in it: a missing one makes that mail wait. This comes
		// before the verdict, so "OK" is never followed by a failure.
		s, r, err := openResolver(c)
		if err != nil {
			return err
		}
		defer s.Close()
		if err := checkStatic(c, s, r); err != nil {
			return err
		}
		storeNote = ""
	}
	var aliasNote strings.Builder
	if err := checkAliases(c, &aliasNote); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "configuration OK (%s)\n  milter.listen   %s\n  store.database  %s\n%s%s%s", src, c.Milter.Listen, c.DatabasePath(), storeNote, aliasNote.String(), formatNote(c))
	return nil
}

// formatNote is check-config's report of the formats and the S/MIME
// options ([encryption] pgp_format, [static.formats], [smime]).
func formatNote(c *config.Config) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  pgp_format      %s", c.Encryption.PGPFormat)
	if n := len(c.Static.Formats); n > 0 {
		fmt.Fprintf(&b, " ([static.formats] sets %d address(es))", n)
	}
	recipients := "issuer and serial"
	if c.SMIME.SubjectKeyID {
		recipients = "subject key identifier"
	}
	fmt.Fprintf(&b, "\n  smime           %s, RSA %s, recipients by %s\n", c.SMIME.Cipher, c.SMIME.RSAPadding, recipients)
	if c.SMIME.TrustAnchors == "" {
		b.WriteString("  trust_anchors   none: certificates need no chain (self-issued and private-CA ones are admitted)\n")
	} else {
		fmt.Fprintf(&b, "  trust_anchors   %s: certificates must chain to one of its roots\n", c.TrustAnchorsPath())
	}
	return b.String()
}

func printVersion(e *env, args []string) error {
	if err := e.noArgs("version", args); err != nil {
		return err
	}
	v := version
	if v == "" {
		v = "devel"
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
	}
	fmt.Fprintf(e.stdout, "lacre-milter %s\n", v)
	return nil
}
