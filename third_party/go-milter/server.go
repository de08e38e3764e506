package milter

import (
	"errors"
	"log/slog"
	"net"
	"net/textproto"
)

// Milter protocol versions the server can speak. Without
// Server.ProtocolVersion it announces version 2, as go-milter v0.5.0 did.
const (
	minProtocolVersion     uint32 = 2
	defaultProtocolVersion uint32 = 2
	maxProtocolVersion     uint32 = 6
)

// ErrServerClosed is returned by the Server's Serve method after a call to
// Close.
var ErrServerClosed = errors.New("milter: server closed")

// Milter is an interface for milter callback handlers.
type Milter interface {
	// Connect is called to provide SMTP connection data for incoming message.
	// Suppress with OptNoConnect.
	Connect(host string, family string, port uint16, addr net.IP, m *Modifier) (Response, error)

	// Helo is called to process any HELO/EHLO related filters. Suppress with
	// OptNoHelo.
	Helo(name string, m *Modifier) (Response, error)

	// MailFrom is called to process filters on envelope FROM address. Suppress
	// with OptNoMailFrom.
	MailFrom(from string, m *Modifier) (Response, error)

	// RcptTo is called to process filters on envelope TO address. Suppress with
	// OptNoRcptTo.
	RcptTo(rcptTo string, m *Modifier) (Response, error)

	// Header is called once for each header in incoming message. Suppress with
	// OptNoHeaders.
	Header(name string, value string, m *Modifier) (Response, error)

	// Headers is called when all message headers have been processed. Suppress
	// with OptNoEOH.
	Headers(h textproto.MIMEHeader, m *Modifier) (Response, error)

	// BodyChunk is called to process next message body chunk data (up to 64KB
	// in size). Suppress with OptNoBody.
	BodyChunk(chunk []byte, m *Modifier) (Response, error)

	// Body is called at the end of each message. All changes to message's
	// content & attributes must be done here.
	Body(m *Modifier) (Response, error)

	// Abort is called is the current message has been aborted. All message data
	// should be reset to prior to the Helo callback. Connection data should be
	// preserved.
	Abort(m *Modifier) error
}

// DataMilter is implemented by a Milter that wants the DATA event: the MTA
// sends it after the last RCPT, before the header fields. It is the
// earliest point at which every recipient is known, so a milter can accept
// (or reject) the message there without the MTA sending it the content.
// The MTA sends DATA only with milter protocol version 4 or later (see
// Server.ProtocolVersion) and unless OptNoData was negotiated; a Milter that
// does not implement it has DATA answered with RespContinue.
type DataMilter interface {
	Data(m *Modifier) (Response, error)
}

// NoOpMilter is a dummy Milter implementation that does nothing.
type NoOpMilter struct{}

var _ Milter = NoOpMilter{}

func (NoOpMilter) Connect(host string, family string, port uint16, addr net.IP, m *Modifier) (Response, error) {
	return RespContinue, nil
}

func (NoOpMilter) Helo(name string, m *Modifier) (Response, error) {
	return RespContinue, nil
}

func (NoOpMilter) MailFrom(from string, m *Modifier) (Response, error) {
	return RespContinue, nil
}

func (NoOpMilter) RcptTo(rcptTo string, m *Modifier) (Response, error) {
	return RespContinue, nil
}

func (NoOpMilter) Header(name string, value string, m *Modifier) (Response, error) {
	return RespContinue, nil
}

func (NoOpMilter) Headers(h textproto.MIMEHeader, m *Modifier) (Response, error) {
	return RespContinue, nil
}

func (NoOpMilter) BodyChunk(chunk []byte, m *Modifier) (Response, error) {
	return RespContinue, nil
}

func (NoOpMilter) Body(m *Modifier) (Response, error) {
	return RespAccept, nil
}

func (NoOpMilter) Abort(m *Modifier) error {
	return nil
}

// Server is a milter server.
type Server struct {
	NewMilter func() Milter
	Actions   OptAction
	Protocol  OptProtocol

	// ProtocolVersion is the highest milter protocol version the server
	// negotiates: 2 (the default when zero) up to 6. It answers an MTA with
	// the lower of this and the MTA's own version. Version 6 (Postfix 2.6
	// and later, Sendmail 8.14 and later) brings the DATA event
	// (DataMilter), unknown SMTP commands (answered with RespContinue) and
	// SMFIC_QUIT_NC. Protocol flags that the MTA does not offer are
	// dropped from the answer: the MTA then sends those events anyway.
	ProtocolVersion uint32

	// SymList is the list of macros that the milter wants to receive from
	// the MTA for the selected protocol stages.
	// [Server.Actions] must have the flag [OptSetSymList] set.
	SymList map[Stage][]string

	// Logger receives what the library reports: a broken connection or a
	// malformed command (Warn; a connection closed or timed out: Debug),
	// a recovered panic (Error). Nil means the standard log package, as
	// upstream.
	Logger *slog.Logger

	listeners []net.Listener
	closed    bool
}

// Serve starts the server.
func (s *Server) Serve(ln net.Listener) error {
	defer ln.Close()

	s.listeners = append(s.listeners, ln)

	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.closed {
				return ErrServerClosed
			}
			return err
		}

		go s.ServeConn(conn)
	}
}

// ServeConn serves one MTA connection in the calling goroutine, until the
// MTA quits or the connection fails, and then closes it. It is for a caller
// that accepts connections itself (for one NewMilter per connection, say):
// no listener or extra goroutine per connection is needed.
func (s *Server) ServeConn(conn net.Conn) {
	session := milterSession{
		server:   s,
		actions:  s.Actions,
		protocol: s.Protocol,
		conn:     conn,
		backend:  s.NewMilter(),
	}
	session.HandleMilterCommands()
}

func (s *Server) Close() error {
	s.closed = true
	for _, ln := range s.listeners {
		if err := ln.Close(); err != nil {
			return err
		}
	}
	return nil
}
