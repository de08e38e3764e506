package keys

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestReadKeyFile(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, 3*MaxKeyBytes), 0o600); err != nil {
		t.Fatal(err)
	}
	data, err := ReadKeyFile(big)
	if err != nil || len(data) != MaxKeyBytes+1 {
		t.Fatalf("ReadKeyFile(3 MiB file) = %d bytes, %v; want %d bytes", len(data), err, MaxKeyBytes+1)
	}
	if _, err := Parse(data); err == nil {
		t.Error("Parse accepted what ReadKeyFile read from an oversized file")
	} else if re := (*RejectError)(nil); !errors.As(err, &re) || re.Rule != RuleTooLarge {
		t.Errorf("Parse of an oversized file: %v, want rule %q", err, RuleTooLarge)
	}
	small := filepath.Join(dir, "small")
	if err := os.WriteFile(small, []byte("abc"), 0o600); err != nil {
		t.Fatal(err)
	}
	if data, err := ReadKeyFile(small); err != nil || string(data) != "abc" {
		t.Errorf("ReadKeyFile(small) = %q, %v", data, err)
	}
	if _, err := ReadKeyFile(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadKeyFile(missing) error = %v, want fs.ErrNotExist", err)
	}
}
