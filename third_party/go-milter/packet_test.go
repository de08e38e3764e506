package milter

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"testing/iotest"
)

func TestReadPacketZeroLength(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()

	go func() {
		c1.Write([]byte{0, 0, 0, 0}) // length = 0
		c1.Close()
	}()

	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("readPacket panicked on zero-length packet: %v", r)
		}
	}()
	if _, err := readPacket(c2, 0); err == nil {
		t.Fatal("expected an error for zero-length packet")
	}
}

func TestReadPacketOversize(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()

	go func() {
		binary.Write(c1, binary.BigEndian, uint32(maxPacketSize+1))
		c1.Close()
	}()

	want := fmt.Sprintf("milter: packet length %d exceeds %d bytes", maxPacketSize+1, maxPacketSize)
	if _, err := readPacket(c2, 0); err == nil || err.Error() != want {
		t.Fatalf("Expected packet length error %q, got %v", want, err)
	}
}

func TestReadPacketSizeBoundary(t *testing.T) {
	for _, size := range []int{1, maxPacketSize} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			c1, c2 := net.Pipe()
			defer c1.Close()
			defer c2.Close()

			msg := &Message{Code: byte(CodeBody), Data: bytes.Repeat([]byte{'A'}, size-1)}
			writeErr := make(chan error, 1)
			go func() {
				writeErr <- writePacket(c1, msg, 0)
			}()

			got, err := readPacket(c2, 0)
			if err != nil {
				t.Fatal("Unexpected error:", err)
			}
			if err := <-writeErr; err != nil {
				t.Fatal("Unexpected write error:", err)
			}
			if got.Code != msg.Code || !bytes.Equal(got.Data, msg.Data) {
				t.Fatal("Packet content changed")
			}
		})
	}
}

// TestReadPacketAllocatesWhatArrived: a peer that announces the largest
// packet and sends little of it must cost memory for what it sent, not for
// what it announced (400 such connections used to hold 400 MiB).
func TestReadPacketAllocatesWhatArrived(t *testing.T) {
	for _, sent := range []int{0, 1000, 200 << 10} {
		t.Run(fmt.Sprint(sent), func(t *testing.T) {
			var in bytes.Buffer
			binary.Write(&in, binary.BigEndian, uint32(maxPacketSize))
			in.Write(bytes.Repeat([]byte{byte(CodeBody)}, sent))
			conn := &readConn{r: &in}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := readPacket(conn, 0)
			runtime.ReadMemStats(&after)
			if err != io.ErrUnexpectedEOF {
				t.Fatalf("err = %v, want %v", err, io.ErrUnexpectedEOF)
			}
			// The buffer at most doubles past what arrived, starting at
			// firstChunk; allow 64 KiB for the rest of readPacket.
			limit := uint64(firstChunk + 64<<10)
			if 2*sent > firstChunk {
				limit = uint64(2*sent + 2*firstChunk)
			}
			got := after.TotalAlloc - before.TotalAlloc
			t.Logf("announced %d bytes, sent %d, allocated %d", maxPacketSize, sent, got)
			if got > limit {
				t.Errorf("allocated %d bytes for %d that arrived; want at most %d", got, sent, limit)
			}
		})
	}
}

// TestReadPacketGrowsToFullSize: a packet that arrives in small pieces,
// past several doublings of the buffer, is read whole and unchanged.
func TestReadPacketGrowsToFullSize(t *testing.T) {
	for _, size := range []int{firstChunk - 1, firstChunk, firstChunk + 1, 3*firstChunk + 7, maxPacketSize} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i * 7)
		}
		var in bytes.Buffer
		binary.Write(&in, binary.BigEndian, uint32(size))
		in.Write(data)
		got, err := readPacket(&readConn{r: iotest.OneByteReader(&in)}, 0)
		if err != nil {
			t.Fatalf("%d: %v", size, err)
		}
		if got.Code != data[0] || !bytes.Equal(got.Data, data[1:]) {
			t.Fatalf("%d: packet changed", size)
		}
	}
}
