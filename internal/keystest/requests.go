package keystest

import (
	"context"
	"fmt"
	"slices"
	"time"

	"lacre.io/milter/keys"
)

type memRequest struct {
	r    keys.Request
	hash string
}

var _ keys.Requests = (*Store)(nil)

// CreateRequests implements keys.Requests.
func (m *Store) CreateRequests(_ context.Context, now time.Time, lim keys.Limits, tokenHashes [][]byte, rs []keys.Request) error {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return err
	}
	if err := keys.CheckNewRequests(tokenHashes, rs); err != nil {
		return err
	}
	if err := lim.Check(rs, func(addr, client string) (int, int, error) {
		a, c := m.count(addr, client, lim.ClientSince, now)
		return a, c, nil
	}); err != nil {
		return err
	}
	for i, r := range rs {
		m.requests = append(m.requests, memRequest{r: r, hash: string(tokenHashes[i])})
	}
	return nil
}

func (m *Store) find(tokenHash []byte, now time.Time, take bool) (*keys.Request, error) {
	for i, q := range m.requests {
		if q.hash != string(tokenHash) {
			continue
		}
		if take {
			m.requests = slices.Delete(m.requests, i, i+1)
		}
		if !now.Before(q.r.Expires) {
			return nil, fmt.Errorf("confirmation token for %s: %w", q.r.Address, keys.ErrExpired)
		}
		r := q.r
		return &r, nil
	}
	return nil, fmt.Errorf("confirmation token: %w", keys.ErrNotFound)
}

// FindRequest implements keys.Requests.
func (m *Store) FindRequest(_ context.Context, tokenHash []byte, now time.Time) (*keys.Request, error) {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return nil, err
	}
	return m.find(tokenHash, now, false)
}

// TakeRequest implements keys.Requests.
func (m *Store) TakeRequest(_ context.Context, tokenHash []byte, now time.Time) (*keys.Request, error) {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return nil, err
	}
	return m.find(tokenHash, now, true)
}

// DeleteRequests implements keys.Requests.
func (m *Store) DeleteRequests(_ context.Context, tokenHashes [][]byte) error {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return err
	}
	m.requests = slices.DeleteFunc(m.requests, func(q memRequest) bool {
		return slices.ContainsFunc(tokenHashes, func(h []byte) bool { return string(h) == q.hash })
	})
	return nil
}

// DropRequests implements keys.Requests.
func (m *Store) DropRequests(_ context.Context, address, keep string) (int, error) {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return 0, err
	}
	n := len(m.requests)
	m.requests = slices.DeleteFunc(m.requests, func(q memRequest) bool {
		return q.r.Address == address && q.r.Submission != keep
	})
	return n - len(m.requests), nil
}

func (m *Store) count(limitAddress, clientIP string, clientSince, now time.Time) (int, int) {
	var a, c int
	for _, q := range m.requests {
		if q.r.LimitAddress == limitAddress && q.r.ClientIP == clientIP && now.Before(q.r.Expires) {
			a++
		}
		if q.r.ClientIP == clientIP && !q.r.Created.Before(clientSince) {
			c++
		}
	}
	return a, c
}

// CountRequests implements keys.Requests.
func (m *Store) CountRequests(_ context.Context, limitAddress, clientIP string, clientSince, now time.Time) (int, int, error) {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return 0, 0, err
	}
	a, c := m.count(limitAddress, clientIP, clientSince, now)
	return a, c, nil
}

// PurgeRequests implements keys.Requests.
func (m *Store) PurgeRequests(_ context.Context, now time.Time) (int, error) {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return 0, err
	}
	n := len(m.requests)
	m.requests = slices.DeleteFunc(m.requests, func(q memRequest) bool { return !now.Before(q.r.Expires) })
	return n - len(m.requests), nil
}
