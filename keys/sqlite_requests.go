package keys

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

var _ Requests = (*SQLiteStore)(nil)

// CreateRequest implements Requests.
func (s *SQLiteStore) CreateRequest(ctx context.Context, tokenHash []byte, r Request) error {
	var material []byte
	if r.Action == ActionAdd {
		if len(r.Keys) == 0 {
			return fmt.Errorf("request for %s: no keys", r.Address)
		}
		material = concatRaw(r.Keys)
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO requests
		(token_hash, action, address, material, client_ip, created_at, expires_at)
		VALUES (?, ?, ?, ?, ?, ?, ?)`,
		tokenHash, string(r.Action), r.Address, material, r.ClientIP, r.Created.Unix(), r.Expires.Unix())
	if err != nil {
		return s.unavailable("storing a request for "+r.Address, err)
	}
	return nil
}

// TakeRequest implements Requests.
func (s *SQLiteStore) TakeRequest(ctx context.Context, tokenHash []byte, now time.Time) (*Request, error) {
	var (
		r                Request
		action           string
		material         []byte
		created, expires int64
	)
	// DELETE … RETURNING: finding and consuming the token is one statement,
	// so two confirmations racing cannot both succeed.
	err := s.db.QueryRowContext(ctx, `DELETE FROM requests WHERE token_hash = ?
		RETURNING action, address, material, client_ip, created_at, expires_at`, tokenHash).
		Scan(&action, &r.Address, &material, &r.ClientIP, &created, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("confirmation token: %w", ErrNotFound)
	}
	if err != nil {
		return nil, s.unavailable("taking a request", err)
	}
	r.Action, r.Created, r.Expires = Action(action), time.Unix(created, 0).UTC(), time.Unix(expires, 0).UTC()
	if !now.Before(r.Expires) {
		return nil, fmt.Errorf("confirmation token for %s: %w", r.Address, ErrExpired)
	}
	if r.Action == ActionAdd {
		ks, err := Parse(material)
		if err != nil {
			return nil, fmt.Errorf("%w: key store %s: stored request for %s does not parse: %w", ErrUnavailable, s.path, r.Address, err)
		}
		r.Keys = ks
	}
	return &r, nil
}

// CountRequests implements Requests.
func (s *SQLiteStore) CountRequests(ctx context.Context, address, clientIP string, addressSince, clientSince, now time.Time) (int, int, error) {
	var byAddr, byClient int
	err := s.db.QueryRowContext(ctx, `SELECT
		(SELECT count(*) FROM requests WHERE address = ? AND created_at >= ? AND expires_at > ?),
		(SELECT count(*) FROM requests WHERE client_ip = ? AND created_at >= ? AND expires_at > ?)`,
		address, addressSince.Unix(), now.Unix(), clientIP, clientSince.Unix(), now.Unix()).Scan(&byAddr, &byClient)
	if err != nil {
		return 0, 0, s.unavailable("counting requests", err)
	}
	return byAddr, byClient, nil
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
