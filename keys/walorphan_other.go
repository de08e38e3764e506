//go:build !linux

package keys

import "errors"

// walInUse cannot tell without open file description locks: a replaced
// store whose write-ahead log is still there waits for the operator.
func walInUse(abs string) (bool, error) {
	return true, errors.New("cannot check whether the write-ahead log is in use on this system")
}
