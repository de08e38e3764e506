package keys

import (
	"context"
	"errors"
	"time"
)

// Admission asks for keys to be bound to an address: what the CLI's
// "keys add" and the registration service's confirmation both do.
type Admission struct {
	// Address is the address the keys are for, normalised with the
	// policy's Normalizer.
	Address string
	// Keys are the keys to bind. Each must pass Policy.Validate for
	// Address and may not replace a newer or revoked copy in the store.
	Keys []*Key
	// Replace unbinds the address's other keys in the same transaction.
	Replace bool
	// Keep are keys already bound to Address that stay bound when Replace
	// is set; they are bound again as the store holds them, unchecked
	// (the web service keeps the keys confirmed earlier from the same
	// submission). Nil keeps none.
	Keep []*Key
}

// ErrStaleCopy is in the chain of the *RejectError Admit returns when the
// store holds a copy of a submitted key that the submitted one may not
// replace (a newer or a revoked copy): the submission is acceptable in
// itself, but it is out of date.
var ErrStaleCopy = errors.New("the key store holds a newer copy of the key")

// Admit is the one way a key enters the store: it validates each key for
// the address, compares it with the store's copy of the same key, and
// binds them all in one transaction, or none. A refused key is a
// *RejectError (with ErrStaleCopy in its chain when the store's copy
// wins); any other error is the store's, and nothing was changed: a store
// that cannot say whether it holds a copy never lets the check be skipped.
func Admit(ctx context.Context, store Store, p Policy, a Admission, now time.Time) error {
	for _, k := range a.Keys {
		if err := p.Validate(k, a.Address, now); err != nil {
			return err
		}
		stored, err := store.KeyByFingerprint(ctx, k.Fingerprint)
		switch {
		case errors.Is(err, ErrNotFound):
		case err != nil:
			return err
		default:
			if err := p.checkUpdate(stored, k, now); err != nil {
				return err
			}
		}
	}
	bind := a.Keys
	if len(a.Keep) > 0 {
		bind = append(append([]*Key(nil), a.Keys...), a.Keep...)
	}
	return store.Add(ctx, a.Address, bind, a.Replace)
}
