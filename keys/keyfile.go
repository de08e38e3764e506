package keys

import (
	"io"
	"os"
)

// ReadKeyFile reads a key or certificate file, at most MaxKeyBytes+1
// bytes of it: a wrong file (a disk image, a mailbox) fails fast instead
// of filling memory, and the parsers' size rule then refuses it by name
// (RuleTooLarge) rather than this function guessing why it is large.
func ReadKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, MaxKeyBytes+1))
}
