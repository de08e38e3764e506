package main

import (
	"lacre.io/milter/config"
	"lacre.io/milter/keys"
)

// The packages below cmd take option structs of their own; these build
// them from the configuration, so that config is read in one place.

// normalizer is the address normaliser of [keys].
func normalizer(c *config.Config) keys.Normalizer {
	return keys.Normalizer{FoldLocalPartCase: c.Keys.FoldLocalPartCase, SubaddressSeparator: c.Keys.SubaddressSeparator}
}

// keyPolicy is the key policy of [keys].
func keyPolicy(c *config.Config) keys.Policy {
	return keys.Policy{MinRSABits: c.Keys.MinRSABits, Normalizer: normalizer(c)}
}

// resolverOptions are the resolver's options: the policy, [static],
// [store] cache_ttl and [encryption] protect_headers.
func resolverOptions(c *config.Config) keys.ResolverOptions {
	return keys.ResolverOptions{
		Policy:         keyPolicy(c),
		NeverEncrypt:   c.Static.NeverEncrypt,
		Addresses:      c.Static.Addresses,
		Domains:        c.Static.Domains,
		CacheTTL:       c.Store.CacheTTL.D(),
		ProtectHeaders: c.Encryption.ProtectHeaders,
	}
}
