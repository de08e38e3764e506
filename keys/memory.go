package keys

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"
)

// MemoryStore is a Store kept in memory, for tests of the packages that
// use a Store. Setting Fail makes every call return it (wrapped in
// ErrUnavailable), to test what happens when the real store is down.
type MemoryStore struct {
	mu       sync.Mutex
	bindings map[string][]Binding
	prefs    map[string]Prefs
	requests []memRequest
	// Fail, when not nil, is returned by every method.
	Fail error
	// Calls counts the calls, so tests can see the cache at work.
	Calls int
}

var _ Store = (*MemoryStore)(nil)

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{bindings: map[string][]Binding{}, prefs: map[string]Prefs{}}
}

func (m *MemoryStore) enter() error {
	m.mu.Lock()
	m.Calls++
	if m.Fail != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, m.Fail)
	}
	return nil
}

// SetFail sets Fail under the store's lock.
func (m *MemoryStore) SetFail(err error) {
	m.mu.Lock()
	m.Fail = err
	m.mu.Unlock()
}

// KeysFor implements Store.
func (m *MemoryStore) KeysFor(_ context.Context, address string) ([]*Key, error) {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return nil, err
	}
	var out []*Key
	for _, b := range m.bindings[address] {
		out = append(out, b.Key)
	}
	return out, nil
}

// KeyByFingerprint implements Store.
func (m *MemoryStore) KeyByFingerprint(_ context.Context, fpr string) (*Key, error) {
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
	return nil, fmt.Errorf("key %s: %w", fpr, ErrNotFound)
}

// Add implements Store.
func (m *MemoryStore) Add(_ context.Context, address string, keys []*Key, replace bool) error {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return err
	}
	if len(keys) == 0 {
		return fmt.Errorf("add %s: no keys given", address)
	}
	bs := m.bindings[address]
	if replace {
		bs = nil
	}
	for _, k := range keys {
		i := slices.IndexFunc(bs, func(b Binding) bool { return b.Key.Fingerprint == k.Fingerprint })
		if i >= 0 {
			bs[i].Key = k
			continue
		}
		bs = append(bs, Binding{Address: address, Key: k, Added: time.Now().UTC()})
	}
	m.bindings[address] = bs
	return nil
}

// Remove implements Store.
func (m *MemoryStore) Remove(_ context.Context, address, fpr string) (int, error) {
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
		return 0, fmt.Errorf("%s %s: %w", address, fpr, ErrNotFound)
	}
	if len(kept) == 0 {
		delete(m.bindings, address)
	} else {
		m.bindings[address] = kept
	}
	return n, nil
}

// List implements Store.
func (m *MemoryStore) List(context.Context) ([]Binding, error) {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return nil, err
	}
	var out []Binding
	for _, bs := range m.bindings {
		out = append(out, bs...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out, nil
}

// Prefs implements Store.
func (m *MemoryStore) Prefs(_ context.Context, address string) (Prefs, error) {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return Prefs{}, err
	}
	return m.prefs[address], nil
}

// SetPrefs implements Store.
func (m *MemoryStore) SetPrefs(_ context.Context, address string, p Prefs) error {
	defer m.mu.Unlock()
	if err := m.enter(); err != nil {
		return err
	}
	m.prefs[address] = p
	return nil
}

// Close implements Store.
func (m *MemoryStore) Close() error { return nil }

// The Requests methods are in memory_requests.go.
