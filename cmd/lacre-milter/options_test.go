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
	got := resolverOptions(c)
	want := keys.ResolverOptions{
		Policy:         keys.Policy{MinRSABits: 3072, Normalizer: keys.Normalizer{FoldLocalPartCase: false, SubaddressSeparator: "-"}},
		NeverEncrypt:   []string{"postmaster@example.org"},
		Addresses:      map[string][]string{"a@example.org": {"AB"}},
		Domains:        map[string][]string{"example.net": {"CD"}},
		CacheTTL:       7 * time.Second,
		ProtectHeaders: true,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("resolverOptions = %+v\nwant %+v", got, want)
	}
	if d := resolverOptions(config.Default()); d.Policy.Normalizer != (keys.Normalizer{FoldLocalPartCase: true, SubaddressSeparator: "+"}) || d.CacheTTL != 30*time.Second {
		t.Errorf("defaults: %+v", d)
	}
}
