package main

import (
	"reflect"
	"testing"
	"time"

	"lacre.io/milter/config"
	"lacre.io/milter/keys"
)

// TestResolverOptions: every option of lacre.toml that the resolver used
// to read from the config reaches keys.ResolverOptions.
func TestResolverOptions(t *testing.T) {
	c := config.Default()
	c.Keys = config.Keys{MinRSABits: 3072, FoldLocalPartCase: false, SubaddressSeparator: "-"}
	c.Store.CacheTTL = config.Duration(7 * time.Second)
	c.Encryption.ProtectHeaders = true
	c.Static = config.Static{
		Addresses:    map[string][]string{"a@example.org": {"AB"}},
		Domains:      map[string][]string{"example.net": {"CD"}},
		NeverEncrypt: []string{"postmaster@example.org"},
	}
	c.Encryption.PGPFormat = "pgp-inline"
	c.Static.Formats = map[string]string{"b@example.org": "smime"}
	got, err := resolverOptions(c)
	if err != nil {
		t.Fatal(err)
	}
	want := keys.ResolverOptions{
		Policy:         keys.Policy{MinRSABits: 3072, Normalizer: keys.Normalizer{FoldLocalPartCase: false, SubaddressSeparator: "-"}},
		NeverEncrypt:   []string{"postmaster@example.org"},
		Addresses:      map[string][]string{"a@example.org": {"AB"}},
		Domains:        map[string][]string{"example.net": {"CD"}},
		CacheTTL:       7 * time.Second,
		ProtectHeaders: true,
		PGPFormat:      keys.FormatPGPInline,
		Formats:        map[string]keys.Format{"b@example.org": keys.FormatSMIME},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("resolverOptions = %+v\nwant %+v", got, want)
	}
	if d, err := resolverOptions(config.Default()); err != nil || d.PGPFormat != keys.FormatPGPMIME || d.Formats != nil || d.Policy.TrustAnchors != nil || d.Policy.Normalizer != (keys.Normalizer{FoldLocalPartCase: true, SubaddressSeparator: "+"}) || d.CacheTTL != 30*time.Second {
		t.Errorf("defaults: %+v", d)
	}
}
