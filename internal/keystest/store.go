// Package keystest holds what the tests of several packages share about
// keys: an in-memory key store (Store) and the one helper that makes a
// test key (Key). It is for tests only; production code never imports it.
package keystest

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"lacre.io/milter/keys"
)

// Store is a keys.Store and keys.Requests kept in memory, for tests of
// the packages that use a store. Setting Fail makes every call return it
// (wrapped in keys.ErrUnavailable), to test what happens when the real
// store is down.
type Store struct {
	mu       sync.Mutex
	bindings map[string][]keys.Binding
	prefs    map[string]keys.Prefs
	requests []memRequest
	// Fail, when not nil, is returned by every method.
	Fail error
	// Calls counts the calls, so tests can see the cache at work.
	Calls int
}

var _ keys.Store = (*Store)(nil)

// NewStore returns an empty Store.
func NewStore() *Store {
	return &Store{bindings: map[string][]keys.Binding{}, prefs: map[string]keys.Prefs{}}
}

func (m *Store) enter() error {
	m.mu.Lock()
	m.Calls++
	if m.Fail != nil {
		return fmt.Errorf("%w: %w", keys.ErrUnavailable, m.Fail)
	}
	return nil
}

// SetFail sets Fail under the store's lock.
func (m *Store) SetFail(err error) {
	m.mu.Lock()
	m.Fail = err
	m.mu.Unlock()
}

// KeysFor implements keys.Store.
func (m *Store) KeysFor(_ context.Context, address string) ([]*keys.Key, error) {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return nil, err
	}
	var out []*keys.Key
	for _, b := range m.bindings[address] {
		out = append(out, b.Key)
	}
	return out, nil
}

// KeyByFingerprint implements keys.Store.
func (m *Store) KeyByFingerprint(_ context.Context, fpr string) (*keys.Key, error) {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return nil, err
	}
	for _, bs := range m.bindings {
		for _, b := range bs {
			if b.Key.Fingerprint == fpr {
				return b.Key, nil
			}
		}
	}
	return nil, fmt.Errorf("key %s: %w", fpr, keys.ErrNotFound)
}

// Add implements keys.Store.
func (m *Store) Add(_ context.Context, address string, ks []*keys.Key, replace bool) error {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return err
	}
	if len(ks) == 0 {
		return fmt.Errorf("add %s: no keys given", address)
	}
	bs := m.bindings[address]
	if replace {
		bs = nil
	}
	for _, k := range ks {
		i := slices.IndexFunc(bs, func(b keys.Binding) bool { return b.Key.Fingerprint == k.Fingerprint })
		if i >= 0 {
			bs[i].Key = k
			continue
		}
		bs = append(bs, keys.Binding{Address: address, Key: k, Added: time.Now().UTC()})
	}
	m.bindings[address] = bs
	return nil
}

// Remove implements keys.Store.
func (m *Store) Remove(_ context.Context, address, fpr string) (int, error) {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return 0, err
	}
	bs := m.bindings[address]
	kept := bs[:0:0]
	for _, b := range bs {
		if fpr != "" && b.Key.Fingerprint != fpr {
			kept = append(kept, b)
		}
	}
	n := len(bs) - len(kept)
	if n == 0 {
		return 0, fmt.Errorf("%s %s: %w", address, fpr, keys.ErrNotFound)
	}
	if len(kept) == 0 {
		delete(m.bindings, address)
	} else {
		m.bindings[address] = kept
	}
	return n, nil
}

// List implements keys.Store.
func (m *Store) List(context.Context) ([]keys.Binding, error) {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return nil, err
	}
	var out []keys.Binding
	for _, bs := range m.bindings {
		out = append(out, bs...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out, nil
}

// Prefs implements keys.Store.
func (m *Store) Prefs(_ context.Context, address string) (keys.Prefs, error) {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return keys.Prefs{}, err
	}
	return m.prefs[address], nil
}

// SetPrefs implements keys.Store.
func (m *Store) SetPrefs(_ context.Context, address string, p keys.Prefs) error {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return err
	}
	m.prefs[address] = p
	return nil
}

// Close implements keys.Store.
func (m *Store) Close() error { return nil }

// The Requests methods are in memory_requests.go.
