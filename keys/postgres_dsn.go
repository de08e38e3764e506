package keys

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// IsPostgresDSN reports whether [store] database names a PostgreSQL
// database rather than an SQLite file: a postgres:// or postgresql:// URL,
// or a libpq key=value string ("host=db1 dbname=lacre user=lacre_milter").
// Anything else is a file path.
func IsPostgresDSN(s string) bool {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		return true
	}
	return dsnKeyword.MatchString(s)
}

// dsnKeyword matches the start of a libpq key=value string. A file called
// "host=x" would be taken for one; such a name is a mistake anyway.
var dsnKeyword = regexp.MustCompile(`^(host|hostaddr|port|dbname|user|sslmode|service|passfile|connect_timeout|application_name|sslrootcert|target_session_attrs)\s*=`)

// dsnPassword finds a password written in the connection string itself.
var dsnPassword = regexp.MustCompile(`(^|\s)password\s*=`)

// CheckPostgresDSN refuses a connection string that carries a password:
// the configuration file is world-readable on many systems and ends up in
// backups and bug reports. The password comes from [store] password_file,
// from PGPASSFILE or ~/.pgpass (which pgx reads as libpq does), or from
// PGPASSWORD in the service's environment.
func CheckPostgresDSN(dsn string) error {
	dsn = strings.TrimSpace(dsn)
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			// url.Error repeats the URL, password included: say less.
			return errors.New("not a valid postgres:// URL")
		}
		if _, set := u.User.Password(); set || u.Query().Has("password") {
			return errors.New("the connection URL holds a password: remove it and put the password in [store] password_file (or PGPASSFILE)")
		}
		return nil
	}
	if dsnPassword.MatchString(dsn) {
		return errors.New("the connection string holds password=: remove it and put the password in [store] password_file (or PGPASSFILE)")
	}
	return nil
}

// PostgresOptions tune the connection pool of a PostgresStore. The zero
// value gives the defaults below.
type PostgresOptions struct {
	// PasswordFile holds the role's password (one line). "" leaves the
	// password to PGPASSFILE, ~/.pgpass, PGPASSWORD or a passwordless
	// authentication (peer, cert).
	PasswordFile string
	// MaxConns bounds the pool (default 10): the milter's lookups run at
	// most this many queries at once, and wait for a free connection
	// within their lookup_timeout.
	MaxConns int32
	// ConnectTimeout bounds one connection attempt (default 5s).
	ConnectTimeout time.Duration
	// StatementTimeout is PostgreSQL's statement_timeout for every
	// connection (default 10s): a query stuck on a lock ends even for a
	// caller without a deadline (the CLI, the web service).
	StatementTimeout time.Duration
}

const (
	defaultPGMaxConns         = 10
	defaultPGConnectTimeout   = 5 * time.Second
	defaultPGStatementTimeout = 10 * time.Second
)

// postgresConfig parses dsn into a pool configuration with opt applied.
// Errors never repeat the connection string (it might hold a password
// despite CheckPostgresDSN, e.g. one given on the command line).
func postgresConfig(dsn string, opt PostgresOptions) (*pgxpool.Config, error) {
	if err := CheckPostgresDSN(dsn); err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(strings.TrimSpace(dsn))
	if err != nil {
		return nil, fmt.Errorf("not a valid PostgreSQL connection string: %s", redactParseError(err))
	}
	if opt.PasswordFile != "" {
		b, err := os.ReadFile(opt.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("store.password_file: %w", err)
		}
		pw := strings.TrimRight(string(b), "\r\n")
		if pw == "" || strings.ContainsAny(pw, "\r\n") {
			return nil, fmt.Errorf("store.password_file: %s must hold the password on one line", opt.PasswordFile)
		}
		cfg.ConnConfig.Password = pw
	}
	cfg.MaxConns = opt.MaxConns
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = defaultPGMaxConns
	}
	cfg.ConnConfig.ConnectTimeout = opt.ConnectTimeout
	if cfg.ConnConfig.ConnectTimeout <= 0 {
		cfg.ConnConfig.ConnectTimeout = defaultPGConnectTimeout
	}
	st := opt.StatementTimeout
	if st <= 0 {
		st = defaultPGStatementTimeout
	}
	cfg.ConnConfig.RuntimeParams["statement_timeout"] = fmt.Sprint(st.Milliseconds())
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "lacre-milter"
	}
	// A connection idle for a second is pinged before use (pgx's default):
	// after a server restart the dead ones are found then, not by a lookup.
	cfg.PingTimeout = time.Second
	cfg.HealthCheckPeriod = 15 * time.Second
	return cfg, nil
}

// redactParseError keeps pgx's reason without the string it parsed.
func redactParseError(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 && strings.Contains(msg, "cannot parse") {
		return msg[i+2:]
	}
	return msg
}

// describe names the database for messages: user@host:port/dbname, never
// the password.
func describePG(cfg *pgxpool.Config) string {
	c := cfg.ConnConfig
	return fmt.Sprintf("postgres %s@%s:%d/%s", c.User, c.Host, c.Port, c.Database)
}
