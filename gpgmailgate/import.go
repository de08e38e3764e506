// Package gpgmailgate reads the state of a gpg-mailgate or Lacre (Python)
// installation, the content filter that lacre-milter replaces, and brings
// it into a lacre-milter key store: the public keys of its GnuPG home
// directory, its S/MIME certificate directory ([smime] cert_path), the
// key registrations of its gpg-mailgate-web database (table gpgmw_keys),
// and its /etc/gpg-mailgate.conf, translated into a lacre.toml.
//
// Every key goes through keys.Admit, the admission path of "lacre-milter
// keys add" and of the registration service, so an import accepts exactly
// what those accept. The package does not read lacre.toml: the caller
// hands it the store, the key policy and the registration domains.
package gpgmailgate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"slices"
	"sort"
	"strings"
	"time"

	"lacre.io/milter/keys"
)

// Rules of the import itself, reported like the rules of keys.Policy.
const (
	// RuleDomain: the address is outside [web] domains (when set).
	RuleDomain keys.Rule = "domain"
	// RuleBound: the store binds the address to other keys, which the
	// import does not replace without Replace.
	RuleBound keys.Rule = "already-bound"
	// RuleAddress: the source's address is not an e-mail address.
	RuleAddress keys.Rule = "address"
)

// Entry is one thing a source says about an address.
type Entry struct {
	// Origin says where the entry comes from, for the report: "key
	// 0x…", "row 12".
	Origin string
	// Address is the address the key is for, as the source spells it.
	// Empty: the key is for the addresses of its own User IDs (a GnuPG
	// home has no other binding).
	Address string
	// Data is the key, binary or ASCII-armoured, or an X.509
	// certificate (see keys.ParseAny).
	Data []byte
	// Certificate: Data must be an X.509 certificate (an S/MIME
	// certificate directory holds nothing else).
	Certificate bool
	// Unbind: the source says that Address has no key.
	Unbind bool
	// Skip, when not "", is why the entry is not imported (not an error:
	// an unconfirmed registration, a row superseded by a newer one).
	Skip string
}

// Outcome is what happened (or, in a dry run, would happen) to one address.
type Outcome string

// The outcomes, in the order the summary lists them.
const (
	Imported Outcome = "imported"        // bound to the address
	Updated  Outcome = "updated"         // already bound; the stored copy refreshed
	Present  Outcome = "already present" // already bound, nothing to change
	Unbound  Outcome = "unbound"         // the store's keys removed (Replace, source says none)
	Refused  Outcome = "refused"         // a rule refused it
	Skipped  Outcome = "skipped"         // not imported, and not an error
)

// Line is one line of a Report.
type Line struct {
	Address string // normalised when it could be; "" when no address is known
	Origin  string
	Outcome Outcome
	Rule    keys.Rule // for Refused
	Msg     string
}

// Report lists what an import did, address by address.
type Report struct {
	Lines  []Line
	DryRun bool
}

func (r *Report) add(l Line) { r.Lines = append(r.Lines, l) }

// Count returns how many lines have outcome o.
func (r *Report) Count(o Outcome) int {
	n := 0
	for _, l := range r.Lines {
		if l.Outcome == o {
			n++
		}
	}
	return n
}

// Refused returns how many lines were refused: non-zero makes the command fail.
func (r *Report) Refused() int { return r.Count(Refused) }

// Write prints every line, then the summary.
func (r *Report) Write(w io.Writer) {
	for _, l := range r.Lines {
		verb := string(l.Outcome)
		if r.DryRun {
			switch l.Outcome {
			case Imported, Updated, Unbound:
				verb = "would be " + verb
			}
		}
		if l.Outcome == Refused {
			verb += " (" + string(l.Rule) + ")"
		}
		addr := l.Address
		if addr == "" {
			addr = "-"
		}
		fmt.Fprintf(w, "%s: %s: %s", addr, verb, l.Origin)
		if l.Msg != "" {
			fmt.Fprintf(w, ": %s", l.Msg)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, r.Summary())
}

// Summary is the one-line summary: counts per outcome, refusals per rule,
// skips per reason.
func (r *Report) Summary() string {
	var parts []string
	for _, o := range []Outcome{Imported, Updated, Unbound, Present} {
		parts = append(parts, fmt.Sprintf("%s %d", o, r.Count(o)))
	}
	parts = append(parts, fmt.Sprintf("refused %d%s", r.Count(Refused), r.breakdown(Refused, func(l Line) string { return string(l.Rule) })))
	parts = append(parts, fmt.Sprintf("skipped %d%s", r.Count(Skipped), r.breakdown(Skipped, func(l Line) string { return skipKind(l.Msg) })))
	s := "summary: " + strings.Join(parts, ", ")
	if r.DryRun {
		s += "\ndry run: nothing was changed"
	}
	return s
}

func (r *Report) breakdown(o Outcome, key func(Line) string) string {
	n := map[string]int{}
	for _, l := range r.Lines {
		if l.Outcome == o {
			n[key(l)]++
		}
	}
	if len(n) == 0 {
		return ""
	}
	var parts []string
	for _, k := range slices.Sorted(mapKeys(n)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, n[k]))
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func mapKeys(m map[string]int) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// skipKind is the part of a skip reason before the first colon, so the
// summary groups "superseded by row 12" and "superseded by row 14".
func skipKind(msg string) string {
	if i := strings.IndexAny(msg, ":("); i > 0 {
		return strings.TrimSpace(msg[:i])
	}
	return msg
}

// Importer brings entries into a key store.
type Importer struct {
	Store  keys.Store
	Policy keys.Policy
	// Domains, when not empty, are the only domains whose addresses are
	// imported ([web] domains, normalised).
	Domains []string
	// Replace unbinds an address's other keys, as "keys add -replace"
	// does, and removes the keys of an address the source says has none.
	Replace bool
	// DryRun changes nothing: every decision is made, through the same
	// admission path, against a store that discards its writes.
	DryRun bool
	// Now is the time keys are judged at (time.Now when zero).
	Now time.Time
}

// planned is the keys one address is to be bound to.
type planned struct {
	keys    []*keys.Key
	origins []string
}

// Run imports the entries and reports what happened. An error is the
// store's (it cannot be read or written); the report then holds what
// was done before it.
func (im *Importer) Run(ctx context.Context, entries []Entry) (*Report, error) {
	now := im.Now
	if now.IsZero() {
		now = time.Now()
	}
	store := im.Store
	if im.DryRun {
		store = dryStore{im.Store}
	}
	rep := &Report{DryRun: im.DryRun}
	plan := map[string]*planned{}
	unbind := map[string]string{} // address → origin
	for _, e := range entries {
		addr := e.Address
		if addr != "" {
			n, err := im.Policy.Normalizer.Normalize(addr)
			if err != nil {
				if e.Skip == "" {
					rep.add(Line{Address: addr, Origin: e.Origin, Outcome: Refused, Rule: RuleAddress, Msg: err.Error()})
				} else {
					rep.add(Line{Address: addr, Origin: e.Origin, Outcome: Skipped, Msg: e.Skip})
				}
				continue
			}
			addr = n
		}
		switch {
		case e.Skip != "":
			rep.add(Line{Address: addr, Origin: e.Origin, Outcome: Skipped, Msg: e.Skip})
			continue
		case e.Unbind:
			if addr != "" {
				unbind[addr] = e.Origin
			}
			continue
		}
		ks, err := parseEntry(e, addr, im.Policy.Normalizer)
		if err != nil {
			rep.add(refusal(addr, e.Origin, err))
			continue
		}
		for _, k := range ks {
			origin := e.Origin
			// A certificate is one per entry, and its refusals name it.
			if k.Kind() != keys.KindX509 && (len(ks) > 1 || !strings.Contains(origin, k.KeyID())) {
				origin += " key " + k.KeyID()
			}
			addrs := []string{addr}
			if addr == "" {
				addrs = im.userIDAddresses(k)
				if len(addrs) == 0 {
					rep.add(Line{Origin: origin, Outcome: Skipped, Msg: "no User ID with an e-mail address"})
					continue
				}
			}
			for _, a := range addrs {
				if len(im.Domains) > 0 && !slices.Contains(im.Domains, keys.Domain(a)) {
					rep.add(Line{Address: a, Origin: origin, Outcome: Refused, Rule: RuleDomain,
						Msg: fmt.Sprintf("%s is not one of [web] domains (%s)", keys.Domain(a), strings.Join(im.Domains, ", "))})
					continue
				}
				if err := im.Policy.Validate(k, a, now); err != nil {
					var rej *keys.RejectError
					if e.Address == "" && errors.As(err, &rej) && rej.Rule == keys.RuleUserID {
						// Only the valid User IDs of a GnuPG key count:
						// a revoked or expired one is not an address of it.
						rep.add(Line{Address: a, Origin: origin, Outcome: Skipped, Msg: "User ID revoked or expired: " + rej.Msg})
						continue
					}
					rep.add(refusal(a, origin, err))
					continue
				}
				p := plan[a]
				if p == nil {
					p = &planned{}
					plan[a] = p
				}
				if !slices.ContainsFunc(p.keys, func(x *keys.Key) bool { return x.Fingerprint == k.Fingerprint }) {
					p.keys = append(p.keys, k)
					p.origins = append(p.origins, origin)
				}
			}
		}
	}
	for _, a := range slices.Sorted(planKeys(plan)) {
		if err := im.bind(ctx, store, rep, a, plan[a], now); err != nil {
			return rep, err
		}
	}
	var addrs []string
	for a := range unbind {
		if plan[a] == nil {
			addrs = append(addrs, a)
		}
	}
	sort.Strings(addrs)
	for _, a := range addrs {
		if err := im.unbind(ctx, store, rep, a, unbind[a]); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// parseEntry reads an entry's keys: an OpenPGP key or a certificate,
// told apart by their framing, or only a certificate when the source
// holds nothing else (so that an OpenPGP key or a bare private key in a
// certificate directory is refused in the certificate's terms).
func parseEntry(e Entry, addr string, n keys.Normalizer) ([]*keys.Key, error) {
	if e.Certificate {
		c, err := keys.ParseCertificate(e.Data, addr, n)
		if err != nil {
			return nil, err
		}
		return []*keys.Key{keys.FromCertificate(c)}, nil
	}
	return keys.ParseAny(e.Data, addr, n)
}

func planKeys(m map[string]*planned) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// bind admits the planned keys of one address.
func (im *Importer) bind(ctx context.Context, store keys.Store, rep *Report, addr string, p *planned, now time.Time) error {
	origin := strings.Join(p.origins, ", ")
	existing, err := im.Store.KeysFor(ctx, addr)
	if err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	// Only the keys of the kinds imported compete with them: an
	// address's certificates stay when its OpenPGP keys are imported,
	// and the other way round (gpg-mailgate kept both, in two places).
	kinds := map[keys.Kind]bool{}
	for _, k := range p.keys {
		kinds[k.Kind()] = true
	}
	stored := map[string]*keys.Key{}
	var others []string
	var keep []*keys.Key
	for _, k := range existing {
		stored[k.Fingerprint] = k
		switch {
		case slices.ContainsFunc(p.keys, func(x *keys.Key) bool { return x.Fingerprint == k.Fingerprint }):
		case !kinds[k.Kind()]:
			keep = append(keep, k)
		default:
			others = append(others, k.Fingerprint)
		}
	}
	if len(others) > 0 && !im.Replace {
		rep.add(Line{Address: addr, Origin: origin, Outcome: Refused, Rule: RuleBound,
			Msg: fmt.Sprintf("the store binds it to %s; not replaced (run again with -replace to replace)", strings.Join(others, ", "))})
		return nil
	}
	fresh, changed := false, false
	for _, k := range p.keys {
		s, ok := stored[k.Fingerprint]
		switch {
		case !ok:
			fresh = true
		case string(s.Raw) != string(k.Raw):
			changed = true
		}
	}
	if !fresh && !changed && len(others) == 0 {
		rep.add(Line{Address: addr, Origin: origin, Outcome: Present, Msg: fingerprints(p.keys)})
		return nil
	}
	err = keys.Admit(ctx, store, im.Policy, keys.Admission{Address: addr, Keys: p.keys, Replace: im.Replace, Keep: keep}, now)
	var rej *keys.RejectError
	switch {
	case errors.As(err, &rej) && errors.Is(err, keys.ErrStaleCopy) && !fresh && len(others) == 0:
		rep.add(Line{Address: addr, Origin: origin, Outcome: Present, Msg: fingerprints(p.keys) + " (the store's copy is newer)"})
		return nil
	case errors.As(err, &rej):
		rep.add(refusal(addr, origin, err))
		return nil
	case err != nil:
		return fmt.Errorf("%s: %w", addr, err)
	}
	msg := fingerprints(p.keys)
	if len(others) > 0 {
		msg += "; replaced " + strings.Join(others, ", ")
	}
	o := Imported
	if !fresh && len(others) == 0 {
		o = Updated
	}
	rep.add(Line{Address: addr, Origin: origin, Outcome: o, Msg: msg})
	return nil
}

// unbind handles an address the source says has no key.
func (im *Importer) unbind(ctx context.Context, store keys.Store, rep *Report, addr, origin string) error {
	bound, err := im.Store.KeysFor(ctx, addr)
	if err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	// The sources that say "no key" (gpg-mailgate-web's rows) speak of
	// OpenPGP keys only: the address's certificates stay.
	var existing, certs []*keys.Key
	for _, k := range bound {
		if k.Kind() == keys.KindX509 {
			certs = append(certs, k)
		} else {
			existing = append(existing, k)
		}
	}
	if len(existing) == 0 {
		rep.add(Line{Address: addr, Origin: origin, Outcome: Skipped, Msg: "no key (the source says the address has none)"})
		return nil
	}
	if !im.Replace {
		rep.add(Line{Address: addr, Origin: origin, Outcome: Refused, Rule: RuleBound,
			Msg: fmt.Sprintf("the source says the address has no key, the store binds it to %s; not removed (run again with -replace to remove)", fingerprints(existing))})
		return nil
	}
	if len(certs) > 0 {
		// One transaction: bind the certificates again, unbind the rest.
		if err := store.Add(ctx, addr, certs, true); err != nil {
			return fmt.Errorf("%s: %w", addr, err)
		}
	} else if _, err := store.Remove(ctx, addr, ""); err != nil && !errors.Is(err, keys.ErrNotFound) {
		return fmt.Errorf("%s: %w", addr, err)
	}
	rep.add(Line{Address: addr, Origin: origin, Outcome: Unbound, Msg: "removed " + fingerprints(existing)})
	return nil
}

func refusal(addr, origin string, err error) Line {
	var rej *keys.RejectError
	if errors.As(err, &rej) {
		return Line{Address: addr, Origin: origin, Outcome: Refused, Rule: rej.Rule, Msg: err.Error()}
	}
	return Line{Address: addr, Origin: origin, Outcome: Refused, Rule: keys.RuleFormat, Msg: err.Error()}
}

func fingerprints(ks []*keys.Key) string {
	var f []string
	for _, k := range ks {
		f = append(f, k.Fingerprint)
	}
	return strings.Join(f, ", ")
}

// userIDAddresses returns the normalised addresses of k's User IDs, each
// once, sorted; the caller checks each one's validity with Validate.
func (im *Importer) userIDAddresses(k *keys.Key) []string {
	var out []string
	for _, name := range k.UserIDs() {
		a := UserIDAddress(name)
		if a == "" {
			continue
		}
		n, err := im.Policy.Normalizer.Normalize(a)
		if err != nil || slices.Contains(out, n) {
			continue
		}
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// UserIDAddress extracts the e-mail address of a User ID, conventionally
// "Name <addr>", or a bare address; "" when it has none.
func UserIDAddress(uid string) string {
	if a, err := mail.ParseAddress(uid); err == nil {
		return a.Address
	}
	if i := strings.LastIndexByte(uid, '<'); i >= 0 {
		if j := strings.IndexByte(uid[i:], '>'); j > 0 {
			if a := strings.TrimSpace(uid[i+1 : i+j]); strings.Contains(a, "@") {
				return a
			}
		}
	}
	if s := strings.TrimSpace(uid); strings.Contains(s, "@") && !strings.ContainsAny(s, " <>") {
		return s
	}
	return ""
}

// dryStore is the store of a dry run: it reads the real store and
// discards writes, so keys.Admit makes every decision it would make.
type dryStore struct{ keys.Store }

func (dryStore) Add(context.Context, string, []*keys.Key, bool) error { return nil }

func (d dryStore) Remove(ctx context.Context, address, fingerprint string) (int, error) {
	ks, err := d.Store.KeysFor(ctx, address)
	if err != nil {
		return 0, err
	}
	if len(ks) == 0 {
		return 0, keys.ErrNotFound
	}
	return len(ks), nil
}

func (dryStore) SetPrefs(context.Context, string, keys.Prefs) error { return nil }

func (dryStore) Close() error { return nil }
