package keys

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

var _ Requests = (*SQLiteStore)(nil)

// CreateRequests implements Requests. The transaction begins IMMEDIATE
// (see sqliteDSN): it holds the write lock from the counts to the inserts,
// so concurrent submissions, even from several processes, cannot all pass
// the limit.
func (s *SQLiteStore) CreateRequests(ctx context.Context, now time.Time, lim Limits, tokenHashes [][]byte, rs []Request) error {
	if err := CheckNewRequests(tokenHashes, rs); err != nil {
		return err
	}
	op := "storing a request for " + rs[0].Address
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return s.unavailable(op, err)
	}
	defer tx.Rollback()
	err = lim.Check(rs, func(addr, client string) (int, int, error) {
		return countRequests(ctx, txQueryer{tx}, addr, client, lim.ClientSince, now)
	})
	var le *LimitError
	if errors.As(err, &le) {
		return err
	} else if err != nil {
		return s.unavailable(op, err)
	}
	for i, r := range rs {
		var material []byte
		if r.Action == ActionAdd {
			material = r.Keys[0].Raw
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO requests
			(token_hash, action, address, material, client_ip, created_at, expires_at, submission, submitted, state, limit_address)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			tokenHashes[i], string(r.Action), r.Address, material, r.ClientIP, r.Created.Unix(), r.Expires.Unix(),
			r.Submission, joinFingerprints(r.Submitted), joinFingerprints(r.State), r.LimitAddress); err != nil {
			return s.unavailable(op, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return s.unavailable(op, err)
	}
	return nil
}

const requestColumns = "action, address, material, client_ip, created_at, expires_at, submission, submitted, state, limit_address"

func (s *SQLiteStore) scanRequest(row scanner, now time.Time) (*Request, error) {
	var (
		r                Request
		action           string
		material         []byte
		created, expires int64
		submitted, state string
	)
	err := row.Scan(&action, &r.Address, &material, &r.ClientIP, &created, &expires, &r.Submission, &submitted, &state, &r.LimitAddress)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("confirmation token: %w", ErrNotFound)
	}
	if err != nil {
		return nil, s.unavailable("reading a request", err)
	}
	r.Action, r.Created, r.Expires = Action(action), time.Unix(created, 0).UTC(), time.Unix(expires, 0).UTC()
	r.Submitted, r.State = splitFingerprints(submitted), splitFingerprints(state)
	if !now.Before(r.Expires) {
		return nil, fmt.Errorf("confirmation token for %s: %w", r.Address, ErrExpired)
	}
	if r.Action == ActionAdd {
		ks, err := ParseStored(material)
		if err != nil {
			return nil, fmt.Errorf("%w: key store %s: stored request for %s does not parse: %w", ErrUnavailable, s.path, r.Address, err)
		}
		if len(ks) != 1 {
			return nil, fmt.Errorf("%w: key store %s: stored request for %s holds %d keys", ErrUnavailable, s.path, r.Address, len(ks))
		}
		r.Keys = ks
	}
	return &r, nil
}

// FindRequest implements Requests.
func (s *SQLiteStore) FindRequest(ctx context.Context, tokenHash []byte, now time.Time) (*Request, error) {
	return s.scanRequest(s.db.QueryRowContext(ctx, "SELECT "+requestColumns+" FROM requests WHERE token_hash = ?", tokenHash), now)
}

// TakeRequest implements Requests.
func (s *SQLiteStore) TakeRequest(ctx context.Context, tokenHash []byte, now time.Time) (*Request, error) {
	// DELETE … RETURNING: finding and consuming the token is one statement,
	// so two confirmations racing cannot both succeed.
	return s.scanRequest(s.db.QueryRowContext(ctx, "DELETE FROM requests WHERE token_hash = ? RETURNING "+requestColumns, tokenHash), now)
}

// DeleteRequests implements Requests.
func (s *SQLiteStore) DeleteRequests(ctx context.Context, tokenHashes [][]byte) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return s.unavailable("deleting requests", err)
	}
	defer tx.Rollback()
	for _, h := range tokenHashes {
		if _, err := tx.ExecContext(ctx, "DELETE FROM requests WHERE token_hash = ?", h); err != nil {
			return s.unavailable("deleting requests", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return s.unavailable("deleting requests", err)
	}
	return nil
}

// DropRequests implements Requests.
func (s *SQLiteStore) DropRequests(ctx context.Context, address, keep string) (int, error) {
	res, err := s.db.ExecContext(ctx, "DELETE FROM requests WHERE address = ? AND submission <> ?", address, keep)
	if err != nil {
		return 0, s.unavailable("dropping the requests for "+address, err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// queryer is a transaction or the store's checked pool (storeDB).
type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) scanner
}

// txQueryer gives a transaction the queryer method set.
type txQueryer struct{ tx *sql.Tx }

func (q txQueryer) QueryRowContext(ctx context.Context, query string, args ...any) scanner {
	return q.tx.QueryRowContext(ctx, query, args...)
}

func countRequests(ctx context.Context, q queryer, limitAddress, clientIP string, clientSince, now time.Time) (int, int, error) {
	var byAddr, byClient int
	err := q.QueryRowContext(ctx, `SELECT
		(SELECT count(*) FROM requests WHERE limit_address = ? AND client_ip = ? AND expires_at > ?),
		(SELECT count(*) FROM requests WHERE client_ip = ? AND created_at >= ?)`,
		limitAddress, clientIP, now.Unix(), clientIP, clientSince.Unix()).Scan(&byAddr, &byClient)
	return byAddr, byClient, err
}

// CountRequests implements Requests.
func (s *SQLiteStore) CountRequests(ctx context.Context, limitAddress, clientIP string, clientSince, now time.Time) (int, int, error) {
	a, c, err := countRequests(ctx, s.db, limitAddress, clientIP, clientSince, now)
	if err != nil {
		return 0, 0, s.unavailable("counting requests", err)
	}
	return a, c, nil
}

// PurgeRequests implements Requests.
func (s *SQLiteStore) PurgeRequests(ctx context.Context, now time.Time) (int, error) {
	res, err := s.db.ExecContext(ctx, "DELETE FROM requests WHERE expires_at <= ?", now.Unix())
	if err != nil {
		return 0, s.unavailable("purging requests", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}
