package gpgmailgate

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	_ "modernc.org/sqlite"             // registers the "sqlite" driver
)

// DefaultTable is gpg-mailgate-web's table of key registrations (Lacre's
// SQLAlchemy model names it the same).
const DefaultTable = "gpgmw_keys"

// The values of gpgmw_keys.status (gpg-mailgate-web's schema.sql).
const (
	statusNew      = 0 // submitted; imported by the cron job once confirmed
	statusImported = 1 // imported into the GnuPG home by the cron job
	statusDelete   = 2 // the cron job deletes the address's keys
)

// Row is one row of the gpgmw_keys table.
type Row struct {
	ID        int64
	Email     sql.NullString
	PublicKey sql.NullString
	Confirm   sql.NullString // "" once the address is confirmed, else the confirmation token
	Status    int64
}

var tableName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// OpenDSN opens the database a DSN names: "mysql://USER:PASS@HOST:PORT/DB"
// (MySQL or MariaDB; "?socket=PATH" for a Unix socket),
// "postgres://…" or "postgresql://…" (PostgreSQL, as libpq reads it), or
// a file path (SQLite, opened read-only). It returns the database and a
// description without the password.
func OpenDSN(dsn string) (*sql.DB, string, error) {
	switch {
	case strings.HasPrefix(dsn, "mysql://"):
		u, err := url.Parse(dsn)
		if err != nil {
			return nil, "", fmt.Errorf("the DSN is not a URL: %v", redact(err, dsn))
		}
		c := mysql.NewConfig()
		c.User = u.User.Username()
		c.Passwd, _ = u.User.Password()
		c.DBName = strings.TrimPrefix(u.Path, "/")
		c.Timeout = 10 * time.Second
		c.ReadTimeout = time.Minute
		if s := u.Query().Get("socket"); s != "" {
			c.Net, c.Addr = "unix", s
		} else {
			host, port := u.Hostname(), u.Port()
			if host == "" {
				host = "localhost"
			}
			if port == "" {
				port = "3306"
			}
			c.Net, c.Addr = "tcp", net.JoinHostPort(host, port)
		}
		if c.DBName == "" {
			return nil, "", fmt.Errorf("the DSN names no database (mysql://USER:PASS@HOST:PORT/DATABASE)")
		}
		conn, err := mysql.NewConnector(c)
		if err != nil {
			return nil, "", err
		}
		return sql.OpenDB(conn), "MySQL/MariaDB " + c.Addr + "/" + c.DBName, nil
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		u, err := url.Parse(dsn)
		if err != nil {
			return nil, "", fmt.Errorf("the DSN is not a URL: %v", redact(err, dsn))
		}
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			return nil, "", redact(err, dsn)
		}
		return db, "PostgreSQL " + u.Host + u.Path, nil
	case strings.Contains(dsn, "://"):
		return nil, "", fmt.Errorf("unknown database in the DSN: want mysql://, postgres:// or a file path (SQLite)")
	default:
		if _, err := os.Stat(dsn); err != nil {
			return nil, "", err
		}
		db, err := sql.Open("sqlite", "file:"+dsn+"?mode=ro&_pragma=busy_timeout(5000)")
		if err != nil {
			return nil, "", err
		}
		return db, "SQLite " + dsn, nil
	}
}

// redact removes a DSN's password from an error message.
func redact(err error, dsn string) error {
	u, perr := url.Parse(dsn)
	if perr != nil || u.User == nil {
		return err
	}
	p, ok := u.User.Password()
	if !ok || p == "" {
		return err
	}
	return fmt.Errorf("%s", strings.ReplaceAll(err.Error(), p, "***"))
}

// ReadRows reads every row of the registrations table, oldest first.
func ReadRows(ctx context.Context, db *sql.DB, table string) ([]Row, error) {
	if !tableName.MatchString(table) {
		return nil, fmt.Errorf("%q is not a table name", table)
	}
	rs, err := db.QueryContext(ctx, "SELECT id, email, publickey, confirm, status FROM "+table+" ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("reading table %s: %w", table, err)
	}
	defer rs.Close()
	var out []Row
	for rs.Next() {
		var r Row
		if err := rs.Scan(&r.ID, &r.Email, &r.PublicKey, &r.Confirm, &r.Status); err != nil {
			return nil, fmt.Errorf("reading table %s: %w", table, err)
		}
		out = append(out, r)
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("reading table %s: %w", table, err)
	}
	return out, nil
}

// RowEntries turns the rows into entries with gpg-mailgate-web's own
// semantics (its cron.py), applied to the rows as they are now, as if
// the cron job ran once more:
//
//   - Only confirmed rows (confirm = ”) count: an unconfirmed one never
//     proved that its submitter owns the address.
//   - Per address, the newest (highest id) confirmed row of status 0 or 1
//     wins; the cron job deletes the others.
//   - A winning row of status 0 with an empty publickey unbinds the
//     address (the user submitted no key to switch encryption off).
//     Status 1 rows may have had their key cleared after the import
//     ("to save space"): their key is only in the GnuPG home.
//   - A row of status 2 asks for the address's keys to be deleted; the
//     cron job does so after importing, so it wins over status 1 rows
//     but loses to a confirmed status 0 row (whose import deletes it).
//
// key groups addresses that are the same (the normaliser); rows whose
// address it refuses are grouped as written and refused by the importer.
func RowEntries(rows []Row, key func(string) (string, error)) []Entry {
	groups := map[string][]Row{}
	var order []string
	var out []Entry
	for _, r := range rows {
		if strings.TrimSpace(r.Email.String) == "" {
			// Without an address the row binds nothing (and an Entry
			// without one would mean "the key's own User IDs").
			out = append(out, Entry{Origin: origin(r), Skip: "no email address in the row"})
			continue
		}
		k := r.Email.String
		if n, err := key(k); err == nil {
			k = n
		}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	sort.Strings(order)
	for _, k := range order {
		out = append(out, groupEntries(groups[k])...)
	}
	return out
}

func origin(r Row) string { return fmt.Sprintf("row %d", r.ID) }

func confirmed(r Row) bool { return r.Confirm.Valid && r.Confirm.String == "" }

func groupEntries(rows []Row) []Entry {
	sort.Slice(rows, func(i, j int) bool { return rows[i].ID < rows[j].ID })
	var winner *Row
	pendingNew, pendingDelete := false, false
	for i := range rows {
		r := &rows[i]
		if r.Status == statusDelete {
			pendingDelete = true
		}
		if !confirmed(*r) || (r.Status != statusNew && r.Status != statusImported) {
			continue
		}
		if r.Status == statusNew {
			pendingNew = true
		}
		winner = r // ascending ids: the last one is the newest
	}
	var out []Entry
	skip := func(r Row, why string) {
		out = append(out, Entry{Origin: origin(r), Address: r.Email.String, Skip: why})
	}
	deleteWins := pendingDelete && !pendingNew
	for _, r := range rows {
		switch {
		case winner != nil && r.ID == winner.ID && !deleteWins:
			key := strings.TrimSpace(r.PublicKey.String)
			switch {
			case key != "":
				out = append(out, Entry{Origin: origin(r), Address: r.Email.String, Data: []byte(r.PublicKey.String)})
			case r.Status == statusNew:
				out = append(out, Entry{Origin: origin(r) + " (confirmed, empty publickey)", Address: r.Email.String, Unbind: true})
			default:
				skip(r, "imported row with its publickey cleared: the key is in gpg-mailgate's GnuPG home (import gnupg)")
			}
		case r.Status == statusDelete:
			if deleteWins && !hasUnbind(out) {
				out = append(out, Entry{Origin: origin(r) + " (status 2, deletion requested)", Address: r.Email.String, Unbind: true})
			} else {
				skip(r, "superseded: a newer confirmed row replaces this deletion request (status 2)")
			}
		case r.Status != statusNew && r.Status != statusImported:
			skip(r, fmt.Sprintf("unknown status: %d", r.Status))
		case !confirmed(r):
			skip(r, "unconfirmed: the address was never confirmed")
		case deleteWins:
			skip(r, "deletion requested (status 2)")
		default:
			skip(r, fmt.Sprintf("superseded: row %d is newer", winner.ID))
		}
	}
	return out
}

func hasUnbind(es []Entry) bool {
	for _, e := range es {
		if e.Unbind {
			return true
		}
	}
	return false
}
