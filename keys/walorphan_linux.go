//go:build linux

package keys

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// sqliteShmDMS is the byte of the -shm file on which every SQLite
// connection using the write-ahead log holds a read lock (the "dead man
// switch", UNIX_SHM_DMS in SQLite's os_unix.c: (22+8)*4 + 8).
const sqliteShmDMS = 128

// walInUse reports whether any connection, of any process, still uses the
// write-ahead log of the database at abs. It asks for a write lock on the
// DMS byte as an open file description lock: unlike a process-associated
// lock, it conflicts with the locks of SQLite connections in this process
// too. Closing the descriptor does release this process's own POSIX locks
// on the file, so it is called only after this process's pool on the old
// file is closed (one store per file per process: the milter, the CLI and
// the registration service each open one).
func walInUse(abs string) (bool, error) {
	f, err := os.OpenFile(abs+"-shm", os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // no shared memory, so no connection in WAL mode
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: sqliteShmDMS, Len: 1}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return true, nil
		}
		return false, err
	}
	lk.Type = unix.F_UNLCK
	unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk)
	return false, nil
}
