package milter

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	gomilter "github.com/d--j/go-milter"

	"lacre.io/milter/crypto"
	"lacre.io/milter/keys"
)

// class is how a recipient's copy of a message must look. Recipients of
// one class share one message body; one transaction carries one class.
// The format is part of it: PGP/MIME, PGP/inline and S/MIME readers each
// need their own body (docs/encryption.md, "Per-recipient formats").
type class struct {
	encrypt bool
	protect bool        // header protection (RFC 9788); never with PGP/inline
	format  keys.Format // when encrypt: FormatPGPMIME, FormatPGPInline or FormatSMIME
	// ec: S/MIME to at least one EC certificate (ECDH key agreement).
	// NSS, Thunderbird's S/MIME library, cannot open a message that has
	// any ECDH RecipientInfo, even one addressed to an RSA certificate it
	// holds (crypto/smime TestInteropReaderClaims), so RSA recipients get
	// a ciphertext without EC recipients.
	ec bool
}

// The classes as logged and counted (classList, the metrics' class
// label), in the order of class.index.
var classNames = [...]string{"clear", "pgp-mime", "pgp-mime+hp", "pgp-inline", "smime", "smime+hp", "smime-ec", "smime-ec+hp"}

// encryptClass is the class of a recipient encrypted in format to ks with
// header protection as asked. FormatDefault (a key source that does not
// choose) is PGP/MIME; PGP/inline has no header protection
// (crypto.EncryptInline), so asking for it does not split inline
// recipients into two classes.
func encryptClass(format keys.Format, protect bool, ks []*keys.Key) class {
	switch format {
	case keys.FormatDefault:
		format = keys.FormatPGPMIME
	case keys.FormatPGPInline:
		protect = false
	}
	c := class{encrypt: true, protect: protect, format: format}
	if format == keys.FormatSMIME {
		for _, k := range ks {
			if cert := k.Certificate(); cert != nil {
				if _, ok := cert.Cert.PublicKey.(*ecdsa.PublicKey); ok {
					c.ec = true
				}
			}
		}
	}
	return c
}

func (c class) index() int {
	switch {
	case !c.encrypt:
		return 0
	case c.format == keys.FormatPGPInline:
		return 3
	case c.format == keys.FormatSMIME:
		i := 4
		if c.ec {
			i = 6
		}
		if c.protect {
			i++
		}
		return i
	case c.protect:
		return 2
	default:
		return 1
	}
}

func (c class) String() string { return classNames[c.index()] }

// recipient is one accepted envelope recipient and its keys.
type recipient struct {
	addr  string // the MTA's parse of it ({rcpt_addr})
	raw   string // the RCPT TO argument, as SMFIR_DELRCPT must name it
	found *keys.Recipient
	class class
	// targets is how many destinations the MTA's tables expand the
	// recipient to; 0 when it is not expanded (or bound as written).
	targets int
	// other counts the command, file and :include: targets among them.
	other int
	// split is set when the recipient expands to keyed and unkeyed
	// mailboxes and [aliases] mixed = "reinject" applies.
	split *split
}

// split is a recipient whose keyed mailboxes stay in this transaction
// and whose unkeyed mailboxes get a clear copy handed back to the MTA.
type split struct {
	keyed, clear []string
}

// session is the go-milter backend for one MTA connection, one message at a
// time. go-milter calls it from one goroutine, one callback at a time.
type session struct {
	srv  *Server
	conn *connState
	st   *Options

	// Per message; reset by MAIL FROM and Abort.
	from     string // the envelope sender, "" for the null sender
	queueID  string
	started  time.Time
	rcpts    []recipient
	txClass  *class
	localMix []string // non-SMTP mail: why the message cannot be delivered as one class
	// localFailed: a recipient's keys could not be used (lookup failure,
	// unusable keys), so mixed_local = "encrypt" cannot apply either.
	localFailed bool
	sizeOut     int // bytes of the replaced body, for the log and metrics
	fields      []crypto.Field
	headerLen   int
	body        []byte
	tooBig      bool
	decided     bool // the message's action has been logged
}

func newSession(srv *Server, cs *connState) *session {
	return &session{srv: srv, conn: cs, st: srv.opts.Load()}
}

var _ gomilter.Milter = (*session)(nil)

func (s *session) reset() {
	*s = session{srv: s.srv, conn: s.conn, st: s.srv.opts.Load()}
}

// macros keeps the queue id, which Postfix sends with RCPT (SMTP) or MAIL
// (non-SMTP) and again at end of message.
func (s *session) macros(m gomilter.Modifier) {
	if id := m.Get("i"); id != "" {
		s.queueID = id
	}
}

// guard recovers a panic in a callback: log the stack with the queue id
// and answer a temporary failure, so the mail stays in the queue.
func (s *session) guard(resp **gomilter.Response, err *error) {
	if v := recover(); v != nil {
		s.srv.log.Error("panic in milter session", "queue_id", s.queueID, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		*resp = ReplyInternal.response(s.queueID)
		*err = nil
		s.conn.busy.Store(false)
	}
}

// Connect records the client. Postfix hands mail from sendmail(1) and
// pickup (non_smtpd_milters) over as a connection from 127.0.0.1 with
// port 0; such mail cannot have single recipients refused.
func (s *session) Connect(host, family string, port uint16, addr string, m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.guard(&resp, &err)
	ip, _ := netip.ParseAddr(addr)
	s.conn.seen = true
	s.conn.client = fmt.Sprintf("%s [%s]:%d", host, addr, port)
	s.conn.nonSMTP = port == 0 && ip.IsLoopback() && (family == "tcp4" || family == "tcp6")
	return gomilter.RespContinue, nil
}

// NewConnection is called once the connection is negotiated, and again
// when the MTA reuses it for another SMTP connection (SMFIC_QUIT_NC).
func (s *session) NewConnection(m gomilter.Modifier) error {
	s.reset()
	s.conn.busy.Store(false)
	s.conn.seen, s.conn.client, s.conn.nonSMTP = false, "", false
	return nil
}

// Cleanup is called when the connection ends.
func (s *session) Cleanup(m gomilter.Modifier) { s.conn.busy.Store(false) }

// Helo is not needed.
func (s *session) Helo(name string, m gomilter.Modifier) (*gomilter.Response, error) {
	return gomilter.RespContinue, nil
}

// Unknown SMTP commands are not needed.
func (s *session) Unknown(cmd string, m gomilter.Modifier) (*gomilter.Response, error) {
	return gomilter.RespContinue, nil
}

// MailFrom starts a message: fresh state and the current settings.
func (s *session) MailFrom(from, esmtpArgs string, m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.guard(&resp, &err)
	s.reset()
	s.started = s.srv.now()
	s.from = from
	s.macros(m)
	s.conn.busy.Store(true)
	return gomilter.RespContinue, nil
}

// RcptTo classifies the recipient. The first accepted recipient fixes the
// transaction's class; a recipient of another class gets 452 4.5.3 and
// the sender delivers it in another transaction. Over SMTP, problems are
// answered per recipient with SMFIR_REPLYCODE (which keeps the session's
// state); mail from non_smtpd_milters must not see recipient rejections,
// so its problems are decided at end of message.
func (s *session) RcptTo(rcpt, esmtpArgs string, m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.guard(&resp, &err)
	s.macros(m)
	// This recipient's own macros: those of the SMFIC_MACRO right before
	// it, never an earlier recipient's (limitConn.rcptMacros).
	rm := s.conn.limits.rcptMacros
	if mailer, _ := macro(rm, "rcpt_mailer"); mailer == "error" {
		// Postfix rejected this recipient itself and tells the milter only
		// for its information: it is no recipient of the message, and
		// must not fix the transaction's class.
		return gomilter.RespContinue, nil
	}
	addr, aerr := rcptAddr(rcpt, rm)
	if aerr != nil {
		s.srv.log.Warn("recipient address not understood", "queue_id", s.queueID, "rcpt", rcpt, "error", aerr)
		s.srv.metrics.KeysFound(aerr)
		if s.conn.nonSMTP {
			s.localMix = append(s.localMix, "recipient address not understood: "+rcpt)
			s.localFailed = true
			return gomilter.RespContinue, nil
		}
		return ReplyAddressUnknown.response(s.queueID), nil
	}
	r, ref := s.resolve(addr, m.Actions()&rcptActions == rcptActions)
	r.raw = rcpt
	if ref != nil {
		if !s.conn.nonSMTP {
			return ref.reply.response(s.queueID), nil
		}
		s.localMix = append(s.localMix, ref.why)
		if !ref.keep {
			s.localFailed = true
			return gomilter.RespContinue, nil
		}
	}
	rcpt, c := r.addr, r.class
	if s.txClass != nil && *s.txClass != c {
		if !s.conn.nonSMTP {
			s.srv.log.Info("recipient deferred to another transaction", "queue_id", s.queueID,
				"rcpt", rcpt, "class", c.String(), "transaction_class", s.txClass.String())
			return ReplyMixedClass.response(s.queueID), nil
		}
		s.localMix = append(s.localMix, fmt.Sprintf("%s is %s, an earlier recipient %s", rcpt, c, s.txClass))
	}
	if s.txClass == nil {
		s.txClass = &c
	}
	s.rcpts = append(s.rcpts, r)
	return gomilter.RespContinue, nil
}

// macro returns a macro of the recipient: MTAs send long names in
// braces ("{rcpt_addr}"), but a bare name is understood too.
func macro(m map[string]string, name string) (string, bool) {
	if v, ok := m["{"+name+"}"]; ok {
		return v, true
	}
	v, ok := m[name]
	return v, ok
}

// rcptAddr returns the recipient as the MTA itself understood it, which is
// what it delivers to: the {rcpt_addr} macro. The raw RCPT TO argument is
// not classified: "alice(c)@example.org", "\"a\\lice\"@example.org" and
// "alice\\@example.org" are all alice@example.org to Postfix, and a parser
// of our own that understood them differently would say "no key" for a
// keyed mailbox.
//
//   - Postfix (smtpd and cleanup) sends the address after its own parse
//     and trivial-rewrite's resolve, local part quoted as RFC 821 wants
//     ("quote_821_local"), always with a domain ($myorigin appended),
//     before canonical and virtual alias rewriting. It is in Postfix's
//     default milter_rcpt_macros.
//   - Sendmail sends the mailer's $: for the recipient: user@domain for
//     the SMTP mailers, and for the local mailer the user alone; then the
//     domain is taken from the RCPT argument, which must be a plain one.
//
// A missing macro is an error, not a reason to fall back to the raw
// argument: an MTA configured not to send it must be noticed.
func rcptAddr(raw string, m map[string]string) (string, error) {
	v, ok := macro(m, "rcpt_addr")
	if !ok {
		return "", errors.New("the MTA sent no {rcpt_addr} macro: list it in Postfix's milter_rcpt_macros (it is there by default) or Sendmail's confMILTER_MACROS_ENVRCPT")
	}
	v = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(v), "<"), ">")
	if v == "" {
		return "", errors.New("the MTA sent an empty {rcpt_addr}")
	}
	if strings.Contains(v, "@") {
		return v, nil
	}
	// Sendmail's local mailer: a user name without the domain.
	r := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(raw), "<"), ">")
	at := strings.LastIndexByte(r, '@')
	if at < 0 || !plainDomain(r[at+1:]) {
		return "", fmt.Errorf("{rcpt_addr} %q has no domain, and the RCPT argument gives no plain one", v)
	}
	return v + "@" + r[at+1:], nil
}

// plainDomain reports whether d is a host name of letters, digits, hyphens
// and dots (or an address literal), with nothing an MTA might parse as a
// comment, quote or route.
func plainDomain(d string) bool {
	if len(d) > 2 && d[0] == '[' && d[len(d)-1] == ']' {
		d = d[1 : len(d)-1]
	}
	if d == "" {
		return false
	}
	for i := 0; i < len(d); i++ {
		c := d[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}

// findKeys asks the key source about rcpt, bounded by ctx (the
// recipient's share of milter.lookup_timeout, see resolve) even when the
// store does not heed the context: SQLite waiting for a
// lock that another process holds retries for seconds (about 10 s for a
// WAL read lock) whatever the context says, and the MTA must have its
// reply in time (Sendmail waits 10 s by default). An abandoned lookup
// finishes in the background.
func (s *session) findKeys(ctx context.Context, rcpt string) (*keys.Recipient, error) {
	// A cached answer needs no goroutine: most recipients are answered
	// from the cache, and starting and waiting for a goroutine costs the
	// runtime thread wake-ups on every RCPT.
	if c, ok := s.st.Keys.(cachedKeySource); ok {
		if l, ok := c.Cached(rcpt); ok {
			return l, nil
		}
	}
	// Neither does "no key" that the store can give from memory (the
	// SQLite store's keyed-address set), which is what most new
	// recipients get; the store's check of its set heeds ctx.
	if q, ok := s.st.Keys.(quickKeySource); ok {
		if l, ok := q.Quick(ctx, rcpt); ok {
			return l, nil
		}
	}
	type answer struct {
		l     *keys.Recipient
		err   error
		panic any
	}
	done := make(chan answer, 1)
	res := s.st.Keys
	go func() {
		defer func() {
			if v := recover(); v != nil {
				done <- answer{panic: fmt.Sprintf("%v\n%s", v, debug.Stack())}
			}
		}()
		l, err := res.Resolve(ctx, rcpt)
		done <- answer{l: l, err: err}
	}()
	select {
	case a := <-done:
		if a.panic != nil {
			panic(a.panic) // for guard: logged with the queue id, a temporary failure
		}
		return a.l, a.err
	case <-ctx.Done():
		return nil, fmt.Errorf("key lookup for %s: %w", rcpt, context.Cause(ctx))
	}
}

// quickKeySource is a KeySource that can also give the answers that need
// no query of the store, heeding ctx (*keys.Resolver does: Quick).
type quickKeySource interface {
	Quick(ctx context.Context, address string) (*keys.Recipient, bool)
}

// needsWork reports whether any accepted recipient needs encryption (or a
// decision at end of message).
func (s *session) needsWork() bool {
	if len(s.localMix) > 0 {
		return true
	}
	for _, r := range s.rcpts { // a split recipient's class is encrypted
		if r.class.encrypt {
			return true
		}
	}
	return false
}

// Data comes after the last RCPT (milter protocol 4 and later): every
// recipient is known, so a message that no recipient needs encrypted is
// accepted here, and the MTA sends us none of its content.
func (s *session) Data(m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.guard(&resp, &err)
	s.macros(m)
	if !s.needsWork() {
		return s.accept("clear", "data", nil), nil
	}
	return gomilter.RespContinue, nil
}

// Header collects the header section. An MTA that sent no DATA event
// (Postfix with milter_protocol = 2) has clear mail accepted at its first
// header field instead.
func (s *session) Header(name, value string, m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.guard(&resp, &err)
	s.macros(m)
	if !s.needsWork() {
		return s.accept("clear", "header", nil), nil
	}
	if s.tooBig {
		return gomilter.RespContinue, nil
	}
	s.headerLen += len(name) + len(value) + 4
	if int64(s.headerLen) > s.st.MaxMessageSize {
		return s.tooBigReply(), nil
	}
	s.fields = append(s.fields, crypto.Field{Name: name, Value: value})
	return gomilter.RespContinue, nil
}

// Headers is the end of the header section. Header fields never show
// that mail is already encrypted (a multipart/encrypted Content-Type
// over clear text is still clear text): that is decided from the body,
// at end of message.
func (s *session) Headers(m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.guard(&resp, &err)
	s.macros(m)
	if !s.needsWork() {
		return s.accept("clear", "eoh", nil), nil
	}
	return gomilter.RespContinue, nil
}

// BodyChunk collects the body (Postfix sends chunks of up to 64 KiB).
// The first chunk is copied at its exact size (most mail is one chunk);
// after that, growth is by a quarter, not doubling, so a large body does
// not hold twice its size in spare capacity.
func (s *session) BodyChunk(chunk []byte, m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.guard(&resp, &err)
	if s.tooBig {
		return gomilter.RespContinue, nil
	}
	if int64(s.headerLen+len(s.body)+len(chunk)) > s.st.MaxMessageSize {
		return s.tooBigReply(), nil
	}
	if need := len(s.body) + len(chunk); need > cap(s.body) {
		extra := 0
		if len(s.body) > 0 {
			extra = max(need/4, 64<<10)
		}
		grown := make([]byte, len(s.body), need+extra)
		copy(grown, s.body)
		s.body = grown
	}
	s.body = append(s.body, chunk...)
	return gomilter.RespContinue, nil
}

func (s *session) tooBigReply() *gomilter.Response {
	s.tooBig = true
	s.body, s.fields = nil, nil
	s.logResult("rejected", ReplyTooBig, nil)
	return ReplyTooBig.response(s.queueID)
}

// EndOfMessage is the end of the message: encrypt once for the
// transaction's class and hand the MTA the changes.
func (s *session) EndOfMessage(m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.guard(&resp, &err)
	s.macros(m)
	defer s.conn.busy.Store(false)
	if s.tooBig {
		return ReplyTooBig.response(s.queueID), nil
	}
	if len(s.localMix) > 0 {
		return s.decideLocalMix(m)
	}
	if !s.needsWork() {
		return s.accept("clear", "eom", nil), nil
	}
	// Already encrypted: decided from the body's structure (RFC 3156,
	// inline armour, CMS EnvelopedData), never from the header alone.
	if crypto.AlreadyEncrypted(s.fields, s.body) {
		return s.accept("already-encrypted", "eom", nil), nil
	}
	return s.encrypt(m, s.rcpts[0].class)
}

// decideLocalMix applies milter.mixed_local to non-SMTP mail whose
// recipients could not all be served with one body. "encrypt" needs one
// format for every keyed recipient: a PGP/MIME body is no use to an
// S/MIME reader, and the other way round, so recipients of different
// formats are held like any other problem.
func (s *session) decideLocalMix(m gomilter.Modifier) (*gomilter.Response, error) {
	reason := strings.Join(s.localMix, "; ")
	if !s.localFailed && s.st.MixedLocal == MixedLocalEncrypt {
		var c *class
		same := true
		for _, r := range s.rcpts {
			if !r.class.encrypt {
				continue
			}
			if c == nil {
				// Header protection off: the clear recipients get the
				// ciphertext too, and it is not theirs to choose.
				c = &class{encrypt: true, format: r.class.format}
			} else if c.format != r.class.format {
				same = false
			}
			// One message for all: EC certificates among them make it
			// unreadable for NSS, but the alternative is holding it.
			c.ec = c.ec || r.class.ec
		}
		if c == nil {
			return s.encrypt(m, class{})
		}
		if same {
			return s.encrypt(m, *c)
		}
		reason += "; the keyed recipients need different formats, so mixed_local = \"encrypt\" cannot apply"
	}
	// SMFIR_QUARANTINE: Postfix puts the message in its hold queue.
	if err := m.Quarantine("lacre: " + reason); err != nil {
		return nil, err
	}
	return s.accept("held", "eom", fmt.Errorf("%s", reason)), nil
}

// errKind: a key of another kind than the transaction's format reached
// encrypt (a KeySource that breaks keys.Recipient's promise).
var errKind = errors.New("a recipient's key does not fit the transaction's format")

// encrypt encrypts the message to every keyed recipient in the format of
// class c and applies the result: header changes first, then the body in
// packets of at most 64 KiB (consecutive SMFIR_REPLBODY packets append;
// nothing may come between). Recipients split by [aliases] mixed =
// "reinject" first get their clear copy handed back to the MTA, then are
// replaced in the envelope by their keyed mailboxes.
func (s *session) encrypt(m gomilter.Modifier, c class) (*gomilter.Response, error) {
	var to []*keys.Key
	seen := map[string]bool{}
	headersAsked := false
	for _, r := range s.rcpts {
		if !r.class.encrypt {
			continue
		}
		headersAsked = headersAsked || r.found.ProtectHeaders
		for _, k := range r.found.Keys {
			if !seen[k.Fingerprint] {
				seen[k.Fingerprint] = true
				to = append(to, k)
			}
		}
	}
	if len(to) == 0 {
		return s.accept("clear", "eom", nil), nil
	}
	encStart := time.Now()
	opt := crypto.Options{
		HideRecipients: s.st.HideRecipients,
		ProtectHeaders: c.protect,
		MinRSABits:     s.st.MinRSABits,
		Now:            s.srv.now(),
	}
	var res *crypto.Result
	var err error
	switch c.format {
	case keys.FormatSMIME:
		// One ciphertext with a RecipientInfo per certificate.
		certs := make([]*x509.Certificate, 0, len(to))
		for _, k := range to {
			if k.Kind() != keys.KindX509 {
				err = fmt.Errorf("%w: %s key %s in an S/MIME transaction", errKind, k.Kind(), k.Fingerprint)
				break
			}
			certs = append(certs, k.Certificate().Cert)
		}
		if err == nil {
			opt.SMIME = s.st.SMIME
			res, err = crypto.EncryptSMIME(s.fields, s.body, certs, opt)
		}
	default:
		for _, k := range to {
			if k.Kind() != keys.KindOpenPGP {
				err = fmt.Errorf("%w: %s key %s in a %s transaction", errKind, k.Kind(), k.Fingerprint, c)
				break
			}
		}
		switch {
		case err != nil:
		case c.format == keys.FormatPGPInline:
			// Asked for header protection, which inline cannot give:
			// Result.Unprotected says so in the log.
			opt.ProtectHeaders = headersAsked
			res, err = crypto.EncryptInline(s.fields, s.body, to, opt)
		default:
			res, err = crypto.Encrypt(s.fields, s.body, to, opt)
		}
	}
	if err != nil {
		err = withReply(ReplyEncryptFailed, err)
		s.logResult("tempfail", ReplyFor(err), err)
		return ReplyFor(err).response(s.queueID), nil
	}
	s.srv.metrics.Encrypted(time.Since(encStart))
	// The clear copy goes out only once the ciphertext exists: a failure
	// after it is handed back can at worst duplicate it (the MTA
	// retries the whole message), never lose it.
	var extra []any
	if splits := s.splits(); len(splits) > 0 {
		reply, err := s.reinject(splits)
		if err != nil {
			err = withReply(ReplyReinjectFailed, err)
			s.logResult("tempfail", ReplyFor(err), err)
			return ReplyFor(err).response(s.queueID), nil
		}
		extra = append(extra, "reinjected", reply)
	}
	outLen := len(res.Body)
	// Small results go out in one write with the final reply; large ones
	// are streamed, so they are never held twice in memory.
	batch := outLen <= maxBatched
	if batch {
		s.conn.conn.holdUntilReply()
	}
	err = s.replaceSplit(m)
	if err == nil {
		err = apply(m, res, s.st.TraceHeader)
	}
	if err != nil {
		s.conn.conn.dropHeld()
		// The MTA connection broke mid-change: closing the session makes
		// the MTA apply milter_default_action (tempfail).
		s.logResult("error", ReplyInternal, err, extra...)
		return nil, err
	}
	s.sizeOut = outLen
	extra = append([]any{"keys", len(to), "size_out", outLen}, extra...)
	if res.Unprotected != "" {
		// Header protection was asked for but not applied (mail already
		// signed by its sender, or PGP/inline): the operator should see
		// why the Subject stayed readable outside.
		extra = append(extra, "headers_unprotected", res.Unprotected)
	}
	s.logResult("encrypted", Reply{}, nil, extra...)
	if batch {
		s.conn.conn.releaseWithReply()
	}
	s.endMessage()
	return gomilter.RespAccept, nil
}

// maxBatched is the largest result sent in one write with the reply.
const maxBatched = 256 << 10

// maxBodyPacket is the largest SMFIR_REPLBODY payload sent at once; Postfix
// and Sendmail accept 64 KiB.
const maxBodyPacket = 65535

func apply(m gomilter.Modifier, res *crypto.Result, trace string) error {
	for _, c := range res.Changes {
		var err error
		switch c.Op {
		case crypto.Set:
			err = m.ChangeHeader(c.Index, c.Name, c.Value) // SMFIR_CHGHEADER
		case crypto.Delete:
			err = m.ChangeHeader(c.Index, c.Name, "") // an empty value deletes
		case crypto.Add:
			err = m.AddHeader(c.Name, c.Value) // SMFIR_ADDHEADER
		}
		if err != nil {
			return err
		}
	}
	if trace != "" {
		if err := m.AddHeader(trace, "encrypted"); err != nil {
			return err
		}
	}
	// Lines end in LF in the replacement body, as MTAs store them (and as
	// they send header values).
	for b := bytes.ReplaceAll(res.Body, []byte("\r\n"), []byte("\n")); len(b) > 0; {
		n := min(len(b), maxBodyPacket)
		if err := m.ReplaceBodyRawChunk(b[:n]); err != nil { // SMFIR_REPLBODY
			return err
		}
		b = b[n:]
	}
	return nil
}

// accept ends the message unchanged. at is the milter stage that decided
// ("data", "header", "eoh" for clear mail; "eom" for already-encrypted
// and clear mail); it is logged, so that an operator can
// see whether clear mail is accepted at DATA (Postfix with
// milter_protocol = 6, Sendmail 8.14 and later) or only at the first
// header field (an MTA speaking milter protocol 2).
func (s *session) accept(action, at string, reason error) *gomilter.Response {
	s.conn.busy.Store(false)
	s.logResult(action, Reply{}, reason, "at", at)
	s.endMessage()
	return gomilter.RespAccept
}

// endMessage forgets the message once it is accepted: the MTA sends no
// more of it, and whatever it sent would start no message of its own.
func (s *session) endMessage() { s.reset() }

// Abort ends the message without a decision (the client quit or RSET).
func (s *session) Abort(m gomilter.Modifier) error {
	if !s.decided && s.started != (time.Time{}) && s.srv.log.Enabled(context.Background(), slog.LevelDebug) {
		s.srv.log.Debug("message aborted", "queue_id", s.queueID)
	}
	s.conn.busy.Store(false)
	s.reset()
	return nil
}

// logResult writes the one line per message: queue id, classes, action,
// sizes, time. Never content, never key material.
func (s *session) logResult(action string, r Reply, err error, extra ...any) {
	if s.decided {
		return
	}
	s.decided = true
	txClass := "none"
	if s.txClass != nil {
		txClass = s.txClass.String()
	}
	s.srv.metrics.Message(action, txClass, s.headerLen+len(s.body), s.sizeOut)
	args := []any{"queue_id", s.queueID, "action", action, "rcpts", len(s.rcpts), "classes", classList(s.rcpts),
		"size_in", s.headerLen + len(s.body), "ms", s.srv.now().Sub(s.started).Milliseconds()}
	// Recipients the MTA's tables expand: how many, never which (the
	// debug level logs each expansion).
	if n, split, other := expandedCounts(s.rcpts); n > 0 {
		args = append(args, "expanded", n)
		if split > 0 {
			args = append(args, "split", split)
		}
		if other > 0 {
			args = append(args, "non_mailbox_targets", other)
		}
	}
	if s.conn.nonSMTP {
		args = append(args, "local", true)
	}
	if r.Code != 0 {
		args = append(args, "reply", r.String())
	}
	if err != nil {
		args = append(args, "reason", err.Error())
	}
	args = append(args, extra...)
	level := slog.LevelInfo
	if r.Code != 0 || errors.Is(err, context.DeadlineExceeded) {
		level = slog.LevelWarn
	}
	s.srv.log.Log(context.Background(), level, "message", args...)
}

// expandedCounts counts the expanded recipients, those split into a clear
// and an encrypted part, and their command, file and :include: targets.
func expandedCounts(rcpts []recipient) (expanded, split, other int) {
	for _, r := range rcpts {
		if r.targets > 0 {
			expanded++
		}
		if r.split != nil {
			split++
		}
		other += r.other
	}
	return
}

// classList summarises the recipients' classes, e.g. "pgp-mime:2,smime:1".
func classList(rcpts []recipient) string {
	var n [len(classNames)]int
	for _, r := range rcpts {
		n[r.class.index()]++
	}
	var b []byte
	for i, name := range classNames {
		if n[i] > 0 {
			if len(b) > 0 {
				b = append(b, ',')
			}
			b = append(b, name...)
			b = append(b, ':')
			b = strconv.AppendInt(b, int64(n[i]), 10)
		}
	}
	return string(b)
}
