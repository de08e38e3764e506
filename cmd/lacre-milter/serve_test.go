package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"lacre.io/milter/config"
	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/milter"
)

// TestMilterOptions: every policy string of the configuration maps to its
// milter constant, and the configuration's defaults are the milter's
// (a zero option there means the same as the default here).
func TestMilterOptions(t *testing.T) {
	c := config.Default()
	d := c.Milter
	if d.MaxMessageSize != milter.DefaultMaxMessageSize || d.LookupTimeout.D() != milter.DefaultLookupTimeout ||
		d.MaxConnections != milter.DefaultMaxConnections || d.IdleTimeout.D() != milter.DefaultIdleTimeout ||
		d.PacketTimeout.D() != milter.DefaultPacketTimeout {
		t.Errorf("config.Default().Milter %+v differs from milter's defaults", d)
	}
	for s, want := range map[string]milter.UnusableKeyPolicy{config.UnusableTempfail: milter.UnusableKeyTempfail,
		config.UnusableReject: milter.UnusableKeyReject, config.UnusableClear: milter.UnusableKeyClear} {
		c.Encryption.UnusableKey = s
		o, err := milterOptions(c, keystest.NewStore())
		if err != nil || o.UnusableKey != want || o.UnusableKey.String() != s {
			t.Errorf("unusable_key %q: %v %v", s, o.UnusableKey, err)
		}
	}
	for s, want := range map[string]milter.MixedLocalPolicy{config.MixedLocalHold: milter.MixedLocalHold, config.MixedLocalEncrypt: milter.MixedLocalEncrypt} {
		c.Milter.MixedLocal = s
		o, err := milterOptions(c, keystest.NewStore())
		if err != nil || o.MixedLocal != want || o.MixedLocal.String() != s {
			t.Errorf("mixed_local %q: %v %v", s, o.MixedLocal, err)
		}
	}
	c.Milter.MixedLocal = "bounce"
	if _, err := milterOptions(c, keystest.NewStore()); err == nil {
		t.Error("an unknown mixed_local was mapped")
	}
	c = config.Default()
	c.Milter.LookupTimeout = config.Duration(3 * time.Second)
	c.Encryption.HideRecipients = true
	o, err := milterOptions(c, keystest.NewStore())
	if err != nil || o.LookupTimeout != 3*time.Second || !o.HideRecipients || o.Keys == nil || o.TraceHeader != "X-Lacre" {
		t.Errorf("options %+v %v", o, err)
	}
}

// TestMilterSocketMode: the unix socket is not writable by other users.
func TestMilterSocketMode(t *testing.T) {
	dir, err := os.MkdirTemp("", "lm") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "m.sock")
	ln, err := listenMilter("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want 0660", fi.Mode().Perm())
	}
}

// TestLibraryLogIsStructured: go-milter's warnings reach the structured
// log, not the standard log package.
func TestLibraryLogIsStructured(t *testing.T) {
	prev := gomilter.LogWarning
	defer func() { gomilter.LogWarning = prev }()
	var b bytes.Buffer
	routeLibraryLog(slog.New(slog.NewTextHandler(&b, nil)))
	gomilter.LogWarning("Error reading milter command: %v", "boom")
	if got := b.String(); !strings.Contains(got, `level=WARN msg="milter protocol" component=go-milter detail="Error reading milter command: boom"`) {
		t.Errorf("log: %q", got)
	}
}
