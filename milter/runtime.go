package milter

import (
	"os"
	"runtime/debug"
)

// Runtime defaults applied by TuneRuntime.
const (
	// DefaultGCPercent: the milter's live heap is small (a few MB between
	// large messages) while every message allocates protocol buffers, so
	// Go's default GOGC=100 collects every few MB; 400 halves the CPU spent
	// in GC at 16 sessions (docs/performance.md).
	DefaultGCPercent = 400
	// DefaultMemoryLimit is the soft limit that keeps the higher GOGC from
	// letting the heap grow to five times a large live set (many big
	// messages in flight): near it, the GC runs as often as needed.
	DefaultMemoryLimit = 1 << 30
)

// TuneRuntime applies DefaultGCPercent and DefaultMemoryLimit unless the
// operator set GOGC or GOMEMLIMIT, which always win. It returns the values
// in force, for the start-up log line.
func TuneRuntime() (gcPercent int, memoryLimit int64) {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(DefaultGCPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(DefaultMemoryLimit)
	}
	gcPercent = debug.SetGCPercent(-1)
	debug.SetGCPercent(gcPercent)
	return gcPercent, debug.SetMemoryLimit(-1)
}
