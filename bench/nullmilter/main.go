// Command nullmilter is a milter that does no work of its own, for
// bench/throughput.sh: it shows what the milter protocol alone costs
// Postfix, so that lacre-milter can be compared with the best any milter
// could do on the same machine.
//
//	nullmilter -listen 127.0.0.1:8892 -mode replace
//	nullmilter -listen 127.0.0.1:8893 -mode accept-rcpt
//	nullmilter -listen 127.0.0.1:8894 -mode accept-data
//	nullmilter -listen 127.0.0.1:8895 -mode accept-header
//
// -mode replace makes, at end of message, the same kind and number of
// changes that lacre-milter makes when it encrypts (milter/session.go,
// apply; crypto/encrypt.go, outerChanges): Content-Type replaced
// (SMFIR_CHGHEADER) or added, the other Content-* fields deleted
// (SMFIR_CHGHEADER with an empty value, highest index first), MIME-Version
// added when absent, the trace header added (SMFIR_ADDHEADER), then the
// body replaced (SMFIR_REPLBODY, lines ending in LF) in packets of at most
// 65535 bytes. The new body is the received one, byte for byte: the
// same size, where lacre's armoured ciphertext is about 1.4 times larger.
// It collects the header fields and the body as lacre does.
//
// -mode accept-rcpt accepts every message at its first RCPT
// (SMFIR_ACCEPT), as the cheapest milter that decides per recipient can.
// lacre-milter answers a clear (unkeyed) transaction one step later, at
// DATA: until then another RCPT may still come that needs encryption, and
// a message accepted at RCPT would be delivered in clear to it.
//
// -mode accept-data accepts every message at DATA, where lacre-milter
// accepts clear mail: it shows what that later point costs in itself,
// apart from lacre's own work.
//
// -mode accept-header accepts every message at its first header field,
// where lacre-milter accepted clear mail while it spoke milter protocol
// version 2 (no DATA event).
//
// All modes negotiate what lacre-milter negotiates (milter/server.go:
// protocol version 6, every stage but HELO and unknown commands, the same
// actions, no reply to CONNECT nor, after DATA, to header
// fields, the end of the header and body chunks), except that
// accept-header does answer header fields. The connection does what lacre's does to save system calls,
// only more: reads are buffered, and everything written is held until the
// milter next reads, so each reply, with the changes before it, goes out
// in one write. Nothing is logged.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"runtime/debug"
	"strings"

	gomilter "github.com/d--j/go-milter"
)

// maxBodyPacket is the largest SMFIR_REPLBODY payload, as in lacre.
const maxBodyPacket = 65535

func main() {
	listen := flag.String("listen", "127.0.0.1:8892", "TCP address to listen on (loopback)")
	mode := flag.String("mode", "replace", `"replace" (change headers and body at end of message), "accept-rcpt", "accept-data" or "accept-header"`)
	trace := flag.String("trace", "X-Lacre", "trace header added in replace mode")
	flag.Parse()
	switch *mode {
	case "replace", "accept-rcpt", "accept-data", "accept-header":
	default:
		log.Fatalf("nullmilter: unknown -mode %q", *mode)
	}
	// The same GC setting as lacre-milter serve (milter.TuneRuntime):
	// go-milter allocates per packet and the live heap is tiny.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	afterData := noReplyAfterData
	if *mode == "accept-header" {
		afterData = 0
	}
	gomilter.LogWarning = func(string, ...any) {}
	srv := gomilter.NewServer(
		gomilter.WithMilter(func() gomilter.Milter { return &session{mode: *mode, trace: *trace} }),
		gomilter.WithActions(actions),
		gomilter.WithProtocols(protocol|noReply|afterData),
		gomilter.WithNegotiationCallback(func(mtaVersion, _ uint32, mtaActions, _ gomilter.OptAction, mtaProtocol, _ gomilter.OptProtocol, _ gomilter.DataSize) (uint32, gomilter.OptAction, gomilter.OptProtocol, gomilter.DataSize, error) {
			if mtaVersion < 2 || mtaActions&actions != actions {
				return 0, 0, 0, 0, fmt.Errorf("nullmilter: MTA version %d, actions %v", mtaVersion, mtaActions)
			}
			version := min(mtaVersion, 6)
			want := protocol | noReply
			if version >= 4 {
				want |= afterData
			}
			return version, actions, want & mtaProtocol, gomilter.DataSize64K, nil
		}),
		gomilter.WithReadTimeout(0), gomilter.WithWriteTimeout(0),
	)
	log.Fatal(srv.Serve(&listener{ln}))
}

// lacre's negotiation (milter/server.go).
const (
	actions          = gomilter.OptAddHeader | gomilter.OptChangeHeader | gomilter.OptChangeBody | gomilter.OptQuarantine
	protocol         = gomilter.OptNoHelo | gomilter.OptNoUnknown
	noReply          = gomilter.OptNoConnReply | gomilter.OptNoHeloReply | gomilter.OptNoUnknownReply
	noReplyAfterData = gomilter.OptNoHeaderReply | gomilter.OptNoEOHReply | gomilter.OptNoBodyReply
)

// session is one MTA connection, one message at a time.
type session struct {
	gomilter.NoOpMilter // Connect, Helo, Headers, Unknown: continue
	mode, trace         string
	names               []string // header field names, in order
	body                []byte
}

func (s *session) reset() { s.names, s.body = s.names[:0], s.body[:0] }

func (s *session) MailFrom(from, esmtpArgs string, m gomilter.Modifier) (*gomilter.Response, error) {
	s.reset()
	return gomilter.RespContinue, nil
}

func (s *session) Abort(m gomilter.Modifier) error {
	s.reset()
	return nil
}

func (s *session) RcptTo(rcpt, esmtpArgs string, m gomilter.Modifier) (*gomilter.Response, error) {
	if s.mode == "accept-rcpt" {
		return gomilter.RespAccept, nil
	}
	return gomilter.RespContinue, nil
}

func (s *session) Data(m gomilter.Modifier) (*gomilter.Response, error) {
	if s.mode == "accept-data" {
		return gomilter.RespAccept, nil
	}
	return gomilter.RespContinue, nil
}

func (s *session) Header(name, value string, m gomilter.Modifier) (*gomilter.Response, error) {
	if s.mode == "accept-header" {
		return gomilter.RespAccept, nil
	}
	s.names = append(s.names, name)
	return gomilter.RespContinue, nil
}

func (s *session) BodyChunk(chunk []byte, m gomilter.Modifier) (*gomilter.Response, error) {
	s.body = append(s.body, chunk...)
	return gomilter.RespContinue, nil
}

// EndOfMessage makes lacre's kinds of changes; see the package comment.
func (s *session) EndOfMessage(m gomilter.Modifier) (*gomilter.Response, error) {
	defer s.reset()
	// A Content-Type of about the length of lacre's (~110 bytes).
	const newType = `text/plain; charset=us-ascii; x-nullmilter="0123456789abcdef0123456789abcdef0123456789abcdef0123456789"`
	seen := map[string]int{}
	var deletes []func() error
	hasType, hasVersion := false, false
	for _, name := range s.names {
		key := strings.ToLower(name)
		seen[key]++
		idx := seen[key]
		switch {
		case key == "content-type" && !hasType:
			hasType = true
			if err := m.ChangeHeader(idx, name, newType); err != nil {
				return nil, err
			}
		case strings.HasPrefix(key, "content-") && len(key) > 8:
			deletes = append(deletes, func() error { return m.ChangeHeader(idx, name, "") })
		case key == "mime-version":
			hasVersion = true
		}
	}
	for i := len(deletes) - 1; i >= 0; i-- {
		if err := deletes[i](); err != nil {
			return nil, err
		}
	}
	if !hasVersion {
		if err := m.AddHeader("MIME-Version", "1.0"); err != nil {
			return nil, err
		}
	}
	if !hasType {
		if err := m.AddHeader("Content-Type", newType); err != nil {
			return nil, err
		}
	}
	if err := m.AddHeader(s.trace, "null-milter"); err != nil {
		return nil, err
	}
	// As lacre: lines end in LF in the replacement body.
	for b := bytes.ReplaceAll(s.body, []byte("\r\n"), []byte("\n")); len(b) > 0; {
		n := min(len(b), maxBodyPacket)
		if err := m.ReplaceBodyRawChunk(b[:n]); err != nil {
			return nil, err
		}
		b = b[n:]
	}
	return gomilter.RespAccept, nil
}

var _ gomilter.Milter = (*session)(nil)

// listener wraps each accepted connection in a batchConn.
type listener struct{ net.Listener }

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &batchConn{Conn: c, r: bufio.NewReaderSize(c, 16<<10)}, nil
}

// batchConn buffers reads, and holds writes until the next read: the
// milter protocol is strictly command → replies, so whatever was written
// must reach the MTA before the milter waits for its next command, and
// need not reach it sooner.
type batchConn struct {
	net.Conn
	r       *bufio.Reader
	pending bytes.Buffer
}

func (c *batchConn) Write(p []byte) (int, error) { return c.pending.Write(p) }

func (c *batchConn) Read(p []byte) (int, error) {
	if err := c.flush(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func (c *batchConn) flush() error {
	if c.pending.Len() == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.pending.Bytes())
	c.pending.Reset()
	if err != nil {
		return fmt.Errorf("nullmilter: write: %w", err)
	}
	return nil
}

func (c *batchConn) Close() error {
	c.flush()
	return c.Conn.Close()
}
