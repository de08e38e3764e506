// Package milter is the MTA-facing part of Lacre: a go-milter backend that
// classifies recipients at RCPT time, collects the message, encrypts it
// once per transaction at end of message and hands the MTA the new body
// and header changes. It maps every failure to an SMTP reply (reply.go)
// and knows nothing of OpenPGP packets (that is package crypto).
package milter

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	gomilter "github.com/emersion/go-milter"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("milter: server closed")

// Server runs milter sessions. Create it with New, feed it listeners with
// Serve, stop it with Shutdown.
type Server struct {
	log     *slog.Logger
	libLog  *slog.Logger // for go-milter's own reports
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
	srv := &Server{log: log, libLog: log.With("component", "go-milter"), metrics: noMetrics{}, now: time.Now, conns: map[*connState]struct{}{},
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
// for quarantine (Postfix's hold queue).
//
// Protocol version 6 gives us the DATA event: after the last RCPT, so a
// message no recipient needs encrypted is accepted there, answered by
// Postfix's smtpd, and the MTA sends us none of its content (with version 2
// the first header field, which Postfix's cleanup sends, was the earliest
// point). We need every stage but HELO, which tells us nothing we use, and
// unknown SMTP commands: skipping them saves the MTA a round trip.
const (
	actions         = gomilter.OptAddHeader | gomilter.OptChangeHeader | gomilter.OptChangeBody | gomilter.OptQuarantine
	protocol        = gomilter.OptNoHelo | gomilter.OptNoUnknown
	protocolVersion = 6
)

// connState is what the server knows about one MTA connection, for its
// whole life. go-milter replaces the session's backend after every
// accept/reject/tempfail reply (so after each message); keeping these
// facts here, outside the backend, means they survive that reset.
type connState struct {
	conn    *trackedConn
	limits  *limitConn  // under conn: the time limits
	busy    atomic.Bool // between MAIL FROM and the end of that message
	client  string      // "host [addr]:port", from Connect
	nonSMTP bool        // Postfix non_smtpd_milters: sendmail(1)/pickup
	seen    bool        // Connect was received
}

// Serve accepts MTA connections on ln until Shutdown. Each connection is
// served in a goroutine of its own by a go-milter server whose backend
// factory is bound to that connection's connState.
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
		cs.conn = &trackedConn{Conn: cs.limits, r: bufio.NewReaderSize(cs.limits, 16<<10)}
		s.conns[cs] = struct{}{}
		s.mu.Unlock()
		ms := &gomilter.Server{
			NewMilter:       func() gomilter.Milter { return newSession(s, cs) },
			Actions:         actions,
			Protocol:        protocol,
			ProtocolVersion: protocolVersion,
			Logger:          s.libLog,
		}
		go func() {
			ms.ServeConn(cs.conn) // closes the connection when done
			s.mu.Lock()
			delete(s.conns, cs)
			s.mu.Unlock()
			s.signalIdle()
			s.logExpired(cs)
		}()
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
				cs.conn.Close()
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
				cs.conn.Close()
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

// trackedConn is the MTA connection as go-milter sees it. It saves system
// calls that go-milter would make: reads go through a
// buffer (go-milter reads a packet's length and its data separately), and
// the end-of-message modifications can be held and sent together with the
// final reply in one write (see holdUntilReply). Only the session's
// goroutine reads and writes it.
type trackedConn struct {
	net.Conn
	r       *bufio.Reader
	holding bool
	final   bool
	pending []byte
}

func (c *trackedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *trackedConn) Write(p []byte) (int, error) {
	if !c.holding {
		return c.Conn.Write(p)
	}
	c.pending = append(c.pending, p...)
	if !c.final {
		return len(p), nil
	}
	// The final reply: send everything at once.
	out := c.pending
	c.holding, c.final, c.pending = false, false, nil
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// holdUntilReply starts holding writes: the modification packets that
// follow are buffered until releaseWithReply marks the next write (the
// session's final reply, which go-milter writes in one call) as the last.
func (c *trackedConn) holdUntilReply() { c.holding, c.final, c.pending = true, false, c.pending[:0] }

func (c *trackedConn) releaseWithReply() {
	if c.holding {
		c.final = true
	}
}

// dropHeld forgets held writes after an error; the session ends anyway.
func (c *trackedConn) dropHeld() { c.holding, c.final, c.pending = false, false, nil }

// Listen opens the listener for network "tcp" or "unix" (config.ParseListen
// splits milter.listen into those). A stale unix socket file is removed
// first.
func Listen(network, addr string) (net.Listener, error) {
	if network == "unix" {
		removeStaleSocket(addr)
	}
	return net.Listen(network, addr)
}
