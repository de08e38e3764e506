//go:build race

package crypto

// raceEnabled: the race detector changes allocation counts.
const raceEnabled = true
