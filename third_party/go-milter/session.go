package milter

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/textproto"
	"runtime/debug"
	"strings"
	"time"
)

var errCloseSession = errors.New("Stop current milter processing")

// maxPacketSize limits the command byte and payload before allocation.
const maxPacketSize = 1 << 20

// milterSession keeps session state during MTA communication
type milterSession struct {
	server   *Server
	actions  OptAction
	protocol OptProtocol
	conn     net.Conn
	headers  textproto.MIMEHeader
	macros   map[string]string
	backend  Milter
	// version is the negotiated protocol version (0 before SMFIC_OPTNEG).
	version uint32
}

// ReadPacket reads incoming milter packet
func (c *milterSession) ReadPacket() (*Message, error) {
	return readPacket(c.conn, 0)
}

func readPacket(conn net.Conn, timeout time.Duration) (*Message, error) {
	if timeout != 0 {
		conn.SetReadDeadline(time.Now().Add(timeout))
		defer conn.SetReadDeadline(time.Time{})
	}

	// read packet length
	var length uint32
	if err := binary.Read(conn, binary.BigEndian, &length); err != nil {
		return nil, err
	}
	if length == 0 {
		return nil, errors.New("milter: invalid zero-length packet")
	}
	if length > maxPacketSize {
		return nil, fmt.Errorf("milter: packet length %d exceeds %d bytes", length, maxPacketSize)
	}

	// read packet data
	data, err := readPayload(conn, int(length))
	if err != nil {
		return nil, err
	}

	// prepare response data
	message := Message{
		Code: data[0],
		Data: data[1:],
	}

	return &message, nil
}

// firstChunk is the most readPayload allocates before any of a packet's
// data has arrived.
const firstChunk = 64 << 10

// readPayload reads n bytes of packet data. The buffer grows with what has
// arrived (it at most doubles, up to n), not with what the length field
// announced: a peer that announces maxPacketSize and sends a few bytes costs
// firstChunk, not maxPacketSize, for as long as it holds the connection.
func readPayload(r io.Reader, n int) ([]byte, error) {
	size := n
	if size > firstChunk {
		size = firstChunk
	}
	data := make([]byte, 0, size)
	for len(data) < n {
		if len(data) == cap(data) {
			size = 2 * cap(data)
			if size > n {
				size = n
			}
			grown := make([]byte, len(data), size)
			copy(grown, data)
			data = grown
		}
		m, err := r.Read(data[len(data):cap(data)])
		data = data[:len(data)+m]
		if err != nil && len(data) < n {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return data, nil
}

// WritePacket sends a milter response packet to socket stream
func (m *milterSession) WritePacket(msg *Message) error {
	return writePacket(m.conn, msg, 0)
}

func writePacket(conn net.Conn, msg *Message, timeout time.Duration) error {
	if timeout != 0 {
		conn.SetWriteDeadline(time.Now().Add(timeout))
		defer conn.SetWriteDeadline(time.Time{})
	}

	// One write per packet, with the length and the code in front of the
	// data: a reply is one segment, and nothing is allocated beyond the
	// packet itself (a bufio.Writer here allocated 4 KiB per packet).
	// Large packets (body replacements) go out in two writes rather than
	// being copied.
	var head [5]byte
	binary.BigEndian.PutUint32(head[:4], uint32(len(msg.Data)+1))
	head[4] = msg.Code
	if len(msg.Data) > smallPacket {
		if _, err := conn.Write(head[:]); err != nil {
			return err
		}
		_, err := conn.Write(msg.Data)
		return err
	}
	packet := make([]byte, 0, len(head)+len(msg.Data))
	packet = append(append(packet, head[:]...), msg.Data...)
	_, err := conn.Write(packet)
	return err
}

// smallPacket is the largest payload that writePacket copies to send the
// whole packet in one write.
const smallPacket = 4096

// Process processes incoming milter commands
func (m *milterSession) Process(msg *Message) (Response, error) {
	switch Code(msg.Code) {
	case CodeAbort:
		// abort current message and start over
		defer func() {
			m.headers = nil
			m.macros = nil
		}()
		return nil, m.backend.Abort(newModifier(m))

	case CodeBody:
		// body chunk
		return m.backend.BodyChunk(msg.Data, newModifier(m))

	case CodeConn:
		// new connection, get hostname
		hostname := readCString(msg.Data)
		if len(msg.Data) < len(hostname)+2 {
			return nil, errors.New("milter: malformed connect command")
		}
		msg.Data = msg.Data[len(hostname)+1:]
		// get protocol family
		protocolFamily := msg.Data[0]
		msg.Data = msg.Data[1:]
		// get port
		var port uint16
		if protocolFamily == '4' || protocolFamily == '6' {
			if len(msg.Data) < 2 {
				return RespTempFail, nil
			}
			port = binary.BigEndian.Uint16(msg.Data)
			msg.Data = msg.Data[2:]
		}
		// get address
		address := readCString(msg.Data)
		// convert address and port to human readable string
		family := map[byte]string{
			'U': "unknown",
			'L': "unix",
			'4': "tcp4",
			'6': "tcp6",
		}
		// run handler and return
		return m.backend.Connect(
			hostname,
			family[protocolFamily],
			port,
			net.ParseIP(address),
			newModifier(m))

	case CodeMacro:
		if len(msg.Data) == 0 {
			return nil, errors.New("milter: malformed macro command")
		}
		// define macros
		m.macros = make(map[string]string)
		// convert data to Go strings
		data := decodeCStrings(msg.Data[1:])
		if len(data) != 0 {
			if len(data)%2 == 1 {
				data = append(data, "")
			}

			// store data in a map
			for i := 0; i < len(data); i += 2 {
				m.macros[data[i]] = data[i+1]
			}
		}
		// do not send response
		return nil, nil

	case CodeEOB:
		// call and return milter handler
		return m.backend.Body(newModifier(m))

	case CodeHelo:
		// helo command
		name := strings.TrimSuffix(string(msg.Data), null)
		return m.backend.Helo(name, newModifier(m))

	case CodeHeader:
		// make sure headers is initialized
		if m.headers == nil {
			m.headers = make(textproto.MIMEHeader)
		}
		// add new header to headers map
		headerData := decodeCStrings(msg.Data)
		// headers with an empty body appear as `text\x00\x00`, decodeCStrings will drop the empty body
		if len(headerData) == 1 {
			headerData = append(headerData, "")
		}
		if len(headerData) == 2 {
			m.headers.Add(headerData[0], headerData[1])
			// call and return milter handler
			return m.backend.Header(headerData[0], headerData[1], newModifier(m))
		}

	case CodeMail:
		// envelope from address
		from := readCString(msg.Data)
		return m.backend.MailFrom(strings.Trim(from, "<>"), newModifier(m))

	case CodeEOH:
		// end of headers
		return m.backend.Headers(m.headers, newModifier(m))

	case CodeOptNeg:
		// The MTA offers its version, the actions it allows and the
		// protocol flags it understands.
		if len(msg.Data) < 12 {
			return nil, fmt.Errorf("milter: malformed option negotiation (%d bytes)", len(msg.Data))
		}
		mtaVersion := binary.BigEndian.Uint32(msg.Data[0:4])
		// The actions (bytes 4-8) are answered as Server.Actions, as
		// before: an MTA that does not allow one ends the connection
		// itself (Postfix and Sendmail do, and log why).
		mtaProtocol := OptProtocol(binary.BigEndian.Uint32(msg.Data[8:12]))
		version := defaultProtocolVersion
		if m.server != nil && m.server.ProtocolVersion != 0 {
			version = m.server.ProtocolVersion
		}
		if version > maxProtocolVersion {
			version = maxProtocolVersion
		}
		if version < minProtocolVersion {
			version = minProtocolVersion
		}
		if mtaVersion < minProtocolVersion {
			return nil, fmt.Errorf("milter: MTA speaks protocol version %d, need %d or later", mtaVersion, minProtocolVersion)
		}
		if mtaVersion < version {
			version = mtaVersion
		}
		m.version = version
		// Ask only for what the MTA can do; a flag it does not know
		// would make it end the connection.
		m.protocol &= mtaProtocol
		var buffer bytes.Buffer
		// prepare response data
		for _, value := range []uint32{version, uint32(m.actions), uint32(m.protocol)} {
			if err := binary.Write(&buffer, binary.BigEndian, value); err != nil {
				return nil, err
			}
		}
		// append requested symlist (version 6)
		if version >= 6 && m.actions&OptSetSymList != 0 && m.server != nil {
			for stage, macros := range m.server.SymList {
				binary.Write(&buffer, binary.BigEndian, stage)
				for i, macro := range macros {
					if i != 0 {
						buffer.WriteByte(' ')
					}
					buffer.WriteString(macro)
				}
				buffer.WriteByte(0)
			}
		}
		// build and send packet
		return NewResponse('O', buffer.Bytes()), nil

	case CodeQuit:
		// client requested session close
		return nil, errCloseSession

	case CodeRcpt:
		// envelope to address
		to := readCString(msg.Data)
		return m.backend.RcptTo(strings.Trim(to, "<>"), newModifier(m))

	case CodeData:
		// DATA (protocol version 4 and later): every recipient is known.
		if dm, ok := m.backend.(DataMilter); ok {
			return dm.Data(newModifier(m))
		}

	case CodeUnknown:
		// An SMTP command the MTA did not recognise (protocol version 3
		// and later); nothing in the Milter interface for it.

	case CodeQuitNewConn:
		// The MTA closes this SMTP connection but keeps the milter
		// connection for its next one, which starts with SMFIC_CONNECT
		// (protocol version 6): end a message in progress as SMFIC_ABORT
		// does, then start over as with a new connection. No reply.
		err := m.backend.Abort(newModifier(m))
		if m.server == nil || m.server.NewMilter == nil {
			return nil, errCloseSession
		}
		m.backend = m.server.NewMilter()
		m.headers = nil
		m.macros = nil
		return nil, err

	default:
		// print error and close session
		m.logf(slog.LevelWarn, "Unrecognized command code: %c", msg.Code)
		return nil, errCloseSession
	}

	// by default continue with next milter message
	return RespContinue, nil
}

// HandleMilterComands processes all milter commands in the same connection
func (m *milterSession) HandleMilterCommands() {
	defer func() {
		if v := recover(); v != nil {
			m.logf(slog.LevelError, "panic handling command: %v\n%s", v, debug.Stack())
		}

		m.conn.Close()
	}()

	for {
		msg, err := m.ReadPacket()
		if err != nil {
			if err != io.EOF {
				m.logf(connErrorLevel(err), "Error reading milter command: %v", err)
			}
			return
		}

		resp, err := m.Process(msg)
		if err != nil {
			if err != errCloseSession {
				// log error condition
				m.logf(slog.LevelWarn, "Error performing milter command: %v", err)
			}
			return
		}

		// ignore empty responses
		if resp != nil {
			// send back response message
			if err = m.WritePacket(resp.Response()); err != nil {
				m.logf(connErrorLevel(err), "Error writing packet: %v", err)
				return
			}

			if !resp.Continue() {
				// prepare backend for next message
				m.backend = m.server.NewMilter()
			}
		}
	}
}

// logf reports to the server's Logger, or to the standard log package if
// it has none.
func (m *milterSession) logf(level slog.Level, format string, v ...interface{}) {
	if m.server == nil || m.server.Logger == nil {
		log.Printf(format, v...)
		return
	}
	m.server.Logger.Log(context.Background(), level, fmt.Sprintf(format, v...))
}

// connErrorLevel is Debug for a connection that was closed or timed out
// (the program serving it knows why, and a peer can cause any number of
// them), Warn otherwise.
func connErrorLevel(err error) slog.Level {
	var ne net.Error
	if errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) || (errors.As(err, &ne) && ne.Timeout()) {
		return slog.LevelDebug
	}
	return slog.LevelWarn
}
