package milter

// Tests of what lacre's copy adds to go-milter v0.5.0 (see PATCHES.md):
// version negotiation up to 6, the DATA event, SMFIC_UNKNOWN and
// SMFIC_QUIT_NC, and one write per packet.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

func optNeg(version uint32, actions OptAction, protocol OptProtocol) *Message {
	data := make([]byte, 12)
	binary.BigEndian.PutUint32(data[0:], version)
	binary.BigEndian.PutUint32(data[4:], uint32(actions))
	binary.BigEndian.PutUint32(data[8:], uint32(protocol))
	return &Message{Code: byte(CodeOptNeg), Data: data}
}

func TestNegotiateVersionAndProtocol(t *testing.T) {
	const mtaAll = OptProtocol(0x1fffff)
	tests := []struct {
		name        string
		server      uint32 // Server.ProtocolVersion
		mta         uint32
		want        OptProtocol // Server.Protocol
		mtaProtocol OptProtocol
		wantVersion uint32
		wantProto   OptProtocol
	}{
		{"default is 2", 0, 6, OptNoUnknown, mtaAll, 2, OptNoUnknown},
		{"6 with a v6 MTA", 6, 6, OptNoUnknown | OptNoHelo, mtaAll, 6, OptNoUnknown | OptNoHelo},
		{"6 with a v2 MTA", 6, 2, 0, 0x7f, 2, 0},
		{"capped at 6", 9, 7, 0, mtaAll, 6, 0},
		{"raised to 2", 1, 6, 0, mtaAll, 2, 0},
		{"flags the MTA lacks are dropped", 6, 6, OptNoUnknown | OptNoHelo, OptNoHelo, 6, OptNoHelo},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := &Server{ProtocolVersion: tc.server, Protocol: tc.want, Actions: OptChangeBody}
			s := milterSession{server: srv, actions: srv.Actions, protocol: srv.Protocol, backend: NoOpMilter{}}
			resp, err := s.Process(optNeg(tc.mta, 0x1ff, tc.mtaProtocol))
			if err != nil {
				t.Fatal(err)
			}
			msg := resp.Response()
			if msg.Code != 'O' || len(msg.Data) != 12 {
				t.Fatalf("reply %c %q", msg.Code, msg.Data)
			}
			v := binary.BigEndian.Uint32(msg.Data[0:])
			a := OptAction(binary.BigEndian.Uint32(msg.Data[4:]))
			p := OptProtocol(binary.BigEndian.Uint32(msg.Data[8:]))
			if v != tc.wantVersion || a != OptChangeBody || p != tc.wantProto {
				t.Fatalf("version %d, actions %#x, protocol %#x; want %d, %#x, %#x", v, a, p, tc.wantVersion, OptChangeBody, tc.wantProto)
			}
			if s.version != tc.wantVersion {
				t.Fatalf("session version %d", s.version)
			}
		})
	}
}

func TestNegotiateRejectsMalformedAndOldMTA(t *testing.T) {
	for _, msg := range []*Message{
		{Code: byte(CodeOptNeg), Data: []byte("short")},
		optNeg(1, 0x3f, 0x7f),
	} {
		srv := &Server{ProtocolVersion: 6}
		s := milterSession{server: srv, backend: NoOpMilter{}}
		if resp, err := s.Process(msg); err == nil {
			t.Errorf("%q: reply %v, want an error", msg.Data, resp)
		}
	}
}

// dataMilter accepts at DATA and counts the callbacks.
type dataMilter struct {
	NoOpMilter
	data int
}

func (d *dataMilter) Data(m *Modifier) (Response, error) {
	d.data++
	if m.Macros["i"] != "Q1" {
		return nil, fmt.Errorf("macros at DATA: %v", m.Macros)
	}
	return RespAccept, nil
}

// rawMTA is the MTA side of a milter connection over net.Pipe.
type rawMTA struct {
	t *testing.T
	c net.Conn
}

func (r rawMTA) send(code Code, data string) {
	r.t.Helper()
	r.c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := writePacket(r.c, &Message{Code: byte(code), Data: []byte(data)}, 0); err != nil {
		r.t.Fatal(err)
	}
}

func (r rawMTA) reply() *Message {
	r.t.Helper()
	r.c.SetDeadline(time.Now().Add(5 * time.Second))
	msg, err := readPacket(r.c, 0)
	if err != nil {
		r.t.Fatal(err)
	}
	return msg
}

func serveOne(t *testing.T, srv *Server) rawMTA {
	c1, c2 := net.Pipe()
	s := &milterSession{server: srv, actions: srv.Actions, protocol: srv.Protocol, conn: c2, backend: srv.NewMilter()}
	done := make(chan struct{})
	go func() { s.HandleMilterCommands(); close(done) }()
	t.Cleanup(func() {
		c1.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("session did not end")
		}
	})
	return rawMTA{t, c1}
}

func TestDataEventAcceptStartsNewBackend(t *testing.T) {
	var made []*dataMilter
	srv := &Server{ProtocolVersion: 6, NewMilter: func() Milter {
		d := &dataMilter{}
		made = append(made, d)
		return d
	}}
	mta := serveOne(t, srv)
	mta.send(CodeOptNeg, string(optNeg(6, 0x1ff, 0x1fffff).Data))
	if r := mta.reply(); r.Code != 'O' || binary.BigEndian.Uint32(r.Data) != 6 {
		t.Fatalf("negotiation reply %c %q", r.Code, r.Data)
	}
	for i := 0; i < 2; i++ {
		mta.send(CodeMail, "<a@example.org>\x00")
		if r := mta.reply(); r.Code != byte(ActContinue) {
			t.Fatalf("MAIL: %c", r.Code)
		}
		mta.send(CodeMacro, "Ti\x00Q1\x00")
		mta.send(CodeData, "")
		if r := mta.reply(); r.Code != byte(ActAccept) {
			t.Fatalf("DATA: %c", r.Code)
		}
	}
	mta.send(CodeQuit, "")
	if len(made) != 3 {
		t.Fatalf("%d backends, want 3 (one per message, and the next)", len(made))
	}
	if made[0].data != 1 || made[1].data != 1 || made[2].data != 0 {
		t.Fatalf("DATA calls per backend %d/%d/%d, want 1/1/0", made[0].data, made[1].data, made[2].data)
	}
}

func TestDataUnknownWithoutCallbackContinue(t *testing.T) {
	mm := &MockMilter{}
	s := milterSession{server: &Server{}, backend: mm}
	for _, code := range []Code{CodeData, CodeUnknown} {
		resp, err := s.Process(&Message{Code: byte(code), Data: []byte("XYZZY\x00")})
		if err != nil || resp != RespContinue {
			t.Errorf("%c: %v, %v; want continue", code, resp, err)
		}
	}
}

func TestQuitNewConnectionStartsOver(t *testing.T) {
	var made []*MockMilter
	aborted := 0
	srv := &Server{ProtocolVersion: 6, NewMilter: func() Milter {
		mm := &MockMilter{ConnResp: RespContinue, MailResp: RespContinue, AbortMod: func(*Modifier) { aborted++ }}
		made = append(made, mm)
		return mm
	}}
	mta := serveOne(t, srv)
	mta.send(CodeOptNeg, string(optNeg(6, 0x1ff, 0x1fffff).Data))
	mta.reply()
	mta.send(CodeConn, "one.example\x004\x00\x19192.0.2.1\x00")
	mta.reply()
	mta.send(CodeMail, "<a@example.org>\x00")
	mta.reply()
	// No reply to SMFIC_QUIT_NC: the next reply is the new CONNECT's.
	mta.send(CodeQuitNewConn, "")
	mta.send(CodeConn, "two.example\x004\x00\x19192.0.2.2\x00")
	if r := mta.reply(); r.Code != byte(ActContinue) {
		t.Fatalf("CONNECT after QUIT_NC: %c", r.Code)
	}
	mta.send(CodeQuit, "")
	if len(made) != 2 || made[0].Host != "one.example" || made[0].From != "a@example.org" || made[1].Host != "two.example" || aborted != 1 {
		t.Fatalf("backends after QUIT_NC: %d, %d aborted, %+v", len(made), aborted, made)
	}
}

// countingConn counts the writes made to it.
type countingConn struct {
	net.Conn
	writes int
	buf    bytes.Buffer
}

func (c *countingConn) Write(p []byte) (int, error) { c.writes++; return c.buf.Write(p) }

func TestWritePacketOneWriteForSmallPackets(t *testing.T) {
	for _, size := range []int{0, 1, smallPacket, smallPacket + 1, MaxBodyChunk} {
		c := &countingConn{}
		msg := &Message{Code: 'b', Data: bytes.Repeat([]byte{'x'}, size)}
		if err := writePacket(c, msg, 0); err != nil {
			t.Fatal(err)
		}
		want := 1
		if size > smallPacket {
			want = 2
		}
		if c.writes != want {
			t.Errorf("%d bytes: %d writes, want %d", size, c.writes, want)
		}
		got, err := readPacket(&readConn{r: &c.buf}, 0)
		if err != nil || got.Code != 'b' || !bytes.Equal(got.Data, msg.Data) {
			t.Errorf("%d bytes: read back %v, %v", size, got, err)
		}
	}
}

// readConn is a net.Conn that reads from r.
type readConn struct {
	net.Conn
	r io.Reader
}

func (c *readConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func TestClientDataAgainstServer(t *testing.T) {
	for _, version := range []uint32{2, 6} {
		d := &dataMilter{}
		srv := &Server{ProtocolVersion: version, NewMilter: func() Milter { return d }}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		s, err := NewClientWithOptions("tcp", ln.Addr().String(), ClientOptions{ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second}).Session()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Mail("a@example.org", nil); err != nil {
			t.Fatal(err)
		}
		s.Macros(CodeData, "i", "Q1")
		act, err := s.Data()
		if err != nil {
			t.Fatal(err)
		}
		// Version 2: the client sends no DATA at all (a client check:
		// the server never sees the command).
		want, calls := ActAccept, 1
		if version == 2 {
			want, calls = ActContinue, 0
		}
		if act.Code != want || d.data != calls {
			t.Errorf("version %d: DATA answered %c, %d callbacks", version, act.Code, d.data)
		}
		s.Close()
		srv.Close()
	}
}

// syncBuf is a bytes.Buffer safe for the session's goroutine and the test.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLoggerReceivesReports: with Server.Logger set, what the library
// reports goes there, at Warn for a malformed command and at Debug for a
// connection the peer closed; nothing reaches the standard log package.
func TestLoggerReceivesReports(t *testing.T) {
	var std, out syncBuf
	prev := log.Writer()
	log.SetOutput(&std)
	defer log.SetOutput(prev)
	srv := &Server{NewMilter: func() Milter { return NoOpMilter{} }, Logger: slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	c1, c2 := net.Pipe()
	s := &milterSession{server: srv, conn: c2, backend: srv.NewMilter()}
	done := make(chan struct{})
	go func() { s.HandleMilterCommands(); close(done) }()
	mta := rawMTA{t, c1}
	mta.send('Z', "")
	<-done
	if !strings.Contains(out.String(), `level=WARN msg="Unrecognized command code: Z"`) {
		t.Errorf("log: %q", out.String())
	}
	c1, c2 = net.Pipe()
	s = &milterSession{server: srv, conn: c2, backend: srv.NewMilter()}
	done = make(chan struct{})
	go func() { s.HandleMilterCommands(); close(done) }()
	c2.Close()
	<-done
	if !strings.Contains(out.String(), `level=DEBUG msg="Error reading milter command: io: read/write on closed pipe"`) {
		t.Errorf("log: %q", out.String())
	}
	if std.String() != "" {
		t.Errorf("standard log got %q", std.String())
	}
}
