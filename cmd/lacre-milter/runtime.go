package main

import (
	"os"
	"runtime/debug"
)

// Runtime defaults applied by tuneRuntime.
const (
	// defaultGCPercent: the milter's live heap is small (a few MB between
	// large messages) while every message allocates protocol buffers, so
	// Go's default GOGC=100 collects every few MB; 400 halves the CPU spent
	// in GC at 16 sessions (docs/performance.md).
	defaultGCPercent = 400
	// defaultMemoryLimit is the soft limit that keeps the higher GOGC from
	// letting the heap grow to five times a large live set (many big
	// messages in flight): near it, the GC runs as often as needed. The
	// heap of small mail stays far below it (16 sessions of 4 KiB: a few
	// MB live), so there GOGC alone decides. With 16 sessions each
	// carrying a 10 MiB message, the live heap is about 100 MB and the
	// peak RSS was 440–770 MiB with a limit of 1 GiB, 265–277 MiB with
	// this one, for the same CPU time (docs/performance.md, "Against
	// plain Postfix"). A live set above the limit is allowed (it is soft);
	// the GC then uses at most about half the CPU.
	defaultMemoryLimit = 256 << 20
)

// tuneRuntime applies defaultGCPercent and defaultMemoryLimit unless the
// operator set GOGC or GOMEMLIMIT, which always win. It returns the values
// in force, for the start-up log line.
func tuneRuntime() (gcPercent int, memoryLimit int64) {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
	gcPercent = debug.SetGCPercent(-1)
	debug.SetGCPercent(gcPercent)
	return gcPercent, debug.SetMemoryLimit(-1)
}
