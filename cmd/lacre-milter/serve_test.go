package main

import (
	"bytes"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"lacre.io/milter/aliases"
	"lacre.io/milter/config"
	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/milter"
)

// TestMilterOptions: every policy string of the configuration maps to its
// milter constant, and the configuration's defaults are the milter's
// (a zero option there means the same as the default here).
func TestMilterOptions(t *testing.T) {
	c := config.Default()
	c.Aliases.Source = config.AliasesNone // the Postfix expansion: TestAliasOptions
	d := c.Milter
	if d.MaxMessageSize != milter.DefaultMaxMessageSize || d.LookupTimeout.D() != milter.DefaultLookupTimeout ||
		d.MaxConnections != milter.DefaultMaxConnections || d.IdleTimeout.D() != milter.DefaultIdleTimeout ||
		d.PacketTimeout.D() != milter.DefaultPacketTimeout {
		t.Errorf("config.Default().Milter %+v differs from milter's defaults", d)
	}
	for s, want := range map[string]milter.UnusableKeyPolicy{config.UnusableTempfail: milter.UnusableKeyTempfail,
		config.UnusableReject: milter.UnusableKeyReject, config.UnusableClear: milter.UnusableKeyClear} {
		c.Encryption.UnusableKey = s
		o, err := milterOptions(c, keystest.NewStore(), nil)
		if err != nil || o.UnusableKey != want || o.UnusableKey.String() != s {
			t.Errorf("unusable_key %q: %v %v", s, o.UnusableKey, err)
		}
	}
	for s, want := range map[string]milter.MixedLocalPolicy{config.MixedLocalHold: milter.MixedLocalHold, config.MixedLocalEncrypt: milter.MixedLocalEncrypt} {
		c.Milter.MixedLocal = s
		o, err := milterOptions(c, keystest.NewStore(), nil)
		if err != nil || o.MixedLocal != want || o.MixedLocal.String() != s {
			t.Errorf("mixed_local %q: %v %v", s, o.MixedLocal, err)
		}
	}
	c.Milter.MixedLocal = "bounce"
	if _, err := milterOptions(c, keystest.NewStore(), nil); err == nil {
		t.Error("an unknown mixed_local was mapped")
	}
	c = config.Default()
	c.Aliases.Source = config.AliasesNone
	c.Milter.LookupTimeout = config.Duration(3 * time.Second)
	c.Encryption.HideRecipients = true
	o, err := milterOptions(c, keystest.NewStore(), nil)
	if err != nil || o.LookupTimeout != 3*time.Second || !o.HideRecipients || o.Keys == nil || o.TraceHeader != "X-Lacre" {
		t.Errorf("options %+v %v", o, err)
	}
}

// TestAliasOptions: [aliases] mixed maps to its milter policy (with the
// re-injection service for "reinject"), source = "none" to no expansion,
// and the defaults are the milter's.
func TestAliasOptions(t *testing.T) {
	c := config.Default()
	if c.Aliases.ReinjectTimeout.D() != milter.DefaultReinjectTimeout || c.Aliases.Mixed != config.MixedReinject {
		t.Errorf("config.Default().Aliases %+v differs from milter's defaults", c.Aliases)
	}
	c.Aliases.Source = config.AliasesNone
	for s, want := range map[string]milter.MixedAliasPolicy{config.MixedReinject: milter.MixedAliasReinject, config.MixedDefer: milter.MixedAliasDefer} {
		c.Aliases.Mixed = s
		o, err := milterOptions(c, keystest.NewStore(), nil)
		if err != nil || o.MixedAlias != want || o.MixedAlias.String() != s {
			t.Errorf("mixed %q: %v %v", s, o.MixedAlias, err)
		}
		if _, none := o.Expander.(aliases.None); !none {
			t.Errorf("source = \"none\": expander %T", o.Expander)
		}
		ri, _ := o.Reinject.(*milter.SMTPReinjector)
		if (s == config.MixedReinject) != (ri != nil && ri.Addr == config.DefaultReinject) {
			t.Errorf("mixed %q: reinjector %+v", s, o.Reinject)
		}
	}
	// A Postfix configuration that cannot be read stops the milter from
	// starting, rather than letting alias mail pass unexpanded.
	c = config.Default()
	c.Aliases.PostfixConfigDir = t.TempDir() // no main.cf
	if _, err := milterOptions(c, keystest.NewStore(), nil); err == nil || !strings.Contains(err.Error(), `source = "none"`) {
		t.Errorf("an unreadable Postfix configuration: %v", err)
	}
}

// TestAliasSourceAuto: the default source expands with Postfix where
// postconf is installed, and starts without expansion (and says so)
// where it is not.
func TestAliasSourceAuto(t *testing.T) {
	c := config.Default()
	if c.Aliases.Source != config.AliasesAuto {
		t.Fatalf("default source %q", c.Aliases.Source)
	}
	t.Setenv("PATH", t.TempDir())
	saved := postconfFallback
	defer func() { postconfFallback = saved }()
	postconfFallback = filepath.Join(t.TempDir(), "postconf")

	o, err := milterOptions(c, keystest.NewStore(), nil)
	if err != nil {
		t.Fatalf("auto without Postfix: %v", err)
	}
	if _, none := o.Expander.(aliases.None); !none {
		t.Errorf("auto without Postfix: expander %T, want aliases.None", o.Expander)
	}
	var out strings.Builder
	if err := checkAliases(c, &out); err != nil || !strings.Contains(out.String(), "no Postfix on this host") {
		t.Errorf("check-config says %q, %v", out.String(), err)
	}
	// A named Postfix configuration means Postfix, found or not.
	c.Aliases.Source = config.AliasesAuto
	c.Aliases.PostfixConfigDir = t.TempDir()
	if got := aliasSource(c.Aliases); got != config.AliasesPostfix {
		t.Errorf("auto with postfix_config_dir: %q", got)
	}
	// With postconf where aliases.NewPostfix looks, auto is Postfix, once
	// Postfix is configured (a main.cf).
	if p, err := exec.LookPath("postconf"); err == nil || fileExists("/usr/sbin/postconf") {
		if err != nil {
			p = "/usr/sbin/postconf"
		}
		savedMain := postfixMainCf
		defer func() { postfixMainCf = savedMain }()
		postconfFallback = p
		postfixMainCf = filepath.Join(t.TempDir(), "main.cf")
		c.Aliases.PostfixConfigDir = ""
		if got := aliasSource(c.Aliases); got != config.AliasesNone {
			t.Errorf("auto with %s but no main.cf: %q", p, got)
		}
		if err := os.WriteFile(postfixMainCf, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if got := aliasSource(c.Aliases); got != config.AliasesPostfix {
			t.Errorf("auto with %s and a main.cf: %q", p, got)
		}
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

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
