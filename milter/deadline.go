package milter

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// lazyDeadline is a context that ends at a deadline, like
// context.WithDeadline, but makes its timer only when something waits for
// it (Done). Most recipients are answered from memory (the lookup cache,
// the keyed-address set, an expansion of tables in memory) and nothing
// ever waits; yet a runtime timer made and stopped for each RCPT is, more
// often than not, the earliest timer of its P, and adding it wakes the
// network poller or another thread (runtime.wakeNetPoller): a context
// switch per recipient for nothing.
//
// Deadline and Err need no timer; Value is Background's (none). Safe for
// concurrent use: an abandoned lookup's goroutine may still hold it.
type lazyDeadline struct {
	deadline time.Time

	once   sync.Once
	made   atomic.Bool
	ctx    context.Context // made by Done, ending at deadline
	cancel context.CancelFunc
}

var _ context.Context = (*lazyDeadline)(nil)

func newLazyDeadline(d time.Duration) *lazyDeadline {
	return &lazyDeadline{deadline: time.Now().Add(d)}
}

func (c *lazyDeadline) make() {
	c.once.Do(func() {
		c.ctx, c.cancel = context.WithDeadline(context.Background(), c.deadline)
		c.made.Store(true)
	})
}

func (c *lazyDeadline) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *lazyDeadline) Done() <-chan struct{} {
	c.make()
	return c.ctx.Done()
}

func (c *lazyDeadline) Err() error {
	if !c.made.Load() {
		if time.Now().Before(c.deadline) {
			return nil
		}
		c.make()
	}
	return c.ctx.Err()
}

func (c *lazyDeadline) Value(key any) any { return nil }

// stop releases the timer, if one was made; the context then reports
// context.Canceled, as a cancelled context.WithDeadline does.
func (c *lazyDeadline) stop() {
	c.once.Do(func() {
		c.ctx, c.cancel = context.WithCancel(context.Background())
		c.made.Store(true)
	})
	c.cancel()
}

func (c *lazyDeadline) String() string { return "milter.lazyDeadline" }
