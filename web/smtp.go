package web

import (
	"context"
	"fmt"
	"net"
	"net/smtp"
	"time"
)

// SMTPMailer hands mail to an MTA over plain SMTP, without TLS or login:
// it is meant for the MTA on the same host ([web.smtp] addr, by default
// 127.0.0.1:25). The confirmation mail it sends is already encrypted.
type SMTPMailer struct {
	Addr    string
	Helo    string        // name given in EHLO; "" means "localhost"
	Timeout time.Duration // for the whole exchange; 0 means 30 s
}

// Send implements Mailer.
func (m *SMTPMailer) Send(ctx context.Context, from string, to []string, msg []byte) error {
	timeout := m.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", m.Addr)
	if err != nil {
		return fmt.Errorf("smtp %s: %w", m.Addr, err)
	}
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	host, _, _ := net.SplitHostPort(m.Addr)
	c, err := smtp.NewClient(conn, host)
	if err != nil {
		conn.Close()
		return fmt.Errorf("smtp %s: %w", m.Addr, err)
	}
	defer c.Close()
	helo := m.Helo
	if helo == "" {
		helo = "localhost"
	}
	if err := c.Hello(helo); err != nil {
		return fmt.Errorf("smtp %s: EHLO: %w", m.Addr, err)
	}
	if err := c.Mail(from); err != nil {
		return fmt.Errorf("smtp %s: MAIL FROM: %w", m.Addr, err)
	}
	for _, rc := range to {
		if err := c.Rcpt(rc); err != nil {
			return fmt.Errorf("smtp %s: RCPT TO <%s>: %w", m.Addr, rc, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("smtp %s: DATA: %w", m.Addr, err)
	}
	if _, err := w.Write(msg); err != nil {
		return fmt.Errorf("smtp %s: DATA: %w", m.Addr, err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("smtp %s: end of DATA: %w", m.Addr, err)
	}
	// The server answered 2xx to the end of DATA: the mail is its
	// responsibility now (RFC 5321 §4.1.1.4), sent. A failed QUIT (the
	// connection dropped) changes nothing; reporting it as a failure would
	// delete the request whose link is already in the mailbox.
	c.Quit()
	return nil
}
