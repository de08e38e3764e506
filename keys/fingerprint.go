package keys

import "strings"

// IsFingerprint reports whether s is a v4 (40 hex digits) or v6 (64 hex
// digits) fingerprint; spaces are ignored so that gpg's grouped output
// can be pasted. Key IDs (16 digits) are refused: they are too short to
// name a key safely.
func IsFingerprint(s string) bool {
	s = strings.ReplaceAll(s, " ", "")
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
			return false
		}
	}
	return true
}

// FormatFingerprint normalises a fingerprint as given by an operator
// (any case, spaces from gpg's grouped output) to the stored form: upper
// case hex without spaces. It does not check s; see IsFingerprint.
func FormatFingerprint(s string) string {
	return strings.ToUpper(strings.ReplaceAll(s, " ", ""))
}
