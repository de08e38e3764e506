package milter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"

	"lacre.io/milter/aliases"
	"lacre.io/milter/keys"
)

// Recipients are classified by the mailboxes the MTA delivers them to, not
// by the address the client wrote (issue 14): cleanup(8) rewrites the
// envelope with canonical and virtual alias maps after the milter has seen
// RCPT, and local(8) expands aliases(5). The rules, in order:
//
//  1. Keys bound to the address as written ([static] never_encrypt,
//     [static.addresses], the key store; keys.SourceNever,
//     SourceStaticAddress, SourceStore) win: the operator or the user
//     chose them for that address, whatever the MTA does with it.
//  2. Otherwise the recipient is expanded (Options.Expander). An error is
//     a temporary failure for the recipient, never "no key".
//  3. An unexpanded recipient is classified by its own lookup (which may
//     still find [static.domains]).
//  4. An expanded one by its Mailbox targets, each looked up as a
//     recipient of its own: all keyed → encrypted to all their keys (one
//     ciphertext; the envelope is left alone and the MTA expands it as
//     usual); all clear → clear; a lookup failure or an unusable key of
//     any of them → that mailbox's reply for the recipient; keyed and
//     clear mixed → Options.MixedAlias; keyed mailboxes of different
//     formats (PGP/MIME, PGP/inline, S/MIME) → deferred, since one body
//     cannot serve them all (docs/aliases.md).
//
// Command, file and :include: targets are no mailboxes: they have no keys
// and get the copy this transaction carries (the ciphertext if any
// mailbox of the expansion is keyed, else the clear message). A mixed
// expansion with such targets cannot be split (replacing the recipient
// by its mailboxes would drop them): it is deferred with a log line that
// tells the operator to split the alias.

// refusal is why a recipient cannot be taken as it is.
type refusal struct {
	reply Reply  // the reply over SMTP
	why   string // for non-SMTP mail: why the message cannot be delivered as it is
	// keep: non-SMTP mail keeps the recipient, with its class (the
	// message as a whole is then subject to milter.mixed_local).
	keep bool
}

// resolve classifies one recipient, bounded by milter.lookup_timeout for
// the expansion and every key lookup together. canSplit says whether the
// MTA lets the milter change recipients (SMFIF_ADDRCPT, SMFIF_DELRCPT).
func (s *session) resolve(addr string, canSplit bool) (recipient, *refusal) {
	// No timer unless a lookup has to wait (lazyDeadline).
	dl := newLazyDeadline(s.st.LookupTimeout)
	defer dl.stop()
	var ctx context.Context = dl
	// The recipient and its mailboxes are looked up in one snapshot of
	// the key store's keyed-address set: one freshness check for all.
	ctx = keys.WithSnapshot(ctx)
	l, lerr := s.findKeys(ctx, addr)
	if lerr != nil || boundAsWritten(l) {
		c, ref := s.keyClass(addr, "", l, lerr)
		return recipient{addr: addr, found: l, class: c}, ref
	}
	exp, err := s.expand(ctx, addr)
	if err != nil {
		s.srv.log.Warn("recipient expansion failed", "queue_id", s.queueID, "rcpt", addr, "error", err)
		return recipient{addr: addr}, &refusal{reply: ReplyExpandFailed, why: "expansion of " + addr + " failed"}
	}
	if !exp.Expanded {
		c, ref := s.keyClass(addr, "", l, nil)
		return recipient{addr: addr, found: l, class: c}, ref
	}
	return s.resolveExpansion(ctx, addr, exp, canSplit)
}

// boundAsWritten reports whether the address as written has keys (or
// never_encrypt) of its own, which win over its expansion.
func boundAsWritten(l *keys.Recipient) bool {
	switch l.Source {
	case keys.SourceNever, keys.SourceStaticAddress, keys.SourceStore:
		return true
	}
	return false
}

// resolveExpansion classifies an expanded recipient by its mailboxes.
func (s *session) resolveExpansion(ctx context.Context, addr string, exp aliases.Expansion, canSplit bool) (recipient, *refusal) {
	r := recipient{addr: addr, targets: len(exp.Targets)}
	var keyed, clear, other []string
	var ks []*keys.Key
	seen := map[string]bool{}
	protect := false
	var format keys.Format // of the first keyed mailbox
	var conflict []string  // "mailbox is format": the first keyed mailbox, then mailboxes of other formats
	conflicts := 0         // mailboxes of another format than the first
	for _, t := range exp.Targets {
		if t.Kind != aliases.Mailbox {
			other = append(other, t.Kind.String()+" "+t.Addr)
			continue
		}
		l, lerr := s.findKeys(ctx, t.Addr)
		c, ref := s.keyClass(addr, t.Addr, l, lerr)
		if ref != nil {
			return r, ref
		}
		if !c.encrypt {
			clear = append(clear, t.Addr)
			continue
		}
		keyed = append(keyed, t.Addr)
		switch {
		case len(keyed) == 1:
			format = c.format
		case c.format != format:
			if len(conflict) == 0 {
				conflict = append(conflict, keyed[0]+" is "+format.String())
			}
			conflicts++
			if len(conflict) < maxConflictsLogged {
				conflict = append(conflict, t.Addr+" is "+c.format.String())
			}
		}
		// Header protection if any keyed mailbox wants it: it hides
		// the subject from the servers in between, and every client
		// still reads the message.
		protect = protect || c.protect
		for _, k := range l.Keys {
			if !seen[k.Fingerprint] {
				seen[k.Fingerprint] = true
				ks = append(ks, k)
			}
		}
	}
	r.other = len(other)
	if s.srv.log.Enabled(context.Background(), slog.LevelDebug) {
		s.srv.log.Debug("recipient expanded", "queue_id", s.queueID, "rcpt", addr,
			"keyed", keyed, "clear", clear, "other", other)
	}
	if len(keyed) == 0 {
		r.found = &keys.Recipient{Address: addr, Source: keys.SourceNone}
		return r, nil
	}
	if conflicts > 0 {
		if more := conflicts + 1 - len(conflict); more > 0 {
			conflict = append(conflict, fmt.Sprintf("and %d more", more))
		}
		// One body cannot serve readers of different formats, and no
		// format is read by all of them (an S/MIME client cannot open
		// OpenPGP; a reader that asked for PGP/inline may not open
		// PGP/MIME): nobody gets a copy it might not read, nobody gets
		// clear text. The sender's MTA retries until the formats agree.
		s.srv.log.Warn("recipient expands to keyed mailboxes that need different formats, which cannot share one message: deferred; give them one format (keys set ADDRESS format), or split the alias by format",
			"queue_id", s.queueID, "rcpt", addr, "conflict", strings.Join(conflict, ", "))
		return r, &refusal{reply: ReplyMixedAlias, why: addr + " expands to keyed mailboxes of different formats (" + strings.Join(conflict, ", ") + ")"}
	}
	// A mix of RSA and EC certificates shares one ciphertext here (an
	// alias cannot be split by key type): NSS readers among the RSA
	// mailboxes cannot open it (docs/aliases.md).
	r.class = encryptClass(format, protect, ks)
	r.found = &keys.Recipient{Address: addr, Source: keys.SourceStore, Keys: ks, ProtectHeaders: protect, Format: r.class.format}
	if len(clear) == 0 {
		return r, nil
	}
	switch {
	case len(other) > 0:
		s.srv.log.Warn("recipient expands to keyed and unkeyed mailboxes and to command, file or :include: targets, which cannot be split: deferred; split the alias into one for the keyed and one for the other targets",
			"queue_id", s.queueID, "rcpt", addr, "keyed", len(keyed), "clear", len(clear), "other", len(other))
	case s.st.MixedAlias == MixedAliasDefer || s.st.Reinject == nil:
		s.srv.log.Warn("recipient expands to keyed and unkeyed mailboxes: deferred ([aliases] mixed = \"defer\")",
			"queue_id", s.queueID, "rcpt", addr, "keyed", len(keyed), "clear", len(clear))
	case !canSplit:
		s.srv.log.Warn("recipient expands to keyed and unkeyed mailboxes, and the MTA does not let the milter change recipients: deferred",
			"queue_id", s.queueID, "rcpt", addr, "keyed", len(keyed), "clear", len(clear))
	default:
		r.split = &split{keyed: keyed, clear: clear}
		return r, nil
	}
	return r, &refusal{reply: ReplyMixedAlias, why: addr + " expands to keyed and unkeyed mailboxes", keep: true}
}

// maxConflictsLogged bounds the mailboxes a format conflict names (an
// expansion may have up to virtual_alias_expansion_limit, 1000).
const maxConflictsLogged = 4

// keyClass is the class of one looked-up address, or why it cannot be
// served. mailbox is the expansion target looked up for rcpt ("" when
// rcpt itself was).
func (s *session) keyClass(rcpt, mailbox string, l *keys.Recipient, lerr error) (class, *refusal) {
	s.srv.metrics.KeysFound(lerr)
	addr := rcpt
	logArgs := []any{"queue_id", s.queueID, "rcpt", rcpt}
	if mailbox != "" {
		addr = mailbox
		logArgs = append(logArgs, "mailbox", mailbox)
	}
	switch {
	case lerr != nil:
		var ae *keys.AddressError
		if errors.As(lerr, &ae) {
			s.srv.log.Warn("recipient address not understood", append(logArgs, "error", lerr)...)
			return class{}, &refusal{reply: ReplyAddressUnknown, why: "recipient address not understood: " + addr}
		}
		s.srv.log.Warn("key lookup failed", append(logArgs, "error", lerr)...)
		return class{}, &refusal{reply: ReplyLookupFailed, why: "key lookup failed for " + addr}
	case l.AllUnusable():
		s.srv.log.Warn("recipient's keys are unusable", append(logArgs,
			"policy", s.st.UnusableKey.String(), "reason", l.Unusable[0].Error())...)
		switch s.st.UnusableKey {
		case UnusableKeyClear:
			return class{}, nil
		case UnusableKeyReject:
			return class{}, &refusal{reply: ReplyKeyUnusableReject, why: "every key of " + addr + " is unusable"}
		default:
			return class{}, &refusal{reply: ReplyKeyUnusableTemp, why: "every key of " + addr + " is unusable"}
		}
	}
	if !l.Encrypt() {
		return class{}, nil
	}
	return encryptClass(l.Format, l.ProtectHeaders, l.Keys), nil
}

// expand asks the expander about rcpt, bounded by ctx even when the
// expander does not heed it (a table lookup stuck on a lock or a remote
// map), as findKeys does for the key source.
func (s *session) expand(ctx context.Context, rcpt string) (aliases.Expansion, error) {
	if _, ok := s.st.Expander.(aliases.None); ok {
		return aliases.None{}.Expand(ctx, rcpt)
	}
	if c, ok := s.st.Expander.(quickExpander); ok {
		if e, ok := c.Quick(rcpt); ok {
			return e, nil
		}
	} else if c, ok := s.st.Expander.(cachedExpander); ok {
		if e, ok := c.Cached(rcpt); ok {
			return e, nil
		}
	}
	type answer struct {
		e     aliases.Expansion
		err   error
		panic any
	}
	done := make(chan answer, 1)
	x := s.st.Expander
	go func() {
		defer func() {
			if v := recover(); v != nil {
				done <- answer{panic: fmt.Sprintf("%v\n%s", v, debug.Stack())}
			}
		}()
		e, err := x.Expand(ctx, rcpt)
		done <- answer{e: e, err: err}
	}()
	select {
	case a := <-done:
		if a.panic != nil {
			panic(a.panic) // for guard: logged with the queue id, a temporary failure
		}
		return a.e, a.err
	case <-ctx.Done():
		return aliases.Expansion{}, fmt.Errorf("expansion of %s: %w", rcpt, context.Cause(ctx))
	}
}

// cachedExpander is an Expander that can also answer from memory without
// blocking; the milter then needs no goroutine for a cached expansion.
type cachedExpander interface {
	Cached(addr string) (aliases.Expansion, bool)
}

// quickExpander is an Expander that can also expand without waiting for
// I/O when the answer allows (the tables in memory and checked lately):
// the milter then needs no goroutine for most expansions, cached or not.
type quickExpander interface {
	Quick(addr string) (aliases.Expansion, bool)
}

// Postfix's expander answers cached and in-memory expansions without a
// goroutine.
var (
	_ cachedExpander = (*aliases.Postfix)(nil)
	_ quickExpander  = (*aliases.Postfix)(nil)
)
