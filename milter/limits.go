package milter

// The limits of the MTA port (issue 11): how many connections are served
// at once, how long a connection may sit idle or take over one packet,
// and what the accept loop does when accept fails. They live here, in
// lacre's accept loop and in a net.Conn wrapper, not in the milter
// library, so they hold whichever library serves the connection. The
// library's part is only to allocate a packet as it arrives (patch 9 in
// third_party/go-milter/PATCHES.md).

import (
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

// limitConn is an MTA connection with time limits that follow the milter
// framing (a 4-byte big-endian length, then that many bytes):
//
//   - between packets, a read waits at most idle for the next packet to
//     begin, and then reports io.EOF;
//   - once the first byte of a packet has arrived, the whole packet must
//     have arrived packet after it, however the peer spreads it out;
//   - each write (each writeChunk of a larger one) must be taken by the
//     peer within packet.
//
// It sees every byte that arrives (it sits under the session's read
// buffer), so it knows where each packet begins and ends. Reads happen on
// the session's goroutine only; Close may come from any goroutine.
type limitConn struct {
	net.Conn
	idle, packet time.Duration

	headN   int       // bytes of the current packet's length field seen
	head    [4]byte   // the length field
	left    uint32    // bytes of the current packet's payload still to come
	started time.Time // when the current packet's first byte arrived
	// readDL and writeDL are the deadlines last set on the connection.
	readDL, writeDL time.Time
	// expired names the limit that ended the connection, if one did:
	// "idle_timeout" or "packet_timeout".
	expired string
}

func newLimitConn(c net.Conn, idle, packet time.Duration) *limitConn {
	return &limitConn{Conn: c, idle: idle, packet: packet}
}

// inPacket reports whether some but not all of a packet has arrived.
func (c *limitConn) inPacket() bool { return c.headN > 0 || c.left > 0 }

// Setting a deadline costs a timer update in the runtime, for every read
// and write; an idle or write deadline is therefore only moved when it
// has fallen more than 1/16 of its limit behind: it may then fire up to
// that much early (under 4 minutes of an hour's idle_timeout).
const deadlineSlack = 16

func (c *limitConn) Read(p []byte) (int, error) {
	if c.inPacket() {
		if dl := c.started.Add(c.packet); !dl.Equal(c.readDL) {
			if err := c.Conn.SetReadDeadline(dl); err != nil {
				return 0, err
			}
			c.readDL = dl
		}
	} else if dl := time.Now().Add(c.idle); dl.Sub(c.readDL) > c.idle/deadlineSlack {
		if err := c.Conn.SetReadDeadline(dl); err != nil {
			return 0, err
		}
		c.readDL = dl
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.track(p[:n])
	}
	if err != nil && c.expired == "" && isTimeout(err) {
		if c.inPacket() {
			c.expired = "packet_timeout"
		} else {
			// To the milter library an idle connection that ends is one
			// the MTA closed between packets: it ends the session without
			// an error line; the server logs why (logExpired).
			c.expired = "idle_timeout"
			err = io.EOF
		}
	}
	return n, err
}

// track follows the framing through the bytes b that just arrived.
func (c *limitConn) track(b []byte) {
	var now time.Time
	for len(b) > 0 {
		if c.left == 0 { // in a length field
			if c.headN == 0 {
				if now.IsZero() {
					now = time.Now()
				}
				c.started = now
			}
			k := copy(c.head[c.headN:], b)
			c.headN += k
			b = b[k:]
			if c.headN == len(c.head) {
				c.headN = 0
				c.left = binary.BigEndian.Uint32(c.head[:])
			}
			continue
		}
		k := len(b)
		if uint64(k) > uint64(c.left) {
			k = int(c.left)
		}
		c.left -= uint32(k)
		b = b[k:]
	}
}

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
			}
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}

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
