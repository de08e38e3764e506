package aliases

import (
	"context"
	"errors"
	"slices"
)

// Expanding without waiting: most recipients' expansions need no I/O at
// all (the tables are in memory and were checked within their interval),
// and the milter can then expand on the RCPT path itself instead of in a
// goroutine bounded by its lookup timeout (docs/performance.md, "The
// keyed-address set").

// noWaitKey marks a context whose expansion must not wait for I/O.
type noWaitKey struct{}

// errWouldWait is what a table lookup answers in a no-wait expansion when
// its answer needs I/O (a file to check or read, postmap to ask).
var errWouldWait = errors.New("the answer needs I/O")

func noWait(ctx context.Context) bool { return ctx.Value(noWaitKey{}) != nil }

// Quick is Expand when the answer needs no I/O: a cached expansion (as
// Cached), or one made from tables that are in memory and were checked
// within their interval, or from answers of queried tables that are in
// their cache. ok false means that only Expand can tell: a table must be
// checked, read or asked, or the expansion failed (Expand then reports
// the failure). It never blocks on I/O or on a lock held across I/O. The
// expansion is cached as Expand's would be, and the caller gets its own
// copy of Targets.
func (p *Postfix) Quick(addr string) (Expansion, bool) {
	if e, ok := p.Cached(addr); ok {
		return e, true
	}
	e, err := p.expand(context.WithValue(context.Background(), noWaitKey{}, true), addr)
	if err != nil {
		return Expansion{}, false
	}
	p.cache.put(addr, e)
	e.Targets = slices.Clone(e.Targets)
	return e, true
}

// lookupNoWait is table.lookup from memory only: errWouldWait when that
// cannot answer, and for a table in error (lookup reports the error).
func (t *table) lookupNoWait(key string) (string, bool, error) {
	if t.pat != nil {
		p := t.pat
		p.mu.Lock()
		fresh := p.loaded && p.now().Sub(p.checked) < p.interval
		rules, unsup, err := p.rules, p.unsup, p.err
		p.mu.Unlock()
		switch {
		case !fresh || err != nil:
			return "", false, errWouldWait
		case unsup == nil:
			return evalPattern(rules, key)
		}
		// outside the subset: postmap's answers, if cached
	}
	if m := t.mem; m != nil {
		m.mu.RLock()
		defer m.mu.RUnlock()
		if !m.loaded || m.err != nil || m.now().Sub(m.checked) >= m.interval {
			return "", false, errWouldWait
		}
		v, ok := m.data[key]
		return v, ok, nil
	}
	if t.q != nil {
		if r, ok := t.q.get(key); ok {
			return r.val, r.found, nil
		}
	}
	return "", false, errWouldWait
}
