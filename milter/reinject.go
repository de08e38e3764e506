package milter

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"time"

	gomilter "github.com/d--j/go-milter"

	"lacre.io/milter/crypto"
)

// A recipient that expands to keyed and unkeyed mailboxes ([aliases]
// mixed = "reinject") is served in two parts, both before the message is
// accepted:
//
//  1. one clear copy of the message as received, for the unkeyed
//     mailboxes, is handed to an SMTP service of the MTA on loopback that
//     runs no milter and applies no address mapping (master.cf:
//     smtpd_milters and non_smtpd_milters empty,
//     receive_override_options = no_address_mappings; see
//     docs/operations.md). The copy never reaches the milter again, so
//     it cannot loop, whatever it contains;
//  2. in this transaction the recipient is replaced by its keyed
//     mailboxes (SMFIR_DELRCPT of the address as the client wrote it:
//     Postfix's cleanup deletes every recipient whose original recipient
//     is that address, i.e. all of its expansion; SMFIR_ADDRCPT of each
//     keyed mailbox, which cleanup maps again and which, being a final
//     mailbox, maps to itself), and they get the ciphertext.
//
// If the hand-back fails, the whole message gets 451 and nothing is
// accepted: nothing is lost. If the MTA connection fails after the
// hand-back, the sender retries the whole message and the clear copy is
// delivered twice: a duplicate, never a loss and never cleartext for a
// keyed mailbox.

// splits returns the recipients to split.
func (s *session) splits() []recipient {
	var out []recipient
	for _, r := range s.rcpts {
		if r.split != nil && r.class.encrypt {
			out = append(out, r)
		}
	}
	return out
}

// reinject hands the clear copy of the message to the unkeyed mailboxes
// of splits, bounded by Options.ReinjectTimeout.
func (s *session) reinject(splits []recipient) (string, error) {
	var to []string
	seen := map[string]bool{}
	for _, r := range splits {
		for _, a := range r.split.clear {
			if !seen[a] {
				seen[a] = true
				to = append(to, a)
			}
		}
	}
	var msg bytes.Buffer
	msg.Grow(s.headerLen + len(s.body) + 64)
	if err := crypto.WriteMessage(&msg, s.fields, s.body); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.st.ReinjectTimeout)
	defer cancel()
	reply, err := s.st.Reinject.Reinject(ctx, s.from, to, msg.Bytes())
	if err != nil {
		return "", fmt.Errorf("handing the clear copy for %d unkeyed mailbox(es) back to the MTA: %w", len(to), err)
	}
	return reply, nil
}

// replaceSplit replaces each split recipient in the envelope by its keyed
// mailboxes.
func (s *session) replaceSplit(m gomilter.Modifier) error {
	for _, r := range s.splits() {
		if err := m.DeleteRecipient(r.raw); err != nil { // SMFIR_DELRCPT
			return err
		}
		for _, a := range r.split.keyed {
			if err := m.AddRecipient(a, ""); err != nil { // SMFIR_ADDRCPT
				return err
			}
		}
	}
	return nil
}

// SMTPReinjector hands messages to an SMTP listener of the MTA (on
// loopback, with no milter; see the comment above).
type SMTPReinjector struct {
	// Addr is the listener, HOST:PORT.
	Addr string
	// Helo is the name sent in EHLO; "" means "localhost".
	Helo string
}

// Reinject implements Reinjector: one SMTP transaction, the reply to the
// end of DATA returned ("250 2.0.0 Ok: queued as …").
func (r *SMTPReinjector) Reinject(ctx context.Context, from string, to []string, msg []byte) (string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", r.Addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	c := textproto.NewConn(conn)
	if _, _, err := c.ReadResponse(220); err != nil {
		return "", fmt.Errorf("greeting: %w", err)
	}
	helo := r.Helo
	if helo == "" {
		helo = "localhost"
	}
	ext, err := cmd(c, 250, "EHLO %s", helo)
	if err != nil {
		return "", fmt.Errorf("EHLO: %w", err)
	}
	var params string
	if hasExt(ext, "8BITMIME") {
		params += " BODY=8BITMIME"
	}
	if !ascii(from) || !allASCII(to) {
		if !hasExt(ext, "SMTPUTF8") {
			return "", fmt.Errorf("an address is not ASCII and %s does not offer SMTPUTF8", r.Addr)
		}
		params += " SMTPUTF8"
	}
	if _, err := cmd(c, 250, "MAIL FROM:<%s>%s", from, params); err != nil {
		return "", fmt.Errorf("MAIL FROM:<%s>: %w", from, err)
	}
	for _, a := range to {
		if _, err := cmd(c, 25, "RCPT TO:<%s>", a); err != nil {
			return "", fmt.Errorf("RCPT TO:<%s>: %w", a, err)
		}
	}
	if _, err := cmd(c, 354, "DATA"); err != nil {
		return "", fmt.Errorf("DATA: %w", err)
	}
	w := c.DotWriter()
	if _, err := w.Write(msg); err != nil {
		return "", err
	}
	if err := w.Close(); err != nil {
		return "", err
	}
	_, reply, err := c.ReadResponse(250)
	if err != nil {
		return "", fmt.Errorf("end of DATA: %w", err)
	}
	cmd(c, 221, "QUIT")
	return "250 " + reply, nil
}

// cmd sends one command and reads its reply, which must start with code.
func cmd(c *textproto.Conn, code int, format string, args ...any) (string, error) {
	id, err := c.Cmd(format, args...)
	if err != nil {
		return "", err
	}
	c.StartResponse(id)
	defer c.EndResponse(id)
	_, msg, err := c.ReadResponse(code)
	return msg, err
}

// hasExt reports whether an EHLO reply offers the extension.
func hasExt(ehlo, name string) bool {
	for _, l := range strings.Split(ehlo, "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.EqualFold(f[0], name) {
			return true
		}
	}
	return false
}

func ascii(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func allASCII(ss []string) bool {
	for _, s := range ss {
		if !ascii(s) {
			return false
		}
	}
	return true
}
