package milter

import (
	"io"
	"log"
	"os"
	"testing"
)

// go-milter logs closed connections with the standard log package; the
// tests close many on purpose.
func TestMain(m *testing.M) {
	log.SetOutput(io.Discard)
	os.Exit(m.Run())
}
