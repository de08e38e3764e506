package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"lacre.io/milter/config"
	"lacre.io/milter/keys"
)

// openResolver opens the configured store and a resolver over it. The
// caller closes the store.
func openResolver(c *config.Config) (keys.Store, *keys.Resolver, error) {
	s, err := openStore(c)
	if err != nil {
		return nil, nil, err
	}
	opt, err := resolverOptions(c)
	if err != nil {
		s.Close()
		return nil, nil, err
	}
	r, err := keys.NewResolver(s, opt)
	if err != nil {
		s.Close()
		return nil, nil, err
	}
	return s, r, nil
}

func (e *env) open() (*config.Config, keys.Store, *keys.Resolver, error) {
	c, err := e.loadConfig()
	if err != nil {
		return nil, nil, nil, err
	}
	s, r, err := openResolver(c)
	if err != nil {
		return nil, nil, nil, err
	}
	return c, s, r, nil
}

func keysAdd(e *env, args []string) error {
	fs := e.flags("keys add")
	replace := fs.Bool("replace", false, "unbind the address's other keys in the same transaction")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return fmt.Errorf("want an address and a key file: %w", errUsage)
	}
	var data []byte
	if pos[1] == "-" {
		data, err = io.ReadAll(io.LimitReader(e.stdin, keys.MaxKeyBytes+1))
	} else {
		data, err = keys.ReadKeyFile(pos[1])
	}
	if err != nil {
		return err
	}
	_, s, r, err := e.open()
	if err != nil {
		return err
	}
	defer s.Close()
	addr, err := r.Policy().Normalizer.Normalize(pos[0])
	if err != nil {
		return err
	}
	// An OpenPGP key or an X.509 certificate, told apart by its framing;
	// the address picks the end-entity certificate of a chain.
	if !keys.IsCertificate(data) && !bytes.Contains(data, []byte("-----BEGIN PGP ")) && bytes.Contains(data, []byte("PRIVATE KEY-----")) {
		// A PEM private key alone (the .key file beside a certificate)
		// has neither kind's framing: say what it is, in the
		// certificate's terms (RuleSecret), not "not OpenPGP data".
		if _, err := keys.ParseCertificate(data, addr, r.Policy().Normalizer); err != nil {
			return fmt.Errorf("nothing changed: %w", err)
		}
	}
	ks, err := keys.ParseAny(data, addr, r.Policy().Normalizer)
	if err != nil {
		return fmt.Errorf("nothing changed: %w", err)
	}
	ctx := context.Background()
	var keep []*keys.Key
	if *replace {
		// -replace replaces the keys of the kind added: a renewed
		// certificate does not unbind the address's OpenPGP keys, nor
		// the other way round ("keys remove" removes those).
		if keep, err = otherKind(ctx, s, addr, ks[0].Kind()); err != nil {
			return err
		}
	}
	err = keys.Admit(ctx, s, r.Policy(), keys.Admission{Address: addr, Keys: ks, Replace: *replace, Keep: keep}, time.Now())
	var rej *keys.RejectError
	if errors.As(err, &rej) {
		return fmt.Errorf("nothing changed: %w", err)
	}
	if err != nil {
		return err
	}
	for _, k := range ks {
		if c := k.Certificate(); c != nil {
			sum := c.Summary()
			fmt.Fprintf(e.stdout, "%s: added certificate %s (subject %s, issuer %s, serial %s, expires %s)\n",
				addr, k.Fingerprint, sum.Subject, sum.Issuer, sum.Serial, dateOrNever(k.Expires()))
			continue
		}
		fmt.Fprintf(e.stdout, "%s: added %s %s (expires %s)\n", addr, k.KeyID(), k.Fingerprint, dateOrNever(k.Expires()))
	}
	switch {
	case *replace && len(keep) == 0:
		fmt.Fprintf(e.stdout, "%s: other keys removed\n", addr)
	case *replace:
		fmt.Fprintf(e.stdout, "%s: other %s removed; its %s (%d) stay bound (\"keys remove ADDRESS FINGERPRINT\" removes one)\n",
			addr, kindNoun(ks[0].Kind()), kindNoun(keep[0].Kind()), len(keep))
	}
	return nil
}

// otherKind returns the keys bound to address that are not of kind: what
// "-replace" keeps.
func otherKind(ctx context.Context, s keys.Store, address string, kind keys.Kind) ([]*keys.Key, error) {
	bound, err := s.KeysFor(ctx, address)
	if err != nil {
		return nil, err
	}
	var out []*keys.Key
	for _, k := range bound {
		if k.Kind() != kind {
			out = append(out, k)
		}
	}
	return out, nil
}

// kindNoun names the keys of a kind, in the plural.
func kindNoun(k keys.Kind) string {
	if k == keys.KindX509 {
		return "certificates"
	}
	return "OpenPGP keys"
}

func keysList(e *env, args []string) error {
	if err := e.noArgs("keys list", args); err != nil {
		return err
	}
	_, s, r, err := e.open()
	if err != nil {
		return err
	}
	defer s.Close()
	bs, err := s.List(context.Background())
	if err != nil {
		return err
	}
	// FORMAT is how mail to the address is encrypted now (the resolver's
	// decision, "-" when it is not), so that an address with keys of
	// both kinds shows which one its mail uses. A certificate's row is
	// followed by an indented line with its subject, issuer and serial.
	ctx := context.Background()
	formats := map[string]string{}
	t := &table{}
	t.row("ADDRESS", "KIND", "FORMAT", "FINGERPRINT", "ADDED", "EXPIRES", "STATE")
	now := time.Now()
	for _, b := range bs {
		f, ok := formats[b.Address]
		if !ok {
			f = "-"
			if l, err := r.Resolve(ctx, b.Address); err != nil {
				f = "?"
			} else if l.Encrypt() {
				f = l.Format.String()
			}
			formats[b.Address] = f
		}
		t.row(b.Address, string(b.Key.Kind()), f, b.Key.Fingerprint, b.Added.UTC().Format("2006-01-02"),
			dateOrNever(b.Key.Expires()), state(r.Policy(), b.Key, now))
		if c := b.Key.Certificate(); c != nil {
			sum := c.Summary()
			t.detail(fmt.Sprintf("subject %q, issuer %q, serial %s", sum.Subject, sum.Issuer, sum.Serial))
		}
	}
	t.write(e.stdout)
	if len(bs) == 0 {
		fmt.Fprintln(e.stderr, "(no keys; add one with: lacre-milter keys add ADDRESS FILE)")
	}
	return nil
}

// table aligns columns like text/tabwriter, but also takes detail lines
// between rows (indented under the second column) without breaking the
// alignment of the rows around them.
type table struct {
	rows    [][]string
	details map[int]string // index of the row a detail line follows
}

func (t *table) row(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) detail(s string) {
	if t.details == nil {
		t.details = map[int]string{}
	}
	t.details[len(t.rows)-1] = s
}

func (t *table) write(w io.Writer) {
	var width []int
	for _, r := range t.rows {
		for i, c := range r {
			if i >= len(width) {
				width = append(width, 0)
			}
			width[i] = max(width[i], len(c))
		}
	}
	var b strings.Builder
	for n, r := range t.rows {
		for i, c := range r {
			if i == len(r)-1 {
				b.WriteString(c)
				break
			}
			b.WriteString(c)
			b.WriteString(strings.Repeat(" ", width[i]-len(c)+2))
		}
		b.WriteString("\n")
		if d, ok := t.details[n]; ok {
			b.WriteString(strings.Repeat(" ", width[0]+2) + d + "\n")
		}
	}
	io.WriteString(w, b.String())
}

func state(p keys.Policy, k *keys.Key, now time.Time) string {
	if err := p.Usable(k, now); err != nil {
		var rej *keys.RejectError
		if errors.As(err, &rej) {
			return "UNUSABLE: " + rej.Msg
		}
		return "UNUSABLE: " + err.Error()
	}
	return "ok"
}

func dateOrNever(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format("2006-01-02")
}

func keysShow(e *env, args []string) error {
	fs := e.flags("keys show")
	export := fs.Bool("export", false, "print the keys used, ASCII-armoured, instead of the description")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("want one address: %w", errUsage)
	}
	c, s, r, err := e.open()
	if err != nil {
		return err
	}
	defer s.Close()
	// An operator's typo is an error here; the milter treats an address
	// that does not normalise as one without keys.
	if _, err := r.Policy().Normalizer.Normalize(pos[0]); err != nil {
		return err
	}
	l, err := r.Resolve(context.Background(), pos[0])
	if err != nil {
		return err
	}
	if *export {
		if len(l.Keys) == 0 {
			return fmt.Errorf("%s: no usable key to export", l.Address)
		}
		for _, k := range l.Keys {
			e.stdout.Write(k.Armored())
		}
		return nil
	}
	w := e.stdout
	exp, expNote, err := expandForShow(c, l)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "address:  %s\n", l.Address)
	if exp != nil {
		// The mailboxes decide ([aliases], docs/keys.md).
		fmt.Fprintf(w, "expands:  to %d target(s)\n", len(exp.Targets))
		showExpansion(c, r, exp, w)
		return nil
	}
	if expNote != "" {
		defer fmt.Fprintf(w, "expands:  %s\n", expNote)
	}
	switch l.Source {
	case keys.SourceNone:
		fmt.Fprintf(w, "action:   pass unchanged (no key for %s)\n", l.Address)
	case keys.SourceNever:
		fmt.Fprintf(w, "action:   pass unchanged ([static] never_encrypt lists %s)\n", l.Matched)
	default:
		switch {
		case l.Encrypt():
			fmt.Fprintf(w, "action:   encrypt to %d key(s)\n", len(l.Keys))
		case l.AllUnusable():
			fmt.Fprintf(w, "action:   every key is unusable: encryption.unusable_key = %q applies\n", c.Encryption.UnusableKey)
		}
		fmt.Fprintf(w, "source:   %s (%s)\n", l.Source, l.Matched)
		ctx := context.Background()
		if l.Encrypt() {
			why, err := formatReason(ctx, c, s, r, l)
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "format:   %s (%s)\n", l.Format, why)
		}
		fmt.Fprintf(w, "headers:  protected = %v\n", l.ProtectHeaders)
		for _, k := range l.Keys {
			describeKey(w, k, "ok")
		}
		for _, u := range l.Unusable {
			fmt.Fprintf(w, "key:      %s UNUSABLE: %s\n", u.Key, u.Msg)
		}
		if l.Source == keys.SourceStore && l.Encrypt() {
			// The usable keys of the other kind: bound, but not what this
			// address's mail is encrypted to (see the format line).
			bound, err := s.KeysFor(ctx, l.Matched)
			if err != nil {
				return err
			}
			for _, k := range bound {
				if k.Kind() != l.Format.Kind() && r.Policy().Usable(k, time.Now()) == nil {
					describeKey(w, k, "not used: mail goes as "+l.Format.String())
				}
			}
		}
	}
	return nil
}

// formatReason says why mail to l is written in l.Format, by the
// resolver's rule (docs/keys.md, "Formats"): the recipient's stored
// choice, else [static.formats], else OpenPGP first in pgp_format; a
// choice whose kind has no usable key gives way to the other kind.
func formatReason(ctx context.Context, c *config.Config, s keys.Store, r *keys.Resolver, l *keys.Recipient) (string, error) {
	var want keys.Format
	var why string
	if l.Source == keys.SourceStore || l.Source == keys.SourceStaticAddress {
		p, err := s.Prefs(ctx, l.Matched)
		if err != nil {
			return "", err
		}
		if p.Format != keys.FormatDefault {
			want, why = p.Format, fmt.Sprintf("chosen for %s with \"keys set\"", l.Matched)
		} else {
			for a, f := range c.Static.Formats {
				if n, err := r.Policy().Normalizer.Normalize(a); err == nil && n == l.Matched {
					want, why = keys.Format(f), fmt.Sprintf("[static.formats] %q", a)
				}
			}
		}
	}
	switch {
	case want == keys.FormatDefault && l.Format == keys.FormatSMIME:
		return "the address has no usable OpenPGP key", nil
	case want == keys.FormatDefault:
		return "encryption.pgp_format", nil
	case want.Kind() != l.Format.Kind():
		return fmt.Sprintf("%s is %s, but no %s of the address is usable: mail goes to the other kind, never in clear",
			want, why, strings.TrimSuffix(kindNoun(want.Kind()), "s")), nil
	}
	return why, nil
}

func describeKey(w io.Writer, k *keys.Key, st string) {
	fmt.Fprintf(w, "key:      %s %s\n", k.Fingerprint, st)
	if c := k.Certificate(); c != nil {
		sum := c.Summary()
		fmt.Fprintf(w, "          X.509 certificate, %s, valid %s to %s\n", sum.Key, sum.NotBefore.Format("2006-01-02"), sum.NotAfter.Format("2006-01-02"))
		fmt.Fprintf(w, "          subject %s\n", sum.Subject)
		fmt.Fprintf(w, "          issuer  %s\n", sum.Issuer)
		fmt.Fprintf(w, "          serial  %s\n", sum.Serial)
		for _, a := range sum.Addresses {
			fmt.Fprintf(w, "          address %s\n", a)
		}
		return
	}
	fmt.Fprintf(w, "          created %s, expires %s\n", k.Created().UTC().Format("2006-01-02"), dateOrNever(k.Expires()))
	for _, uid := range k.UserIDs() {
		fmt.Fprintf(w, "          uid %s\n", uid)
	}
}

func keysRemove(e *env, args []string) error {
	fs := e.flags("keys remove")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 1 || len(pos) > 2 {
		return fmt.Errorf("want an address and optionally a fingerprint: %w", errUsage)
	}
	fpr := ""
	if len(pos) == 2 {
		if !keys.IsFingerprint(pos[1]) {
			return fmt.Errorf("%q is not a fingerprint (40 or 64 hex digits, as \"keys list\" shows): %w", pos[1], errUsage)
		}
		fpr = keys.FormatFingerprint(pos[1])
	}
	_, s, r, err := e.open()
	if err != nil {
		return err
	}
	defer s.Close()
	addr, err := r.Policy().Normalizer.Normalize(pos[0])
	if err != nil {
		return err
	}
	n, err := s.Remove(context.Background(), addr, fpr)
	if errors.Is(err, keys.ErrNotFound) {
		if fpr != "" {
			return fmt.Errorf("%s has no key %s (see \"lacre-milter keys show %s\")", addr, fpr, addr)
		}
		return fmt.Errorf("%s has no keys", addr)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s: removed %d key(s); mail to it is no longer encrypted with them\n", addr, n)
	return nil
}

func keysSet(e *env, args []string) error {
	fs := e.flags("keys set")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 3 || (pos[1] != "protect-headers" && pos[1] != "format") {
		return fmt.Errorf("want ADDRESS protect-headers on|off|default, or ADDRESS format pgp-mime|pgp-inline|smime|default: %w", errUsage)
	}
	// Each preference is set alone: the other keeps its stored value.
	var set func(p *keys.Prefs)
	value := strings.ToLower(pos[2])
	if pos[1] == "format" {
		f, err := keys.ParseFormat(value)
		if err != nil || value == "" {
			return fmt.Errorf("%q: want pgp-mime, pgp-inline, smime or default: %w", pos[2], errUsage)
		}
		set = func(p *keys.Prefs) { p.Format = f }
	} else {
		var v *bool
		switch value {
		case "on", "true", "yes":
			t := true
			v = &t
		case "off", "false", "no":
			f := false
			v = &f
		case "default":
		default:
			return fmt.Errorf("%q: want on, off or default: %w", pos[2], errUsage)
		}
		set = func(p *keys.Prefs) { p.ProtectHeaders = v }
	}
	_, s, r, err := e.open()
	if err != nil {
		return err
	}
	defer s.Close()
	addr, err := r.Policy().Normalizer.Normalize(pos[0])
	if err != nil {
		return err
	}
	ctx := context.Background()
	p, err := s.Prefs(ctx, addr)
	if err != nil {
		return err
	}
	set(&p)
	if err := s.SetPrefs(ctx, addr, p); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s: %s %s\n", addr, pos[1], value)
	if pos[1] == "format" && p.Format != keys.FormatDefault {
		// Not an error: the key may come later. Until then the other
		// kind is used (never clear text); say so.
		bound, err := s.KeysFor(ctx, addr)
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(bound, func(k *keys.Key) bool { return k.Kind() == p.Format.Kind() }) {
			fmt.Fprintf(e.stderr, "note: %s has no %s: until one is added, its mail is encrypted to its %s, if any (see \"lacre-milter keys show %s\")\n",
				addr, strings.TrimSuffix(kindNoun(p.Format.Kind()), "s"), kindNoun(otherKindOf(p.Format.Kind())), addr)
		}
	}
	return nil
}

func otherKindOf(k keys.Kind) keys.Kind {
	if k == keys.KindX509 {
		return keys.KindOpenPGP
	}
	return keys.KindX509
}

// checkStatic reports static mappings whose keys are not in the store or
// not usable: the mail they cover would wait in the queue.
func checkStatic(c *config.Config, s keys.Store, r *keys.Resolver) error {
	var probs []string
	check := func(kind, name string, fprs []string) {
		for _, f := range fprs {
			k, err := s.KeyByFingerprint(context.Background(), keys.FormatFingerprint(f))
			if err != nil {
				probs = append(probs, fmt.Sprintf("%s %s: key %s is not in the key store (add it with \"lacre-milter keys add\")", kind, name, f))
				continue
			}
			if err := r.Policy().Usable(k, time.Now()); err != nil {
				probs = append(probs, fmt.Sprintf("%s %s: %v", kind, name, err))
			}
		}
	}
	for a, f := range c.Static.Addresses {
		check("static.addresses", a, f)
	}
	for d, f := range c.Static.Domains {
		check("static.domains", d, f)
	}
	if len(probs) > 0 {
		sort.Strings(probs)
		return fmt.Errorf("mail for these would wait in the queue:\n  %s", strings.Join(probs, "\n  "))
	}
	return nil
}
