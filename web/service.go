// Package web is the key-registration service (lacre-milter web): users
// submit a public key for their address, and it becomes active only after
// they follow a link from a confirmation mail that was encrypted to that
// key, proving both control of the mailbox and possession of the private
// key. Until then nothing changes. Removal is confirmed the same way. The
// package also mounts the Web Key Directory (package wkd).
//
// gpg-mailgate's web page let anybody switch a user's encryption off: its
// cron job deleted the old key before checking the new one. Here a
// request changes the key store only in Confirm, and only to a key that
// passes every rule at that moment.
package web

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"lacre.io/milter/crypto"
	"lacre.io/milter/keys"
)

// Store is what the service needs of the key store.
type Store interface {
	keys.Store
	keys.Requests
}

// Mailer sends a message over SMTP. The message is complete (header and
// body, CRLF line ends).
type Mailer interface {
	Send(ctx context.Context, from string, to []string, msg []byte) error
}

// Options configure a Service.
type Options struct {
	BaseURL              string   // public URL, for links
	Domains              []string // normalised domains users may register for
	From                 string   // sender of confirmation mail
	TokenTTL             time.Duration
	MaxPendingPerAddress int
	MaxRequestsPerClient int // per hour
	Policy               keys.Policy
	Templates            *Templates
	Log                  *slog.Logger
	Now                  func() time.Time // nil: time.Now
	Rand                 io.Reader        // nil: crypto/rand
}

// Service implements the registration flow; Handler serves it over HTTP.
type Service struct {
	store  Store
	mailer Mailer
	opt    Options
}

// New returns a service. It refuses to run without domains: the service
// would otherwise mail confirmations to any address on the internet.
func New(store Store, mailer Mailer, opt Options) (*Service, error) {
	if len(opt.Domains) == 0 {
		return nil, errors.New("web: no domains configured ([web] domains): the service would mail anybody")
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Rand == nil {
		opt.Rand = rand.Reader
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Templates == nil {
		t, err := LoadTemplates("")
		if err != nil {
			return nil, err
		}
		opt.Templates = t
	}
	return &Service{store: store, mailer: mailer, opt: opt}, nil
}

// Error is a failure the user can act on, with an HTTP status and a code
// for the JSON API. Its message is safe to show.
type Error struct {
	Status int
	Code   string // e.g. "invalid_key", "rate_limited"
	Rule   keys.Rule
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

func userError(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Msg: fmt.Sprintf(format, args...)}
}

// Pending describes a request waiting for confirmation.
type Pending struct {
	Address string
	Action  keys.Action
	Expires time.Time
	// Encrypted says whether the confirmation mail was encrypted (always
	// for a submission; for a removal, when the address has a usable key).
	Encrypted bool
}

// address normalises addr and checks its domain is one of ours.
func (s *Service) address(addr string) (string, error) {
	a, err := s.opt.Policy.Normalizer.Normalize(addr)
	if err != nil {
		return "", userError(400, "invalid_address", "%v", err)
	}
	d := keys.Domain(a)
	for _, ours := range s.opt.Domains {
		if d == ours {
			return a, nil
		}
	}
	return "", userError(400, "foreign_domain", "this service registers keys for addresses at %s only", strings.Join(s.opt.Domains, ", "))
}

// limit applies the rate limits for a new request.
func (s *Service) limit(ctx context.Context, addr, client string) error {
	now := s.opt.Now()
	s.store.PurgeRequests(ctx, now)
	// Unconfirmed requests per address; requests per client in the last hour.
	byAddr, byClient, err := s.store.CountRequests(ctx, addr, client, now.Add(-s.opt.TokenTTL), now.Add(-time.Hour), now)
	if err != nil {
		return err
	}
	if byAddr >= s.opt.MaxPendingPerAddress {
		return userError(429, "rate_limited", "%s already has %d unconfirmed requests; use the link in the mail already sent, or wait until it expires", addr, byAddr)
	}
	if byClient >= s.opt.MaxRequestsPerClient {
		return userError(429, "rate_limited", "too many requests from your address; try again in an hour")
	}
	return nil
}

// Submit validates keyData for addr and mails a confirmation, encrypted to
// the submitted key, to addr. The key store is not touched.
func (s *Service) Submit(ctx context.Context, addr string, keyData []byte, client string) (*Pending, error) {
	a, err := s.address(addr)
	if err != nil {
		return nil, err
	}
	ks, err := keys.Parse(keyData)
	if err == nil {
		for _, k := range ks {
			if err = s.opt.Policy.Validate(k, a, s.opt.Now()); err != nil {
				break
			}
		}
	}
	var rej *keys.RejectError
	if errors.As(err, &rej) {
		return nil, &Error{Status: 400, Code: "invalid_key", Rule: rej.Rule, Msg: rej.Error()}
	}
	if err != nil {
		return nil, err
	}
	if err := s.limit(ctx, a, client); err != nil {
		return nil, err
	}
	p, token, err := s.create(ctx, keys.Request{Action: keys.ActionAdd, Address: a, Keys: ks, ClientIP: client})
	if err != nil {
		return nil, err
	}
	p.Encrypted = true
	if err := s.mail(ctx, "mail_confirm_add.txt", a, token, ks); err != nil {
		s.store.TakeRequest(ctx, hashToken(token), s.opt.Now()) // not sent: do not count it
		return nil, err
	}
	s.opt.Log.Info("key submitted", "address", a, "keys", len(ks), "fingerprint", ks[0].Fingerprint, "client", client)
	return p, nil
}

// RequestRemoval mails addr a link that removes its keys, encrypted to its
// current keys. When none of them can be used any more (expired, revoked)
// the mail goes unencrypted: control of the mailbox is then the proof,
// and the keys in question protect nothing.
func (s *Service) RequestRemoval(ctx context.Context, addr, client string) (*Pending, error) {
	a, err := s.address(addr)
	if err != nil {
		return nil, err
	}
	current, err := s.store.KeysFor(ctx, a)
	if err != nil {
		return nil, err
	}
	if len(current) == 0 {
		return nil, userError(404, "no_key", "%s has no key registered", a)
	}
	if err := s.limit(ctx, a, client); err != nil {
		return nil, err
	}
	var usable []*keys.Key
	for _, k := range current {
		if s.opt.Policy.Usable(k, s.opt.Now()) == nil {
			usable = append(usable, k)
		}
	}
	p, token, err := s.create(ctx, keys.Request{Action: keys.ActionRemove, Address: a, ClientIP: client})
	if err != nil {
		return nil, err
	}
	p.Encrypted = len(usable) > 0
	if err := s.mail(ctx, "mail_confirm_remove.txt", a, token, usable); err != nil {
		s.store.TakeRequest(ctx, hashToken(token), s.opt.Now()) // not sent: do not count it
		return nil, err
	}
	s.opt.Log.Info("removal requested", "address", a, "encrypted", p.Encrypted, "client", client)
	return p, nil
}

// create stores a request under a new token and returns the token.
func (s *Service) create(ctx context.Context, r keys.Request) (*Pending, string, error) {
	var raw [32]byte // 256 bits
	if _, err := io.ReadFull(s.opt.Rand, raw[:]); err != nil {
		return nil, "", err
	}
	token := base64.RawURLEncoding.EncodeToString(raw[:])
	r.Created = s.opt.Now()
	r.Expires = r.Created.Add(s.opt.TokenTTL)
	if err := s.store.CreateRequest(ctx, hashToken(token), r); err != nil {
		return nil, "", err
	}
	return &Pending{Address: r.Address, Action: r.Action, Expires: r.Expires}, token, nil
}

func hashToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// Confirm carries out the request of token. A submitted key is checked
// again (it may have expired since), and then replaces the address's keys
// in one transaction.
func (s *Service) Confirm(ctx context.Context, token string) (*keys.Request, error) {
	r, err := s.store.TakeRequest(ctx, hashToken(strings.TrimSpace(token)), s.opt.Now())
	switch {
	case errors.Is(err, keys.ErrNotFound):
		return nil, userError(404, "unknown_token", "this link is not valid, or it has been used already")
	case errors.Is(err, keys.ErrExpired):
		return nil, userError(410, "expired_token", "this link has expired; submit the request again")
	case err != nil:
		return nil, err
	}
	switch r.Action {
	case keys.ActionAdd:
		now := s.opt.Now()
		for _, k := range r.Keys {
			if err := s.opt.Policy.Validate(k, r.Address, now); err != nil {
				return nil, &Error{Status: 400, Code: "invalid_key", Msg: "the key is no longer acceptable: " + err.Error()}
			}
			if stored, err := s.store.KeyByFingerprint(ctx, k.Fingerprint); err == nil {
				if err := s.opt.Policy.CheckUpdate(stored, k, now); err != nil {
					return nil, &Error{Status: 409, Code: "stale_key", Msg: err.Error()}
				}
			}
		}
		if err := s.store.Add(ctx, r.Address, r.Keys, true); err != nil {
			return nil, err
		}
		s.opt.Log.Info("key confirmed", "address", r.Address, "fingerprint", r.Keys[0].Fingerprint)
	case keys.ActionRemove:
		if _, err := s.store.Remove(ctx, r.Address, ""); err != nil && !errors.Is(err, keys.ErrNotFound) {
			return nil, err
		}
		s.opt.Log.Info("keys removed", "address", r.Address)
	}
	return r, nil
}

// mail sends the confirmation mail for token to addr, encrypted to to
// (unencrypted when to is empty).
func (s *Service) mail(ctx context.Context, template, addr, token string, to []*keys.Key) error {
	link := strings.TrimRight(s.opt.BaseURL, "/") + "/confirm?token=" + url.QueryEscape(token)
	var body bytes.Buffer
	data := map[string]any{"Address": addr, "Link": link, "Expires": s.opt.Now().Add(s.opt.TokenTTL).UTC().Format("2006-01-02 15:04 MST"), "BaseURL": s.opt.BaseURL}
	if err := s.opt.Templates.Mail(&body, template, data); err != nil {
		return err
	}
	subject := "Confirm your OpenPGP key for " + addr
	if template == "mail_confirm_remove.txt" {
		subject = "Confirm the removal of your OpenPGP key for " + addr
	}
	var rnd [8]byte
	io.ReadFull(s.opt.Rand, rnd[:])
	fields := []crypto.Field{
		{Name: "From", Value: s.opt.From},
		{Name: "To", Value: addr},
		{Name: "Subject", Value: subject},
		{Name: "Date", Value: s.opt.Now().Format(time.RFC1123Z)},
		{Name: "Message-ID", Value: fmt.Sprintf("<%x@%s>", rnd, keys.Domain(s.opt.From))},
		{Name: "Auto-Submitted", Value: "auto-generated"}, // RFC 3834: no vacation replies
		{Name: "MIME-Version", Value: "1.0"},
		{Name: "Content-Type", Value: "text/plain; charset=utf-8"},
		{Name: "Content-Transfer-Encoding", Value: "8bit"},
	}
	raw := bytes.ReplaceAll(bytes.ReplaceAll(body.Bytes(), []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
	if len(to) > 0 {
		res, err := crypto.Encrypt(fields, raw, to, crypto.Options{MinRSABits: s.opt.Policy.MinRSABits, Now: s.opt.Now()})
		if err != nil {
			return fmt.Errorf("encrypting the confirmation mail: %w", err)
		}
		fields, raw = crypto.Apply(fields, res.Changes), res.Body
	}
	var msg bytes.Buffer
	crypto.WriteMessage(&msg, fields, raw)
	if err := s.mailer.Send(ctx, s.opt.From, []string{addr}, msg.Bytes()); err != nil {
		return fmt.Errorf("sending the confirmation mail: %w", err)
	}
	return nil
}
