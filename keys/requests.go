package keys

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Action is what a confirmed request does.
type Action string

// The actions of a registration request.
const (
	ActionAdd    Action = "add"    // bind the request's key to the address
	ActionRemove Action = "remove" // unbind every key of the address
)

// Request is a key registration or removal waiting for the confirmation
// that proves control of the mailbox (and, for ActionAdd, of the private
// key: the confirmation mail is encrypted to that key alone). Until it is
// confirmed nothing changes.
//
// A submission of several keys makes one Request per key, each with its own
// token, sharing Submission: every key is proven on its own, so holding one
// of them (say a victim's key, fetched from the Web Key Directory) confirms
// that one only.
type Request struct {
	Action  Action
	Address string // normalised
	// Keys is, for ActionAdd, the one key this request's token proves.
	// (Requests stored before schema version 3 could carry several; those
	// were deleted by the migration.)
	Keys []*Key
	// Submission identifies the requests made together; Submitted lists the
	// fingerprints of all their keys (ActionAdd), so that confirming one
	// key of a submission does not unbind another one already confirmed.
	Submission string
	Submitted  []string
	// State is the sorted fingerprints bound to Address when the request
	// was made: the request is valid only while the address is in that
	// state (or, for ActionAdd, in one its own submission produced).
	State []string
	// LimitAddress is Address with any subaddress folded ("alice+x@" →
	// "alice@"): what the per-address limit counts.
	LimitAddress string
	ClientIP     string // the source (address or network) that asked, for rate limits
	Created      time.Time
	Expires      time.Time
}

// Limits are the rate limits CreateRequests enforces inside its
// transaction, so concurrent requests cannot all pass a check made before
// any of them was stored.
type Limits struct {
	// PerAddress bounds the unexpired requests for one LimitAddress from one
	// ClientIP. It is per source, not per address alone: otherwise anybody
	// could fill an address's slots and lock its owner out for the token
	// lifetime.
	PerAddress int
	// PerClient bounds the requests from one ClientIP created since
	// ClientSince (expired or not).
	PerClient   int
	ClientSince time.Time
}

// Requests stores pending requests. Tokens are never stored, only their
// hashes, so a copy of the database cannot confirm anything.
type Requests interface {
	// CreateRequests stores rs[i] under tokenHashes[i], all or none, in
	// one transaction that first counts the requests already stored for
	// each (LimitAddress, ClientIP) and ClientIP: when storing rs would
	// exceed lim, nothing is stored and the error is a *LimitError.
	CreateRequests(ctx context.Context, now time.Time, lim Limits, tokenHashes [][]byte, rs []Request) error
	// FindRequest returns the request with tokenHash without using it up.
	// It returns ErrNotFound for an unknown (or already used) token and
	// ErrExpired for one past its expiry.
	FindRequest(ctx context.Context, tokenHash []byte, now time.Time) (*Request, error)
	// TakeRequest returns the request with tokenHash and deletes it in
	// the same statement, so a token works once; errors as FindRequest
	// (an expired request is deleted too).
	TakeRequest(ctx context.Context, tokenHash []byte, now time.Time) (*Request, error)
	// DeleteRequests deletes the requests with these token hashes (whose
	// mail could not be sent).
	DeleteRequests(ctx context.Context, tokenHashes [][]byte) error
	// DropRequests deletes the requests for address except those of
	// submission keep: after a confirmation changed the address's keys,
	// the tokens issued for the earlier state die.
	DropRequests(ctx context.Context, address, keep string) (int, error)
	// CountRequests counts the unexpired requests for limitAddress from
	// clientIP, and those from clientIP created since clientSince.
	CountRequests(ctx context.Context, limitAddress, clientIP string, clientSince, now time.Time) (byAddress, byClient int, err error)
	// PurgeRequests deletes the requests that expired before now.
	PurgeRequests(ctx context.Context, now time.Time) (int, error)
}

// ErrExpired is returned for a confirmation token past its expiry.
var ErrExpired = errors.New("expired")

// ErrLimited is wrapped by LimitError.
var ErrLimited = errors.New("rate limited")

// LimitError says which limit of Limits a request would exceed.
type LimitError struct {
	PerAddress bool // false: the per-client limit
}

func (e *LimitError) Error() string {
	if e.PerAddress {
		return "rate limited: too many unconfirmed requests for the address from this client"
	}
	return "rate limited: too many requests from this client"
}

func (e *LimitError) Unwrap() error { return ErrLimited }

// CheckNewRequests checks what every implementation of
// Requests.CreateRequests requires of its arguments; implementations call
// it first.
func CheckNewRequests(tokenHashes [][]byte, rs []Request) error {
	if len(tokenHashes) != len(rs) || len(rs) == 0 {
		return fmt.Errorf("storing requests: %d token hashes for %d requests", len(tokenHashes), len(rs))
	}
	for _, r := range rs {
		if r.Action == ActionAdd && len(r.Keys) != 1 {
			return fmt.Errorf("request for %s: %d keys, want exactly one per token", r.Address, len(r.Keys))
		}
		if r.LimitAddress == "" || r.ClientIP == "" {
			return fmt.Errorf("request for %s: no limit address or client", r.Address)
		}
	}
	return nil
}

// Check applies lim to the new requests rs given count, which returns the
// stored counts for a (limit address, client) pair as CountRequests does.
// Implementations of Requests.CreateRequests call it in the transaction
// that stores rs.
func (lim Limits) Check(rs []Request, count func(limitAddress, clientIP string) (int, int, error)) error {
	type pair struct{ addr, client string }
	adding := map[pair]int{}
	byClient := map[string]int{}
	for _, r := range rs {
		adding[pair{r.LimitAddress, r.ClientIP}]++
		byClient[r.ClientIP]++
	}
	for p, n := range adding {
		a, c, err := count(p.addr, p.client)
		if err != nil {
			return err
		}
		if a+n > lim.PerAddress {
			return &LimitError{PerAddress: true}
		}
		if c+byClient[p.client] > lim.PerClient {
			return &LimitError{}
		}
	}
	return nil
}

// joinFingerprints and splitFingerprints store fingerprint lists in one
// TEXT column.
func joinFingerprints(fps []string) string { return strings.Join(fps, ",") }

func splitFingerprints(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// SortedFingerprints returns the sorted fingerprints of ks, the form of
// Request.State.
func SortedFingerprints(ks []*Key) []string {
	out := make([]string, 0, len(ks))
	for _, k := range ks {
		out = append(out, k.Fingerprint)
	}
	slices.Sort(out)
	return out
}
