package milter

import (
	"net"
	"os"
	"time"
)

// removeStaleSocket deletes a unix socket left behind by a previous run
// (after a crash or SIGKILL), but only when it is a socket and nothing
// answers on it: a second instance must not steal a running one's socket.
func removeStaleSocket(path string) {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return
	}
	if c, err := net.DialTimeout("unix", path, 500*time.Millisecond); err == nil {
		c.Close()
		return
	}
	os.Remove(path)
}
