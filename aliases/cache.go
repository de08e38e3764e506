package aliases

import (
	"container/list"
	"context"
	"errors"
	"sync"
	"time"
)

// ttlCache is a bounded LRU cache whose entries expire after ttl, with
// single-flight loading: concurrent callers for one key share one load, so
// a burst of mail for one address forks one postmap, not N. ttl <= 0
// disables caching (loads are still shared while they run).
type ttlCache[V any] struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu     sync.Mutex
	m      map[string]*list.Element
	lru    *list.List // front = most recently used
	flight map[string]*flightCall[V]
}

type cacheEntry[V any] struct {
	key string
	val V
	exp time.Time
}

type flightCall[V any] struct {
	done chan struct{}
	val  V
	err  error
}

func newTTLCache[V any](ttl time.Duration, max int, now func() time.Time) *ttlCache[V] {
	if max <= 0 {
		max = 1
	}
	return &ttlCache[V]{ttl: ttl, max: max, now: now,
		m: make(map[string]*list.Element), lru: list.New(), flight: make(map[string]*flightCall[V])}
}

// get returns the cached value of key if it has not expired.
func (c *ttlCache[V]) get(key string) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.getLocked(key)
}

func (c *ttlCache[V]) getLocked(key string) (V, bool) {
	var zero V
	el, ok := c.m[key]
	if !ok {
		return zero, false
	}
	e := el.Value.(*cacheEntry[V])
	if !c.now().Before(e.exp) {
		c.lru.Remove(el)
		delete(c.m, key)
		return zero, false
	}
	c.lru.MoveToFront(el)
	return e.val, true
}

// put stores val under key for ttl.
func (c *ttlCache[V]) put(key string, val V) {
	if c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	exp := c.now().Add(c.ttl)
	if el, ok := c.m[key]; ok {
		e := el.Value.(*cacheEntry[V])
		e.val, e.exp = val, exp
		c.lru.MoveToFront(el)
		return
	}
	c.m[key] = c.lru.PushFront(&cacheEntry[V]{key: key, val: val, exp: exp})
	for c.lru.Len() > c.max {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.m, old.Value.(*cacheEntry[V]).key)
	}
}

// purge drops every entry.
func (c *ttlCache[V]) purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m = make(map[string]*list.Element)
	c.lru.Init()
}

// do returns the cached value of key, or runs load once for all concurrent
// callers of key and caches its result (errors are not cached). A waiter
// whose own ctx ends stops waiting; a waiter whose leader failed only
// because the leader's ctx ended loads again itself.
func (c *ttlCache[V]) do(ctx context.Context, key string, load func(context.Context) (V, error)) (V, error) {
	for {
		c.mu.Lock()
		if v, ok := c.getLocked(key); ok {
			c.mu.Unlock()
			return v, nil
		}
		if f, ok := c.flight[key]; ok {
			c.mu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				var zero V
				return zero, ctx.Err()
			}
			if f.err != nil && ctx.Err() == nil &&
				(errors.Is(f.err, context.Canceled) || errors.Is(f.err, context.DeadlineExceeded)) {
				continue // the leader's deadline, not ours
			}
			return f.val, f.err
		}
		f := &flightCall[V]{done: make(chan struct{})}
		c.flight[key] = f
		c.mu.Unlock()

		f.val, f.err = load(ctx)
		if f.err == nil {
			c.put(key, f.val)
		}
		c.mu.Lock()
		delete(c.flight, key)
		c.mu.Unlock()
		close(f.done)
		return f.val, f.err
	}
}
