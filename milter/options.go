package milter

import (
	"context"
	"time"

	"lacre.io/milter/aliases"
	"lacre.io/milter/crypto/smime"
	"lacre.io/milter/keys"
)

// KeySource answers "which keys must mail to this address be encrypted
// to, if any?"; in production it is *keys.Resolver.
type KeySource interface {
	Resolve(ctx context.Context, address string) (*keys.Recipient, error)
}

// cachedKeySource is a KeySource that can also answer from memory without
// blocking (*keys.Resolver does).
type cachedKeySource interface {
	Cached(address string) (*keys.Recipient, bool)
}

// UnusableKeyPolicy is what happens to mail for a recipient whose every
// key has expired or been revoked (encryption.unusable_key).
type UnusableKeyPolicy int

const (
	// UnusableKeyTempfail answers the recipient 450 4.7.1: the sender
	// keeps the mail while the recipient renews the key. The zero value.
	UnusableKeyTempfail UnusableKeyPolicy = iota
	// UnusableKeyReject answers 550 5.7.1.
	UnusableKeyReject
	// UnusableKeyClear delivers the mail unencrypted.
	UnusableKeyClear
)

func (p UnusableKeyPolicy) String() string {
	switch p {
	case UnusableKeyTempfail:
		return "tempfail"
	case UnusableKeyReject:
		return "reject"
	case UnusableKeyClear:
		return "clear"
	}
	return "unknown"
}

// MixedLocalPolicy is what happens to mail that did not arrive over SMTP
// (Postfix's non_smtpd_milters) and whose recipients cannot share one
// body (milter.mixed_local): such mail cannot have single recipients
// deferred.
type MixedLocalPolicy int

const (
	// MixedLocalHold puts the message in the MTA's hold queue
	// (SMFIR_QUARANTINE) for the operator. The zero value.
	MixedLocalHold MixedLocalPolicy = iota
	// MixedLocalEncrypt encrypts the message to every keyed recipient;
	// the others get a copy they cannot read.
	MixedLocalEncrypt
)

func (p MixedLocalPolicy) String() string {
	switch p {
	case MixedLocalHold:
		return "hold"
	case MixedLocalEncrypt:
		return "encrypt"
	}
	return "unknown"
}

// MixedAliasPolicy is what happens to a recipient that the MTA expands
// (aliases, virtual aliasing) to keyed and unkeyed mailboxes at once
// ([aliases] mixed). One transaction carries one body: the keyed
// mailboxes must get ciphertext, the others mail they can read.
type MixedAliasPolicy int

const (
	// MixedAliasReinject keeps the keyed mailboxes in this transaction
	// (the recipient is replaced by them in the envelope, SMFIR_DELRCPT
	// and SMFIR_ADDRCPT, and they get the ciphertext) and hands one clear
	// copy for the other mailboxes back to the MTA over SMTP, to a service
	// that runs no milter (Options.Reinject), before the message is
	// accepted. The zero value.
	MixedAliasReinject MixedAliasPolicy = iota
	// MixedAliasDefer answers such a recipient 451 4.3.0 (over SMTP; held
	// like milter.mixed_local for non-SMTP mail) until the operator splits
	// the alias.
	MixedAliasDefer
)

func (p MixedAliasPolicy) String() string {
	switch p {
	case MixedAliasReinject:
		return "reinject"
	case MixedAliasDefer:
		return "defer"
	}
	return "unknown"
}

// Reinjector hands a message back to the MTA for delivery, past every
// milter (SMTPReinjector in production). It returns the MTA's reply to
// the message, for the log.
type Reinjector interface {
	// Reinject delivers msg (header and body, CRLF line ends) from the
	// envelope sender from ("" for the null sender) to the recipients.
	// The caller still owns msg. An error means the MTA did not take the
	// message: the caller must not accept the original.
	Reinject(ctx context.Context, from string, to []string, msg []byte) (reply string, err error)
}

// Defaults for the Options left zero.
const (
	DefaultMaxMessageSize = 64 << 20
	DefaultLookupTimeout  = 5 * time.Second
	DefaultMaxConnections = 1000
	DefaultIdleTimeout    = time.Hour
	DefaultPacketTimeout  = 30 * time.Second
	// DefaultReinjectTimeout bounds the hand-back of a clear copy; the
	// MTA waits 300 s for the end-of-message reply (Postfix's
	// milter_content_timeout).
	DefaultReinjectTimeout = 60 * time.Second
)

// Options are what a Server does with mail and the limits of its MTA
// port. They can be swapped with Server.Reload: messages in flight finish
// with the options they started with, the limits apply to connections
// accepted after the swap. A zero field means its default.
type Options struct {
	// Keys answers for each recipient; it must not be nil.
	Keys KeySource
	// HideRecipients leaves the key IDs out of the encrypted message.
	HideRecipients bool
	// SMIME are the S/MIME choices ([smime] cipher, rsa_padding,
	// subject_key_id); the zero value is AES-256-CBC with RSA PKCS #1
	// v1.5, what every S/MIME reader opens.
	SMIME smime.Options
	// MinRSABits is the smallest RSA modulus encrypted to; zero means
	// crypto's floor (2048).
	MinRSABits int
	// UnusableKey: zero is UnusableKeyTempfail.
	UnusableKey UnusableKeyPolicy
	// MaxMessageSize is the largest message (header and body, in bytes)
	// buffered for encryption; larger ones to keyed recipients get 552
	// 5.3.4. Zero means DefaultMaxMessageSize.
	MaxMessageSize int64
	// TraceHeader is the header field added to encrypted mail ("X-Lacre:
	// encrypted"); empty adds none.
	TraceHeader string
	// MixedLocal: zero is MixedLocalHold.
	MixedLocal MixedLocalPolicy
	// LookupTimeout bounds one recipient's resolution (its expansion and
	// every key lookup it needs); zero means DefaultLookupTimeout.
	LookupTimeout time.Duration
	// Expander expands a recipient to the mailboxes the MTA delivers it
	// to ([aliases] source); nil means aliases.None (no expansion).
	Expander aliases.Expander
	// MixedAlias: zero is MixedAliasReinject.
	MixedAlias MixedAliasPolicy
	// Reinject hands the clear copy of MixedAliasReinject back to the
	// MTA; nil makes MixedAliasReinject act as MixedAliasDefer.
	Reinject Reinjector
	// ReinjectTimeout bounds one hand-back; zero means
	// DefaultReinjectTimeout.
	ReinjectTimeout time.Duration

	// MaxConnections is how many MTA connections are served at once; one
	// more is closed at once. Zero means DefaultMaxConnections.
	MaxConnections int
	// IdleTimeout is the longest wait for a packet to begin; zero means
	// DefaultIdleTimeout.
	IdleTimeout time.Duration
	// PacketTimeout is the longest time for a begun packet to arrive in
	// full, or for a write to be taken; zero means DefaultPacketTimeout.
	PacketTimeout time.Duration
}

// withDefaults returns o with the zero fields set to their defaults.
func (o Options) withDefaults() *Options {
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	if o.LookupTimeout <= 0 {
		o.LookupTimeout = DefaultLookupTimeout
	}
	if o.Expander == nil {
		o.Expander = aliases.None{}
	}
	if o.ReinjectTimeout <= 0 {
		o.ReinjectTimeout = DefaultReinjectTimeout
	}
	if o.MaxConnections <= 0 {
		o.MaxConnections = DefaultMaxConnections
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.PacketTimeout <= 0 {
		o.PacketTimeout = DefaultPacketTimeout
	}
	return &o
}
