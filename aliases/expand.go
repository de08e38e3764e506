package aliases

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// maxLookups bounds the table lookups of one expansion.
const maxLookups = 100000

// expState accumulates one expansion.
type expState struct {
	targets []Target
	seen    map[string]bool
	rewrote bool
	lookups int
}

func (st *expState) add(t Target) error {
	k := strconv.Itoa(int(t.Kind)) + "\x00" + strings.ToLower(t.Addr)
	if st.seen[k] {
		return nil
	}
	st.seen[k] = true
	st.targets = append(st.targets, t)
	if len(st.targets) > maxTargets {
		return fmt.Errorf("%w: more than %d targets", ErrLimit, maxTargets)
	}
	return nil
}

// Expand returns the mailboxes Postfix will deliver mail for addr to.
// Results are cached for CacheTTL; concurrent calls for one address share
// one expansion. Each caller gets its own copy of Targets.
func (p *Postfix) Expand(ctx context.Context, addr string) (Expansion, error) {
	e, err := p.cache.do(ctx, addr, func(ctx context.Context) (Expansion, error) {
		return p.expand(ctx, addr)
	})
	if err != nil {
		return Expansion{}, err
	}
	e.Targets = slices.Clone(e.Targets)
	return e, nil
}

// Cached is Expand from memory only: the cached expansion of addr and
// true, or false when only Expand can tell (not cached, expired, or being
// expanded right now). It never waits for a table or a lock held across
// I/O, so the milter calls it on the RCPT path before it starts a bounded
// Expand. The caller gets its own copy of Targets, as from Expand.
func (p *Postfix) Cached(addr string) (Expansion, bool) {
	e, ok := p.cache.get(addr)
	if !ok {
		return Expansion{}, false
	}
	e.Targets = slices.Clone(e.Targets)
	return e, true
}

func (p *Postfix) expand(ctx context.Context, addr string) (Expansion, error) {
	unexpanded := Expansion{Input: addr, Targets: []Target{{Addr: addr, Kind: Mailbox}}}
	a := p.canon(addr)
	if a == "" {
		return unexpanded, nil
	}
	st := &expState{seen: map[string]bool{}}
	if err := p.cleanup(ctx, st, p.smtpd, a, 0); err != nil {
		return Expansion{}, err
	}
	if !st.rewrote {
		return unexpanded, nil
	}
	return Expansion{Input: addr, Targets: st.targets, Expanded: true}, nil
}

// cleanup is cleanup(8) for one recipient: recipient_canonical_maps, then
// canonical_maps (cleanup_envelope.c, each when its classes include
// envelope_recipient), then virtual_alias_maps (cleanup_out_recipient.c),
// then delivery of each result.
func (p *Postfix) cleanup(ctx context.Context, st *expState, stage *mapStage, addr string, depth int) error {
	if depth > reinjectDepth {
		return fmt.Errorf("%w: mail forwarding loop for %s", ErrLimit, addr)
	}
	list := []string{addr}
	if stage.mapping {
		a, err := p.map11(ctx, st, stage, stage.rcptCanon, addr, "recipient_canonical_maps")
		if err != nil {
			return err
		}
		if a, err = p.map11(ctx, st, stage, stage.canon, a, "canonical_maps"); err != nil {
			return err
		}
		if list, err = p.map1n(ctx, st, stage, a); err != nil {
			return err
		}
	}
	for _, a := range list {
		if err := p.deliver(ctx, st, a, depth); err != nil {
			return err
		}
	}
	return nil
}

// deliver is the queue manager's routing of one final recipient: local
// domains go to local(8) (when local_transport is local(8)), everything
// else is a mailbox elsewhere (virtual(8), lmtp, relay).
func (p *Postfix) deliver(ctx context.Context, st *expState, addr string, depth int) error {
	if p.local.enabled {
		_, domain, _ := splitAt(addr)
		local, err := p.isLocal(ctx, domain)
		if err != nil {
			return err
		}
		if local {
			return p.localDeliver(ctx, st, addr, "", false, 0, depth)
		}
	}
	return st.add(Target{Addr: addr, Kind: Mailbox})
}

// map11 is cleanup_map11.c: one-to-one canonical mapping, repeated until
// an address maps to itself or nothing, at most 10 times (then Postfix
// logs "unreasonable ... map nesting" and keeps the last address).
func (p *Postfix) map11(ctx context.Context, st *expState, stage *mapStage, tables []*table, addr, param string) (string, error) {
	if len(tables) == 0 {
		return addr, nil
	}
	for range canonicalRecursion {
		res, found, err := p.mailAddrMap(ctx, st, stage, tables, addr, stage.propCanon)
		if err != nil || !found {
			return addr, err
		}
		if len(res) > 1 {
			p.log.Warn("aliases: multi-valued canonical entry; Postfix uses the first", "param", param)
		}
		next := res[0]
		if next != addr {
			st.rewrote = true
		}
		self := strings.EqualFold(addr, next)
		addr = next
		if self {
			return addr, nil
		}
	}
	p.log.Warn("aliases: unreasonable canonical map nesting, as Postfix keeps the last address", "param", param)
	return addr, nil
}

// map1n is cleanup_map1n.c: recursive one-to-many virtual aliasing. The
// vector is rewritten in place; an address that maps to itself (among
// others) is kept and not expanded again; more than
// virtual_alias_expansion_limit addresses, or a chain deeper than
// virtual_alias_recursion_limit (a loop), is an error: Postfix defers the
// message ("4.6.0 Alias expansion error").
func (p *Postfix) map1n(ctx context.Context, st *expState, stage *mapStage, addr string) ([]string, error) {
	argv := []string{addr}
	if len(stage.virtual) == 0 {
		return argv, nil
	}
	beenHere := map[string]bool{}
	for arg := 0; arg < len(argv); arg++ {
		if len(argv) > stage.expanLimit {
			return nil, fmt.Errorf("%w: virtual_alias_expansion_limit (%d) for %s", ErrLimit, stage.expanLimit, addr)
		}
		for count := 0; ; count++ {
			if beenHere[strings.ToLower(argv[arg])] {
				break
			}
			if count >= stage.recurLimit {
				return nil, fmt.Errorf("%w: virtual_alias_recursion_limit (%d) for %s", ErrLimit, stage.recurLimit, addr)
			}
			res, found, err := p.mailAddrMap(ctx, st, stage, stage.virtual, argv[arg], stage.propVirtual)
			if err != nil {
				return nil, err
			}
			if !found {
				break
			}
			saved := argv[arg]
			for i, r := range res {
				if len(r) > stage.addrLimit {
					return nil, fmt.Errorf("%w: virtual_alias_address_length_limit (%d) for %s", ErrLimit, stage.addrLimit, addr)
				}
				if i == 0 {
					argv[arg] = r
				} else {
					argv = append(argv, r)
				}
				if strings.EqualFold(saved, r) {
					beenHere[strings.ToLower(saved)] = true
				} else {
					st.rewrote = true
				}
			}
		}
	}
	return argv, nil
}

// mailAddrMap is mail_addr_map(3): look addr up, turn an @otherdomain
// result into user@otherdomain, split the result into addresses,
// canonicalise them and, when propagate is set, add the unmatched
// extension to each.
func (p *Postfix) mailAddrMap(ctx context.Context, st *expState, stage *mapStage, tables []*table, addr string, propagate bool) ([]string, bool, error) {
	val, ext, found, err := p.mailAddrFind(ctx, st, stage, tables, addr)
	if err != nil || !found {
		return nil, false, err
	}
	if strings.HasPrefix(val, "@") {
		local, _, _ := splitAt(addr)
		if ext != "" && strings.HasSuffix(local, ext) {
			local = local[:len(local)-len(ext)]
		}
		val = local + val
	}
	var out []string
	for _, a := range parseAddressList(val) {
		a = p.canon(a)
		if propagate && ext != "" {
			a = addExtension(a, ext)
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		// Postfix: "lookup of ... returns non-address result", try again.
		return nil, false, &TableError{Table: tables[0].name, Err: fmt.Errorf("lookup of %s returns non-address result %q", addr, val)}
	}
	return out, true, nil
}

// mailAddrFind is mail_addr_find(3) with MA_FIND_DEFAULT, the search
// order of canonical(5) and virtual(5): user+ext@domain, user@domain,
// then (only when domain is $myorigin or local: $mydestination,
// $inet_interfaces, $proxy_interfaces) user+ext and user, then @domain.
// Each key goes to every table before the next key is tried; keys other
// than the full address go only to tables with fixed keys (not regexp,
// pcre, ...). ext is the extension that had to be removed to match.
func (p *Postfix) mailAddrFind(ctx context.Context, st *expState, stage *mapStage, tables []*table, addr string) (val, ext string, found bool, err error) {
	local, domain, hasAt := splitAt(addr)
	bare, e, hasExt := stripExtension(addr, p.delimFor(stage), p.ownerReq, p.doubleBounce)
	userOnly, _, _ := splitAt(bare)

	// All candidate keys, for tables answered by postmap -q: one run
	// asks them all.
	batch := []string{addr}
	if hasExt {
		batch = append(batch, bare)
	}
	if hasAt {
		batch = append(batch, local)
		if hasExt {
			batch = append(batch, userOnly)
		}
		batch = append(batch, "@"+domain)
	}

	try := func(key string, partial bool) (string, bool, error) {
		for _, t := range tables {
			if partial && t.pattern {
				continue
			}
			st.lookups++
			if st.lookups > maxLookups {
				return "", false, fmt.Errorf("%w: more than %d lookups", ErrLimit, maxLookups)
			}
			var tb []string
			if !t.pattern && t.q != nil {
				tb = make([]string, len(batch))
				for i, k := range batch {
					tb[i] = t.foldKey(k)
				}
			}
			v, ok, err := t.lookup(ctx, t.foldKey(key), tb)
			if err != nil || ok {
				return v, ok, err
			}
		}
		return "", false, nil
	}

	if val, found, err = try(addr, false); err != nil || found {
		return val, "", found, err
	}
	if hasExt {
		if val, found, err = try(bare, true); err != nil || found {
			return val, e, found, err
		}
	}
	if !hasAt {
		return "", "", false, nil
	}
	isLocal := strings.EqualFold(domain, p.myorigin)
	if !isLocal {
		if isLocal, err = p.isLocal(ctx, domain); err != nil {
			return "", "", false, err
		}
	}
	if isLocal {
		if val, found, err = try(local, true); err != nil || found {
			return val, "", found, err
		}
		if hasExt {
			if val, found, err = try(userOnly, true); err != nil || found {
				return val, e, found, err
			}
		}
	}
	val, found, err = try("@"+domain, true)
	return val, "", found, err
}

func (p *Postfix) delimFor(stage *mapStage) string {
	if stage != nil {
		return stage.delim
	}
	return p.delim
}

// localDeliver is local(8) for one recipient in a local domain
// (local/recipient.c, alias.c, token.c): the address is folded to lower
// case; aliases(5) are looked up by the local part with its extension,
// then without (the unmatched extension goes to the results only when
// propagate_unmatched_extensions includes "alias"). An alias that lists
// its own name delivers to that mailbox. |command, /file and :include:
// targets are returned, not followed. Results in local domains are
// expanded again at once; others are forwarded: they go through cleanup
// (canonical, virtual) again. Without an alias, local(8) reads
// ~/.forward (out of our sight) and delivers to the mailbox.
func (p *Postfix) localDeliver(ctx context.Context, st *expState, addr, expFrom string, owner bool, level, depth int) error {
	if level > aliasNesting {
		return fmt.Errorf("%w: alias database loop for %s", ErrLimit, addr)
	}
	folded := strings.ToLower(addr)
	lp, _, _ := splitAt(folded)
	if strings.HasPrefix(lp, "\\") {
		return st.add(Target{Addr: strings.TrimPrefix(addr, "\\"), Kind: Mailbox})
	}
	user, ext, hasExt := splitExtension(lp, p.local.delim, p.local.ownerReq, p.doubleBounce)
	if hasExt && strings.Contains(ext, "/") {
		lp, hasExt, ext = user, false, ""
	}
	batch := []string{lp}
	if hasExt {
		batch = append(batch, user)
	}
	var name, val, unmatched string
	var found bool
	var err error
	if lp != expFrom {
		name = lp
		if val, found, err = p.aliasLookup(ctx, st, lp, batch); err != nil {
			return err
		}
	}
	if !found && hasExt && user != expFrom {
		if p.local.propAlis {
			// resolve.c splices the first recipient_delimiter character,
			// whichever one the address used.
			unmatched = p.local.delim[:1] + ext[1:]
		}
		name = user
		if val, found, err = p.aliasLookup(ctx, st, user, batch); err != nil {
			return err
		}
	}
	if !found {
		if owner {
			// Delivered for an alias with an owner- alias: local(8)
			// resubmits the recipient through cleanup.
			return p.cleanup(ctx, st, p.local.reinject, addr, depth+1)
		}
		return st.add(Target{Addr: addr, Kind: Mailbox})
	}
	st.rewrote = true
	ownerSet := false
	if p.local.ownerReq {
		if _, ownerSet, err = p.aliasLookup(ctx, st, "owner-"+name, nil); err != nil {
			return err
		}
	}
	toks := parseAddressList(val)
	if len(toks) == 0 {
		return &TableError{Table: "alias_maps", Err: fmt.Errorf("no recipient in alias lookup result for %s", name)}
	}
	for _, tok := range toks {
		var err error
		switch {
		case strings.HasPrefix(tok, "|"):
			err = st.add(Target{Addr: tok, Kind: Command})
		case len(tok) >= 9 && strings.EqualFold(tok[:9], ":include:"):
			err = st.add(Target{Addr: tok, Kind: Include})
		case strings.HasPrefix(tok, "/"):
			err = st.add(Target{Addr: tok, Kind: File})
		case strings.HasPrefix(tok, "\\"):
			err = st.add(Target{Addr: p.canon(tok[1:]), Kind: Mailbox})
		default:
			a := p.canon(tok)
			if unmatched != "" {
				a = addExtension(a, unmatched)
			}
			_, dom, _ := splitAt(a)
			var local bool
			if local, err = p.isLocal(ctx, dom); err != nil {
				return err
			}
			if local {
				err = p.localDeliver(ctx, st, a, name, ownerSet, level+1, depth)
			} else {
				err = p.cleanup(ctx, st, p.local.reinject, a, depth+1)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// aliasLookup looks key up in alias_maps, first table first.
func (p *Postfix) aliasLookup(ctx context.Context, st *expState, key string, batch []string) (string, bool, error) {
	for _, t := range p.local.aliases {
		st.lookups++
		if st.lookups > maxLookups {
			return "", false, fmt.Errorf("%w: more than %d lookups", ErrLimit, maxLookups)
		}
		var tb []string
		if t.q != nil {
			for _, k := range batch {
				tb = append(tb, t.foldKey(k))
			}
		}
		v, ok, err := t.lookup(ctx, t.foldKey(key), tb)
		if err != nil || ok {
			return v, ok, err
		}
	}
	return "", false, nil
}
