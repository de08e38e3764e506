// Package hostiletest runs the cases of the hostile-input corpus
// (testdata/hostile) with bounds: each case on its own goroutine, failed
// by name when it panics or hangs, and measured in CPU time, wall time
// and bytes allocated. The crypto, keys and milter tests share it.
package hostiletest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"syscall"
	"testing"
	"time"
)

// Measure is what one case cost.
type Measure struct {
	Wall  time.Duration
	CPU   time.Duration // user+system time of the whole process meanwhile
	Alloc uint64        // bytes allocated by the whole process meanwhile
}

// Bounds are the limits of one case. CPU time, unlike wall time, does not
// grow when other processes load the machine; Wall catches waiting.
type Bounds struct {
	CPU   time.Duration
	Wall  time.Duration
	Alloc uint64
}

// Race reports whether the test binary was built with -race, which slows
// everything about tenfold: Check then does not assert time bounds, and
// Run allows ten times longer before calling a case hung.
func Race() bool { return raceEnabled }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Run runs f on its own goroutine and returns its cost. A panic in f, or
// f still running after hang, fails the test with name.
func Run(t testing.TB, name string, hang time.Duration, f func()) Measure {
	t.Helper()
	if raceEnabled {
		hang *= 10
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	cpu0, start := cpuTime(), time.Now()
	done := make(chan string, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				done <- fmt.Sprintf("%v\n%s", v, debug.Stack())
			}
		}()
		f()
		done <- ""
	}()
	select {
	case p := <-done:
		if p != "" {
			t.Fatalf("%s: panic: %s", name, p)
		}
	case <-time.After(hang):
		t.Fatalf("%s: still running after %v: a hang", name, hang)
	}
	m := Measure{Wall: time.Since(start), CPU: cpuTime() - cpu0}
	runtime.ReadMemStats(&after)
	m.Alloc = after.TotalAlloc - before.TotalAlloc
	return m
}

// Check logs m and asserts b (the time bounds not under -race). It
// returns the share of the allocation bound used.
func (m Measure) Check(t testing.TB, name string, b Bounds) float64 {
	t.Helper()
	t.Logf("%s: %v CPU, %v wall, %.2f MiB allocated (bound %.2f MiB)", name, m.CPU.Round(time.Millisecond),
		m.Wall.Round(time.Millisecond), float64(m.Alloc)/(1<<20), float64(b.Alloc)/(1<<20))
	if !raceEnabled {
		if m.CPU > b.CPU {
			t.Errorf("%s: took %v of CPU time, more than %v", name, m.CPU, b.CPU)
		}
		if m.Wall > b.Wall {
			t.Errorf("%s: took %v, more than %v", name, m.Wall, b.Wall)
		}
	}
	if m.Alloc > b.Alloc {
		t.Errorf("%s: allocated %d bytes, more than the bound of %d", name, m.Alloc, b.Alloc)
	}
	return float64(m.Alloc) / float64(b.Alloc)
}

// Files returns the names (sorted) and contents of the regular files of a
// corpus directory; an empty directory fails the test.
func Files(t testing.TB, dir string) ([]string, map[string][]byte) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	data := map[string][]byte{}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, e.Name())
		data[e.Name()] = b
	}
	if len(names) == 0 {
		t.Fatalf("no files in %s", dir)
	}
	return names, data
}
