package milter

// The limits of the MTA port (issue 11): how many connections are served
// at once, how long a connection may sit idle or take over one packet,
// and what the accept loop does when accept fails. They live here, in
// lacre's accept loop and in a net.Conn wrapper, not in the milter
// library, so they hold whichever library serves the connection. The
// wrapper also keeps memory to what has arrived: github.com/d--j/go-milter
// v0.10.1 has no read limits by default, allocates a packet's announced
// length as soon as it has read the length field, and returns from its
// Serve on the first accept error.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// writeChunk is the most limitConn writes under one deadline: a large
// reply (a replaced body) may take longer than packetTimeout in all, as
// long as the MTA keeps taking it.
const writeChunk = 1 << 20

// maxPacketSize is the largest packet accepted from the MTA. Postfix and
// Sendmail send at most 64 KiB of data per packet unless a milter asks for
// more (lacre does not); go-milter would accept 512 MB.
const maxPacketSize = 1 << 20

// readBufferSize is the read buffer's size to begin with: most packets
// are far smaller, and it grows as a larger packet arrives.
const readBufferSize = 16 << 10

// maxRetained is the largest read buffer kept between packets: room for
// the largest packet Postfix and Sendmail send (64 KiB of data, its code
// and length field).
const maxRetained = 4 + 1 + 65535

// errPacketTooLarge ends a connection that announced a packet over
// maxPacketSize.
var errPacketTooLarge = errors.New("milter packet larger than 1 MiB announced")

// limitConn is an MTA connection with time and memory limits that follow
// the milter framing (a 4-byte big-endian length, then that many bytes):
//
//   - between packets, a read waits at most idle for the next packet to
//     begin, and then reports io.EOF;
//   - once the first byte of a packet has arrived, the whole packet must
//     have arrived packet after it, however the peer spreads it out;
//   - each write (each writeChunk of a larger one) must be taken by the
//     peer within packet;
//   - a packet is handed to the reader (the milter library) only once all
//     of it has arrived: the library allocates the announced length as
//     soon as it reads a length field, so it gets none before the bytes
//     are really there, and the buffer here grows only as they arrive. A
//     peer that announces 1 MiB and sends little holds little memory.
//
// Reads happen on the session's goroutine only; Close may come from any
// goroutine.
type limitConn struct {
	net.Conn
	idle, packet time.Duration

	buf   []byte // buf[r:w] arrived and not yet read
	r, w  int
	ready int // bytes from r on that form whole packets
	// scan is where the first packet not yet whole begins (r+ready).
	started time.Time // when the first byte at scan arrived
	// readDL and writeDL are the deadlines last set on the connection.
	readDL, writeDL time.Time
	// expired names the limit that ended the connection, if one did:
	// "idle_timeout" or "packet_timeout".
	expired string
	err     error // the error that ended reading

	toPacket int // bytes of the packet being handed out still to go
	// rcptMacros are the macros of the SMFIC_MACRO for stage 'R' handed
	// out right before the SMFIC_RCPT being handed out, nil if there was
	// none: the recipient's own {rcpt_addr} and {rcpt_mailer}. go-milter
	// keeps a stage's macros until the next SMFIC_MACRO of that stage,
	// so through it a RCPT without macros of its own would see the
	// previous recipient's.
	rcptMacros, nextRcptMacros map[string]string
}

func newLimitConn(c net.Conn, idle, packet time.Duration) *limitConn {
	return &limitConn{Conn: c, idle: idle, packet: packet}
}

// inPacket reports whether some but not all of a packet has arrived.
func (c *limitConn) inPacket() bool { return c.w > c.r+c.ready }

// Setting a deadline costs a timer update in the runtime, for every read
// and write; an idle or write deadline is therefore only moved when it
// has fallen more than 1/16 of its limit behind: it may then fire up to
// that much early (under 4 minutes of an hour's idle_timeout).
const deadlineSlack = 16

// Read hands out whole packets only (see limitConn).
func (c *limitConn) Read(p []byte) (int, error) {
	for c.ready == 0 {
		if c.err != nil {
			return 0, c.err
		}
		c.err = c.fill()
	}
	n := 0
	for n < len(p) && c.ready > 0 {
		if c.toPacket == 0 {
			if err := c.handOut(c.buf[c.r : c.r+c.ready]); err != nil {
				c.err, c.ready = err, 0
				if n > 0 {
					return n, nil
				}
				return 0, err
			}
		}
		k := min(len(p)-n, c.ready, c.toPacket)
		copy(p[n:], c.buf[c.r:c.r+k])
		c.r += k
		c.ready -= k
		c.toPacket -= k
		n += k
	}
	return n, nil
}

// errMalformed ends a connection whose next packet go-milter v0.10.1
// could not parse without a panic that would end the whole process.
var errMalformed = errors.New("malformed milter command: a CONNECT, MAIL or RCPT without its NUL-terminated string")

// handOut notes the packet that begins at b (whole: it is ready). It
// returns errMalformed for a packet that must not reach go-milter.
func (c *limitConn) handOut(b []byte) error {
	l := int(binary.BigEndian.Uint32(b))
	var code, stage byte
	if l > 0 {
		code = b[4]
	}
	if l > 1 {
		stage = b[5]
	}
	// go-milter slices past the first string of these without checking
	// that it ends, and CONNECT's family byte after it.
	switch data := b[4:][min(l, 1):l]; code {
	case 'C':
		if k := bytes.IndexByte(data, 0); k < 0 || k+1 >= len(data) {
			return errMalformed
		}
	case 'M', 'R':
		if bytes.IndexByte(data, 0) < 0 {
			return errMalformed
		}
	}
	c.toPacket = 4 + l
	switch {
	case code == 'D' && stage == 'R':
		c.nextRcptMacros = parseMacros(b[6 : 4+l])
	case code == 'R':
		c.rcptMacros, c.nextRcptMacros = c.nextRcptMacros, nil
	default:
		c.nextRcptMacros = nil
	}
	return nil
}

// parseMacros decodes the name and value pairs of an SMFIC_MACRO.
func parseMacros(b []byte) map[string]string {
	m := map[string]string{}
	var name string
	for i := 0; len(b) > 0; i++ {
		s := b
		if k := bytes.IndexByte(b, 0); k >= 0 {
			s, b = b[:k], b[k+1:]
		} else {
			b = nil
		}
		if i%2 == 0 {
			name = string(s)
			m[name] = ""
		} else {
			m[name] = string(s)
		}
	}
	return m
}

// fill reads once from the connection and finds the packets made whole.
func (c *limitConn) fill() error {
	if c.r == c.w {
		c.r, c.w = 0, 0
		if len(c.buf) > maxRetained {
			c.buf = nil // a packet larger than an MTA sends: not kept
		}
	}
	if c.w == len(c.buf) {
		c.makeRoom()
	}
	if err := c.setReadDeadline(); err != nil {
		return err
	}
	was := c.inPacket()
	n, err := c.Conn.Read(c.buf[c.w:])
	if n > 0 {
		if !was {
			c.started = time.Now()
		}
		c.w += n
		if ferr := c.frame(); ferr != nil {
			return ferr
		}
	}
	if err != nil && isTimeout(err) {
		if c.inPacket() {
			c.expired = "packet_timeout"
		} else {
			c.expired = "idle_timeout"
		}
		// To the milter library a connection that a limit ended is one
		// the MTA closed between packets: it ends the session without a
		// log line of its own; the server logs why (logExpired),
		// rate-limited.
		return io.EOF
	}
	return err
}

// frame moves ready over every packet in buf that has arrived whole.
func (c *limitConn) frame() error {
	for {
		scan := c.r + c.ready
		if c.w-scan < 4 {
			return nil
		}
		l := binary.BigEndian.Uint32(c.buf[scan:])
		if l > maxPacketSize {
			return errPacketTooLarge
		}
		end := scan + 4 + int(l)
		if end > c.w {
			return nil
		}
		c.ready = end - c.r
		if end < c.w {
			c.started = time.Now() // the next packet has begun
		}
	}
}

// makeRoom frees or adds space at the end of buf: the unread bytes move
// to the front; if they fill it, it doubles, but never beyond the end of
// the packet under way.
func (c *limitConn) makeRoom() {
	if c.r > 0 {
		copy(c.buf, c.buf[c.r:c.w])
		c.w -= c.r
		c.r = 0
		if c.w < len(c.buf) {
			return
		}
	}
	size := max(2*len(c.buf), readBufferSize)
	if scan := c.ready; c.w-scan >= 4 {
		size = min(size, max(scan+4+int(binary.BigEndian.Uint32(c.buf[scan:])), len(c.buf)+4))
	}
	grown := make([]byte, size)
	copy(grown, c.buf[:c.w])
	c.buf = grown
}

func (c *limitConn) setReadDeadline() error {
	if c.inPacket() {
		if dl := c.started.Add(c.packet); !dl.Equal(c.readDL) {
			if err := c.Conn.SetReadDeadline(dl); err != nil {
				return err
			}
			c.readDL = dl
		}
	} else if dl := time.Now().Add(c.idle); dl.Sub(c.readDL) > c.idle/deadlineSlack {
		if err := c.Conn.SetReadDeadline(dl); err != nil {
			return err
		}
		c.readDL = dl
	}
	return nil
}

// SetReadDeadline and SetWriteDeadline ignore the library's deadlines:
// the limits are limitConn's.
func (c *limitConn) SetReadDeadline(time.Time) error  { return nil }
func (c *limitConn) SetWriteDeadline(time.Time) error { return nil }
func (c *limitConn) SetDeadline(time.Time) error      { return nil }

func (c *limitConn) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), writeChunk)
		if dl := time.Now().Add(c.packet); dl.Sub(c.writeDL) > c.packet/deadlineSlack {
			if err := c.Conn.SetWriteDeadline(dl); err != nil {
				return n, err
			}
			c.writeDL = dl
		}
		m, err := c.Conn.Write(p[:k])
		n += m
		if err != nil {
			if isTimeout(err) && c.expired == "" {
				c.expired = "packet_timeout"
				// As for reads: the server logs it, not the library
				// (which keeps quiet about net.ErrClosed).
				err = expiredError{err}
			}
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}

// expiredError is a write that packet_timeout ended: still the timeout
// it is, and also net.ErrClosed.
type expiredError struct{ err error }

func (e expiredError) Error() string   { return e.err.Error() + " (packet_timeout)" }
func (e expiredError) Unwrap() []error { return []error{e.err, net.ErrClosed} }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Accept backoff, as net/http.Server.Serve does it: 5 ms after the first
// failure, doubling, at most 1 s; back to none after a success.
const (
	acceptDelayMin = 5 * time.Millisecond
	acceptDelayMax = time.Second
)

func nextAcceptDelay(d time.Duration) time.Duration {
	if d == 0 {
		return acceptDelayMin
	}
	return min(2*d, acceptDelayMax)
}

// logEvery is a warning that is logged at most once per interval; the
// line says how many were left out since the last one.
type logEvery struct {
	interval time.Duration

	mu      sync.Mutex
	next    time.Time
	dropped int
}

func (l *logEvery) warn(log *slog.Logger, now time.Time, msg string, args ...any) {
	l.mu.Lock()
	if now.Before(l.next) {
		l.dropped++
		l.mu.Unlock()
		return
	}
	dropped := l.dropped
	l.dropped, l.next = 0, now.Add(l.interval)
	l.mu.Unlock()
	log.Warn(msg, append(args, "not_logged_since_last", dropped)...)
}
