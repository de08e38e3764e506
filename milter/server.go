// Package milter is the MTA-facing part of Lacre: a go-milter backend that
// classifies recipients at RCPT time, collects the message, encrypts it
// once per transaction at end of message and hands the MTA the new body
// and header changes. It maps every failure to an SMTP reply (reply.go)
// and knows nothing of OpenPGP packets (that is package crypto).
package milter

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	gomilter "github.com/d--j/go-milter"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("milter: server closed")

// Server runs milter sessions. Create it with New, feed it listeners with
// Serve, stop it with Shutdown.
type Server struct {
	log     *slog.Logger
	metrics Metrics
	opts    atomic.Pointer[Options]
	now     func() time.Time

	mu        sync.Mutex
	listeners []net.Listener
	conns     map[*connState]struct{}
	closing   bool
	done      chan struct{} // closed by Shutdown
	idle      chan struct{} // signalled when a connection ends or goes idle

	refusedLog logEvery // connections over MaxConnections
	acceptLog  logEvery // accept errors
	stalledLog logEvery // connections ended by PacketTimeout
}

// New returns a server with the given options. log receives one line per
// message and the errors; nil discards them.
func New(o Options, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := &Server{log: log, metrics: noMetrics{}, now: time.Now, conns: map[*connState]struct{}{},
		done: make(chan struct{}), idle: make(chan struct{}, 1),
		refusedLog: logEvery{interval: 10 * time.Second}, acceptLog: logEvery{interval: 10 * time.Second},
		stalledLog: logEvery{interval: 10 * time.Second}}
	srv.opts.Store(o.withDefaults())
	return srv
}

// SetMetrics makes the server report to m; call it before Serve.
func (s *Server) SetMetrics(m Metrics) { s.metrics = m }

// Reload swaps the options. Messages in flight finish with the options
// they started with; the next MAIL FROM uses the new ones, the next
// connection the new limits.
func (s *Server) Reload(o Options) { s.opts.Store(o.withDefaults()) }

// The milter protocol options: we change headers and the body, and may ask
// for quarantine (Postfix's hold queue). Where the MTA allows it we also
// replace a recipient that expands to keyed and unkeyed mailboxes by its
// keyed ones (reinject.go); an MTA that does not gets such recipients
// deferred instead.
//
// Protocol version 6 gives us the DATA event: after the last RCPT, so a
// message no recipient needs encrypted is accepted there, answered by
// Postfix's smtpd, and the MTA sends us none of its content (with version 2
// the first header field, which Postfix's cleanup sends, was the earliest
// point). We need every stage but HELO, which tells us nothing we use, and
// unknown SMTP commands: skipping them saves the MTA a round trip.
//
// Version 6 also lets the milter say which events it never answers
// (SMFIP_NR_*): the MTA then does not wait for a reply. lacre always
// continues after CONNECT; after DATA (so only where the MTA sends DATA,
// version 4 and later) a header field, the end of the header and a body
// chunk are only collected: a message too big to encrypt is refused at end
// of message instead (the SMTP client gets the same 552 at the end of DATA
// either way). MAIL is answered although lacre always continues there: a
// Postfix smtpd whose milter connection broke finds out when it waits for
// that reply and answers MAIL with 451 4.7.1 (milter_default_action); with
// no reply to wait for, the first MAIL would pass and RCPT get the 451
// instead (integration/restart_test.go, docs/operations.md "After the
// milter restarts").
const (
	actions          = gomilter.OptAddHeader | gomilter.OptChangeHeader | gomilter.OptChangeBody | gomilter.OptQuarantine
	rcptActions      = gomilter.OptAddRcpt | gomilter.OptRemoveRcpt // wanted, not required
	protocol         = gomilter.OptNoHelo | gomilter.OptNoUnknown
	noReply          = gomilter.OptNoConnReply | gomilter.OptNoHeloReply | gomilter.OptNoUnknownReply
	noReplyAfterData = gomilter.OptNoHeaderReply | gomilter.OptNoEOHReply | gomilter.OptNoBodyReply
	protocolVersion  = 6
)

// negotiate answers the MTA's SMFIC_OPTNEG: the lower of its version and
// ours, the actions we need (an MTA that does not allow them all ends the
// connection, with a log line that says so), and of the protocol flags we
// want those the MTA offers.
func negotiate(mtaVersion, _ uint32, mtaActions, _ gomilter.OptAction, mtaProtocol, _ gomilter.OptProtocol, _ gomilter.DataSize) (uint32, gomilter.OptAction, gomilter.OptProtocol, gomilter.DataSize, error) {
	if mtaVersion < 2 {
		return 0, 0, 0, 0, fmt.Errorf("milter: the MTA speaks milter protocol version %d; lacre needs 2 or later", mtaVersion)
	}
	version := min(mtaVersion, protocolVersion)
	if mtaActions&actions != actions {
		return 0, 0, 0, 0, fmt.Errorf("milter: the MTA does not allow the actions lacre needs: offered %v, needed %v", mtaActions, actions)
	}
	want := protocol | noReply
	if version >= 4 {
		want |= noReplyAfterData
	}
	return version, actions | mtaActions&rcptActions, want & mtaProtocol, gomilter.DataSize64K, nil
}

// connState is what the server knows about one MTA connection, for its
// whole life; its session (the go-milter backend) lives as long.
type connState struct {
	conn    *trackedConn
	limits  *limitConn  // under conn: the time and memory limits
	busy    atomic.Bool // between MAIL FROM and the end of that message
	client  string      // "host [addr]:port", from Connect
	nonSMTP bool        // Postfix non_smtpd_milters: sendmail(1)/pickup
	seen    bool        // Connect was received
}

// Serve accepts MTA connections on ln until Shutdown. Each connection is
// served by a go-milter server of its own (it has no way to serve one
// connection, so it gets a listener that hands it this one connection)
// whose backend is bound to that connection's connState.
//
// No client can make Serve return: a connection over MaxConnections is
// closed at once (the MTA then applies its milter_default_action), and a
// failed accept (EMFILE when out of file descriptors, say) is logged and
// retried after a pause, as net/http does. Serve returns only when ln is
// closed: ErrServerClosed after Shutdown, ln's error otherwise.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners = append(s.listeners, ln)
	s.mu.Unlock()
	var delay time.Duration // accept backoff
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			delay = nextAcceptDelay(delay)
			s.acceptLog.warn(s.log, s.now(), "accepting an MTA connection failed; retrying", "error", err.Error(), "retry_in", delay.String())
			select {
			case <-time.After(delay):
			case <-s.done:
			}
			continue
		}
		delay = 0
		o := s.opts.Load()
		maxConns := o.MaxConnections
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			continue
		}
		if len(s.conns) >= maxConns {
			s.mu.Unlock()
			c.Close()
			s.refusedLog.warn(s.log, s.now(), "MTA connection refused: max_connections reached; the MTA applies milter_default_action",
				"max_connections", maxConns, "remote", c.RemoteAddr().String())
			continue
		}
		cs := &connState{limits: newLimitConn(c, o.IdleTimeout, o.PacketTimeout)}
		cs.conn = &trackedConn{limitConn: cs.limits, ended: func() {
			s.mu.Lock()
			delete(s.conns, cs)
			s.mu.Unlock()
			s.signalIdle()
			s.logExpired(cs)
		}}
		s.conns[cs] = struct{}{}
		s.mu.Unlock()
		ms := gomilter.NewServer(
			gomilter.WithMilter(func() gomilter.Milter { return newSession(s, cs) }),
			gomilter.WithActions(actions|rcptActions),
			gomilter.WithProtocols(protocol|noReply|noReplyAfterData),
			gomilter.WithNegotiationCallback(negotiate),
			gomilter.WithReadTimeout(0), gomilter.WithWriteTimeout(0), // limitConn's
		)
		// Starts the session's goroutine and returns: no goroutine of ours
		// waits for the session's end (trackedConn.Close does the
		// bookkeeping), which would cost a thread wake-up per connection.
		ms.Serve(&oneConnListener{conn: cs.conn})
	}
}

// logExpired logs a connection that a time limit ended. Idle connections
// are routine (an MTA that holds its connection across a long pause): one
// line each. A packet that stalls half-way is not, and a hostile client can
// make many: at most one line per interval, with a count of the others.
func (s *Server) logExpired(cs *connState) {
	l := cs.limits
	args := []any{"remote", l.RemoteAddr().String()}
	if cs.seen {
		args = append(args, "client", cs.client)
	}
	switch l.expired {
	case "idle_timeout":
		s.log.Info("MTA connection closed: no packet within idle_timeout", append(args, "idle_timeout", l.idle.String())...)
	case "packet_timeout":
		s.stalledLog.warn(s.log, s.now(), "MTA connection closed: a packet or reply did not complete within packet_timeout",
			append(args, "packet_timeout", l.packet.String())...)
	}
}

func (s *Server) signalIdle() {
	select {
	case s.idle <- struct{}{}:
	default:
	}
}

// Shutdown stops accepting connections, closes idle ones, waits until the
// messages in flight are done or ctx ends, then closes the rest. An MTA
// that finds the milter gone answers with milter_default_action (tempfail
// in our documentation), so nothing is lost or passed in clear.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closing {
		s.closing = true
		close(s.done)
	}
	for _, ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
	for {
		s.mu.Lock()
		busy := 0
		for cs := range s.conns {
			if cs.busy.Load() {
				busy++
			} else {
				cs.conn.shut()
			}
		}
		s.mu.Unlock()
		if busy == 0 {
			return nil
		}
		select {
		case <-s.idle:
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			s.mu.Lock()
			for cs := range s.conns {
				cs.conn.shut()
			}
			s.mu.Unlock()
			return fmt.Errorf("%d message(s) still in flight at shutdown: %w", busy, ctx.Err())
		}
	}
}

// InFlight returns how many connections are in the middle of a message.
func (s *Server) InFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for cs := range s.conns {
		if cs.busy.Load() {
			n++
		}
	}
	return n
}

// oneConnListener hands its connection to the first Accept; the next
// Accept fails, so that go-milter's Serve returns as soon as it has
// started the session's goroutine.
type oneConnListener struct {
	conn *trackedConn
}

// errServed ends go-milter's Serve after the one connection.
var errServed = errors.New("milter: connection handed to its session")

func (l *oneConnListener) Accept() (net.Conn, error) {
	if c := l.conn; c != nil {
		l.conn = nil
		return c, nil
	}
	return nil, errServed
}

func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return &net.TCPAddr{} } // not used by go-milter

// trackedConn is the MTA connection as go-milter sees it. It saves system
// calls that go-milter would make: it writes each packet in one write
// (go-milter writes the length and code, then the data), except large
// ones (header, then the data uncopied); and it can hold the
// end-of-message modifications and send them together with the final
// reply in one write (see holdUntilReply). Only the session's goroutine
// reads, writes and Closes it; shut may come from any goroutine.
type trackedConn struct {
	*limitConn
	out     []byte // the packet being written, or the packets held
	need    int    // bytes of the packet being written still to come
	holding bool
	final   bool

	closeOnce sync.Once
	ended     func() // the server's bookkeeping at the session's end
	endOnce   sync.Once
}

// bigPacket is the size from which a packet's data is written on its own
// rather than copied behind its header.
const bigPacket = 4 << 10

func (c *trackedConn) Write(p []byte) (int, error) {
	if c.need == 0 {
		if len(p) < 4 {
			return 0, errors.New("milter: a write that does not begin a packet")
		}
		c.need = 4 + int(binary.BigEndian.Uint32(p))
		if len(p) == c.need && !c.holding {
			c.need = 0
			return c.limitConn.Write(p)
		}
	}
	if len(p) > c.need {
		return 0, errors.New("milter: a write past the end of a packet")
	}
	if !c.holding && len(p) == c.need && len(p) > bigPacket {
		c.need = 0
		hdr := c.out
		c.out = c.out[:0]
		if _, err := c.limitConn.Write(hdr); err != nil {
			return 0, err
		}
		return c.limitConn.Write(p)
	}
	c.out = append(c.out, p...)
	c.need -= len(p)
	if c.need > 0 || (c.holding && !c.final) {
		return len(p), nil
	}
	// A whole packet, or the final reply after the held ones.
	out := c.out
	c.out, c.holding, c.final = c.out[:0], false, false
	if cap(c.out) > 64<<10 {
		c.out = nil
	}
	if _, err := c.limitConn.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// holdUntilReply starts holding writes: the modification packets that
// follow are buffered until releaseWithReply marks the next packet (the
// session's final reply) as the last.
func (c *trackedConn) holdUntilReply() { c.holding, c.final = true, false }

func (c *trackedConn) releaseWithReply() {
	if c.holding {
		c.final = true
	}
}

// dropHeld forgets held writes after an error; the session ends anyway.
func (c *trackedConn) dropHeld() { c.holding, c.final, c.out, c.need = false, false, nil, 0 }

// Close is go-milter's, on the session's goroutine, as the session ends
// (whatever ended it: HandleMilterCommands closes the connection last):
// the connection is closed, and the server forgets it.
func (c *trackedConn) Close() error {
	err := c.shut()
	if c.ended != nil {
		c.endOnce.Do(c.ended)
	}
	return err
}

// shut closes the connection, from any goroutine (Shutdown, holding the
// server's lock): the session's goroutine then finds it closed, ends, and
// calls Close.
func (c *trackedConn) shut() error {
	err := net.ErrClosed
	c.closeOnce.Do(func() { err = c.limitConn.Close() })
	return err
}

// Listen opens the listener for network "tcp" or "unix" (config.ParseListen
// splits milter.listen into those). A stale unix socket file is removed
// first.
func Listen(network, addr string) (net.Listener, error) {
	if network == "unix" {
		removeStaleSocket(addr)
	}
	return net.Listen(network, addr)
}
