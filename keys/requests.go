package keys

import (
	"context"
	"errors"
	"time"
)

// Action is what a confirmed request does.
type Action string

// The actions of a registration request.
const (
	ActionAdd    Action = "add"    // bind the submitted keys to the address (replacing its keys)
	ActionRemove Action = "remove" // unbind every key of the address
)

// Request is a key registration or removal waiting for the confirmation
// that proves control of the mailbox (and, for ActionAdd, of the private
// key: the confirmation mail is encrypted to it). Until it is confirmed
// nothing changes.
type Request struct {
	Action   Action
	Address  string // normalised
	Keys     []*Key // ActionAdd: the submitted keys
	ClientIP string // who asked, for rate limits
	Created  time.Time
	Expires  time.Time
}

// Requests stores pending requests. Tokens are never stored, only their
// hashes, so a copy of the database cannot confirm anything.
type Requests interface {
	// CreateRequest stores r under the hash of its confirmation token.
	CreateRequest(ctx context.Context, tokenHash []byte, r Request) error
	// TakeRequest returns the request with tokenHash and deletes it in
	// the same transaction, so a token works once. It returns ErrNotFound
	// for an unknown (or already used) token and ErrExpired for one past
	// its expiry (which is deleted too).
	TakeRequest(ctx context.Context, tokenHash []byte, now time.Time) (*Request, error)
	// CountRequests counts, for rate limits, the unexpired requests for
	// the address created since addressSince, and those from the client
	// created since clientSince.
	CountRequests(ctx context.Context, address, clientIP string, addressSince, clientSince, now time.Time) (byAddress, byClient int, err error)
	// PurgeRequests deletes the requests that expired before now.
	PurgeRequests(ctx context.Context, now time.Time) (int, error)
}

// ErrExpired is returned for a confirmation token past its expiry.
var ErrExpired = errors.New("expired")

// concatRaw joins the keys' binary certificates, as stored with a request.
func concatRaw(ks []*Key) []byte {
	var b []byte
	for _, k := range ks {
		b = append(b, k.Raw...)
	}
	return b
}
