package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"

	"lacre.io/milter/aliases"
	"lacre.io/milter/config"
	"lacre.io/milter/keys"
	"lacre.io/milter/milter"
)

// aliasSource resolves [aliases] source = "auto": "postfix" on a host
// where Postfix is installed and configured (postconf found, and a
// main.cf in /etc/postfix), or when a Postfix configuration directory is
// named; otherwise "none". A Postfix host always has both, so "auto"
// expands wherever Postfix runs; a milter on a host without Postfix (or a
// developer's machine running the README's first command) starts, and
// says at start and in check-config that it does not expand.
func aliasSource(a config.Aliases) string {
	if a.Source != config.AliasesAuto {
		return a.Source
	}
	if a.PostfixConfigDir != "" || postfixInstalled() {
		return config.AliasesPostfix
	}
	return config.AliasesNone
}

// Where aliases.NewPostfix looks for postconf when it is not on PATH, and
// Postfix's default main.cf (variables for tests).
var (
	postconfFallback = "/usr/sbin/postconf"
	postfixMainCf    = "/etc/postfix/main.cf"
)

// postfixInstalled reports whether postconf is on PATH or in /usr/sbin,
// where aliases.NewPostfix looks for it, and Postfix is configured
// (Debian's postfix package with "No configuration" has no main.cf).
func postfixInstalled() bool {
	if _, err := os.Stat(postfixMainCf); err != nil {
		return false
	}
	if _, err := exec.LookPath("postconf"); err == nil {
		return true
	}
	_, err := os.Stat(postconfFallback)
	return err == nil
}

// newExpander builds the recipient expansion of [aliases]. With source =
// "postfix" it reads Postfix's configuration now (postconf), so that a
// milter that cannot read it does not start; the tables are read at the
// first lookup.
func newExpander(c *config.Config, log *slog.Logger) (aliases.Expander, error) {
	if aliasSource(c.Aliases) == config.AliasesNone {
		return aliases.None{}, nil
	}
	ttl := c.Aliases.CacheTTL.D()
	if ttl == 0 {
		ttl = -1 // PostfixOptions: < 0 is no cache, 0 its default
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := aliases.NewPostfix(ctx, aliases.PostfixOptions{
		ConfigDir: c.Aliases.PostfixConfigDir,
		Service:   c.Aliases.Service,
		CacheTTL:  ttl,
		Logger:    log,
	})
	if err != nil {
		return nil, fmt.Errorf("aliases: %w (lacre-milter expands recipients with Postfix's tables: run it on the Postfix host, or set [aliases] source = \"none\")", err)
	}
	return p, nil
}

// aliasOptions sets the milter's options of [aliases].
func aliasOptions(c *config.Config, o *milter.Options, log *slog.Logger) error {
	x, err := newExpander(c, log)
	if err != nil {
		return err
	}
	o.Expander = x
	switch c.Aliases.Mixed {
	case config.MixedReinject:
		o.MixedAlias = milter.MixedAliasReinject
		o.Reinject = &milter.SMTPReinjector{Addr: c.Aliases.Reinject}
	case config.MixedDefer:
		o.MixedAlias = milter.MixedAliasDefer
	default:
		return fmt.Errorf("aliases.mixed: %q is not one of \"reinject\", \"defer\"", c.Aliases.Mixed)
	}
	o.ReinjectTimeout = c.Aliases.ReinjectTimeout.D()
	return nil
}

// logAliases writes the start-up line of [aliases], and warns when the
// re-injection service does not answer (mixed expansions then wait).
func logAliases(c *config.Config, x aliases.Expander, log *slog.Logger) {
	a := c.Aliases
	if aliasSource(a) == config.AliasesNone {
		log.Warn("aliases are not expanded: mail to an alias, virtual alias or canonical name of a keyed mailbox is classified by the address as written",
			"source", a.Source, "reason", noExpansionReason(a))
		return
	}
	args := []any{"source", a.Source, "service", a.Service, "mixed", a.Mixed}
	if p, ok := x.(*aliases.Postfix); ok {
		args = append(args, "tables", len(p.Tables()))
	}
	log.Info("aliases expanded with Postfix's tables", args...)
	if a.Mixed == config.MixedReinject {
		if err := dialReinject(a.Reinject); err != nil {
			log.Warn("the re-injection service does not answer: mail to an alias of keyed and unkeyed mailboxes will wait (451) until it does; see docs/operations.md, \"Aliases\"",
				"reinject", a.Reinject, "error", err)
		}
	}
}

// noExpansionReason says why recipients are not expanded.
func noExpansionReason(a config.Aliases) string {
	if a.Source == config.AliasesAuto {
		return "source = \"auto\" and no Postfix on this host: postconf is neither on PATH nor in /usr/sbin, or there is no " + postfixMainCf
	}
	return "source = \"none\""
}

func dialReinject(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	return conn.Close()
}

// checkAliases is check-config's part for [aliases]: the tables found and
// one lookup in each.
func checkAliases(c *config.Config, w io.Writer) error {
	a := c.Aliases
	if aliasSource(a) == config.AliasesNone {
		fmt.Fprintf(w, "  aliases.source  %s: recipients are not expanded (%s): mail to an alias of a keyed mailbox passes in clear\n", a.Source, noExpansionReason(a))
		return nil
	}
	x, err := newExpander(c, nil)
	if err != nil {
		return err
	}
	p, ok := x.(*aliases.Postfix)
	if !ok {
		return nil
	}
	dir := a.PostfixConfigDir
	if dir == "" {
		dir = "Postfix's default"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "  aliases.source  postfix (%s, service %s)\n", dir, a.Service)
	for _, t := range p.Tables() {
		fmt.Fprintf(&b, "    %-26s %s (%s)\n", t.Param, t.Name, t.Method)
	}
	if len(p.Tables()) == 0 {
		fmt.Fprintf(&b, "    (no tables: recipients are rewritten by no table)\n")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Check(ctx); err != nil {
		return fmt.Errorf("aliases: a table cannot be read, so mail to the recipients it covers would wait (451):\n  %w", err)
	}
	fmt.Fprintf(&b, "    (one lookup in each: OK)\n")
	if a.Mixed == config.MixedReinject {
		if err := dialReinject(a.Reinject); err != nil {
			fmt.Fprintf(&b, "  aliases.reinject  %s: NOT ANSWERING (%v): mail to an alias of keyed and unkeyed mailboxes will wait; see docs/operations.md, \"Aliases\"\n", a.Reinject, err)
		} else {
			fmt.Fprintf(&b, "  aliases.reinject  %s (answers)\n", a.Reinject)
		}
	}
	io.WriteString(w, b.String())
	return nil
}

// expandForShow is "keys show"'s expansion of l's address: nil when the
// expansion is not consulted (source = "none", or keys bound to the
// address as written, which win) or rewrites nothing; note says which
// ("" for source = "none", where there is nothing to say).
func expandForShow(c *config.Config, l *keys.Recipient) (e *aliases.Expansion, note string, err error) {
	switch {
	case aliasSource(c.Aliases) == config.AliasesNone:
		return nil, "", nil
	case l.Source == keys.SourceNever || l.Source == keys.SourceStaticAddress || l.Source == keys.SourceStore:
		return nil, "not consulted: keys bound to the address as written win", nil
	}
	x, err := newExpander(c, nil)
	if err != nil {
		return nil, "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.Milter.LookupTimeout.D())
	defer cancel()
	exp, err := x.Expand(ctx, l.Address)
	if err != nil {
		return nil, "", fmt.Errorf("expanding %s: %w (the milter answers 451 for this recipient)", l.Address, err)
	}
	if !exp.Expanded {
		return nil, "no (no table rewrites it)", nil
	}
	return &exp, "", nil
}

// showExpansion prints each target of an expansion with what it gets,
// and the decision for the recipient (the milter's rules, milter/expand.go).
func showExpansion(c *config.Config, r *keys.Resolver, e *aliases.Expansion, w io.Writer) {
	ctx, cancel := context.WithTimeout(context.Background(), c.Milter.LookupTimeout.D())
	defer cancel()
	var keyed, clear, other, failed int
	for _, t := range e.Targets {
		if t.Kind != aliases.Mailbox {
			other++
			fmt.Fprintf(w, "target:   %s %s: no mailbox; gets the copy the message carries\n", t.Kind, t.Addr)
			continue
		}
		ml, err := r.Resolve(ctx, t.Addr)
		var d string
		switch {
		case err != nil:
			failed++
			var ae *keys.AddressError
			if errors.As(err, &ae) {
				d = "address not understood: 451 for the recipient"
			} else {
				d = "key lookup failed (" + err.Error() + "): 451 for the recipient"
			}
		case ml.AllUnusable():
			failed++
			d = fmt.Sprintf("every key is unusable: encryption.unusable_key = %q applies to the recipient", c.Encryption.UnusableKey)
			if c.Encryption.UnusableKey == config.UnusableClear {
				failed--
				clear++
			}
		case ml.Encrypt():
			keyed++
			d = fmt.Sprintf("encrypt to %d key(s) (%s %s)", len(ml.Keys), ml.Source, ml.Matched)
		case ml.Source == keys.SourceNever:
			clear++
			d = "pass unchanged ([static] never_encrypt)"
		default:
			clear++
			d = "pass unchanged (no key)"
		}
		fmt.Fprintf(w, "target:   mailbox %s: %s\n", t.Addr, d)
	}
	var verdict string
	switch {
	case failed > 0:
		verdict = "the mailboxes' replies above apply to the recipient"
	case keyed == 0:
		verdict = "pass unchanged (no mailbox has a key)"
	case clear == 0:
		verdict = fmt.Sprintf("encrypt to the keys of all %d mailbox(es), one ciphertext", keyed)
	case other > 0:
		verdict = "451: keyed and unkeyed mailboxes and command, file or :include: targets cannot be split; split the alias"
	case c.Aliases.Mixed == config.MixedDefer:
		verdict = "451: keyed and unkeyed mailboxes ([aliases] mixed = \"defer\")"
	default:
		verdict = fmt.Sprintf("split: the %d keyed mailbox(es) get the ciphertext, one clear copy for the %d other(s) is handed back to %s", keyed, clear, c.Aliases.Reinject)
	}
	fmt.Fprintf(w, "decision: %s\n", verdict)
}
