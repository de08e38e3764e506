// Package web is the key-registration service (lacre-milter web): users
// submit a public OpenPGP key or an S/MIME certificate for their address,
// and it becomes active only after they follow a link from a confirmation
// mail that was encrypted to that key (PGP/MIME) or certificate (S/MIME,
// see certificate.go), proving both control of the mailbox and
// possession of the private key. Until then nothing changes. Removal is confirmed the same way. The
// package also mounts the Web Key Directory (package wkd).
//
// gpg-mailgate's web page let anybody switch a user's encryption off: its
// cron job deleted the old key before checking the new one. Here a
// request changes the key store only in Confirm, and only to a key that
// passes every rule at that moment.
//
// Every key is proven on its own: a submission of several keys makes one
// request, one token and one mail per key, each mail encrypted to its key
// alone and naming that key's fingerprint and User IDs. Otherwise an
// attacker could submit the victim's key (fetched from our own Web Key
// Directory) together with their own key carrying the victim's address:
// the victim could decrypt the mail, would click, and would bind the
// attacker's key too (issue 12).
package web

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"lacre.io/milter/crypto"
	"lacre.io/milter/keys"
)

// Store is what the service needs of the key store.
type Store interface {
	keys.Store
	keys.Requests
}

// Checker is implemented by stores that can tell whether they are healthy
// (the file is there, is the store that was opened or a valid
// replacement, and the last write did not fail). /healthz calls it.
type Checker interface {
	Check(ctx context.Context) error
}

// Mailer sends a message over SMTP. The message is complete (header and
// body, CRLF line ends). A nil error means the MTA took responsibility
// for the message.
type Mailer interface {
	Send(ctx context.Context, from string, to []string, msg []byte) error
}

// Options configure a Service. cmd/lacre-milter builds them from [web]
// and [keys]; a zero field means what its comment says.
type Options struct {
	BaseURL string   // public URL, for the links in confirmation mail
	Domains []string // normalised domains users may register for; New refuses none
	From    string   // sender of confirmation mail
	// TokenTTL is how long a confirmation link works (0: not at all).
	TokenTTL time.Duration
	// MaxPendingPerAddress bounds the unconfirmed requests for one address
	// (subaddresses folded) from one source (0: every request is refused).
	MaxPendingPerAddress int
	// MaxRequestsPerClient bounds the requests per source and hour (0:
	// every request is refused).
	MaxRequestsPerClient int
	// Policy is the key policy; its Normalizer also normalises the
	// submitted addresses.
	Policy    keys.Policy
	Templates *Templates       // nil: the built-in pages and mails
	Log       *slog.Logger     // nil: discarded
	Now       func() time.Time // nil: time.Now
	Rand      io.Reader        // nil: crypto/rand
	// TrustedProxies are the peers whose X-Forwarded-For is believed
	// (nil: none; the peer address is the client).
	TrustedProxies []netip.Prefix
	// Secret keys the CSRF tokens' HMAC; nil: a random one per process
	// (forms opened before a restart then ask to be sent again).
	Secret []byte
	// MaxParallelParses bounds the key submissions parsed at once (0: 2).
	MaxParallelParses int
}

// Limits on a submission, each a named rule in the 400 answer.
const (
	// MaxKeysPerSubmission: each key gets its own mail.
	MaxKeysPerSubmission = 3
	// MaxUserIDsPerKey and MaxSubkeysPerKey: real keys have a handful;
	// thousands are an attack on the parser and on the WKD's answers.
	MaxUserIDsPerKey = 100
	MaxSubkeysPerKey = 100
)

// The rules of those limits (keys.RejectError rules come from package keys).
const (
	RuleKeyCount    keys.Rule = "key-count"
	RuleUserIDCount keys.Rule = "user-id-count"
	RuleSubkeyCount keys.Rule = "subkey-count"
)

// backgroundBudget bounds the store and SMTP work that outlives the HTTP
// request.
const backgroundBudget = 2 * time.Minute

// Service implements the registration flow; Handler serves it over HTTP.
type Service struct {
	store  Store
	mailer Mailer
	opt    Options

	parse     chan struct{} // semaphore: key parsing is the costly step
	parseWait time.Duration // how long a submission waits for a parse slot
	confirmMu sync.Mutex    // one confirmation at a time: check state, then change it
	fails     *failLimiter  // unknown tokens per source
	writeErr  atomic.Pointer[error]
	rngMu     sync.Mutex
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
	if len(opt.Secret) == 0 {
		opt.Secret = make([]byte, 32)
		if _, err := rand.Read(opt.Secret); err != nil {
			return nil, err
		}
	}
	if opt.MaxParallelParses <= 0 {
		opt.MaxParallelParses = 2
	}
	return &Service{store: store, mailer: mailer, opt: opt, parse: make(chan struct{}, opt.MaxParallelParses),
		parseWait: 20 * time.Second, fails: newFailLimiter(opt.MaxRequestsPerClient * 3)}, nil
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

// errLimited is the one answer of every limit: it names no address and no
// count, so it tells nothing about other people's requests.
var errLimited = userError(429, "rate_limited", "too many requests; use the link in the mail already sent, or try again later")

// PendingKey is one key of a submission, as named in its mail and on
// the pages: an OpenPGP key by its fingerprint and User IDs, an S/MIME
// certificate by its SHA-256 fingerprint, the addresses it is issued to
// (UserIDs), its subject, issuer, serial number and expiry.
type PendingKey struct {
	Fingerprint string
	UserIDs     []string
	Kind        keys.Kind
	// Expires is the key's expiry (a certificate's notAfter); zero if never.
	Expires time.Time
	// Subject, Issuer and Serial are set for certificates (see
	// keys.CertificateSummary).
	Subject, Issuer, Serial string
}

// Certificate reports whether the key is an S/MIME certificate (for the
// templates).
func (k PendingKey) Certificate() bool { return k.Kind == keys.KindX509 }

// ExpiryDate is Expires as the pages and mails show it, "" for never.
func (k PendingKey) ExpiryDate() string {
	if k.Expires.IsZero() {
		return ""
	}
	return k.Expires.UTC().Format("2006-01-02 15:04 MST")
}

// pendingKey describes k for the pages, mails and the JSON API.
func pendingKey(k *keys.Key) PendingKey {
	p := PendingKey{Fingerprint: k.Fingerprint, UserIDs: k.UserIDs(), Kind: k.Kind(), Expires: k.Expires()}
	if c := k.Certificate(); c != nil {
		sum := c.Summary()
		p.Subject, p.Issuer, p.Serial = sum.Subject, sum.Issuer, sum.Serial
	}
	return p
}

// Pending describes a request waiting for confirmation.
type Pending struct {
	Address string
	Action  keys.Action
	Expires time.Time
	// Encrypted says whether the confirmation mail was encrypted (always
	// for a submission; for a removal, when the address has a usable key).
	Encrypted bool
	// Keys are the submitted keys, one confirmation mail each.
	Keys []PendingKey
}

// address checks that addr is a plain mailbox at one of our domains and
// returns it normalised, and folded for the per-address limit.
func (s *Service) address(addr string) (norm, limit string, err error) {
	if err := plainMailbox(addr); err != nil {
		return "", "", err
	}
	a, err := s.opt.Policy.Normalizer.Normalize(addr)
	if err != nil {
		return "", "", userError(400, "invalid_address", "%v", err)
	}
	if err := plainMailbox(a); err != nil {
		return "", "", err
	}
	d := keys.Domain(a)
	if !slices.Contains(s.opt.Domains, d) {
		return "", "", userError(400, "foreign_domain", "this service registers keys for addresses at %s only", strings.Join(s.opt.Domains, ", "))
	}
	c, err := s.opt.Policy.Normalizer.Candidates(a)
	if err != nil {
		return "", "", userError(400, "invalid_address", "%v", err)
	}
	return a, c[len(c)-1], nil
}

// precheck refuses, before any costly work, a request that the limits
// would refuse anyway. CreateRequests checks again, in its transaction.
// With limit "" only the per-client limit is checked.
func (s *Service) precheck(ctx context.Context, limit, client string) error {
	now := s.opt.Now()
	a, c, err := s.store.CountRequests(ctx, limit, client, now.Add(-time.Hour), now)
	if err != nil {
		return err
	}
	if c >= s.opt.MaxRequestsPerClient || (limit != "" && a >= s.opt.MaxPendingPerAddress) {
		return errLimited
	}
	return nil
}

// CheckClient applies the per-client limit alone: the HTTP handlers call
// it before reading a request's body.
func (s *Service) CheckClient(ctx context.Context, client string) error {
	return s.precheck(ctx, "", client)
}

// background is the context for work that must finish once started even
// if the client goes away: storing requests, sending their mail, and
// deleting what could not be sent.
func background(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), backgroundBudget)
}

// parseKeys parses and validates keyData for addr, at most
// MaxParallelParses at a time.
func (s *Service) parseKeys(ctx context.Context, addr string, keyData []byte) ([]*keys.Key, error) {
	wait, cancel := context.WithTimeout(ctx, s.parseWait)
	defer cancel()
	select {
	case s.parse <- struct{}{}:
	case <-wait.Done():
		return nil, userError(503, "busy", "the service is busy; try again in a minute")
	}
	defer func() { <-s.parse }()
	ks, err := s.parseSubmission(keyData, addr)
	var out []*keys.Key
	if err == nil {
		for _, k := range ks {
			if slices.ContainsFunc(out, func(o *keys.Key) bool { return o.Fingerprint == k.Fingerprint }) {
				continue
			}
			out = append(out, k)
		}
		if n := min(MaxKeysPerSubmission, s.opt.MaxPendingPerAddress); len(out) > n {
			return nil, &Error{Status: 400, Code: "invalid_key", Rule: RuleKeyCount, Msg: fmt.Sprintf("submit at most %d keys at once", n)}
		}
		for _, k := range out {
			if n := len(k.UserIDs()); n > MaxUserIDsPerKey {
				return nil, &Error{Status: 400, Code: "invalid_key", Rule: RuleUserIDCount, Msg: fmt.Sprintf("key %s has %d User IDs; at most %d are accepted", k.Fingerprint, n, MaxUserIDsPerKey)}
			}
			if n := k.NumSubkeys(); n > MaxSubkeysPerKey {
				return nil, &Error{Status: 400, Code: "invalid_key", Rule: RuleSubkeyCount, Msg: fmt.Sprintf("key %s has %d subkeys; at most %d are accepted", k.Fingerprint, n, MaxSubkeysPerKey)}
			}
		}
		for _, k := range out {
			if err = s.opt.Policy.Validate(k, addr, s.opt.Now()); err != nil {
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
	return out, nil
}

// Submit validates keyData for addr and mails a confirmation for each of
// its keys, encrypted to that key alone, to addr. The key store is not
// touched. The limits are checked before the key is parsed.
func (s *Service) Submit(ctx context.Context, addr string, keyData []byte, client string) (*Pending, error) {
	a, limit, err := s.address(addr)
	if err != nil {
		return nil, err
	}
	if err := s.precheck(ctx, limit, client); err != nil {
		return nil, err
	}
	ks, err := s.parseKeys(ctx, a, keyData)
	if err != nil {
		return nil, err
	}
	ctx, cancel := background(ctx)
	defer cancel()
	current, err := s.store.KeysFor(ctx, a)
	if err != nil {
		return nil, err
	}
	submitted := keys.SortedFingerprints(ks)
	var rs []keys.Request
	for _, k := range ks {
		rs = append(rs, keys.Request{Action: keys.ActionAdd, Address: a, Keys: []*keys.Key{k}, Submitted: submitted})
	}
	p, tokens, err := s.create(ctx, rs, current, limit, client)
	if err != nil {
		return nil, err
	}
	p.Encrypted = true
	var unsent [][]byte
	var mailErr error
	for i, k := range ks {
		p.Keys = append(p.Keys, pendingKey(k))
		// To this key alone (a certificate: S/MIME to it alone), naming it: holding another key of the
		// submission must not be enough to confirm this one.
		if err := s.mail(ctx, "mail_confirm_add.txt", a, tokens[i], []*keys.Key{k}, []*keys.Key{k}); err != nil {
			unsent, mailErr = append(unsent, hashToken(tokens[i])), err
		}
	}
	if len(unsent) > 0 {
		// Not sent: do not count it, and leave nothing behind.
		s.wrote(s.store.DeleteRequests(ctx, unsent))
		return nil, mailErr
	}
	s.opt.Log.Info("key submitted", "address", a, "keys", len(ks), "fingerprints", submitted, "client", client)
	return p, nil
}

// RequestRemoval mails addr a link that removes its keys, encrypted to its
// current usable keys. When there is none (the keys expired or were
// revoked, or there are no keys) the mail goes unencrypted: control of the
// mailbox is then the proof, and the keys in question protect nothing.
// The answer is the same whether the address has an unusable key or none
// (usable keys are public anyway, in the Web Key Directory).
func (s *Service) RequestRemoval(ctx context.Context, addr, client string) (*Pending, error) {
	a, limit, err := s.address(addr)
	if err != nil {
		return nil, err
	}
	if err := s.precheck(ctx, limit, client); err != nil {
		return nil, err
	}
	ctx, cancel := background(ctx)
	defer cancel()
	current, err := s.store.KeysFor(ctx, a)
	if err != nil {
		return nil, err
	}
	var usable []*keys.Key
	for _, k := range current {
		if s.opt.Policy.Usable(k, s.opt.Now()) == nil {
			usable = append(usable, k)
		}
	}
	p, tokens, err := s.create(ctx, []keys.Request{{Action: keys.ActionRemove, Address: a}}, current, limit, client)
	if err != nil {
		return nil, err
	}
	p.Encrypted = len(usable) > 0
	if err := s.mail(ctx, "mail_confirm_remove.txt", a, tokens[0], usable, current); err != nil {
		s.wrote(s.store.DeleteRequests(ctx, [][]byte{hashToken(tokens[0])}))
		return nil, err
	}
	s.opt.Log.Info("removal requested", "address", a, "encrypted", p.Encrypted, "client", client)
	return p, nil
}

// create stores rs, one new token each, as one submission issued for the
// address's current keys, and returns the tokens.
func (s *Service) create(ctx context.Context, rs []keys.Request, current []*keys.Key, limit, client string) (*Pending, []string, error) {
	now := s.opt.Now()
	submission, err := s.random(16)
	if err != nil {
		return nil, nil, err
	}
	state := keys.SortedFingerprints(current)
	var tokens []string
	var hashes [][]byte
	for i := range rs {
		raw, err := s.random(32) // 256 bits
		if err != nil {
			return nil, nil, err
		}
		token := base64.RawURLEncoding.EncodeToString(raw)
		tokens, hashes = append(tokens, token), append(hashes, hashToken(token))
		r := &rs[i]
		r.Submission, r.State, r.LimitAddress, r.ClientIP = hex.EncodeToString(submission), state, limit, client
		r.Created, r.Expires = now, now.Add(s.opt.TokenTTL)
	}
	lim := keys.Limits{PerAddress: s.opt.MaxPendingPerAddress, PerClient: s.opt.MaxRequestsPerClient, ClientSince: now.Add(-time.Hour)}
	if err := s.store.CreateRequests(ctx, now, lim, hashes, rs); err != nil {
		if errors.Is(err, keys.ErrLimited) {
			return nil, nil, errLimited
		}
		return nil, nil, s.wrote(err)
	}
	s.wrote(nil)
	return &Pending{Address: rs[0].Address, Action: rs[0].Action, Expires: rs[0].Expires}, tokens, nil
}

func (s *Service) random(n int) ([]byte, error) {
	b := make([]byte, n)
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	if _, err := io.ReadFull(s.opt.Rand, b); err != nil {
		return nil, err
	}
	return b, nil
}

func hashToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// stateOK reports whether a request issued when the address had r.State
// may still act now that it has current: the address must be in the
// state the request was issued for, or, for a key of a submission, in
// one that confirming other keys of the same submission produced. So an
// old link cannot revert a newer key, nor remove a key registered after
// it was sent.
func stateOK(r *keys.Request, current []string) bool {
	if slices.Equal(current, r.State) {
		return true
	}
	if r.Action != keys.ActionAdd || len(current) == 0 {
		return false
	}
	for _, fp := range current {
		if !slices.Contains(r.Submitted, fp) {
			return false
		}
	}
	return true
}

// Confirm carries out the request of token. A submitted key is checked
// again (it may have expired since). The key of the token is bound; keys
// of the same submission confirmed before stay bound, every other key of
// the address goes, in one transaction. The token is used up only when
// the change is made, so a store fault leaves the link working.
func (s *Service) Confirm(ctx context.Context, token, client string) (*keys.Request, error) {
	if !s.fails.allow(client, s.opt.Now()) {
		return nil, errLimited
	}
	ctx, cancel := background(ctx)
	defer cancel()
	s.confirmMu.Lock()
	defer s.confirmMu.Unlock()
	hash := hashToken(strings.TrimSpace(token))
	now := s.opt.Now()
	r, err := s.store.FindRequest(ctx, hash, now)
	switch {
	case errors.Is(err, keys.ErrNotFound):
		s.fails.fail(client, now)
		return nil, userError(404, "unknown_token", "this link is not valid, or it has been used already")
	case errors.Is(err, keys.ErrExpired):
		s.wrote(ignoreGone(s.store.TakeRequest(ctx, hash, now)))
		return nil, userError(410, "expired_token", "this link has expired; submit the request again")
	case err != nil:
		return nil, err
	}
	// usedUp deletes the token (a link that cannot work any more).
	usedUp := func() { s.wrote(ignoreGone(s.store.TakeRequest(ctx, hash, now))) }
	current, err := s.store.KeysFor(ctx, r.Address)
	if err != nil {
		return nil, err
	}
	if !stateOK(r, keys.SortedFingerprints(current)) {
		usedUp()
		return nil, userError(409, "stale_token", "the keys of %s have changed since this link was sent; submit the request again", r.Address)
	}
	switch r.Action {
	case keys.ActionAdd:
		k := r.Keys[0]
		var keep []*keys.Key
		for _, c := range current {
			if c.Fingerprint != k.Fingerprint && slices.Contains(r.Submitted, c.Fingerprint) {
				keep = append(keep, c)
			}
		}
		err := keys.Admit(ctx, s.store, s.opt.Policy, keys.Admission{Address: r.Address, Keys: []*keys.Key{k}, Replace: true, Keep: keep}, now)
		var rej *keys.RejectError
		switch {
		case errors.Is(err, keys.ErrStaleCopy):
			usedUp()
			return nil, &Error{Status: 409, Code: "stale_key", Msg: err.Error()}
		case errors.As(err, &rej):
			usedUp()
			return nil, &Error{Status: 400, Code: "invalid_key", Msg: "the key is no longer acceptable: " + err.Error()}
		case err != nil:
			return nil, s.wrote(err)
		}
		s.wrote(nil)
		s.opt.Log.Info("key confirmed", "address", r.Address, "fingerprint", k.Fingerprint, "bound", 1+len(keep))
	case keys.ActionRemove:
		if _, err := s.store.Remove(ctx, r.Address, ""); err != nil && !errors.Is(err, keys.ErrNotFound) {
			return nil, s.wrote(err)
		}
		s.opt.Log.Info("keys removed", "address", r.Address)
	}
	usedUp()
	// The address is in a new state: the tokens issued for the old one die.
	if _, err := s.store.DropRequests(ctx, r.Address, r.Submission); err != nil {
		s.wrote(err)
		s.opt.Log.Error("dropping the requests of an earlier state", "address", r.Address, "error", err)
	}
	return r, nil
}

func ignoreGone(_ *keys.Request, err error) error {
	if errors.Is(err, keys.ErrNotFound) || errors.Is(err, keys.ErrExpired) {
		return nil
	}
	return err
}

// wrote records the outcome of a write to the store for /healthz and
// returns err.
func (s *Service) wrote(err error) error {
	switch {
	case err == nil:
		s.writeErr.Store(nil)
	case errors.Is(err, keys.ErrUnavailable) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded):
		s.writeErr.Store(&err)
		s.opt.Log.Error("key store write failed", "error", err)
	}
	return err
}

// Health reports whether the service can work: the store's own check
// (when it has one) and, after a write failed, a probe write (purging
// expired requests), so the state heals when the store does.
func (s *Service) Health(ctx context.Context) error {
	if c, ok := s.store.(Checker); ok {
		if err := c.Check(ctx); err != nil {
			return err
		}
	}
	if p := s.writeErr.Load(); p != nil {
		if _, err := s.store.PurgeRequests(ctx, s.opt.Now()); err != nil {
			return fmt.Errorf("the last write failed (%v), and so does a probe: %w", *p, err)
		}
		s.writeErr.CompareAndSwap(p, nil)
	}
	return nil
}

// MailSubject is the Subject of every confirmation mail. It stays
// readable outside the encryption, so it says neither what was asked for
// nor for which address.
const MailSubject = "Please confirm your request"

// mail sends the confirmation mail for token to addr, encrypted to to
// (unencrypted when to is empty); about names the keys the request is
// about. OpenPGP keys get a PGP/MIME message (one ciphertext for all of
// them), certificates an S/MIME one (one RecipientInfo each) with the
// default options, which every S/MIME reader opens. When to holds both
// kinds (a removal for an address with a key and a certificate), each
// kind gets its own message with the same link: either proves possession
// of a current key, as one message encrypted to all of them would.
func (s *Service) mail(ctx context.Context, template, addr, token string, to, about []*keys.Key) error {
	var pgp, certs []*keys.Key
	for _, k := range to {
		if k.Kind() == keys.KindX509 {
			certs = append(certs, k)
		} else {
			pgp = append(pgp, k)
		}
	}
	if len(to) == 0 {
		return s.mailTo(ctx, template, addr, token, nil, about)
	}
	for _, group := range [][]*keys.Key{pgp, certs} {
		if len(group) == 0 {
			continue
		}
		if err := s.mailTo(ctx, template, addr, token, group, about); err != nil {
			return err
		}
	}
	return nil
}

// mailTo is mail for keys of one kind.
func (s *Service) mailTo(ctx context.Context, template, addr, token string, to, about []*keys.Key) error {
	link := strings.TrimRight(s.opt.BaseURL, "/") + "/confirm?token=" + url.QueryEscape(token)
	var named []map[string]any
	for _, k := range about {
		p := pendingKey(k)
		named = append(named, map[string]any{"Fingerprint": p.Fingerprint, "UserIDs": p.UserIDs, "Certificate": p.Certificate(),
			"Subject": p.Subject, "Issuer": p.Issuer, "Serial": p.Serial, "Expires": p.ExpiryDate()})
	}
	format := ""
	switch {
	case len(to) == 0:
	case to[0].Kind() == keys.KindX509:
		format = "S/MIME"
	default:
		format = "OpenPGP"
	}
	var body bytes.Buffer
	data := map[string]any{"Address": addr, "Link": link, "Expires": s.opt.Now().Add(s.opt.TokenTTL).UTC().Format("2006-01-02 15:04 MST"),
		"BaseURL": s.opt.BaseURL, "Keys": named, "Format": format}
	if err := s.opt.Templates.Mail(&body, template, data); err != nil {
		return err
	}
	rnd, err := s.random(8)
	if err != nil {
		return err
	}
	fields := []crypto.Field{
		{Name: "From", Value: s.opt.From},
		{Name: "To", Value: addr},
		{Name: "Subject", Value: MailSubject},
		{Name: "Date", Value: s.opt.Now().Format(time.RFC1123Z)},
		{Name: "Message-ID", Value: fmt.Sprintf("<%x@%s>", rnd, keys.Domain(s.opt.From))},
		{Name: "Auto-Submitted", Value: "auto-generated"}, // RFC 3834: no vacation replies
		{Name: "MIME-Version", Value: "1.0"},
		{Name: "Content-Type", Value: "text/plain; charset=utf-8"},
		{Name: "Content-Transfer-Encoding", Value: "8bit"},
	}
	raw := bytes.ReplaceAll(bytes.ReplaceAll(body.Bytes(), []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
	if len(to) > 0 {
		var res *crypto.Result
		var err error
		if format == "S/MIME" {
			certs := make([]*x509.Certificate, len(to))
			for i, k := range to {
				certs[i] = k.Certificate().Cert
			}
			// The zero crypto.Options: AES-256-CBC with RSA PKCS #1 v1.5
			// (ECDH for EC certificates), what every S/MIME reader opens.
			res, err = crypto.EncryptSMIME(fields, raw, certs, crypto.Options{})
		} else {
			res, err = crypto.Encrypt(fields, raw, to, crypto.Options{MinRSABits: s.opt.Policy.MinRSABits, Now: s.opt.Now()})
		}
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

// failLimiter counts failed confirmations (unknown tokens) per source in
// fixed one-hour windows, so that the confirm endpoints are limited too.
type failLimiter struct {
	mu    sync.Mutex
	max   int
	seen  map[string]failWindow
	limit int // entries kept at most
}

type failWindow struct {
	start time.Time
	n     int
}

func newFailLimiter(max int) *failLimiter {
	return &failLimiter{max: max, seen: map[string]failWindow{}, limit: 100000}
}

func (l *failLimiter) allow(client string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.seen[client]
	return now.Sub(w.start) >= time.Hour || w.n < l.max
}

func (l *failLimiter) fail(client string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.seen) >= l.limit {
		for c, w := range l.seen {
			if now.Sub(w.start) >= time.Hour {
				delete(l.seen, c)
			}
		}
		if len(l.seen) >= l.limit {
			clear(l.seen) // under a flood from very many sources: start again
		}
	}
	w := l.seen[client]
	if now.Sub(w.start) >= time.Hour {
		w = failWindow{start: now}
	}
	w.n++
	l.seen[client] = w
}
