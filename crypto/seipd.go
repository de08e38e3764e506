package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha1"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
)

// This file writes the Symmetrically Encrypted and Integrity Protected
// Data packet, version 1 (RFC 9580 §5.13.1), which every key without
// SEIPDv2 support needs. go-crypto writes it too, but its OpenPGP-CFB
// encrypts one byte per loop iteration and its partial-length writer
// buffers and copies whole messages; together they held a 1 MiB message
// near 95 MB/s. Here the packet lengths are known in advance (the whole
// plaintext is in memory), so definite lengths replace partial ones, and
// CFB runs a block at a time. Key selection and the session-key packets
// (PKESK) stay with go-crypto; every output is decrypted in the tests by
// go-crypto, GnuPG, Sequoia and RNP, which all verify the MDC.

const (
	tagLiteral = 11 // RFC 9580 §5.9
	tagSEIPD   = 18 // RFC 9580 §5.13
	tagMDC     = 19 // RFC 9580 §5.14
	mdcLen     = 2 + sha1.Size
)

// appendNewLength appends an OpenPGP new-format packet length (RFC 9580 §4.2.1.1).
func appendNewLength(b []byte, n int) []byte {
	switch {
	case n < 192:
		return append(b, byte(n))
	case n < 8384:
		n -= 192
		return append(b, byte(n>>8)+192, byte(n))
	default:
		return binary.BigEndian.AppendUint32(append(b, 0xFF), uint32(n))
	}
}

// writeSEIPDv1 encrypts the concatenation of parts as a binary literal
// data packet inside a SEIPDv1 packet, with the given AES session key,
// and writes the packet to w.
func writeSEIPDv1(w io.Writer, sessionKey []byte, rnd io.Reader, parts ...[]byte) error {
	block, err := aes.NewCipher(sessionKey)
	if err != nil {
		return fmt.Errorf("session key: %w", err)
	}
	dataLen := 0
	for _, p := range parts {
		dataLen += len(p)
	}
	// Literal data header: format 'b' (binary), empty file name, zero date
	// (RFC 9580 §5.9: the name and date are not integrity-protected, so
	// say nothing).
	litBody := 1 + 1 + 4 + dataLen
	if int64(litBody) > 1<<31 { // int64: 1<<31 overflows int on 32-bit systems
		return errors.New("message too large for one literal packet")
	}
	lit := []byte{0xC0 | tagLiteral}
	lit = appendNewLength(lit, litBody)
	lit = append(lit, 'b', 0, 0, 0, 0, 0)
	litLen := len(lit) + dataLen

	bs := block.BlockSize()
	prefix := make([]byte, bs+2)
	if _, err := io.ReadFull(rnd, prefix[:bs]); err != nil {
		return fmt.Errorf("random prefix: %w", err)
	}
	prefix[bs], prefix[bs+1] = prefix[bs-2], prefix[bs-1] // RFC 9580 §5.13.1 quick check

	hdr := []byte{0xC0 | tagSEIPD}
	hdr = appendNewLength(hdr, 1+len(prefix)+litLen+mdcLen)
	hdr = append(hdr, 1) // version 1
	if _, err := w.Write(hdr); err != nil {
		return err
	}

	cw := newCFBWriter(w, block, len(prefix)+litLen+mdcLen)
	mdc := sha1.New()
	write := func(p []byte) error {
		mdc.Write(p)
		return cw.write(p)
	}
	if err := write(prefix); err != nil {
		return err
	}
	if err := write(lit); err != nil {
		return err
	}
	for _, p := range parts {
		if err := write(p); err != nil {
			return err
		}
	}
	// The MDC hash covers the prefix, the plaintext and the MDC packet's own
	// two header bytes (RFC 9580 §5.14).
	if err := write([]byte{0xC0 | tagMDC, sha1.Size}); err != nil {
		return err
	}
	if err := cw.write(sumOf(mdc)); err != nil {
		return err
	}
	return cw.flush()
}

func sumOf(h hash.Hash) []byte { return h.Sum(nil) }

// cfbWriter is CFB mode with a zero IV and no resynchronisation, which is
// what SEIPDv1 specifies (RFC 9580 §5.13.1). It encrypts a block at a
// time through a fixed-size buffer, so memory does not grow with the message.
type cfbWriter struct {
	w     io.Writer
	block cipher.Block
	fre   [aes.BlockSize]byte // feedback register: the last ciphertext block
	used  int                 // bytes of the current keystream block consumed
	buf   []byte
}

const cfbBufSize = 32 << 10

// newCFBWriter returns a writer for a stream of total bytes; its buffer is
// no larger than the stream, so small messages allocate little.
func newCFBWriter(w io.Writer, block cipher.Block, total int) *cfbWriter {
	c := &cfbWriter{w: w, block: block, buf: make([]byte, 0, min(cfbBufSize, total))}
	c.block.Encrypt(c.fre[:], c.fre[:]) // keystream of the zero IV
	return c
}

func (c *cfbWriter) write(p []byte) error {
	for len(p) > 0 {
		if c.used == aes.BlockSize {
			c.block.Encrypt(c.fre[:], c.fre[:])
			c.used = 0
		}
		// Encrypt as much of the current block as p and the buffer allow.
		n := min(aes.BlockSize-c.used, len(p), cap(c.buf)-len(c.buf))
		ks := c.fre[c.used : c.used+n]
		subtle.XORBytes(ks, ks, p[:n]) // the ciphertext becomes the feedback
		c.buf = append(c.buf, ks...)
		c.used += n
		p = p[n:]
		if len(c.buf) == cap(c.buf) {
			if err := c.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *cfbWriter) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.w.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}
