package keys

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"
)

// Source says which rule of the lookup order decided a recipient's keys.
type Source string

// The lookup order, first match wins (documented in docs/keys.md):
//
//  1. [static] never_encrypt: the address always gets mail as sent;
//  2. [static.addresses]: operator-chosen keys for the address;
//  3. the key store: keys registered for the address;
//
// each tried for the address itself and then, for "user+tag@", for
// "user@"; then
//
//  4. [static.domains]: keys for every address of the domain;
//  5. otherwise no keys: mail passes as sent.
const (
	SourceNever         Source = "never-encrypt"
	SourceStaticAddress Source = "static-address"
	SourceStore         Source = "store"
	SourceStaticDomain  Source = "static-domain"
	SourceNone          Source = "none"
)

// Recipient is the answer to "how must mail to this address be
// encrypted?", as Resolver.Resolve gives it.
type Recipient struct {
	// Address is the recipient, normalised.
	Address string
	// Matched is the address or domain whose entry decided (e.g. "user@"
	// for "user+tag@"); "" for SourceNone.
	Matched string
	Source  Source
	// Keys are the keys to encrypt to, valid at lookup time. Empty means
	// the mail is not encrypted, unless Unusable is not empty.
	Keys []*Key
	// Unusable lists keys bound to the address that can no longer encrypt
	// (expired, revoked since registration), each with the reason. When
	// Keys is empty and Unusable is not, [encryption] unusable_key decides.
	Unusable []*RejectError
	// ProtectHeaders is the recipient's choice, or the operator's default.
	ProtectHeaders bool
	// Format is how the mail is encrypted when Keys is not empty, and Keys
	// are of its kind (Format.Kind): never FormatDefault then. See
	// chooseFormat for the rule.
	Format Format
}

// Encrypt reports whether mail to the address must be encrypted.
func (r *Recipient) Encrypt() bool { return len(r.Keys) > 0 }

// AllUnusable reports whether the address has keys but none can be used now.
func (r *Recipient) AllUnusable() bool { return len(r.Keys) == 0 && len(r.Unusable) > 0 }

// ErrStaticKeyMissing is returned when the config maps an address or domain
// to a fingerprint that is not in the key store. Mail for it must wait
// (fail closed) until the operator adds the key or fixes the mapping.
var ErrStaticKeyMissing = errors.New("key named in [static] is not in the key store")

// maxCacheEntries bounds the cache; past it the cache starts over. A
// flood of random recipients must not grow memory without limit.
const maxCacheEntries = 100_000

// ResolverOptions configure a Resolver. The zero value is usable: every
// address is resolved from the store alone, with the zero Policy (RSA keys
// of at least 2048 bits, addresses compared as written apart from the
// domain's case), no cache, and header protection off unless a recipient
// turned it on.
type ResolverOptions struct {
	// Policy decides which keys may encrypt; its Normalizer also
	// normalises the addresses and domains below.
	Policy Policy
	// NeverEncrypt lists addresses that always receive mail as sent
	// ([static] never_encrypt).
	NeverEncrypt []string
	// Addresses maps an address to the fingerprints of keys in the store
	// that encrypt its mail instead of its registered keys ([static.addresses]).
	Addresses map[string][]string
	// Domains maps a domain to the fingerprints of keys in the store that
	// encrypt mail to every address of the domain without keys of its own
	// ([static.domains]).
	Domains map[string][]string
	// CacheTTL bounds how long an answer (including "no key") is reused;
	// 0 asks the store every time.
	CacheTTL time.Duration
	// ProtectHeaders is Recipient.ProtectHeaders for a recipient who has
	// not chosen ([encryption] protect_headers).
	ProtectHeaders bool
	// PGPFormat is the format for OpenPGP keys of a recipient who has not
	// chosen one ([encryption] pgp_format): FormatPGPMIME (also for the
	// zero value) or FormatPGPInline.
	PGPFormat Format
	// Formats maps an address to the format the operator chose for it
	// ([static.formats]); a format stored for the address ("keys set
	// ADDRESS format") overrides it.
	Formats map[string]Format
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Resolver answers "how must mail to this address be encrypted?" from
// the static rules of its options and the store, with a short-lived cache
// so that the answer at RCPT time costs a map lookup, not a query and a
// signature check. It is safe for concurrent use.
type Resolver struct {
	store      Store
	norm       Normalizer
	policy     Policy
	protect    bool
	pgpFormat  Format
	formats    map[string]Format
	never      map[string]bool
	addresses  map[string][]string
	domains    map[string][]string
	ttl        time.Duration
	now        func() time.Time
	mu         sync.Mutex
	cache      map[string]cached
	generation uint64 // bumped by InvalidateAll, so in-flight lookups do not store stale results
}

type cached struct {
	r       *Recipient
	expires time.Time
}

// NewResolver returns a resolver over store. Errors name the static entry
// that is wrong (see ResolverOptions.Check).
func NewResolver(store Store, opt ResolverOptions) (*Resolver, error) {
	now := opt.Now
	if now == nil {
		now = time.Now
	}
	r := &Resolver{
		store:   store,
		norm:    opt.Policy.Normalizer,
		policy:  opt.Policy,
		protect: opt.ProtectHeaders,
		ttl:     opt.CacheTTL,
		now:     now,
		cache:   map[string]cached{},
	}
	var err error
	r.never, r.addresses, r.domains, err = opt.static()
	if err != nil {
		return nil, err
	}
	if r.pgpFormat, r.formats, err = opt.formats(); err != nil {
		return nil, err
	}
	return r, nil
}

// formats checks and normalises PGPFormat and Formats.
func (opt ResolverOptions) formats() (Format, map[string]Format, error) {
	def := opt.PGPFormat
	switch def {
	case FormatDefault:
		def = FormatPGPMIME
	case FormatPGPMIME, FormatPGPInline:
	default:
		return "", nil, fmt.Errorf("encryption.pgp_format: %q is not an OpenPGP format (want pgp-mime or pgp-inline)", def)
	}
	out := map[string]Format{}
	origin := map[string]string{}
	for _, a := range slices.Sorted(maps.Keys(opt.Formats)) {
		n, err := opt.Policy.Normalizer.Normalize(a)
		if err != nil {
			return "", nil, fmt.Errorf("static.formats: %v", err)
		}
		if prev, dup := origin[n]; dup {
			return "", nil, fmt.Errorf("static.formats: %q and %q are the same address (%s)", prev, a, n)
		}
		f, err := ParseFormat(string(opt.Formats[a]))
		if err != nil {
			return "", nil, fmt.Errorf("static.formats: %s: %v", a, err)
		}
		origin[n] = a
		if f != FormatDefault {
			out[n] = f
		}
	}
	return def, out, nil
}

// Check reports what NewResolver would refuse in the static rules (an
// entry that does not normalise, two entries that normalise alike, an
// address both mapped and never encrypted) without a store.
func (opt ResolverOptions) Check() error {
	if _, _, _, err := opt.static(); err != nil {
		return err
	}
	_, _, err := opt.formats()
	return err
}

// static normalises the static rules; the messages name the config keys
// they come from.
func (opt ResolverOptions) static() (never map[string]bool, addresses, domains map[string][]string, err error) {
	norm := opt.Policy.Normalizer
	never, addresses, domains = map[string]bool{}, map[string][]string{}, map[string][]string{}
	for _, a := range opt.NeverEncrypt {
		n, err := norm.Normalize(a)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("static.never_encrypt: %v", err)
		}
		never[n] = true
	}
	// Two entries that normalise alike would win at random: refuse them.
	origin := map[string]string{}
	for _, a := range slices.Sorted(maps.Keys(opt.Addresses)) {
		n, err := norm.Normalize(a)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("static.addresses: %v", err)
		}
		if prev, dup := origin[n]; dup {
			return nil, nil, nil, fmt.Errorf("static.addresses: %q and %q are the same address (%s)", prev, a, n)
		}
		if never[n] {
			return nil, nil, nil, fmt.Errorf("static.addresses: %q is also in static.never_encrypt; keep one", a)
		}
		origin[n] = a
		addresses[n] = formatAll(opt.Addresses[a])
	}
	for _, d := range slices.Sorted(maps.Keys(opt.Domains)) {
		n, err := norm.NormalizeDomain(d)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("static.domains: %v", err)
		}
		if prev, dup := origin["@"+n]; dup {
			return nil, nil, nil, fmt.Errorf("static.domains: %q and %q are the same domain (%s)", prev, d, n)
		}
		origin["@"+n] = d
		domains[n] = formatAll(opt.Domains[d])
	}
	return never, addresses, domains, nil
}

func formatAll(fprs []string) []string {
	out := make([]string, len(fprs))
	for i, f := range fprs {
		out[i] = FormatFingerprint(f)
	}
	return out
}

// Policy returns the key policy the resolver applies (its Normalizer
// normalises the addresses).
func (r *Resolver) Policy() Policy { return r.policy }

// Resolve returns how mail to address must be encrypted. An error means
// the answer could not be determined (store unavailable, static key
// missing, address malformed): the caller must not treat it as "no key".
// Every lookup of alias resolution, when it comes, belongs behind this
// function.
func (r *Resolver) Resolve(ctx context.Context, address string) (*Recipient, error) {
	l, cands, gen, now, err := r.fromMemory(address)
	if l != nil || err != nil {
		return l, err
	}
	key := cands[0]
	l, err = r.decide(ctx, cands, now)
	if err != nil {
		return nil, err
	}
	r.remember(key, l, gen, now)
	return l, nil
}

// remember caches l under key, unless the cache was invalidated since gen.
func (r *Resolver) remember(key string, l *Recipient, gen uint64, now time.Time) {
	if r.ttl <= 0 {
		return
	}
	r.mu.Lock()
	if r.generation == gen {
		if len(r.cache) >= maxCacheEntries {
			r.cache = map[string]cached{}
		}
		r.cache[key] = cached{r: l, expires: cacheUntil(l, now, r.ttl)}
	}
	r.mu.Unlock()
}

// Cached is Resolve without the store: the answer when it is in the cache,
// and ok false when only Resolve can tell. It never waits for I/O, so the
// milter can call it directly on the RCPT path and start a bounded Resolve
// only on a miss.
func (r *Resolver) Cached(address string) (l *Recipient, ok bool) {
	l, _, _, _, err := r.fromMemory(address)
	return l, l != nil && err == nil
}

// fromMemory is the part of Resolve that needs no store: a non-nil
// Recipient or error is the answer; otherwise cands (normalised, first is the cache
// key), the cache generation and the time are what resolving needs.
func (r *Resolver) fromMemory(address string) (l *Recipient, cands []string, gen uint64, now time.Time, err error) {
	// An address that does not normalise is an error, never "no key":
	// what we cannot parse, the MTA may still deliver to a keyed mailbox
	// (issue 11: "alice(c)@example.org" reached alice in clear). The
	// milter classifies the MTA's own parse of the recipient ({rcpt_addr},
	// which Postfix completes with a domain), so this is rare there.
	cands, err = r.norm.Candidates(address)
	if err != nil {
		return nil, nil, 0, now, err
	}
	now = r.now()
	r.mu.Lock()
	c, ok := r.cache[cands[0]]
	gen = r.generation
	r.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c.r, nil, 0, now, nil
	}
	return nil, cands, gen, now, nil
}

// cacheUntil is when a cached answer ends: after the TTL, or sooner when
// one of its keys can change by the passage of time alone (a key or
// signature expiring). A key that expires while cached must get
// [encryption] unusable_key from that moment, not a failed encryption for
// the rest of the TTL; checking this once here keeps a cache hit as cheap
// as a map lookup.
func cacheUntil(l *Recipient, now time.Time, ttl time.Duration) time.Time {
	until := now.Add(ttl)
	for _, k := range l.Keys {
		if t := k.NextChange(now); !t.IsZero() && t.Before(until) {
			until = t
		}
	}
	return until
}

// decide applies the lookup order (see Source) to the candidates.
func (r *Resolver) decide(ctx context.Context, cands []string, now time.Time) (*Recipient, error) {
	l := &Recipient{Address: cands[0], Source: SourceNone, ProtectHeaders: r.protect}
	for _, a := range cands {
		if r.never[a] {
			l.Source, l.Matched = SourceNever, a
			return l, nil
		}
		if fprs, ok := r.addresses[a]; ok {
			l.Source, l.Matched = SourceStaticAddress, a
			return l, r.fill(ctx, l, a, r.byFingerprint(ctx, a, fprs), now)
		}
		ks, err := r.store.KeysFor(ctx, a)
		if err != nil {
			return nil, err
		}
		if len(ks) > 0 {
			l.Source, l.Matched = SourceStore, a
			return l, r.fill(ctx, l, a, func() ([]*Key, error) { return ks, nil }, now)
		}
	}
	d := Domain(cands[0])
	if fprs, ok := r.domains[d]; ok {
		l.Source, l.Matched = SourceStaticDomain, d
		return l, r.fill(ctx, l, "", r.byFingerprint(ctx, d, fprs), now)
	}
	return l, nil
}

func (r *Resolver) byFingerprint(ctx context.Context, entry string, fprs []string) func() ([]*Key, error) {
	return func() ([]*Key, error) {
		var ks []*Key
		for _, f := range fprs {
			k, err := r.store.KeyByFingerprint(ctx, f)
			if errors.Is(err, ErrNotFound) {
				return nil, fmt.Errorf("%w: %s maps to %s; add it with 'lacre-milter keys add' or fix the mapping", ErrStaticKeyMissing, entry, f)
			}
			if err != nil {
				return nil, err
			}
			ks = append(ks, k)
		}
		return ks, nil
	}
}

// fill sorts the keys into usable and unusable ones and applies the
// recipient's preferences (prefsFor "" means none apply, e.g. a domain).
func (r *Resolver) fill(ctx context.Context, l *Recipient, prefsFor string, get func() ([]*Key, error), now time.Time) error {
	var want Format
	if prefsFor != "" {
		want = r.formats[prefsFor]
	}
	ks, err := get()
	if err != nil {
		return err
	}
	for _, k := range ks {
		if err := r.policy.Usable(k, now); err != nil {
			var rej *RejectError
			if !errors.As(err, &rej) {
				rej = &RejectError{Rule: RuleFormat, Key: k.KeyID(), Msg: err.Error()}
			}
			l.Unusable = append(l.Unusable, rej)
			continue
		}
		l.Keys = append(l.Keys, k)
	}
	if prefsFor != "" {
		p, err := r.store.Prefs(ctx, prefsFor)
		if err != nil {
			return err
		}
		if p.ProtectHeaders != nil {
			l.ProtectHeaders = *p.ProtectHeaders
		}
		if p.Format != FormatDefault {
			want = p.Format
		}
	}
	l.Format, l.Keys = r.chooseFormat(want, l.Keys)
	return nil
}

// chooseFormat decides a recipient's format from its usable keys and the
// format it asked for (want: stored, else [static.formats], else none),
// and returns the keys of that format's kind. Mail is never left in clear
// because the asked-for kind has no usable key while the other has: an
// address asking for S/MIME whose certificate expired still gets
// OpenPGP, and the other way round. Without a choice, OpenPGP keys win
// over certificates (an address with both reads OpenPGP unless its
// format is set to smime), in the operator's PGPFormat.
func (r *Resolver) chooseFormat(want Format, ks []*Key) (Format, []*Key) {
	var pgp, x509 []*Key
	for _, k := range ks {
		if k.Kind() == KindX509 {
			x509 = append(x509, k)
		} else {
			pgp = append(pgp, k)
		}
	}
	pgpFormat := r.pgpFormat
	if want == FormatPGPMIME || want == FormatPGPInline {
		pgpFormat = want
	}
	switch {
	case want == FormatSMIME && len(x509) > 0, len(pgp) == 0 && len(x509) > 0:
		return FormatSMIME, x509
	case len(pgp) > 0:
		return pgpFormat, pgp
	}
	return FormatDefault, nil
}

// Invalidate drops the cached answers for address (and for its
// subaddresses' base form), e.g. after its keys changed in this process.
func (r *Resolver) Invalidate(address string) {
	cands, err := r.norm.Candidates(address)
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(cands) == 1 && r.norm.SubaddressSeparator != "" {
		// A change to "user@" also changes every "user+tag@": drop all.
		r.cache = map[string]cached{}
		r.generation++
		return
	}
	for _, c := range cands {
		delete(r.cache, c)
	}
	r.generation++
}

// InvalidateAll empties the cache, e.g. on SIGHUP.
func (r *Resolver) InvalidateAll() {
	r.mu.Lock()
	r.cache = map[string]cached{}
	r.generation++
	r.mu.Unlock()
}
