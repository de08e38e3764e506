package config

import (
	"strconv"
	"strings"
	"testing"
)

// TestMilterAndLogOptions checks the validation of the daemon's options.
func TestMilterAndLogOptions(t *testing.T) {
	for _, tc := range []struct {
		src  string
		key  string // "" means valid
		line int
	}{
		{"[milter]\nmax_message_size = 10485760\ntrace_header = \"\"\nmixed_local = \"encrypt\"\n", "", 0},
		{"[milter]\nmax_message_size = 1000\n", "milter.max_message_size", 2},
		{"[milter]\nmax_message_size = 2147483648\n", "milter.max_message_size", 2},
		{"[milter]\ntrace_header = \"X Lacre\"\n", "milter.trace_header", 2},
		{"[milter]\ntrace_header = \"X-Lacre:\"\n", "milter.trace_header", 2},
		{"[milter]\nmixed_local = \"bounce\"\n", "milter.mixed_local", 2},
		{"[milter]\nshutdown_timeout = \"0s\"\n", "milter.shutdown_timeout", 2},
		{"[milter]\nshutdown_timeout = \"1h\"\n", "milter.shutdown_timeout", 2},
		{"[milter]\nlookup_timeout = \"30s\"\n", "milter.lookup_timeout", 2},
		{"[milter]\nlookup_timeout = \"1ms\"\n", "milter.lookup_timeout", 2},
		{"[milter]\nmax_connections = 0\n", "milter.max_connections", 2},
		{"[milter]\nmax_connections = 1000000\n", "milter.max_connections", 2},
		{"[milter]\nidle_timeout = \"30s\"\n", "milter.idle_timeout", 2},
		{"[milter]\nidle_timeout = \"48h\"\n", "milter.idle_timeout", 2},
		{"[milter]\npacket_timeout = \"0s\"\n", "milter.packet_timeout", 2},
		{"[milter]\npacket_timeout = \"1h\"\n", "milter.packet_timeout", 2},
		{"[milter]\nmax_connections = 1\nidle_timeout = \"10m\"\npacket_timeout = \"1s\"\n", "", 0},
		{"[milter]\nmax_connections = 100000\nidle_timeout = \"24h\"\npacket_timeout = \"10m\"\n", "", 0},
		{"\n[log]\nlevel = \"verbose\"\n", "log.level", 3},
		{"[log]\nformat = \"xml\"\n", "log.format", 2},
	} {
		_, err := parse("lacre.toml", []byte(tc.src))
		if tc.key == "" {
			if err != nil {
				t.Errorf("%q: %v", tc.src, err)
			}
			continue
		}
		want := "line " + strconv.Itoa(tc.line) + ": " + tc.key + ": "
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want it to contain %q", tc.src, err, want)
			continue
		}
		t.Log(err)
	}
}
