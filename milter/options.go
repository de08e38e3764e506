package milter

import (
	"context"
	"time"

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

// Defaults for the Options left zero.
const (
	DefaultMaxMessageSize = 64 << 20
	DefaultLookupTimeout  = 5 * time.Second
	DefaultMaxConnections = 1000
	DefaultIdleTimeout    = time.Hour
	DefaultPacketTimeout  = 30 * time.Second
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
	// LookupTimeout bounds one recipient's key lookup; zero means
	// DefaultLookupTimeout.
	LookupTimeout time.Duration

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
