//go:build !unix

package keys

// Without mmap(2) the keyed-address set checks with PRAGMA data_version
// alone (sqlite_walindex_unix.go).

const walIndexHdrSize = 48

type walIndexHdr [walIndexHdrSize / 4]uint32

func walIndexMap(path string) ([]byte, error) { return nil, errWalIndexShort }

func walIndexUnmap(m []byte) {}

func walIndexRead(m []byte) (walIndexHdr, bool) { return walIndexHdr{}, false }
