package integration

import (
	"bytes"
	"fmt"
	"os"
	"testing"

	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"lacre.io/milter/internal/pgptest"
)

// Helpers of the fault tests (fault_test.go).

// take returns the messages the sink received since the last take and
// forgets them, so that a long test does not keep thousands of copies.
// (waitFor and messages see only what arrived after the last take.)
func (s *sink) take() []sinkMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	msgs := s.msgs
	s.msgs = nil
	return msgs
}

// omitLines drops the lines that contain substr from the buffer and
// returns how many it dropped.
func (w *tailBuffer) omitLines(substr string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	var kept []byte
	n := 0
	for _, l := range bytes.SplitAfter(w.b, []byte("\n")) {
		if bytes.Contains(l, []byte(substr)) {
			n++
			continue
		}
		kept = append(kept, l...)
	}
	w.b = kept
	return n
}

// checkFailure is what a check of pgptest reported through failTB.
type checkFailure string

// failTB lets pgptest's checks, which report through a testing.TB, be
// used as functions that return an error: any Errorf or Fatalf becomes
// the error (see catch).
type failTB struct{ testing.TB }

func (failTB) Helper()                           {}
func (failTB) Errorf(format string, args ...any) { panic(checkFailure(fmt.Sprintf(format, args...))) }
func (failTB) Fatalf(format string, args ...any) { panic(checkFailure(fmt.Sprintf(format, args...))) }
func (failTB) Error(args ...any)                 { panic(checkFailure(fmt.Sprint(args...))) }
func (failTB) Fatal(args ...any)                 { panic(checkFailure(fmt.Sprint(args...))) }
func (f failTB) Logf(format string, args ...any) {}

// catch turns a checkFailure panic into *err.
func catch(err *error) {
	if v := recover(); v != nil {
		cf, ok := v.(checkFailure)
		if !ok {
			panic(v)
		}
		*err = fmt.Errorf("%s", string(cf))
	}
}

// decryptMessage is pgptest.OpenAndDecrypt returning an error instead of
// failing the test: the RFC 3156 structure is checked and the inner
// entity returned.
func decryptMessage(t testing.TB, msg []byte, ring ...*openpgp.Entity) (inner []byte, err error) {
	defer catch(&err)
	_, inner = pgptest.OpenAndDecrypt(failTB{t}, msg, ring...)
	return inner, nil
}

// storeFault makes a running milter's SQLite key store unreadable, the
// way a damaged database file is, until its restore function is called.
//
// Overwriting the database file's 100-byte header alone is not enough:
// the store runs in WAL mode, where a connection keeps its page cache
// (page 1 included) for as long as the wal-index header in the -shm file
// is unchanged, and page 1 may anyway be read from the -wal file. So the
// fault is three writes, all to documented parts of the file formats
// (https://sqlite.org/fileformat2.html, https://sqlite.org/walformat.html):
//
//   - the WAL header (32 bytes) is zeroed, so its frames are not valid;
//   - the database header (100 bytes) is zeroed ("file is not a database");
//   - both copies of the wal-index header (the first 96 bytes of -shm) are
//     zeroed, so that every connection's next read finds the index
//     invalid, runs WAL recovery (which now finds no valid frame), drops
//     its page cache and reads page 1 from the database file.
//
// restore writes the saved headers back and invalidates the wal-index
// again, so that recovery indexes the WAL's frames once more: the store
// is then exactly as before. Nobody may write to the store in between
// (the milter only reads it).
func storeFault(t testing.TB, dbPath string) (restore func()) {
	t.Helper()
	shm := dbPath + "-shm"
	if _, err := os.Stat(shm); err != nil {
		t.Fatalf("key store fault: %v (the milter must have the store open in WAL mode)", err)
	}
	var saved []func()
	zero := func(path string, n int, optional bool) {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			if optional && os.IsNotExist(err) {
				return
			}
			t.Fatalf("key store fault: %v", err)
		}
		defer f.Close()
		old := make([]byte, n)
		if m, err := f.ReadAt(old, 0); m < n {
			if optional {
				return // an empty WAL: nothing to hide
			}
			t.Fatalf("key store fault: reading the first %d bytes of %s: %v", n, path, err)
		}
		if _, err := f.WriteAt(make([]byte, n), 0); err != nil {
			t.Fatalf("key store fault: %v", err)
		}
		saved = append(saved, func() {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Errorf("restoring the key store: %v", err)
				return
			}
			defer f.Close()
			if _, err := f.WriteAt(old, 0); err != nil {
				t.Errorf("restoring the key store: %v", err)
			}
		})
	}
	invalidateIndex := func() {
		f, err := os.OpenFile(shm, os.O_RDWR, 0)
		if err != nil {
			t.Fatalf("key store fault: %v", err)
		}
		defer f.Close()
		if _, err := f.WriteAt(make([]byte, 96), 0); err != nil {
			t.Fatalf("key store fault: %v", err)
		}
	}
	zero(dbPath+"-wal", 32, true)
	zero(dbPath, 100, false)
	invalidateIndex()
	return func() {
		for _, r := range saved {
			r()
		}
		invalidateIndex()
	}
}
