// Package aliases expands an envelope recipient to the mailboxes the MTA
// will deliver it to: canonical rewriting, virtual aliasing and, for local
// domains, aliases(5). A milter sees each recipient as the client wrote it
// in RCPT TO; the MTA rewrites it afterwards. Keys belong to mailboxes, so
// the milter must decide a recipient's encryption from its expansion.
//
// This file is the contract between the expansion (the implementations in
// this package) and its one user (package milter). It imports nothing of
// lacre's own: aliases is a leaf, like keys.
package aliases

import "context"

// Kind says what an expansion target is.
type Kind int

const (
	// Mailbox is an address the MTA delivers into a mailbox (or relays
	// elsewhere): something that can have keys.
	Mailbox Kind = iota
	// Command is a "|command" target of aliases(5): local(8) pipes the
	// message into it.
	Command
	// File is a "/file/name" target of aliases(5): local(8) appends the
	// message to it.
	File
	// Include is an ":include:/file/name" target of aliases(5), which
	// local(8) reads at delivery, out of the milter's sight.
	Include
)

func (k Kind) String() string {
	switch k {
	case Mailbox:
		return "mailbox"
	case Command:
		return "command"
	case File:
		return "file"
	case Include:
		return "include"
	}
	return "unknown"
}

// Target is one final destination of a recipient.
type Target struct {
	// Addr is the mailbox address (user@domain, as the MTA will deliver
	// it), or for the other kinds the target as the alias table wrote it.
	Addr string
	Kind Kind
}

// Expansion is where the MTA will deliver mail for one envelope recipient.
type Expansion struct {
	// Input is the recipient as given to Expand.
	Input string
	// Targets are the final destinations, without duplicates, in the
	// order the tables gave them. A recipient that no table rewrites has
	// one target: itself, a Mailbox.
	Targets []Target
	// Expanded reports whether any table rewrote the recipient (Targets is
	// then not just Input).
	Expanded bool
}

// Mailboxes returns the addresses of the Mailbox targets.
func (e Expansion) Mailboxes() []string {
	var out []string
	for _, t := range e.Targets {
		if t.Kind == Mailbox {
			out = append(out, t.Addr)
		}
	}
	return out
}

// Expander expands envelope recipients. Implementations are safe for
// concurrent use and heed ctx (the milter's lookup timeout). An error
// means the expansion cannot be known now (a table cannot be read, a
// lookup timed out): the caller must answer a temporary failure, never
// treat the recipient as unexpanded.
type Expander interface {
	Expand(ctx context.Context, addr string) (Expansion, error)
}

// None is the Expander of [aliases] source = "none": every recipient is
// its own only mailbox.
type None struct{}

// Expand returns addr unexpanded.
func (None) Expand(_ context.Context, addr string) (Expansion, error) {
	return Expansion{Input: addr, Targets: []Target{{Addr: addr, Kind: Mailbox}}}, nil
}
