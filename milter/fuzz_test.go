package milter

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
	gomilter "github.com/d--j/go-milter"

	"lacre.io/milter/crypto"
	"lacre.io/milter/internal/pgptest"
)

// FuzzSession drives a live server over a raw loopback connection with a
// sequence of milter packets decoded from the fuzz input (see
// fuzzDecodePackets), after a valid option negotiation. The server must
// not panic, must answer every command that calls for an answer within
// two seconds, and must still serve new connections afterwards. Its
// decisions are checked against a model of the transaction: a message
// with an accepted keyed recipient is accepted without a new body only
// when the crypto package calls it already encrypted or it is held, and
// every replacement body is exactly a PGP/MIME body whose only content is
// an armoured ciphertext that decrypts, with a fixture key, to the body
// that was sent.
//
// Run it alone:
//
//	go test ./milter -run '^$' -fuzz '^FuzzSession$' -fuzztime 60s -fuzzminimizetime 5s
//
// The server's goroutines make coverage vary from run to run, so with the
// default minimisation budget (60 s) the fuzzer can spend most of a short
// run minimising one input.
func FuzzSession(f *testing.F) {
	for _, seed := range fuzzSessionSeeds() {
		f.Add(seed)
	}
	// One server for the whole fuzzing process; one connection per input.
	fx := newFixture(f, nil)
	var iterations atomic.Int64
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzRunSession(t, fx, fuzzDecodePackets(data))
		// go-milter reports a panic it recovered to the server's log.
		if lib, session := fuzzTakeLogs(fx, "panic handling command", "panic in milter session"); lib || session {
			t.Fatalf("a panic: in go-milter %v, in a session callback %v (see the log)", lib, session)
		}
		// The server is alive: a new connection negotiates...
		c, err := net.DialTimeout("tcp", fx.addr, 2*time.Second)
		if err != nil {
			t.Fatalf("server no longer accepts connections: %v", err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(c)
		if err := fuzzNegotiate(c, r); err != nil {
			c.Close()
			t.Fatalf("server no longer negotiates: %v", err)
		}
		fuzzWritePacket(c, 'Q', nil)
		c.Close()
		// ...and, now and then, encrypts a message end to end.
		if iterations.Add(1)%64 == 1 {
			m := fx.connect(t, false)
			res := m.send("QFUZZ", []string{"alice@example.org"}, []byte(plainMsg))
			if res.endedAt != "eom" || res.final.Code != actAccept {
				t.Fatalf("round trip after the fuzz input ended at %s with %+v", res.endedAt, res.final)
			}
			_, want := crypto.Split([]byte(plainMsg))
			_, inner := pgptest.OpenAndDecrypt(t, res.delivered, fx.secrets["alice@example.org"])
			if got := innerBody(t, inner); !bytes.Equal(got, want) {
				t.Fatalf("round trip after the fuzz input: inner body %q", got)
			}
		}
	})
}

// fuzzPacket is one command to the milter.
type fuzzPacket struct {
	code byte
	data []byte
}

// fuzzCodes are the commands go-milter's server knows (SMFIC_*), version 6's
// DATA, unknown command and QUIT_NC included.
var fuzzCodes = []byte{'A', 'B', 'C', 'D', 'E', 'H', 'L', 'M', 'N', 'O', 'Q', 'R', 'T', 'U', 'K'}

// fuzzCanned are well-formed payloads, so that the fuzzer reaches
// keyed recipients and whole messages without having to guess them.
var fuzzCanned = map[byte][]string{
	'C': {
		"client.example\x004\xa1\x12192.0.2.1\x00", // SMTP client
		"localhost\x004\x00\x00127.0.0.1\x00",      // non_smtpd_milters (sendmail, pickup)
		"client.example\x006\x01\xbb::1\x00",
		"client.example\x00L/run/sock\x00",
		"client.example\x00U",
	},
	'D': {
		"Ri\x00QFUZZ\x00{rcpt_addr}\x00alice@example.org\x00",
		"Ei\x00QFUZZ\x00",
		"M{mail_addr}\x00sender@example.net\x00",
		"R{rcpt_addr}\x00nobody@example.org\x00", // the MTA's parse differs from the argument
		"Ri\x00QFUZZ\x00",                        // no {rcpt_addr}: the recipient waits
		"R{rcpt_addr}\x00\"a\\\\lice\"@example.org\x00",
	},
	'H': {"client.example\x00"},
	'M': {"<sender@example.net>\x00", "<>\x00"},
	'R': {
		"<alice@example.org>\x00",
		"<bob@example.org>\x00",
		"<carol@example.org>\x00", // protect-headers
		"<nobody@example.org>\x00",
		"<old@example.org>\x00", // only an expired key
		"<Alice+tag@EXAMPLE.org>\x00",
	},
	'L': {
		"From\x00Sender <sender@example.net>\x00",
		"Subject\x00the secret subject\x00",
		"MIME-Version\x001.0\x00",
		"Content-Type\x00text/plain; charset=utf-8\x00",
		"Content-Type\x00multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b\x00",
		"Content-Type\x00application/pkcs7-mime; smime-type=signed-data\x00",
		"Content-Transfer-Encoding\x00quoted-printable\x00",
		"X-Empty\x00\x00",
	},
	'B': {
		"The secret body text, line one.\r\nLine two.\r\n",
		"-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA\r\n-----END PGP MESSAGE-----\r\n",
		"more secret text without a line end",
		"\r\n.\r\n",
		// The framing of a PGP/MIME message (boundary b) and of an inline
		// one: a session-key packet and an encrypted-data packet of
		// filler, which crypto.AlreadyEncrypted accepts (it reads the
		// structure, it decrypts nothing).
		"--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\n" +
			fuzzFakeArmour + "--b--\r\n",
		fuzzFakeArmour,
	},
	'O': {fuzzOptNeg()},
}

const fuzzFakeArmour = "-----BEGIN PGP MESSAGE-----\r\n\r\nwSkDQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQtIpARcX\r\n" +
	"FxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxc=\r\n=4/vX\r\n-----END PGP MESSAGE-----\r\n"

// fuzzDecodePackets turns fuzz input into at most 64 packets. Each packet
// is a selector byte and a length byte: the command is
// fuzzCodes[selector%15]; with the selector's high bit set and a canned
// payload for the command, the length byte picks a canned payload,
// otherwise up to that many following input bytes are the payload.
func fuzzDecodePackets(in []byte) []fuzzPacket {
	var out []fuzzPacket
	for len(in) >= 2 && len(out) < 64 {
		sel, n := in[0], int(in[1])
		in = in[2:]
		code := fuzzCodes[int(sel)%len(fuzzCodes)]
		if canned := fuzzCanned[code]; sel >= 0x80 && len(canned) > 0 {
			out = append(out, fuzzPacket{code, []byte(canned[n%len(canned)])})
			continue
		}
		n = min(n, len(in))
		out = append(out, fuzzPacket{code, in[:n]})
		in = in[n:]
	}
	return out
}

// fuzzEncode is the inverse of fuzzDecodePackets, for seeds: a packet
// whose payload is one of the canned ones is encoded as that choice.
func fuzzEncode(pkts ...fuzzPacket) []byte {
	var b []byte
	for _, p := range pkts {
		idx := bytes.IndexByte(fuzzCodes, p.code)
		canned := -1
		for i, c := range fuzzCanned[p.code] {
			if c == string(p.data) {
				canned = i
			}
		}
		if canned >= 0 {
			// The smallest selector ≥ 0x80 that picks this command.
			n := len(fuzzCodes)
			b = append(b, byte((0x80+n-1)/n*n+idx), byte(canned))
			continue
		}
		b = append(b, byte(idx), byte(len(p.data)))
		b = append(b, p.data...)
	}
	return b
}

func fuzzOptNeg() string {
	var b [12]byte
	binary.BigEndian.PutUint32(b[0:], 6)
	binary.BigEndian.PutUint32(b[4:], uint32(actions))
	binary.BigEndian.PutUint32(b[8:], 0x1fffff) // every flag, as Postfix 3.7 offers
	return string(b[:])
}

// fuzzSessionSeeds are whole transactions like Postfix sends them, and
// some that no MTA sends.
func fuzzSessionSeeds() [][]byte {
	p := func(code byte, data string) fuzzPacket { return fuzzPacket{code, []byte(data)} }
	conn := p('C', fuzzCanned['C'][0])
	local := p('C', fuzzCanned['C'][1])
	mail := p('M', fuzzCanned['M'][0])
	rcpt := func(i int) fuzzPacket { return p('R', fuzzCanned['R'][i]) }
	hdr := func(i int) fuzzPacket { return p('L', fuzzCanned['L'][i]) }
	body := func(i int) fuzzPacket { return p('B', fuzzCanned['B'][i]) }
	data, eoh, eom, abort := p('T', ""), p('N', ""), p('E', ""), p('A', "")
	macro := p('D', fuzzCanned['D'][0])
	plain := []fuzzPacket{data, hdr(0), hdr(1), hdr(2), hdr(3), eoh, body(0), body(2), p('D', fuzzCanned['D'][1]), eom}
	noData := plain[1:] // an MTA speaking protocol 2
	seq := func(parts ...[]fuzzPacket) []byte {
		var all []fuzzPacket
		for _, x := range parts {
			all = append(all, x...)
		}
		return fuzzEncode(all...)
	}
	one := func(ps ...fuzzPacket) []fuzzPacket { return ps }
	return [][]byte{
		nil,
		seq(one(conn, p('H', fuzzCanned['H'][0]), mail, macro, rcpt(0)), plain),                            // keyed: encrypted
		seq(one(conn, mail, rcpt(0), rcpt(1), rcpt(3), rcpt(2)), plain),                                    // mixed: split
		seq(one(conn, mail, rcpt(2)), plain, one(mail, rcpt(5)), plain),                                    // protected headers, then subaddress
		seq(one(conn, mail, rcpt(3)), plain),                                                               // clear: accepted at DATA
		seq(one(conn, mail, rcpt(3)), noData),                                                              // clear, protocol 2: at the first header
		seq(one(conn, mail, rcpt(0)), noData),                                                              // keyed, protocol 2
		seq(one(conn, mail, rcpt(0), hdr(0), p('K', ""), conn, mail, rcpt(3)), plain),                      // QUIT_NC mid-message, then clear
		seq(one(conn, p('U', "XYZZY\x00"), mail, rcpt(0), p('U', "NOOP\x00"), data, p('U', "")), noData),   // unknown commands
		seq(one(conn, mail, rcpt(0), hdr(4), eoh, body(0), eom)),                                           // multipart/encrypted over clear text: encrypted
		seq(one(conn, mail, rcpt(0), hdr(4), eoh, body(4), eom)),                                           // PGP/MIME: already encrypted
		seq(one(conn, mail, rcpt(0), hdr(3), eoh, body(1), eom)),                                           // armour of no packets: encrypted
		seq(one(conn, mail, rcpt(0), hdr(3), eoh, body(5), eom)),                                           // inline PGP: already encrypted
		seq(one(conn, mail, rcpt(0), hdr(3), eoh, body(5), body(0), eom)),                                  // inline PGP and clear text after it
		seq(one(conn, mail, rcpt(0), hdr(5), eoh, body(0), eom)),                                           // signed-only S/MIME
		seq(one(local, mail, rcpt(0), rcpt(3)), plain),                                                     // non-SMTP, mixed: held
		seq(one(conn, mail, rcpt(4), rcpt(0)), plain),                                                      // expired key
		seq(one(conn, mail, rcpt(0), abort, mail, rcpt(3)), plain),                                         // RSET
		seq(one(conn, mail, rcpt(0), hdr(0), eoh, body(0), abort, eom)),                                    // abort before end
		seq(one(conn, rcpt(0)), plain),                                                                     // no MAIL
		seq(one(mail, rcpt(0), eom, eom, rcpt(1)), plain),                                                  // end twice, no connect
		seq(one(conn, mail, rcpt(0), p('L', ""), p('L', "\x00\x00"), p('L', "a\x00b\x00c\x00"), eoh, eom)), // malformed headers
		seq(one(conn, mail, rcpt(0), p('R', "alice@example.org"), p('O', "x"), p('T', ""), p('D', "")), plain),
		seq(one(conn, mail, rcpt(0), hdr(6), p('L', "Content-Type\x00mult\u0130part/encrypted\x00"), eoh, eom)),
		seq(one(p('C', "x"), mail)),
		seq(one(conn, mail, rcpt(0), p('Q', ""), eom)),
		{0x05, 0xff, 0x81, 0x00, 0xff},
	}
}

// fuzzTx is the model of the message in progress, as the session must
// see it: reset by MAIL, abort, and every reply that ends the message
// (go-milter then starts a new backend).
type fuzzTx struct {
	keyed bool // a recipient with usable keys was accepted
	// macros are those of the last SMFIC_MACRO, as go-milter keeps them.
	macros map[string]string
	fields []crypto.Field
	body   []byte
}

func fuzzRunSession(t *testing.T, fx *fixture, pkts []fuzzPacket) {
	c, err := net.DialTimeout("tcp", fx.addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	deadline := time.Now().Add(5 * time.Second) // the whole input
	c.SetDeadline(deadline)
	r := bufio.NewReader(c)
	if err := fuzzNegotiate(c, r); err != nil {
		t.Fatalf("option negotiation: %v", err)
	}
	var tx fuzzTx
	// rcptMacros are those of an SMFIC_MACRO for stage 'R' right before:
	// the milter classifies a RCPT by those alone (limitConn.rcptMacros).
	var rcptMacros map[string]string
	// go-milter calls Abort itself when a command (or the macros for one)
	// belongs to an earlier stage than the last one (lastOrder), unless an
	// abort was the last command.
	lastOrder, lastCode := 0, byte('O')
	for i, p := range pkts {
		// Postfix sends {rcpt_addr} (its own parse of the recipient)
		// before every RCPT; so does this harness, unless the input just
		// sent macros of its own.
		if p.code == 'R' && (i == 0 || pkts[i-1].code != 'D') {
			auto := "R{rcpt_addr}\x00" + strings.Trim(fuzzCString(p.data), "<>") + "\x00"
			if err := fuzzWritePacket(c, 'D', []byte(auto)); err != nil {
				return
			}
			if lastOrder > fuzzOrder['R'] && lastCode != 'A' {
				tx = fuzzTx{} // go-milter's abort, as below
			}
			lastOrder, lastCode = fuzzOrder['R'], 'R'
			rcptMacros = fuzzMacros([]byte(auto))
		}
		if err := fuzzWritePacket(c, p.code, p.data); err != nil {
			return // the server closed the connection (after a malformed command)
		}
		order := p.code
		if p.code == 'D' && len(p.data) > 0 {
			order = p.data[0]
		}
		if o, ok := fuzzOrder[order]; ok {
			if lastOrder > o && lastCode != 'A' {
				tx = fuzzTx{}
			}
			lastOrder = o
		}
		lastCode = order // for a macro packet, its stage, as go-milter keeps it
		if p.code == 'D' {
			rcptMacros = nil
			if len(p.data) > 0 && p.data[0] == 'R' {
				rcptMacros = fuzzMacros(p.data)
			}
			continue // no reply; an empty one closes the connection
		}
		tx.macros, rcptMacros = rcptMacros, nil
		switch p.code {
		case 'M':
			tx = fuzzTx{}
		case 'A':
			tx = fuzzTx{}
			continue // no reply
		case 'K':
			tx = fuzzTx{}
			continue // no reply: a new SMTP connection follows
		case 'Q':
			return
		case 'L':
			// No reply (SMFIP_NR_HDR). go-milter's decoding of
			// SMFIC_HEADER: a name and a value, or the connection ends.
			d := p.data
			if len(d) > 0 && d[len(d)-1] == 0 {
				d = d[:len(d)-1]
			}
			parts := strings.Split(string(d), "\x00")
			if len(p.data) < 2 || len(parts) != 2 {
				return
			}
			tx.fields = append(tx.fields, crypto.Field{Name: parts[0], Value: parts[1]})
			continue
		case 'B':
			tx.body = append(tx.body, p.data...)
			continue // no reply (SMFIP_NR_BODY)
		case 'C', 'H', 'U', 'N':
			continue // no reply (SMFIP_NR_*; the harness offers every flag)
		}
		// Read the modifications and the reply.
		var mods []fuzzPacket
		var reply fuzzPacket
		for {
			rd := time.Now().Add(2 * time.Second)
			if rd.After(deadline) {
				rd = deadline
			}
			c.SetReadDeadline(rd)
			code, data, err := fuzzReadPacket(r)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatalf("packet %d (%c %q): no reply within 2 s (%v)", i, p.code, p.data, err)
				}
				return // closed: a malformed command, or a command before its time
			}
			if code == 'p' { // SMFIR_PROGRESS
				continue
			}
			if strings.IndexByte("bhimq+-e", code) >= 0 { // SMFIR_REPLBODY, ADDHEADER, INSHEADER, CHGHEADER, QUARANTINE, ADDRCPT, DELRCPT, CHGFROM
				mods = append(mods, fuzzPacket{code, data})
				continue
			}
			reply = fuzzPacket{code, data}
			break
		}
		fuzzCheckReply(t, fx, i, p, &tx, mods, reply)
		if strings.IndexByte("ardt", reply.code) >= 0 {
			tx = fuzzTx{} // the message is over; go-milter starts a new backend
		}
	}
}

// fuzzOrder is the order of the commands (and of the macros for them)
// that go-milter checks to synthesise an abort.
var fuzzOrder = map[byte]int{'C': 1, 'H': 2, 'M': 3, 'R': 4, 'T': 5, 'L': 6, 'N': 7, 'B': 8, 'E': 9}

// fuzzMacros decodes an SMFIC_MACRO payload: the stage, then names and
// values, each ended by a NUL (the last one's may be missing).
func fuzzMacros(data []byte) map[string]string {
	m := map[string]string{}
	if len(data) < 2 {
		return m
	}
	parts := strings.Split(string(data[1:]), "\x00")
	if parts[len(parts)-1] == "" {
		parts = parts[:len(parts)-1]
	}
	if len(parts)%2 == 1 {
		parts = append(parts, "")
	}
	for i := 0; i < len(parts); i += 2 {
		m[parts[i]] = parts[i+1]
	}
	return m
}

// fuzzCheckReply checks one reply against the model and updates it.
func fuzzCheckReply(t *testing.T, fx *fixture, i int, p fuzzPacket, tx *fuzzTx, mods []fuzzPacket, reply fuzzPacket) {
	t.Helper()
	where := fmt.Sprintf("packet %d (%c %q)", i, p.code, fuzzShortBytes(p.data))
	switch reply.code {
	case 'c', 'a':
	case 'y':
		if len(reply.data) < 5 || (reply.data[0] != '4' && reply.data[0] != '5') {
			t.Fatalf("%s: malformed reply code %q", where, reply.data)
		}
	case 'O':
		if p.code != 'O' {
			t.Fatalf("%s: option negotiation reply to another command", where)
		}
	case 't':
		// go-milter's own answer to an SMFIC_CONNECT for inet/inet6
		// without a port; the session never answers SMFIR_TEMPFAIL.
		if p.code != 'C' {
			t.Fatalf("%s: SMFIR_TEMPFAIL", where)
		}
	default:
		t.Fatalf("%s: unexpected reply %q %q", where, reply.code, reply.data)
	}
	if len(mods) > 0 && (p.code != 'E' || reply.code != 'a') {
		t.Fatalf("%s: %d modification(s) with reply %c", where, len(mods), reply.code)
	}
	if reply.code == 'a' && strings.IndexByte("TLNE", p.code) < 0 {
		t.Fatalf("%s: message accepted at this stage", where)
	}
	switch p.code {
	case 'R':
		// The recipient is what the MTA delivers to: {rcpt_addr}, which
		// the milter consumes. A recipient it cannot classify waits (SMTP)
		// or, from sendmail(1), which cannot be refused a recipient, makes
		// the message one that must not go out in clear: the model counts
		// it as keyed, so only encryption or the hold queue pass.
		addr, ok := tx.macros["{rcpt_addr}"]
		if !ok {
			addr, ok = tx.macros["rcpt_addr"]
		}
		mailer, mok := tx.macros["{rcpt_mailer}"]
		if !mok {
			mailer = tx.macros["rcpt_mailer"]
		}
		if !ok && reply.code == 'c' && mailer != "error" {
			tx.keyed = true
		}
		if reply.code == 'c' && ok {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			l, err := fx.srv.opts.Load().Keys.Resolve(ctx, addr)
			cancel()
			if err == nil && l.Encrypt() {
				tx.keyed = true
			}
		}
	case 'T':
		if reply.code == 'a' && tx.keyed {
			t.Fatalf("%s: message with a keyed recipient accepted at DATA", where)
		}
	case 'L':
		if reply.code == 'a' && tx.keyed {
			t.Fatalf("%s: message with a keyed recipient accepted at a header field", where)
		}
		if reply.code == 'c' {
			// go-milter's decoding of SMFIC_HEADER (decodeCStrings).
			if len(p.data) > 0 {
				parts := strings.Split(strings.Trim(string(p.data), "\x00"), "\x00")
				switch len(parts) {
				case 1:
					tx.fields = append(tx.fields, crypto.Field{Name: parts[0]})
				case 2:
					tx.fields = append(tx.fields, crypto.Field{Name: parts[0], Value: parts[1]})
				}
			}
		}
	case 'N':
		// The header never shows that a message is already encrypted;
		// only its body can.
		if reply.code == 'a' && tx.keyed {
			t.Fatalf("%s: message with a keyed recipient accepted at end of header; fields %q", where, tx.fields)
		}
	case 'B':
		if reply.code == 'c' {
			tx.body = append(tx.body, p.data...)
		}
	case 'E':
		var newBody []byte
		var changes []crypto.Change
		replaced, held := false, false
		for _, m := range mods {
			switch m.code {
			case 'b':
				replaced = true
				newBody = append(newBody, m.data...)
			case 'q':
				held = true
			case 'm', 'h':
				d, index := m.data, 0
				if m.code == 'm' && len(d) >= 4 {
					index, d = int(binary.BigEndian.Uint32(d)), d[4:]
				}
				name, value, _ := strings.Cut(string(d), "\x00")
				value = strings.TrimSuffix(value, "\x00")
				switch {
				case m.code == 'h':
					changes = append(changes, crypto.Change{Op: crypto.Add, Name: name, Value: value})
				case value == "":
					changes = append(changes, crypto.Change{Op: crypto.Delete, Name: name, Index: index})
				default:
					changes = append(changes, crypto.Change{Op: crypto.Set, Name: name, Index: index, Value: value})
				}
			}
		}
		// The header as the MTA delivers it.
		var contentType string
		for _, f := range crypto.Apply(tx.fields, changes) {
			if strings.EqualFold(f.Name, "Content-Type") {
				contentType = f.Value
				break
			}
		}
		switch {
		case replaced:
			fuzzCheckReplacement(t, fx, where, contentType, newBody, tx.body, fuzzWellFormed(tx.fields))
		case reply.code == 'a' && tx.keyed && !held && !crypto.AlreadyEncrypted(tx.fields, tx.body):
			t.Fatalf("%s: message with a keyed recipient accepted unencrypted; fields %q, body %q", where, tx.fields, fuzzShortBytes(tx.body))
		}
	}
}

// fuzzCheckReplacement checks a replacement body (LF line ends, as
// go-milter sends it): the PGP/MIME frame crypto.Encrypt writes, around
// one armour block of base64 lines only, which decrypts with one of the
// fixture's keys to an entity that ends with exactly body, and, when the
// MTA passed header fields as a real MTA does (wellFormed), splits into a
// header section and body.
func fuzzCheckReplacement(t *testing.T, fx *fixture, where, contentType string, got, body []byte, wellFormed bool) {
	t.Helper()
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "multipart/encrypted" || params["boundary"] == "" {
		t.Fatalf("%s: body replaced, but the Content-Type is %q (%v)", where, contentType, err)
	}
	b := params["boundary"]
	head := "This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\n--" + b +
		"\nContent-Type: application/pgp-encrypted\nContent-Description: PGP/MIME version identification\n\nVersion: 1\n\n--" + b +
		"\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\nContent-Description: OpenPGP encrypted message\n" +
		"Content-Disposition: inline; filename=\"encrypted.asc\"\n\n"
	tail := "\n--" + b + "--\n"
	if !bytes.HasPrefix(got, []byte(head)) || !bytes.HasSuffix(got, []byte(tail)) || len(got) < len(head)+len(tail) {
		t.Fatalf("%s: the replacement body is not the PGP/MIME frame:\n%s", where, fuzzShortBytes(got))
	}
	arm := got[len(head) : len(got)-len(tail)]
	lines := strings.Split(strings.TrimSuffix(string(arm), "\n"), "\n")
	if len(lines) < 3 || lines[0] != "-----BEGIN PGP MESSAGE-----" || lines[len(lines)-1] != "-----END PGP MESSAGE-----" {
		t.Fatalf("%s: the replacement body holds no single armour block:\n%s", where, fuzzShortBytes(arm))
	}
	for _, l := range lines[1 : len(lines)-1] {
		if strings.Trim(l, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") != "" {
			t.Fatalf("%s: a line of the armour block is not base64: %q", where, l)
		}
	}
	var ring openpgp.EntityList
	for _, e := range fx.secrets {
		ring = append(ring, e)
	}
	blk, err := armor.Decode(bytes.NewReader(arm))
	if err != nil {
		t.Fatalf("%s: armour: %v", where, err)
	}
	md, err := openpgp.ReadMessage(blk.Body, ring, nil, nil)
	if err != nil {
		t.Fatalf("%s: the replacement body does not decrypt with a recipient's key: %v", where, err)
	}
	inner, err := io.ReadAll(md.UnverifiedBody)
	if err != nil {
		t.Fatalf("%s: decrypt: %v", where, err)
	}
	if !bytes.HasSuffix(inner, body) {
		t.Fatalf("%s: the ciphertext does not end with the body the MTA sent (%q):\n%q", where, fuzzShortBytes(body), fuzzShortBytes(inner))
	}
	if _, ib := crypto.Split(inner); wellFormed && !bytes.Equal(ib, body) {
		t.Fatalf("%s: the ciphertext holds the body %q, the MTA sent %q", where, fuzzShortBytes(ib), fuzzShortBytes(body))
	}
}

// fuzzWellFormed reports whether fields are what an MTA passes: names of
// printable ASCII without colon (RFC 5322 §3.6.8), and values whose line
// breaks all start a continuation line. crypto.Encrypt writes the names
// and values it is given as they are, so a name with a space, say, ends
// the encrypted entity's header section early (its following fields are
// decrypted as the first lines of the body); Postfix never passes such a
// name, as it would not have parsed the line as a header field. Header
// protection with a Content-Type ending in a white-space-only line is
// left out too: crypto's FuzzEncrypt covers that known defect.
func fuzzWellFormed(fields []crypto.Field) bool {
	for _, f := range fields {
		if f.Name == "" || strings.ContainsFunc(f.Name, func(r rune) bool { return r <= ' ' || r > '~' || r == ':' }) {
			return false
		}
		v := f.Value
		for i := strings.IndexByte(v, '\n'); i >= 0; i = strings.IndexByte(v, '\n') {
			if i+1 == len(v) || (v[i+1] != ' ' && v[i+1] != '\t') {
				return false
			}
			v = v[i+1:]
		}
		if strings.EqualFold(f.Name, "Content-Type") && strings.HasSuffix(strings.TrimRight(f.Value, " \t;"), "\n") {
			return false
		}
	}
	return true
}

func fuzzNegotiate(c net.Conn, r *bufio.Reader) error {
	if err := fuzzWritePacket(c, 'O', []byte(fuzzOptNeg())); err != nil {
		return err
	}
	code, data, err := fuzzReadPacket(r)
	if err != nil {
		return err
	}
	if code != 'O' || len(data) < 12 {
		return fmt.Errorf("reply %q %q", code, data)
	}
	v, a, p := binary.BigEndian.Uint32(data), binary.BigEndian.Uint32(data[4:]), binary.BigEndian.Uint32(data[8:])
	if v != protocolVersion || gomilter.OptAction(a) != actions || gomilter.OptProtocol(p) != protocol|noReply|noReplyAfterData {
		return fmt.Errorf("version %d, actions %#x, protocol %#x", v, a, p)
	}
	return nil
}

func fuzzWritePacket(c net.Conn, code byte, data []byte) error {
	b := make([]byte, 5, 5+len(data))
	binary.BigEndian.PutUint32(b, uint32(len(data)+1))
	b[4] = code
	_, err := c.Write(append(b, data...))
	return err
}

func fuzzReadPacket(r *bufio.Reader) (byte, []byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > 1<<20 {
		return 0, nil, fmt.Errorf("packet length %d", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return 0, nil, err
	}
	return b[0], b[1:], nil
}

func fuzzCString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}

func fuzzShortBytes(b []byte) []byte {
	if len(b) > 300 {
		return b[:300]
	}
	return b
}

// fuzzTakeLogs reports whether the server's log holds a and b, and
// empties it, so that it does not grow over a long fuzzing run.
func fuzzTakeLogs(fx *fixture, a, b string) (bool, bool) {
	fx.logs.mu.Lock()
	defer fx.logs.mu.Unlock()
	foundA := bytes.Contains(fx.logs.b.Bytes(), []byte(a))
	foundB := bytes.Contains(fx.logs.b.Bytes(), []byte(b))
	fx.logs.b.Reset()
	return foundA, foundB
}
