package milter

// Tests of the limits of the MTA port (limits.go): each plays a hostile or
// slow peer on loopback with raw packets, or a well-behaved MTA with
// go-milter's client, against a live server with short limits.

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// rawPacket is one milter packet: the length, the command code, the data.
func rawPacket(code byte, data []byte) []byte {
	p := binary.BigEndian.AppendUint32(nil, uint32(len(data)+1))
	return append(append(p, code), data...)
}

// optneg is an MTA's SMFIC_OPTNEG offering protocol version 6.
func optneg() []byte {
	var d [12]byte
	binary.BigEndian.PutUint32(d[0:], 6)
	binary.BigEndian.PutUint32(d[4:], uint32(actions))
	binary.BigEndian.PutUint32(d[8:], 0x1fffff)
	return rawPacket('O', d[:])
}

// dial opens a raw connection to the server.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readReply reads one packet from the server and returns its code.
func readReply(t *testing.T, c net.Conn) byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var head [5]byte
	if _, err := io.ReadFull(c, head[:]); err != nil {
		t.Fatalf("no reply: %v", err)
	}
	if _, err := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint32(head[:4]))-1); err != nil {
		t.Fatalf("reply cut short: %v", err)
	}
	return head[4]
}

// closedAfter waits, at most limit, for the server to close c, and says
// how long that took; it fails the test if the server keeps c open.
func closedAfter(t *testing.T, c net.Conn, start time.Time, limit time.Duration) time.Duration {
	t.Helper()
	c.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, c)
	took := time.Since(start)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server still holds the connection after %v", took)
	}
	return took
}

// TestStalledPacketIsClosed: once a packet has begun, it must be complete
// within packet_timeout, however the peer spreads it out; the idle limit
// (an hour here) does not apply to it.
func TestStalledPacketIsClosed(t *testing.T) {
	const packetTimeout = 300 * time.Millisecond
	f := newFixture(t, func(o *Options) {
		o.PacketTimeout = packetTimeout
		o.IdleTimeout = time.Hour
	})
	big := rawPacket('B', make([]byte, 100_000)) // SMFIC_BODY, 100 kB
	for _, tc := range []struct {
		name  string
		sent  []byte // sent at once; then it stalls
		drip  bool   // then the rest of big, 1 byte per 50 ms
		first []byte // a complete packet before, answered
	}{
		{name: "in the length field", sent: big[:2]},
		{name: "in the data", sent: big[:1000]},
		{name: "after a good packet", first: optneg(), sent: big[:5]},
		{name: "dripping", sent: big[:1], drip: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, f.addr)
			if tc.first != nil {
				c.Write(tc.first)
				if code := readReply(t, c); code != 'O' {
					t.Fatalf("reply %q to SMFIC_OPTNEG", code)
				}
				time.Sleep(2 * packetTimeout) // a gap between packets is not packet time
			}
			start := time.Now()
			c.Write(tc.sent)
			if tc.drip {
				go func() {
					for i := len(tc.sent); i < len(tc.sent)+100; i++ {
						time.Sleep(50 * time.Millisecond)
						if _, err := c.Write(big[i : i+1]); err != nil {
							return
						}
					}
				}()
			}
			took := closedAfter(t, c, start, 10*time.Second)
			t.Logf("closed %v after the packet began", took)
			if took < packetTimeout-50*time.Millisecond || took > packetTimeout+2*time.Second {
				t.Errorf("closed after %v, want about %v", took, packetTimeout)
			}
		})
	}
	if got := strings.Count(f.logs.String(), "packet or reply did not complete within packet_timeout"); got != 1 {
		t.Errorf("%d log lines for the stalled packets, want 1 (rate-limited)", got)
	}
}

// TestSlowPacketWithinLimit: a packet that arrives in pieces, all within
// packet_timeout, is served.
func TestSlowPacketWithinLimit(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.PacketTimeout = 2 * time.Second })
	c := dial(t, f.addr)
	p := optneg()
	for i := range p {
		c.Write(p[i : i+1])
		time.Sleep(20 * time.Millisecond)
	}
	if code := readReply(t, c); code != 'O' {
		t.Fatalf("reply %q to SMFIC_OPTNEG", code)
	}
}

// TestIdleConnectionIsClosed: a connection on which no packet begins for
// idle_timeout is closed; one with shorter gaps keeps working, across
// several times idle_timeout.
func TestIdleConnectionIsClosed(t *testing.T) {
	const idle = 800 * time.Millisecond
	f := newFixture(t, func(o *Options) { o.IdleTimeout = idle })

	// A connection that never sends a byte, and one that goes quiet after
	// a packet; each is watched in the background while the active
	// connection below keeps working.
	type closed struct {
		name string
		took time.Duration
		err  error
	}
	results := make(chan closed, 2)
	watch := func(name string, c net.Conn, since time.Time) {
		c.SetReadDeadline(since.Add(10 * time.Second))
		_, err := io.Copy(io.Discard, c)
		results <- closed{name, time.Since(since), err}
	}
	silent := dial(t, f.addr)
	go watch("silent", silent, time.Now())
	quiet := dial(t, f.addr)
	quiet.Write(optneg())
	if code := readReply(t, quiet); code != 'O' {
		t.Fatalf("reply %q to SMFIC_OPTNEG", code)
	}
	go watch("quiet", quiet, time.Now())

	m := f.connect(t, false)
	for range 12 { // 12 × 150 ms = 2.25 × idle
		time.Sleep(150 * time.Millisecond)
		if a, err := m.s.Mail("sender@example.net", nil); err != nil || a.Code != actContinue {
			t.Fatalf("MAIL after a short gap: %v %v", a, err)
		}
		if err := m.s.Abort(); err != nil {
			t.Fatalf("ABORT: %v", err)
		}
	}
	r := m.send("Q31", []string{"alice@example.org"}, []byte(plainMsg))
	if r.final == nil || r.final.Code != actAccept || len(r.mods) == 0 {
		t.Fatalf("message after short gaps: %+v", r.final)
	}

	for range 2 {
		c := <-results
		t.Logf("%s connection closed after %v (%v)", c.name, c.took, c.err)
		var ne net.Error
		if errors.As(c.err, &ne) && ne.Timeout() {
			t.Errorf("the server still holds the %s connection after %v", c.name, c.took)
		} else if c.took < idle-50*time.Millisecond || c.took > idle+2*time.Second {
			t.Errorf("%s connection closed after %v, want about %v", c.name, c.took, idle)
		}
	}
	if !strings.Contains(f.logs.String(), "no packet within idle_timeout") {
		t.Errorf("no log line for the idle connections")
	}
}

// serverConns is how many connections the server holds.
func serverConns(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// TestMaxConnections: the connection over max_connections is closed at
// once, the ones before it keep working, and a new one works once one
// has ended.
func TestMaxConnections(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.MaxConnections = 2 })
	a := f.connect(t, false)
	b := f.connect(t, false)

	for i := range 3 { // over the cap: closed before it is answered
		start := time.Now()
		c := dial(t, f.addr)
		c.Write(optneg())
		took := closedAfter(t, c, start, 5*time.Second)
		if took > time.Second {
			t.Errorf("connection %d over the cap closed after %v, want at once", i, took)
		}
	}
	if got := strings.Count(f.logs.String(), "max_connections reached"); got != 1 {
		t.Errorf("%d log lines for the refused connections, want 1 (rate-limited)", got)
	}

	for _, m := range []*mta{a, b} {
		r := m.send("Q32", []string{"alice@example.org"}, []byte(plainMsg))
		if r.final == nil || r.final.Code != actAccept || len(r.mods) == 0 {
			t.Fatalf("a connection under the cap: %+v", r.final)
		}
	}

	b.s.Close()
	deadline := time.Now().Add(5 * time.Second)
	for serverConns(f.srv) > 1 {
		if time.Now().After(deadline) {
			t.Fatal("the server still counts a closed connection")
		}
		time.Sleep(10 * time.Millisecond)
	}
	r := f.connect(t, false).send("Q33", []string{"alice@example.org"}, []byte(plainMsg))
	if r.final == nil || r.final.Code != actAccept || len(r.mods) == 0 {
		t.Fatalf("a connection after one ended: %+v", r.final)
	}
}

// flakyListener fails its first fails accepts with EMFILE, as accept4
// does when the process is out of file descriptors.
type flakyListener struct {
	net.Listener
	mu    sync.Mutex
	fails int
	at    []time.Time // when each failed accept happened
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if len(l.at) < l.fails {
		l.at = append(l.at, time.Now())
		l.mu.Unlock()
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

// TestAcceptErrorsAreRetried: Serve does not return when accept fails; it
// waits 5 ms, then twice as long each time, and serves the next
// connection. It returns when the listener is closed by Shutdown.
func TestAcceptErrorsAreRetried(t *testing.T) {
	f := newFixture(t, nil)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &flakyListener{Listener: inner, fails: 5}
	served := make(chan error, 1)
	go func() { served <- f.srv.Serve(ln) }()

	g := *f
	g.addr = inner.Addr().String()
	r := g.connect(t, false).send("Q34", []string{"alice@example.org"}, []byte(plainMsg))
	if r.final == nil || r.final.Code != actAccept || len(r.mods) == 0 {
		t.Fatalf("after failed accepts: %+v", r.final)
	}
	select {
	case err := <-served:
		t.Fatalf("Serve returned: %v", err)
	default:
	}
	ln.mu.Lock()
	for i := 1; i < len(ln.at); i++ {
		gap, want := ln.at[i].Sub(ln.at[i-1]), acceptDelayMin<<(i-1)
		if gap < want-time.Millisecond {
			t.Errorf("accept %d retried after %v, want at least %v", i+1, gap, want)
		}
	}
	ln.mu.Unlock()
	if got := strings.Count(f.logs.String(), "too many open files"); got != 1 {
		t.Errorf("%d log lines for the failed accepts, want 1 (rate-limited)", got)
	}

	if err := f.srv.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-served:
		if !errors.Is(err, ErrServerClosed) {
			t.Fatalf("Serve returned %v after Shutdown", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Shutdown")
	}
}

// TestAcceptOutOfFiles runs out of file descriptors for real: in a child
// process whose RLIMIT_NOFILE is a few above what it has open, loopback
// connections use up the rest, so accept4 fails with EMFILE. Serve must
// survive that and serve a message once descriptors are free again.
func TestAcceptOutOfFiles(t *testing.T) {
	if os.Getenv("LACRE_TEST_EMFILE_CHILD") == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestAcceptOutOfFiles$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "LACRE_TEST_EMFILE_CHILD=1")
		out, err := cmd.CombinedOutput()
		t.Logf("child:\n%s", out)
		if err != nil {
			t.Fatalf("child: %v", err)
		}
		return
	}

	f := newFixture(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- f.srv.Serve(ln) }()
	g := *f
	g.addr = ln.Addr().String()

	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	low := old
	low.Cur = uint64(len(fds) + 10)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old)

	var conns []net.Conn
	for range 50 {
		c, err := net.DialTimeout("tcp", g.addr, time.Second)
		if err != nil {
			t.Logf("dial %d: %v", len(conns)+1, err)
			break
		}
		conns = append(conns, c)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(f.logs.String(), "too many open files") {
		select {
		case err := <-served:
			t.Fatalf("Serve returned when out of descriptors: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("accept never ran out of descriptors (RLIMIT_NOFILE %d, %d connections)", low.Cur, len(conns))
		}
	}
	select {
	case err := <-served:
		t.Fatalf("Serve returned when out of descriptors: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	for _, c := range conns {
		c.Close()
	}
	// Still under the low limit: the server frees what the closed
	// connections held and accepts again.
	deadline = time.Now().Add(5 * time.Second)
	for serverConns(f.srv) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the server still holds %d connections", serverConns(f.srv))
		}
		time.Sleep(10 * time.Millisecond)
	}
	r := g.connect(t, false).send("Q35", []string{"alice@example.org"}, []byte(plainMsg))
	if r.final == nil || r.final.Code != actAccept || len(r.mods) == 0 {
		t.Fatalf("after running out of descriptors: %+v", r.final)
	}
	select {
	case err := <-served:
		t.Fatalf("Serve returned: %v", err)
	default:
	}
}

// TestMemoryFollowsWhatArrived: connections that announce the largest
// packet (1 MiB) and send a little of it hold memory for what they sent.
// 400 such connections used to hold 1 MiB each.
func TestMemoryFollowsWhatArrived(t *testing.T) {
	const n = 50
	f := newFixture(t, nil)
	start := rawPacket('B', make([]byte, 1<<20-1))[:1000]
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range n {
		c := dial(t, f.addr)
		c.Write(start)
	}
	deadline := time.Now().Add(5 * time.Second)
	for serverConns(f.srv) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the server holds %d of %d connections", serverConns(f.srv), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // let every session read what arrived
	runtime.GC()
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	perConn := grew / n
	t.Logf("heap grew %d bytes for %d connections: %d each", grew, n, perConn)
	// limitConn's read buffer (16 KiB) and the goroutines; go-milter gets
	// no byte of the packet before all of it has arrived, so it allocates
	// nothing for it. Announced: 1 MiB.
	if perConn > 200<<10 {
		t.Errorf("each connection holds %d bytes after sending 1000; want at most %d", perConn, 200<<10)
	}
}

// tcpPair is both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client = dial(t, ln.Addr().String())
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}

// TestWriteToPeerThatDoesNotRead: a reply the MTA does not take within
// packet_timeout ends the write (and so the session) instead of holding
// the connection and the reply forever.
func TestWriteToPeerThatDoesNotRead(t *testing.T) {
	const packetTimeout = 300 * time.Millisecond
	_, server := tcpPair(t)
	lc := newLimitConn(server, time.Hour, packetTimeout)
	stop := time.AfterFunc(10*time.Second, func() { server.Close() }) // if the limit fails
	defer stop.Stop()
	start := time.Now()
	n, err := lc.Write(make([]byte, 64<<20)) // more than the socket buffers hold
	took := time.Since(start)
	t.Logf("wrote %d bytes in %v: %v", n, took, err)
	if !isTimeout(err) || lc.expired != "packet_timeout" {
		t.Fatalf("err = %v, expired = %q; want a timeout", err, lc.expired)
	}
	if took > packetTimeout+2*time.Second {
		t.Errorf("the write gave up after %v, want about %v", took, packetTimeout)
	}
}

// TestSlowReaderGetsLargeReply: a large reply taken steadily, but slower
// than packet_timeout in all, goes through: the limit is per MiB.
func TestSlowReaderGetsLargeReply(t *testing.T) {
	const packetTimeout = 2 * time.Second
	client, server := tcpPair(t)
	lc := newLimitConn(server, time.Hour, packetTimeout)
	// Far more than the socket buffers (about 4 MB here) hold, and taken
	// in 4 s at least.
	const size = 40 << 20
	got := make(chan int64, 1)
	go func() {
		var n int64
		for n < size {
			time.Sleep(100 * time.Millisecond)
			m, err := io.CopyN(io.Discard, client, 1<<20)
			n += m
			if err != nil {
				break
			}
		}
		got <- n
	}()
	start := time.Now()
	if _, err := lc.Write(make([]byte, size)); err != nil {
		t.Fatalf("after %v: %v", time.Since(start), err)
	}
	if n := <-got; n != size {
		t.Fatalf("the reader got %d bytes of %d", n, size)
	}
	t.Logf("%d bytes taken in %v with packet_timeout %v", size, time.Since(start), packetTimeout)
}

// TestLimitsFollowReload: new limits (SIGHUP) apply to the connections
// accepted after them; the ones already served keep working.
func TestLimitsFollowReload(t *testing.T) {
	f := newFixture(t, nil)
	a := f.connect(t, false)
	st := *f.srv.opts.Load()
	st.MaxConnections = 1
	f.srv.Reload(st)
	start := time.Now()
	c := dial(t, f.addr)
	c.Write(optneg())
	if took := closedAfter(t, c, start, 5*time.Second); took > time.Second {
		t.Errorf("over the reloaded cap, closed after %v, want at once", took)
	}
	r := a.send("Q36", []string{"alice@example.org"}, []byte(plainMsg))
	if r.final == nil || r.final.Code != actAccept || len(r.mods) == 0 {
		t.Fatalf("the connection from before the reload: %+v", r.final)
	}
	st.MaxConnections = 2
	f.srv.Reload(st)
	f.connect(t, false) // fails the test if refused
}

// TestLimitConnHandsOutWholePackets: the library gets a packet's length
// field only once all of the packet has arrived; a RCPT sees the macros
// of the packet right before it and no earlier one's; a read buffer
// grown for an oversized packet is not kept; a RCPT go-milter could not
// parse ends the connection.
func TestLimitConnHandsOutWholePackets(t *testing.T) {
	client, server := tcpPair(t)
	lc := newLimitConn(server, time.Hour, 5*time.Second)
	macros := rawPacket('D', []byte("R{rcpt_addr}\x00a@example.org\x00"))
	lastWrite := make(chan time.Time, 1)
	go func() {
		client.Write(macros[:3])
		time.Sleep(50 * time.Millisecond)
		client.Write(macros[3:10])
		time.Sleep(50 * time.Millisecond)
		lastWrite <- time.Now()
		client.Write(macros[10:])
		client.Write(rawPacket('R', []byte("<a@example.org>\x00")))
		client.Write(rawPacket('B', make([]byte, 100<<10)))
		client.Write(rawPacket('R', []byte("<b@example.org>\x00")))
		client.Write(rawPacket('R', []byte("<c@example.org>")))
	}()
	read := func() (byte, []byte, error) {
		var hdr [4]byte
		if _, err := io.ReadFull(lc, hdr[:]); err != nil {
			return 0, nil, err
		}
		b := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(lc, b); err != nil {
			t.Fatalf("the rest of a packet whose length was handed out: %v", err)
		}
		return b[0], b[1:], nil
	}
	if code, _, err := read(); err != nil || code != 'D' {
		t.Fatalf("first packet: %c %v", code, err)
	}
	if got, last := time.Now(), <-lastWrite; got.Before(last) {
		t.Errorf("the length field was handed out %v before the packet's last bytes were sent", last.Sub(got))
	}
	if code, _, _ := read(); code != 'R' || lc.rcptMacros["{rcpt_addr}"] != "a@example.org" {
		t.Errorf("RCPT %c with macros %v", code, lc.rcptMacros)
	}
	if code, data, _ := read(); code != 'B' || len(data) != 100<<10 {
		t.Fatalf("body packet %c of %d bytes", code, len(data))
	}
	if code, _, _ := read(); code != 'R' || lc.rcptMacros != nil {
		t.Errorf("a RCPT without macros of its own got %v", lc.rcptMacros)
	}
	if len(lc.buf) > maxRetained {
		t.Errorf("read buffer of %d bytes kept after a 100 KiB packet", len(lc.buf))
	}
	if _, _, err := read(); !errors.Is(err, errMalformed) {
		t.Errorf("a RCPT without its NUL: %v, want errMalformed", err)
	}
}
