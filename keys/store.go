package keys

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Store holds address→key bindings. It is deliberately narrow: the SQLite
// implementation in this package and a later PostgreSQL one must be
// interchangeable without touching the callers (the resolver, the CLI,
// the web service).
//
// Addresses passed to a Store are already normalised (see Normalizer);
// fingerprints are upper-case hex (see FormatFingerprint). Keys passed to
// Add have already been validated: a Store stores, it does not judge.
type Store interface {
	// KeysFor returns the keys bound to address, oldest binding first, or
	// an empty slice (not an error) when there are none.
	KeysFor(ctx context.Context, address string) ([]*Key, error)
	// KeyByFingerprint returns the key with that fingerprint whatever
	// address it is bound to, or ErrNotFound.
	KeyByFingerprint(ctx context.Context, fingerprint string) (*Key, error)
	// Add binds keys to address in one transaction. With replace, the
	// address's other bindings are removed in the same transaction, so a
	// failure leaves the old keys in place. Adding a key that is already
	// bound updates its material (e.g. a refreshed expiry date).
	Add(ctx context.Context, address string, keys []*Key, replace bool) error
	// Remove unbinds the key with fingerprint from address, or every key of
	// address when fingerprint is "". It returns how many bindings went;
	// zero is ErrNotFound.
	Remove(ctx context.Context, address, fingerprint string) (int, error)
	// List returns every binding, ordered by address then binding time.
	List(ctx context.Context) ([]Binding, error)
	// Prefs returns the per-address preferences (the zero Prefs if unset).
	Prefs(ctx context.Context, address string) (Prefs, error)
	// SetPrefs stores the per-address preferences.
	SetPrefs(ctx context.Context, address string, p Prefs) error
	// Close releases the store.
	Close() error
}

// Binding is one address→key entry of the store.
type Binding struct {
	Address string
	Key     *Key
	Added   time.Time
}

// Prefs are a recipient's own choices, overriding the operator's defaults.
type Prefs struct {
	// ProtectHeaders overrides [encryption] protect_headers when not nil.
	ProtectHeaders *bool
	// Format is the message format the recipient reads ("keys set ADDRESS
	// format"); FormatDefault leaves the choice to the resolver (see
	// Resolver and docs/keys.md).
	Format Format
}

// Format is how mail to a recipient is encrypted.
type Format string

// The formats. FormatDefault is stored as the empty string.
const (
	FormatDefault   Format = ""
	FormatPGPMIME   Format = "pgp-mime"   // RFC 3156, the default for OpenPGP keys
	FormatPGPInline Format = "pgp-inline" // each text part armoured, other parts .pgp attachments
	FormatSMIME     Format = "smime"      // RFC 8551 enveloped-data, for X.509 certificates
)

// ParseFormat reads a format as operators write it: "pgp-mime",
// "pgp-inline", "smime", or "default" (and "") for FormatDefault.
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case FormatPGPMIME, FormatPGPInline, FormatSMIME:
		return f, nil
	case "default", "":
		return FormatDefault, nil
	}
	return "", fmt.Errorf("unknown format %q (want pgp-mime, pgp-inline, smime or default)", s)
}

// Kind is the key kind the format encrypts to.
func (f Format) Kind() Kind {
	if f == FormatSMIME {
		return KindX509
	}
	return KindOpenPGP
}

// String is the name operators write ("default" for FormatDefault).
func (f Format) String() string {
	if f == FormatDefault {
		return "default"
	}
	return string(f)
}

// ErrNotFound is returned when a fingerprint or binding does not exist.
var ErrNotFound = errors.New("not found")

// ErrUnavailable wraps errors of a store that cannot be reached or read
// (locked, missing, corrupt). The milter maps it to a temporary failure.
var ErrUnavailable = errors.New("key store unavailable")
