package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
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
	r, err := keys.NewResolver(s, resolverOptions(c))
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
		data, err = readLimited(pos[1], keys.MaxKeyBytes+1)
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
	ks, err := keys.Parse(data)
	if err != nil {
		return fmt.Errorf("nothing changed: %w", err)
	}
	err = keys.Admit(context.Background(), s, r.Policy(), keys.Admission{Address: addr, Keys: ks, Replace: *replace}, time.Now())
	var rej *keys.RejectError
	if errors.As(err, &rej) {
		return fmt.Errorf("nothing changed: %w", err)
	}
	if err != nil {
		return err
	}
	for _, k := range ks {
		fmt.Fprintf(e.stdout, "%s: added %s %s (expires %s)\n", addr, k.KeyID(), k.Fingerprint, dateOrNever(k.Expires()))
	}
	if *replace {
		fmt.Fprintf(e.stdout, "%s: other keys removed\n", addr)
	}
	return nil
}

// readLimited reads at most limit bytes of a file, so a wrong path (a
// disk image, /dev/zero) fails fast instead of filling memory.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
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
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tFINGERPRINT\tADDED\tEXPIRES\tSTATE")
	now := time.Now()
	for _, b := range bs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", b.Address, b.Key.Fingerprint, b.Added.UTC().Format("2006-01-02"),
			dateOrNever(b.Key.Expires()), state(r.Policy(), b.Key, now))
	}
	tw.Flush()
	if len(bs) == 0 {
		fmt.Fprintln(e.stderr, "(no keys; add one with: lacre-milter keys add ADDRESS FILE)")
	}
	return nil
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
		fmt.Fprintf(w, "headers:  protected = %v\n", l.ProtectHeaders)
		for _, k := range l.Keys {
			describeKey(w, k, "ok")
		}
		for _, u := range l.Unusable {
			fmt.Fprintf(w, "key:      %s UNUSABLE: %s\n", u.Key, u.Msg)
		}
	}
	return nil
}

func describeKey(w io.Writer, k *keys.Key, st string) {
	fmt.Fprintf(w, "key:      %s %s\n", k.Fingerprint, st)
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
	if len(pos) != 3 || pos[1] != "protect-headers" {
		return fmt.Errorf("want ADDRESS protect-headers on|off|default: %w", errUsage)
	}
	var v *bool
	switch strings.ToLower(pos[2]) {
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
	p.ProtectHeaders = v
	if err := s.SetPrefs(ctx, addr, p); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s: protect-headers %s\n", addr, strings.ToLower(pos[2]))
	return nil
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
