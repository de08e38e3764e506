package crypto

import (
	"bytes"
	"io"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
)

// crc24Bitwise is RFC 9580 §6.1.1's reference implementation, one bit at a time.
func crc24Bitwise(p []byte) uint32 {
	crc := uint32(crc24Init)
	for _, b := range p {
		crc ^= uint32(b) << 16
		for range 8 {
			crc <<= 1
			if crc&0x1000000 != 0 {
				crc ^= crc24Poly
			}
		}
	}
	return crc & 0xFFFFFF
}

func TestCRC24MatchesReference(t *testing.T) {
	data := pseudoRandom(4096+7, 3)
	for _, n := range []int{0, 1, 2, 3, 4, 5, 7, 8, 63, 64, 65, 1000, 4103} {
		if got, want := crc24Update(crc24Init, data[:n]), crc24Bitwise(data[:n]); got != want {
			t.Errorf("n=%d: crc24 = %06X, want %06X", n, got, want)
		}
	}
	// Split writes must give the same CRC as one write.
	c := uint32(crc24Init)
	for _, part := range [][]byte{data[:1], data[1:6], data[6:100], data[100:]} {
		c = crc24Update(c, part)
	}
	if want := crc24Bitwise(data); c != want {
		t.Errorf("incremental crc24 = %06X, want %06X", c, want)
	}
}

// TestArmorDecodes checks, for many lengths and write patterns, that
// go-crypto's decoder (which verifies the CRC24) reads back what was written.
func TestArmorDecodes(t *testing.T) {
	data := pseudoRandom(5000, 4)
	for _, withCRC := range []bool{true, false} {
		for n := 0; n <= 200; n++ {
			checkArmor(t, data[:n], withCRC, 1)
		}
		for _, n := range []int{479, 480, 481, 4095, 4096, 4097, 5000} {
			for _, chunk := range []int{1, 7, 48, 49, 1000, n + 1} {
				checkArmor(t, data[:n], withCRC, chunk)
			}
		}
	}
}

func checkArmor(t *testing.T, data []byte, withCRC bool, chunk int) {
	t.Helper()
	var buf bytes.Buffer
	a := newArmorWriter(&buf, withCRC)
	for p := data; len(p) > 0; {
		n := min(chunk, len(p))
		a.Write(p[:n])
		p = p[n:]
	}
	a.Close()
	for _, line := range bytes.Split(bytes.TrimSuffix(buf.Bytes(), []byte("\r\n")), []byte("\r\n")) {
		if len(line) > armorLineChars+4 {
			t.Fatalf("len %d: armour line of %d characters", len(data), len(line))
		}
	}
	if got := bytes.Contains(buf.Bytes(), []byte("\r\n=")); got != withCRC {
		t.Fatalf("len %d: checksum line present = %v, want %v", len(data), got, withCRC)
	}
	blk, err := armor.Decode(&buf)
	if err != nil {
		t.Fatalf("len %d chunk %d: decode: %v", len(data), chunk, err)
	}
	got, err := io.ReadAll(blk.Body)
	if err != nil {
		t.Fatalf("len %d chunk %d: read (CRC check): %v", len(data), chunk, err)
	}
	if !bytes.Equal(got, data) || blk.Type != "PGP MESSAGE" {
		t.Fatalf("len %d chunk %d: round trip differs", len(data), chunk)
	}
}

func BenchmarkCRC24(b *testing.B) {
	data := pseudoRandom(1<<20, 5)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		crc24Update(crc24Init, data)
	}
}

func BenchmarkArmor(b *testing.B) {
	data := pseudoRandom(1<<20, 6)
	var buf bytes.Buffer
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		buf.Reset()
		a := newArmorWriter(&buf, true)
		a.Write(data)
		a.Close()
	}
}
