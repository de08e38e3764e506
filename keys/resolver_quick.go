package keys

import "context"

// KeylessChecker is a Store that can tell, without querying its tables,
// that addresses have no key (SQLiteStore, with its keyed-address set).
// NoKeys returns true only when that is certain as of a moment after the
// call began; false means "ask KeysFor", and is the answer to every error.
// It heeds ctx even when the store does not.
type KeylessChecker interface {
	NoKeys(ctx context.Context, addresses ...string) bool
}

// Quick is Resolve for the answers that need no query of the store: a
// cached one (as Cached), or "no key" for an address that no static rule
// names and for which the store's KeylessChecker is sure that none of its
// lookup candidates has a key. ok false means that only Resolve can tell
// (or that ctx ended first). Unlike Resolve it waits for nothing that
// ignores ctx, so the milter can call it on the RCPT path itself and
// start a bounded Resolve only when it says ok false. The answer is
// cached as Resolve's would be.
func (r *Resolver) Quick(ctx context.Context, address string) (l *Recipient, ok bool) {
	l, cands, gen, now, err := r.fromMemory(address)
	if l != nil || err != nil {
		return l, l != nil && err == nil
	}
	kc, can := r.store.(KeylessChecker)
	if !can {
		return nil, false
	}
	for _, a := range cands {
		if r.never[a] {
			return nil, false
		}
		if _, ok := r.addresses[a]; ok {
			return nil, false
		}
	}
	if _, ok := r.domains[Domain(cands[0])]; ok {
		return nil, false // [static.domains] reads its keys from the store
	}
	if !kc.NoKeys(ctx, cands...) {
		return nil, false
	}
	// What decide returns when no rule and no store entry matches.
	l = &Recipient{Address: cands[0], Source: SourceNone, ProtectHeaders: r.protect}
	r.remember(cands[0], l, gen, now)
	return l, true
}
