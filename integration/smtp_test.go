package integration

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// ---------------------------------------------------------------------
// The SMTP sink: where Postfix relays everything.

const (
	sinkMaxSize        = 64 << 20 // bytes of one message
	sinkMaxConns       = 32
	sinkCommandTimeout = 60 * time.Second // per command line
	sinkDataTimeout    = 5 * time.Minute  // for the whole DATA transfer
	sinkMaxLine        = 4096             // command line
)

// sinkMessage is one message the sink accepted.
type sinkMessage struct {
	From string   // MAIL FROM address (without <>)
	To   []string // the accepted RCPT TO addresses, in order
	// Data is the message as received, after dot-unstuffing, with its
	// CRLF line ends, without the terminating ".".
	Data []byte
	At   time.Time
}

// sink is a minimal SMTP server that accepts and records every message.
type sink struct {
	t    testing.TB
	ln   net.Listener
	port int

	mu        sync.Mutex
	msgs      []sinkMessage
	notify    chan struct{} // closed and replaced when a message arrives
	rcptReply map[string]string
	dataReply string
	problems  []string // protocol errors of clients, logged at the end
	conns     map[net.Conn]struct{}
	closed    bool

	sem chan struct{}
	wg  sync.WaitGroup
}

// startSink starts a sink on 127.0.0.1 and closes it when the test ends.
func startSink(t testing.TB) *sink {
	t.Helper()
	recordInputs()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("sink: %v", err)
	}
	s := &sink{
		t:         t,
		ln:        ln,
		port:      ln.Addr().(*net.TCPAddr).Port,
		notify:    make(chan struct{}),
		rcptReply: map[string]string{},
		conns:     map[net.Conn]struct{}{},
		sem:       make(chan struct{}, sinkMaxConns),
	}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(func() {
		s.close()
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.problems) > 0 {
			t.Logf("sink: protocol problems:\n  %s", strings.Join(s.problems, "\n  "))
		}
	})
	return s
}

func (s *sink) addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// setRcptReply makes the sink answer RCPT TO:<address> with reply (e.g.
// "452 4.2.2 Mailbox full"; a 2xx reply accepts). "" restores the default
// "250 2.1.5 Ok". Addresses compare case-insensitively.
func (s *sink) setRcptReply(address, reply string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if reply == "" {
		delete(s.rcptReply, strings.ToLower(address))
	} else {
		s.rcptReply[strings.ToLower(address)] = reply
	}
}

// setDataReply makes the sink answer the end of DATA with reply instead
// of accepting; a message answered with a non-2xx reply is not recorded.
// "" restores acceptance.
func (s *sink) setDataReply(reply string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dataReply = reply
}

// messages returns the messages received so far.
func (s *sink) messages() []sinkMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sinkMessage(nil), s.msgs...)
}

// waitFor waits until the sink has received at least n messages and
// returns all messages received; it fails the test after timeout.
func (s *sink) waitFor(t testing.TB, n int, timeout time.Duration) []sinkMessage {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		s.mu.Lock()
		got, notify := len(s.msgs), s.notify
		s.mu.Unlock()
		if got >= n {
			return s.messages()
		}
		select {
		case <-notify:
		case <-timer.C:
			t.Fatalf("sink: %d message(s) received, want %d within %v", got, n, timeout)
		}
	}
}

func (s *sink) problem(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.problems) < 100 {
		s.problems = append(s.problems, fmt.Sprintf(format, args...))
	}
}

func (s *sink) close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.ln.Close()
	s.wg.Wait()
}

func (s *sink) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		select {
		case s.sem <- struct{}{}:
		default:
			c.SetWriteDeadline(time.Now().Add(time.Second))
			io.WriteString(c, "421 4.3.2 sink: too many connections\r\n")
			c.Close()
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() { <-s.sem }()
			s.session(c)
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// session speaks SMTP on one connection.
func (s *sink) session(c net.Conn) {
	r := bufio.NewReaderSize(c, 64*1024)
	w := bufio.NewWriter(c)
	reply := func(lines ...string) bool {
		c.SetWriteDeadline(time.Now().Add(sinkCommandTimeout))
		for _, l := range lines {
			w.WriteString(l)
			w.WriteString("\r\n")
		}
		return w.Flush() == nil
	}
	if !reply("220 sink.test ESMTP test sink") {
		return
	}
	var (
		from  string
		inTx  bool
		rcpts []string
	)
	for {
		c.SetReadDeadline(time.Now().Add(sinkCommandTimeout))
		line, err := readLine(r, sinkMaxLine)
		if err != nil {
			if !errors.Is(err, io.EOF) && !s.isClosed() {
				s.problem("reading a command: %v", err)
			}
			return
		}
		cmd := strings.TrimRight(string(line), "\r\n")
		verb := strings.ToUpper(cmd)
		if i := strings.IndexByte(verb, ' '); i >= 0 {
			verb = verb[:i]
		}
		switch verb {
		case "EHLO":
			if !reply("250-sink.test", "250-PIPELINING", "250-8BITMIME", "250-SMTPUTF8",
				fmt.Sprintf("250 SIZE %d", sinkMaxSize)) {
				return
			}
		case "HELO":
			reply("250 sink.test")
		case "MAIL":
			addr, params, ok := pathArg(cmd, "MAIL FROM:")
			if !ok {
				s.problem("bad command %q", cmd)
				reply("501 5.5.4 syntax: MAIL FROM:<address>")
				continue
			}
			if size := paramValue(params, "SIZE"); size != "" {
				if n, err := strconv.ParseInt(size, 10, 64); err == nil && n > sinkMaxSize {
					reply("552 5.3.4 message too big for the sink")
					continue
				}
			}
			from, inTx, rcpts = addr, true, nil
			reply("250 2.1.0 Ok")
		case "RCPT":
			if !inTx {
				reply("503 5.5.1 need MAIL first")
				continue
			}
			addr, _, ok := pathArg(cmd, "RCPT TO:")
			if !ok {
				s.problem("bad command %q", cmd)
				reply("501 5.5.4 syntax: RCPT TO:<address>")
				continue
			}
			s.mu.Lock()
			custom := s.rcptReply[strings.ToLower(addr)]
			s.mu.Unlock()
			if custom != "" {
				reply(custom)
				if !strings.HasPrefix(custom, "2") {
					continue
				}
			} else {
				reply("250 2.1.5 Ok")
			}
			rcpts = append(rcpts, addr)
		case "DATA":
			if !inTx || len(rcpts) == 0 {
				reply("554 5.5.1 no valid recipients")
				continue
			}
			if !reply("354 End data with <CR><LF>.<CR><LF>") {
				return
			}
			c.SetReadDeadline(time.Now().Add(sinkDataTimeout))
			data, tooBig, err := readData(r, sinkMaxSize)
			if err != nil {
				s.problem("reading DATA: %v", err)
				return
			}
			msg := sinkMessage{From: from, To: rcpts, Data: data, At: time.Now()}
			inTx, rcpts = false, nil
			if tooBig {
				reply("552 5.3.4 message too big for the sink")
				continue
			}
			s.mu.Lock()
			custom := s.dataReply
			s.mu.Unlock()
			if custom != "" && !strings.HasPrefix(custom, "2") {
				reply(custom)
				continue
			}
			s.mu.Lock()
			s.msgs = append(s.msgs, msg)
			n := len(s.msgs)
			close(s.notify)
			s.notify = make(chan struct{})
			s.mu.Unlock()
			if custom != "" {
				reply(custom)
			} else {
				reply(fmt.Sprintf("250 2.0.0 Ok: queued as SINK%d", n))
			}
		case "RSET":
			from, inTx, rcpts = "", false, nil
			reply("250 2.0.0 Ok")
		case "NOOP":
			reply("250 2.0.0 Ok")
		case "VRFY":
			reply("252 2.0.0 Send some mail, I'll try my best")
		case "QUIT":
			reply("221 2.0.0 Bye")
			return
		default:
			s.problem("unknown command %q", cmd)
			reply("502 5.5.2 command not implemented")
		}
	}
}

func (s *sink) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// readLine reads one line (with its line end) of at most max bytes.
func readLine(r *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > max {
			return nil, fmt.Errorf("line longer than %d bytes", max)
		}
		if err == nil {
			return line, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if len(line) > 0 && errors.Is(err, io.EOF) {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// readData reads a DATA body up to the line ".", undoing dot-stuffing.
// Beyond max bytes it keeps reading but no longer stores.
func readData(r *bufio.Reader, max int) (data []byte, tooBig bool, err error) {
	var b bytes.Buffer
	atLineStart := true
	for {
		chunk, err := r.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, false, err
		}
		complete := err == nil
		if atLineStart && len(chunk) > 0 && chunk[0] == '.' {
			if complete && (string(chunk) == ".\r\n" || string(chunk) == ".\n") {
				return b.Bytes(), tooBig, nil
			}
			chunk = chunk[1:]
		}
		if !tooBig {
			if b.Len()+len(chunk) > max {
				tooBig = true
				b.Reset()
			} else {
				b.Write(chunk)
			}
		}
		atLineStart = complete
	}
}

// pathArg parses "MAIL FROM:<addr> PARAMS" (prefix case-insensitive,
// optional space after the colon).
func pathArg(cmd, prefix string) (addr, params string, ok bool) {
	if len(cmd) < len(prefix) || !strings.EqualFold(cmd[:len(prefix)], prefix) {
		return "", "", false
	}
	rest := strings.TrimLeft(cmd[len(prefix):], " ")
	if !strings.HasPrefix(rest, "<") {
		return "", "", false
	}
	end := strings.IndexByte(rest, '>')
	if end < 0 {
		return "", "", false
	}
	return rest[1:end], strings.TrimSpace(rest[end+1:]), true
}

// paramValue returns the value of an ESMTP parameter (KEY=VALUE).
func paramValue(params, key string) string {
	for _, p := range strings.Fields(params) {
		if k, v, ok := strings.Cut(p, "="); ok && strings.EqualFold(k, key) {
			return v
		}
	}
	return ""
}

// ---------------------------------------------------------------------
// The SMTP client the tests submit with.

// smtpError is a 4xx or 5xx reply of an SMTP server.
type smtpError struct {
	Stage string // "greeting", "EHLO", "MAIL", "RCPT", "DATA" (the 354 or the reply after the final dot)
	Rcpt  string // the recipient, for Stage "RCPT"
	Code  int    // e.g. 451
	Msg   string // the reply text, e.g. "4.3.0 …"; lines of a multi-line reply joined with "\n"
}

func (e *smtpError) Error() string {
	if e.Rcpt != "" {
		return fmt.Sprintf("%s <%s>: %d %s", e.Stage, e.Rcpt, e.Code, e.Msg)
	}
	return fmt.Sprintf("%s: %d %s", e.Stage, e.Code, e.Msg)
}

// Temporary tells a 4xx from a 5xx.
func (e *smtpError) Temporary() bool { return e.Code >= 400 && e.Code < 500 }

// sendError collects the refusals of one submission.
type sendError struct {
	Errs []*smtpError
}

func (e *sendError) Error() string {
	s := make([]string, len(e.Errs))
	for i, x := range e.Errs {
		s[i] = x.Error()
	}
	return "SMTP: " + strings.Join(s, "; ")
}

// Unwrap lets errors.As find the first *smtpError.
func (e *sendError) Unwrap() []error {
	errs := make([]error, len(e.Errs))
	for i, x := range e.Errs {
		errs[i] = x
	}
	return errs
}

// rcpt returns the refusal of one recipient, or nil.
func (e *sendError) rcpt(address string) *smtpError {
	for _, x := range e.Errs {
		if x.Stage == "RCPT" && strings.EqualFold(x.Rcpt, address) {
			return x
		}
	}
	return nil
}

// stage returns the first refusal at a stage ("DATA", "MAIL", …), or nil.
func (e *sendError) stage(stage string) *smtpError {
	for _, x := range e.Errs {
		if x.Stage == stage {
			return x
		}
	}
	return nil
}

// smtpSend submits one message to addr. It returns the queue id from the
// final reply ("queued as ID") and, if the server refused anything, a
// *sendError; other failures (connection, timeouts) are plain errors.
// Every step is bounded by timeout.
func smtpSend(addr, from string, to []string, msg []byte, timeout time.Duration) (queueID string, err error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	c := textproto.NewConn(conn)
	step := func() { conn.SetDeadline(time.Now().Add(timeout)) }
	var refused []*smtpError
	fail := func(stage, rcpt string, code int, text string) {
		refused = append(refused, &smtpError{Stage: stage, Rcpt: rcpt, Code: code, Msg: text})
	}
	result := func() (string, error) {
		if len(refused) > 0 {
			return queueID, &sendError{Errs: refused}
		}
		return queueID, nil
	}
	quit := func() {
		step()
		if c.PrintfLine("QUIT") == nil {
			c.ReadResponse(0)
		}
	}
	cmd := func(format string, args ...any) (int, string, error) {
		step()
		if err := c.PrintfLine(format, args...); err != nil {
			return 0, "", err
		}
		code, text, err := c.ReadResponse(0)
		var te *textproto.Error
		if errors.As(err, &te) {
			err = nil // a reply we did not expect: the caller looks at the code
		}
		return code, text, err
	}

	step()
	code, text, err := c.ReadResponse(0)
	if err != nil {
		return "", fmt.Errorf("greeting: %v", err)
	}
	if code != 220 {
		fail("greeting", "", code, text)
		return result()
	}
	if code, text, err = cmd("EHLO client.test"); err != nil {
		return "", fmt.Errorf("EHLO: %v", err)
	} else if code != 250 {
		fail("EHLO", "", code, text)
		quit()
		return result()
	}
	params := ""
	if !ascii(string(msg)) {
		params += " BODY=8BITMIME"
	}
	if !ascii(from) || !allASCII(to) {
		params += " SMTPUTF8"
	}
	if code, text, err = cmd("MAIL FROM:<%s>%s", from, params); err != nil {
		return "", fmt.Errorf("MAIL: %v", err)
	} else if code != 250 {
		fail("MAIL", "", code, text)
		quit()
		return result()
	}
	accepted := 0
	for _, r := range to {
		code, text, err := cmd("RCPT TO:<%s>", r)
		if err != nil {
			return "", fmt.Errorf("RCPT <%s>: %v", r, err)
		}
		if code == 250 || code == 251 {
			accepted++
		} else {
			fail("RCPT", r, code, text)
		}
	}
	if accepted == 0 {
		quit()
		return result()
	}
	if code, text, err = cmd("DATA"); err != nil {
		return "", fmt.Errorf("DATA: %v", err)
	} else if code != 354 {
		fail("DATA", "", code, text)
		quit()
		return result()
	}
	step()
	dw := c.DotWriter() // CRLF line ends, dot-stuffing, the final "."
	if _, err := dw.Write(msg); err != nil {
		return "", fmt.Errorf("DATA: %v", err)
	}
	if err := dw.Close(); err != nil {
		return "", fmt.Errorf("DATA: %v", err)
	}
	step()
	code, text, err = c.ReadResponse(0)
	var te *textproto.Error
	if err != nil && !errors.As(err, &te) {
		return "", fmt.Errorf("end of DATA: %v", err)
	}
	if code != 250 {
		fail("DATA", "", code, text)
	} else if i := strings.LastIndex(text, "queued as "); i >= 0 {
		if f := strings.Fields(text[i+len("queued as "):]); len(f) > 0 {
			queueID = f[0]
		}
	}
	quit()
	return result()
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
