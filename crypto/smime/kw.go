package smime

import (
	"bytes"
	"crypto/aes"
	"encoding/binary"
	"errors"
	"slices"
)

// kwIV is the default initial value of RFC 3394 §2.2.3.1.
var kwIV = [8]byte{0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6}

// keyWrap wraps key (a multiple of 8 bytes, at least 16) with kek, the
// AES key wrap of RFC 3394 §2.2.1 (index-based form).
func keyWrap(kek, key []byte) ([]byte, error) {
	if len(key)%8 != 0 || len(key) < 16 {
		return nil, errors.New("smime: key wrap input must be a multiple of 8 bytes, at least 16")
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	n := len(key) / 8
	out := make([]byte, 8+len(key))
	copy(out[8:], key)
	a := kwIV
	var b [16]byte
	for j := range 6 {
		for i := 1; i <= n; i++ {
			copy(b[:8], a[:])
			copy(b[8:], out[8*i:8*i+8])
			block.Encrypt(b[:], b[:])
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(a[:], binary.BigEndian.Uint64(b[:8])^t)
			copy(out[8*i:], b[8:])
		}
	}
	copy(out, a[:])
	return out, nil
}

// sortedDER returns the DER encodings sorted as a DER SET OF requires
// (X.690 §11.6: ascending as octet strings, the shorter padded with
// zeros, which bytes.Compare orders the same way for distinct elements).
func sortedDER(elems [][]byte) [][]byte {
	s := slices.Clone(elems)
	slices.SortFunc(s, bytes.Compare)
	return s
}
