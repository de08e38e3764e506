package keys

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Invalidator is what a Listener tells about changes: a Resolver.
type Invalidator interface {
	Invalidate(address string)
	InvalidateAll()
}

// Listener keeps a resolver's cache in step with a PostgresStore shared by
// several hosts. It holds one connection of its own (never one of the
// pool: a pooled connection goes back to other users between queries,
// and a LISTEN on it would be lost or, worse, heard by somebody else),
// runs LISTEN lacre_keys on it, and hands each announced address to the
// Invalidator; PostgreSQL sends the announcement when the change commits,
// so the cache forgets the old answer within milliseconds.
//
// A notification reaches only sessions listening when the change commits.
// So on every (re)connection the Listener first LISTENs and then flushes
// the whole cache (InvalidateAll): whatever changed while it was away is
// read afresh. While it is not connected, cached answers, "no key"
// included, are served until their TTL ([store] cache_ttl) runs out, as
// with SQLite: the TTL stays the safety net. It reconnects on its own,
// with a backoff from MinBackoff doubling up to MaxBackoff.
type Listener struct {
	store  *PostgresStore
	target func() Invalidator
	log    *slog.Logger
	opt    ListenerOptions

	up     atomic.Bool
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	upSignal chan struct{} // closed when the next connection is up
}

// ListenerOptions tune a Listener; zero fields take the defaults.
type ListenerOptions struct {
	MinBackoff time.Duration // first wait after a failure (100ms)
	MaxBackoff time.Duration // longest wait between attempts (5s)
	// Probe is how long the connection may stay silent before a query
	// checks that it still works (10s): a server that vanished without
	// closing the connection (a network cut) is noticed within about
	// Probe + ConnectTimeout.
	Probe time.Duration
}

// Listen starts a Listener that tells target() about every change until
// Close. target is called for each change, so that a resolver rebuilt on
// reload is the one told.
func (s *PostgresStore) Listen(target func() Invalidator, log *slog.Logger, opt ListenerOptions) *Listener {
	if opt.MinBackoff <= 0 {
		opt.MinBackoff = 100 * time.Millisecond
	}
	if opt.MaxBackoff <= 0 {
		opt.MaxBackoff = 5 * time.Second
	}
	if opt.Probe <= 0 {
		opt.Probe = 10 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Listener{store: s, target: target, log: log, opt: opt, cancel: cancel, done: make(chan struct{}), upSignal: make(chan struct{})}
	go l.run(ctx)
	return l
}

// Up reports whether the Listener is connected and listening now.
func (l *Listener) Up() bool { return l.up.Load() }

// WaitUp waits until the Listener is connected (or ctx ends).
func (l *Listener) WaitUp(ctx context.Context) error {
	for {
		l.mu.Lock()
		ch := l.upSignal
		l.mu.Unlock()
		if l.up.Load() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close stops the Listener and closes its connection.
func (l *Listener) Close() {
	l.cancel()
	<-l.done
}

func (l *Listener) setUp(up bool) {
	l.up.Store(up)
	if up {
		l.mu.Lock()
		close(l.upSignal)
		l.upSignal = make(chan struct{})
		l.mu.Unlock()
	}
}

func (l *Listener) run(ctx context.Context) {
	defer close(l.done)
	backoff := l.opt.MinBackoff
	for ctx.Err() == nil {
		start := time.Now()
		err := l.session(ctx)
		l.setUp(false)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			backoff = l.opt.MinBackoff // it worked for a while: start over
		}
		l.log.Warn("key change listener disconnected; cached answers are served until cache_ttl ends, then the store is asked", "store", l.store.name, "error", err, "retry_in", backoff.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, l.opt.MaxBackoff)
	}
}

// session connects, listens, flushes the cache and hands on notifications
// until the connection fails.
func (l *Listener) session(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, l.store.cfg.ConnConfig.Copy())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+NotifyChannel); err != nil {
		return err
	}
	// LISTEN first, then flush: a change committed before the LISTEN is
	// read afresh by the next lookup; one committed after it is announced.
	l.target().InvalidateAll()
	l.setUp(true)
	l.log.Info("key change listener connected", "store", l.store.name)
	for {
		wctx, cancel := context.WithTimeout(ctx, l.opt.Probe)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			if n.Payload == "*" {
				l.target().InvalidateAll()
			} else {
				l.target().Invalidate(n.Payload)
			}
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		case !errors.Is(err, context.DeadlineExceeded) || conn.IsClosed():
			return err
		}
		// Silent for Probe: check that the connection still works. The
		// probe's own notifications are queued and returned by the next
		// WaitForNotification.
		pctx, cancel := context.WithTimeout(ctx, l.store.cfg.ConnConfig.ConnectTimeout)
		_, err = conn.Exec(pctx, "SELECT 1")
		cancel()
		if err != nil {
			return err
		}
	}
}
