package keys

import (
	"strings"
	"testing"
)

// Fingerprints that pass IsFingerprint.
const (
	fprV4 = "0123456789ABCDEF0123456789ABCDEF01234567"
	fprV6 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)

func TestIsFingerprint(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{fprV4, true},
		{strings.ToLower(fprV4), true},
		{"0123456789abcdefABCDEF0123456789abcdefAB", true},
		{fprV6, true},
		{strings.ToUpper(fprV6), true},
		{"0123 4567 89AB CDEF 0123  4567 89AB CDEF 0123 4567", true}, // gpg's grouping
		{" " + fprV4 + " ", true},
		{"", false},
		{"89ABCDEF01234567", false}, // long key ID
		{"89ABCDEF", false},         // short key ID
		{fprV4[:39], false},
		{fprV4 + "8", false},
		{fprV6[:63], false},
		{fprV6 + "0", false},
		{fprV4 + fprV4, false}, // 80 digits
		{"0x" + fprV4[2:], false},
		{"0x" + fprV4, false},
		{fprV4[:39] + "g", false},
		{fprV4[:39] + "G", false},
		{fprV4[:38] + "é", false}, // 40 bytes, 39 characters
		{fprV4[:20] + "\t" + fprV4[20:], false},
		{fprV4 + "\n", false},
		{strings.Repeat(" ", 40), false},
		{"０１２３４５６７８９０１２３４５６７８９０１２３４５６７８９０１２３４５６７８９", false}, // full-width digits
	} {
		if got := IsFingerprint(tc.in); got != tc.want {
			t.Errorf("IsFingerprint(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
