package milter

import (
	"bufio"
	"encoding/binary"
	"net"
	"time"

	gomilter "github.com/d--j/go-milter"
)

// The MTA side of the tests: go-milter's client, driven as Postfix drives
// a milter, with the replies in the shape the tests check.

// action is the milter's reply to one MTA command.
type action struct {
	Code     byte   // SMFIR_*: 'a' accept, 'c' continue, 'y' reply code, 't', 'r', 'd', 's'
	SMTPCode int    // for 'y'
	SMTPText string // for 'y': the reply after the code, e.g. "4.5.3 Please …"
}

// modAction is one modification at end of message.
type modAction struct {
	Code        byte // 'b' replace body, 'h' add header, 'm' change header, 'i' insert header, 'q' quarantine
	HeaderName  string
	HeaderValue string
	HeaderIndex uint32
	Body        []byte
	Reason      string
	Rcpt        string // for '+' and '-': the recipient, in <>
}

const (
	actAccept       = 'a'
	actContinue     = 'c'
	actReplyCode    = 'y'
	actReplBody     = 'b'
	actAddHeader    = 'h'
	actChangeHeader = 'm'
	actQuarantine   = 'q'
	actAddRcpt      = '+'
	actDelRcpt      = '-'

	codeRcpt = 'R'
	codeData = 'T'
	codeEOB  = 'E'

	maxBodyChunk = 65535
)

// macroMap is the macros the client sends before its next command.
type macroMap map[string]string

func (m macroMap) Get(name string) string { return m[name] }
func (m macroMap) GetEx(name string) (string, bool) {
	v, ok := m[name]
	return v, ok
}

// mtaClient is one MTA connection to the milter.
type mtaClient struct {
	s      *gomilter.ClientSession
	macros macroMap
	// pending are the macros set with Macros for the next command of
	// that code.
	pending map[byte][]string
	// chunks counts the body chunks sent since the end of the header.
	chunks int
}

// The macros the client sends, per stage, when they are set: Postfix's
// defaults that lacre reads, and the bare forms for the tests of them.
var clientMacros = []gomilter.Option{
	gomilter.WithoutDefaultMacros(),
	gomilter.WithMacroRequest(gomilter.StageMail, []string{"i"}),
	gomilter.WithMacroRequest(gomilter.StageRcpt, []string{"i", "{rcpt_addr}", "rcpt_addr", "{rcpt_mailer}", "rcpt_mailer"}),
	gomilter.WithMacroRequest(gomilter.StageData, []string{"i"}),
	gomilter.WithMacroRequest(gomilter.StageEOM, []string{"i"}),
}

// dialMTA connects as an MTA speaking milter protocol version (6, as
// Postfix does by default, or 2, as Postfix with milter_protocol = 2),
// offering every protocol flag of that version and the actions lacre
// asks for.
func dialMTA(network, addr string, version uint32) (*mtaClient, error) {
	opts := append([]gomilter.Option{
		gomilter.WithDialer(packetDialer{}),
		gomilter.WithActions(actions | rcptActions), gomilter.WithMaximumVersion(version),
		gomilter.WithReadTimeout(10 * time.Second), gomilter.WithWriteTimeout(10 * time.Second),
	}, clientMacros...)
	if version < 6 {
		opts = append(opts, gomilter.WithProtocols(0x7f)) // version 2's flags (SMFI_V2_PROT)
	}
	c := &mtaClient{macros: macroMap{}, pending: map[byte][]string{}}
	s, err := gomilter.NewClient(network, addr, opts...).Session(c.macros)
	if err != nil {
		return nil, err
	}
	c.s = s
	return c, nil
}

// Macros sets the macros sent before the next command of that code
// (codeRcpt, codeData, codeEOB), as name, value pairs.
func (c *mtaClient) Macros(code byte, kv ...string) error {
	c.pending[code] = kv
	return nil
}

// use makes the macros of the next command exactly those set for code.
func (c *mtaClient) use(code byte) {
	clear(c.macros)
	kv := c.pending[code]
	delete(c.pending, code)
	for i := 0; i+1 < len(kv); i += 2 {
		c.macros[kv[i]] = kv[i+1]
	}
}

func conv(a *gomilter.Action, err error) (*action, error) {
	if err != nil {
		return nil, err
	}
	out := &action{}
	switch a.Type {
	case gomilter.ActionAccept:
		out.Code = 'a'
	case gomilter.ActionContinue:
		out.Code = 'c'
	case gomilter.ActionDiscard:
		out.Code = 'd'
	case gomilter.ActionReject:
		out.Code = 'r'
	case gomilter.ActionTempFail:
		out.Code = 't'
	case gomilter.ActionSkip:
		out.Code = 's'
	case gomilter.ActionRejectWithCode:
		out.Code, out.SMTPCode = 'y', int(a.SMTPCode)
		if len(a.SMTPReply) > 4 {
			out.SMTPText = a.SMTPReply[4:]
		}
	}
	return out, nil
}

func (c *mtaClient) Conn(host string, family gomilter.ProtoFamily, port uint16, addr string) (*action, error) {
	c.use(0)
	a, err := conv(c.s.Conn(host, family, port, addr))
	if err != nil || a.Code != actContinue {
		return a, err
	}
	// lacre negotiates no HELO: the client sends nothing, but wants it.
	if _, err := c.s.Helo(host); err != nil {
		return nil, err
	}
	return a, nil
}

func (c *mtaClient) Mail(from string, _ []string) (*action, error) {
	c.use('M')
	return conv(c.s.Mail(from, ""))
}

func (c *mtaClient) Rcpt(rcpt string, _ []string) (*action, error) {
	c.use(codeRcpt)
	return conv(c.s.Rcpt(rcpt, ""))
}

func (c *mtaClient) Data() (*action, error) {
	c.use(codeData)
	return conv(c.s.DataStart())
}

func (c *mtaClient) HeaderField(name, value string) (*action, error) {
	return conv(c.s.HeaderField(name, value, nil))
}

func (c *mtaClient) HeaderEnd() (*action, error) {
	c.chunks = 0
	return conv(c.s.HeaderEnd())
}

func (c *mtaClient) BodyChunk(b []byte) (*action, error) {
	c.chunks++
	return conv(c.s.BodyChunk(b))
}

func (c *mtaClient) End() ([]modAction, *action, error) {
	if c.chunks == 0 {
		// The client only ends a message after a body chunk; an MTA sends
		// none for an empty body, but an empty one means the same.
		if _, err := c.s.BodyChunk(nil); err != nil {
			return nil, nil, err
		}
	}
	c.chunks = 0
	c.use(codeEOB)
	mods, a, err := c.s.End()
	if err != nil {
		return nil, nil, err
	}
	var out []modAction
	for _, m := range mods {
		o := modAction{HeaderName: m.HeaderName, HeaderValue: m.HeaderValue, HeaderIndex: m.HeaderIndex, Body: m.Body, Reason: m.Reason, Rcpt: m.Rcpt}
		switch m.Type {
		case gomilter.ActionReplaceBody:
			o.Code = 'b'
		case gomilter.ActionAddHeader:
			o.Code = 'h'
		case gomilter.ActionChangeHeader:
			o.Code = 'm'
		case gomilter.ActionInsertHeader:
			o.Code = 'i'
		case gomilter.ActionQuarantine:
			o.Code = 'q'
		case gomilter.ActionAddRcpt:
			o.Code = actAddRcpt
		case gomilter.ActionDelRcpt:
			o.Code = actDelRcpt
		default:
			o.Code = '?'
		}
		out = append(out, o)
	}
	act, err := conv(a, nil)
	return out, act, err
}

func (c *mtaClient) Abort() error { return c.s.Abort(nil) }

func (c *mtaClient) Close() error { return c.s.Close() }

// ProtocolOpts are the protocol flags negotiated.
func (c *mtaClient) ProtocolOpts() gomilter.OptProtocol {
	var p gomilter.OptProtocol
	for i := 0; i < 21; i++ {
		if f := gomilter.OptProtocol(1) << i; c.s.ProtocolOption(f) {
			p |= f
		}
	}
	return p
}

// packetDialer makes the client's connection write each packet in one
// write and read through a buffer, as Postfix's milter client does
// (go-milter's client writes a packet's length and code, then its data,
// and reads a packet in two reads).
type packetDialer struct{}

func (packetDialer) Dial(network, addr string) (net.Conn, error) {
	c, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	return &packetConn{Conn: c, r: bufio.NewReaderSize(c, 16<<10)}, nil
}

type packetConn struct {
	net.Conn
	r    *bufio.Reader
	out  []byte
	need int // bytes of the packet being written still to come
}

func (c *packetConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *packetConn) Write(p []byte) (int, error) {
	if c.need == 0 && len(p) >= 4 {
		c.need = 4 + int(binary.BigEndian.Uint32(p))
	}
	c.out = append(c.out, p...)
	c.need -= len(p)
	if c.need > 0 {
		return len(p), nil
	}
	c.need = 0
	_, err := c.Conn.Write(c.out)
	c.out = c.out[:0]
	if err != nil {
		return 0, err
	}
	return len(p), nil
}
