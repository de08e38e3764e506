package main

import (
	"runtime/debug"
	"testing"
)

// restoreRuntime puts the process's GC settings back after a test.
func restoreRuntime(t *testing.T) {
	gc := debug.SetGCPercent(-1)
	debug.SetGCPercent(gc)
	limit := debug.SetMemoryLimit(-1)
	t.Cleanup(func() {
		debug.SetGCPercent(gc)
		debug.SetMemoryLimit(limit)
	})
}

func TestTuneRuntimeDefaults(t *testing.T) {
	restoreRuntime(t)
	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	gc, limit := tuneRuntime()
	if gc != defaultGCPercent || limit != defaultMemoryLimit {
		t.Errorf("tuneRuntime() = %d, %d; want %d, %d", gc, limit, defaultGCPercent, defaultMemoryLimit)
	}
	if got := debug.SetGCPercent(-1); got != defaultGCPercent {
		t.Errorf("GC percent in force = %d, want %d", got, defaultGCPercent)
	}
	if got := debug.SetMemoryLimit(-1); got != defaultMemoryLimit {
		t.Errorf("memory limit in force = %d, want %d", got, defaultMemoryLimit)
	}
}

// The operator's GOGC and GOMEMLIMIT (which the Go runtime applied at
// start-up) win, each on its own.
func TestTuneRuntimeOperatorWins(t *testing.T) {
	restoreRuntime(t)
	t.Setenv("GOGC", "150")
	t.Setenv("GOMEMLIMIT", "")
	debug.SetGCPercent(150)
	if gc, limit := tuneRuntime(); gc != 150 || limit != defaultMemoryLimit {
		t.Errorf("with GOGC=150: tuneRuntime() = %d, %d; want 150, %d", gc, limit, defaultMemoryLimit)
	}

	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "2GiB")
	debug.SetMemoryLimit(2 << 30)
	if gc, limit := tuneRuntime(); gc != defaultGCPercent || limit != 2<<30 {
		t.Errorf("with GOMEMLIMIT=2GiB: tuneRuntime() = %d, %d; want %d, %d", gc, limit, defaultGCPercent, int64(2<<30))
	}
}

// The limit must leave small mail to GOGC: 16 sessions of small mail keep
// a live heap of a few MB, which GOGC=400 lets grow fivefold.
func TestDefaultMemoryLimitAboveSmallMail(t *testing.T) {
	const smallLive = 16 << 20 // generous
	if defaultMemoryLimit < smallLive*(100+defaultGCPercent)/100*2 {
		t.Errorf("defaultMemoryLimit %d MiB would make the GC run more often for small mail", defaultMemoryLimit>>20)
	}
}
