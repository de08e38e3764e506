package milter

import (
	"os"
	"testing"

	gomilter "github.com/d--j/go-milter"
)

// go-milter reports malformed commands through its LogWarning hook (to the
// standard log package unless set; lacre-milter serve sets it); the tests
// send many on purpose.
func TestMain(m *testing.M) {
	gomilter.LogWarning = func(string, ...any) {}
	os.Exit(m.Run())
}
