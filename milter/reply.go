package milter

import (
	"errors"
	"fmt"

	gomilter "github.com/d--j/go-milter"
)

// Reply is an SMTP reply the milter asks the MTA to give. Every reply the
// milter sends is one of the values below: fixed, generic text plus the
// queue id, so that the reply never carries an internal error string and
// the operator finds the detail in the log line with the same queue id.
type Reply struct {
	Code     int    // RFC 5321 §4.2 reply code
	Enhanced string // RFC 3463 enhanced status code
	Text     string
}

// The replies. Temporary ones (4xx) keep the mail in the sender's queue:
// "fail closed, lose nothing".
var (
	// ReplyMixedClass answers a recipient that needs other treatment than
	// the transaction's first one. 452 is "too many recipients" (RFC 5321
	// §4.5.3.1.10): senders deliver the rest in a later transaction.
	ReplyMixedClass = Reply{452, "4.5.3", "Please send to this recipient in a separate transaction"}
	// ReplyLookupFailed: the recipient's keys could not be looked up.
	ReplyLookupFailed = Reply{451, "4.3.0", "Encryption key lookup failed, try again later"}
	// ReplyAddressUnknown: the recipient could not be classified because
	// the MTA's parse of it ({rcpt_addr}) is missing or not understood.
	// Never "no key": what we cannot parse may reach a keyed mailbox.
	ReplyAddressUnknown = Reply{451, "4.1.3", "Recipient address not understood, try again later"}
	// ReplyKeyUnusableTemp: every key of the recipient has expired or been
	// revoked, and encryption.unusable_key = "tempfail".
	ReplyKeyUnusableTemp = Reply{450, "4.7.1", "Recipient's encryption key is unusable, try again later"}
	// ReplyKeyUnusableReject: the same with unusable_key = "reject".
	ReplyKeyUnusableReject = Reply{550, "5.7.1", "Recipient's encryption key has expired or was revoked"}
	// ReplyEncryptFailed: encryption for a keyed recipient failed.
	ReplyEncryptFailed = Reply{451, "4.3.0", "Encryption failed, try again later"}
	// ReplyTooBig: larger than milter.max_message_size with keyed recipients.
	ReplyTooBig = Reply{552, "5.3.4", "Message too big to encrypt"}
	// ReplyExpandFailed: the recipient's expansion (aliases, virtual
	// aliasing) could not be known: a table could not be read or the
	// lookup timed out. Never "no key": the MTA may deliver it to a keyed
	// mailbox.
	ReplyExpandFailed = Reply{451, "4.3.0", "Recipient address resolution failed, try again later"}
	// ReplyMixedAlias: the recipient expands to keyed and unkeyed
	// mailboxes and cannot be split now ([aliases] mixed = "defer", or
	// command, file or :include: targets among them).
	ReplyMixedAlias = Reply{451, "4.3.0", "Recipient cannot be delivered now, try again later"}
	// ReplyReinjectFailed: the clear copy for the unkeyed mailboxes of
	// such a recipient could not be handed back to the MTA; the whole
	// message waits, nothing was accepted.
	ReplyReinjectFailed = Reply{451, "4.3.0", "Temporary delivery failure, try again later"}
	// ReplyInternal: anything else that went wrong on our side.
	ReplyInternal = Reply{451, "4.3.0", "Internal error, try again later"}
)

// Temporary reports whether the reply is a temporary failure.
func (r Reply) Temporary() bool { return r.Code >= 400 && r.Code < 500 }

// String is the reply line, e.g. "452 4.5.3 Please send … (queue id 4AbC)".
func (r Reply) String() string { return r.line("") }

func (r Reply) line(queueID string) string {
	return fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.text(queueID))
}

// text is the reply's text with the queue id.
func (r Reply) text(queueID string) string {
	if queueID != "" {
		return r.Text + " (queue id " + queueID + ")"
	}
	return r.Text
}

// response makes the milter packet for r: SMFIR_REPLYCODE ('y'), which
// carries our reply text (SMFIR_TEMPFAIL/REJECT would make the MTA use its
// own).
func (r Reply) response(queueID string) *gomilter.Response {
	resp, err := gomilter.RejectWithCodeAndReason(uint16(r.Code), r.Enhanced+" "+r.text(queueID))
	if err != nil { // not for our fixed texts; fail closed all the same
		return gomilter.RespTempFail
	}
	return resp
}

// replyError is an error that knows the SMTP reply it maps to.
type replyError struct {
	reply Reply
	err   error
}

func (e *replyError) Error() string { return e.err.Error() }
func (e *replyError) Unwrap() error { return e.err }

// withReply attaches the reply to err.
func withReply(r Reply, err error) error { return &replyError{reply: r, err: err} }

// ReplyFor maps an error to its SMTP reply: the attached reply, or
// ReplyInternal for errors nobody classified.
func ReplyFor(err error) Reply {
	var re *replyError
	if errors.As(err, &re) {
		return re.reply
	}
	return ReplyInternal
}
