package keys

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// CreateRequests implements Requests. The counts and the inserts run in
// one transaction holding an advisory lock, so concurrent submissions,
// from any number of web service instances, cannot all pass the limit
// (SQLite gets the same from its single writer).
func (s *PostgresStore) CreateRequests(ctx context.Context, now time.Time, lim Limits, tokenHashes [][]byte, rs []Request) error {
	if err := CheckNewRequests(tokenHashes, rs); err != nil {
		return err
	}
	var limited error
	err := s.write(ctx, pgLockRequests, func(tx pgx.Tx) error {
		err := lim.Check(rs, func(addr, client string) (int, int, error) {
			return pgCountRequests(ctx, tx, addr, client, lim.ClientSince, now)
		})
		var le *LimitError
		if errors.As(err, &le) {
			limited = err
			return err // rolls back
		} else if err != nil {
			return err
		}
		for i, r := range rs {
			var material []byte
			if r.Action == ActionAdd {
				material = r.Keys[0].Raw
			}
			if _, err := tx.Exec(ctx, `INSERT INTO requests
				(token_hash, action, address, material, client_ip, created_at, expires_at, submission, submitted, state, limit_address)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
				tokenHashes[i], string(r.Action), r.Address, material, r.ClientIP, r.Created.Unix(), r.Expires.Unix(),
				r.Submission, joinFingerprints(r.Submitted), joinFingerprints(r.State), r.LimitAddress); err != nil {
				return err
			}
		}
		return nil
	})
	if limited != nil {
		return limited
	}
	if err != nil {
		return s.unavailable("storing a request for "+rs[0].Address, err)
	}
	return nil
}

func pgCountRequests(ctx context.Context, q pgQueryer, limitAddress, clientIP string, clientSince, now time.Time) (int, int, error) {
	var byAddr, byClient int
	err := q.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM requests WHERE limit_address = $1 AND client_ip = $2 AND expires_at > $3),
		(SELECT count(*) FROM requests WHERE client_ip = $2 AND created_at >= $4)`,
		limitAddress, clientIP, now.Unix(), clientSince.Unix()).Scan(&byAddr, &byClient)
	return byAddr, byClient, err
}

func (s *PostgresStore) scanRequest(row pgx.Row, now time.Time) (*Request, error) {
	var (
		r                Request
		action           string
		material         []byte
		created, expires int64
		submitted, state string
	)
	err := row.Scan(&action, &r.Address, &material, &r.ClientIP, &created, &expires, &r.Submission, &submitted, &state, &r.LimitAddress)
	if errors.Is(err, pgx.ErrNoRows) {
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
			return nil, fmt.Errorf("%w: key store %s: stored request for %s does not parse: %w", ErrUnavailable, s.name, r.Address, err)
		}
		if len(ks) != 1 {
			return nil, fmt.Errorf("%w: key store %s: stored request for %s holds %d keys", ErrUnavailable, s.name, r.Address, len(ks))
		}
		r.Keys = ks
	}
	return &r, nil
}

// FindRequest implements Requests.
func (s *PostgresStore) FindRequest(ctx context.Context, tokenHash []byte, now time.Time) (*Request, error) {
	return s.scanRequest(s.pool.QueryRow(ctx, "SELECT "+requestColumns+" FROM requests WHERE token_hash = $1", tokenHash), now)
}

// TakeRequest implements Requests: DELETE … RETURNING, so two
// confirmations racing cannot both succeed.
func (s *PostgresStore) TakeRequest(ctx context.Context, tokenHash []byte, now time.Time) (*Request, error) {
	return s.scanRequest(s.pool.QueryRow(ctx, "DELETE FROM requests WHERE token_hash = $1 RETURNING "+requestColumns, tokenHash), now)
}

// DeleteRequests implements Requests.
func (s *PostgresStore) DeleteRequests(ctx context.Context, tokenHashes [][]byte) error {
	if _, err := s.pool.Exec(ctx, "DELETE FROM requests WHERE token_hash = ANY($1)", tokenHashes); err != nil {
		return s.unavailable("deleting requests", err)
	}
	return nil
}

// DropRequests implements Requests.
func (s *PostgresStore) DropRequests(ctx context.Context, address, keep string) (int, error) {
	tag, err := s.pool.Exec(ctx, "DELETE FROM requests WHERE address = $1 AND submission <> $2", address, keep)
	if err != nil {
		return 0, s.unavailable("dropping the requests for "+address, err)
	}
	return int(tag.RowsAffected()), nil
}

// CountRequests implements Requests.
func (s *PostgresStore) CountRequests(ctx context.Context, limitAddress, clientIP string, clientSince, now time.Time) (int, int, error) {
	a, c, err := pgCountRequests(ctx, s.pool, limitAddress, clientIP, clientSince, now)
	if err != nil {
		return 0, 0, s.unavailable("counting requests", err)
	}
	return a, c, nil
}

// PurgeRequests implements Requests.
func (s *PostgresStore) PurgeRequests(ctx context.Context, now time.Time) (int, error) {
	tag, err := s.pool.Exec(ctx, "DELETE FROM requests WHERE expires_at <= $1", now.Unix())
	if err != nil {
		return 0, s.unavailable("purging requests", err)
	}
	return int(tag.RowsAffected()), nil
}
