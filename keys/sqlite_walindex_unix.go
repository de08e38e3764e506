//go:build unix

package keys

import (
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The write-ahead log's index (the -shm file, https://www.sqlite.org/
// walformat.html §2.1) begins with a 48-byte header, written twice, that
// every commit rewrites: the last valid frame, the database size, the
// running checksum of the frames, the salts that change when the log
// starts over, and a checksum of it all. A reader that finds both copies
// equal to the ones it saw at a moment T knows that nobody committed
// since T: this is how SQLite itself decides, at the start of each read
// transaction, whether its page cache is still good. Reading it from a
// shared mapping costs no system call, where PRAGMA data_version costs a
// read transaction (two fcntl calls on the -shm file and an fstat).
//
// The mapping is made only while the set's dedicated connection is open:
// that connection holds SQLite's lock on the -shm file (its "dead man
// switch" byte), and while anyone holds it no connection truncates or
// reinitialises the file, which would make reading the mapping fault.

// walIndexHdrSize is the size of one copy of the header.
const walIndexHdrSize = 48

// walIndexHdr is both copies' words, as read.
type walIndexHdr [walIndexHdrSize / 4]uint32

// walIndexMap maps the start of the -shm file at path read-only.
func walIndexMap(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() < 2*walIndexHdrSize {
		return nil, errWalIndexShort
	}
	return unix.Mmap(int(f.Fd()), 0, 2*walIndexHdrSize, unix.PROT_READ, unix.MAP_SHARED)
}

func walIndexUnmap(m []byte) { unix.Munmap(m) }

// walIndexRead reads the header; ok is false while a writer is changing
// it (the copies differ, as SQLite writes the second copy first and the
// first one after a barrier) or before it was ever written (isInit).
func walIndexRead(m []byte) (h walIndexHdr, ok bool) {
	p := unsafe.Pointer(unsafe.SliceData(m))
	var second walIndexHdr
	for i := range h {
		h[i] = atomic.LoadUint32((*uint32)(unsafe.Add(p, 4*i)))
	}
	for i := range second {
		second[i] = atomic.LoadUint32((*uint32)(unsafe.Add(p, walIndexHdrSize+4*i)))
	}
	isInit := (*[4]byte)(unsafe.Pointer(&h[3]))[0] // byte 12, whatever the byte order
	return h, h == second && isInit == 1
}
