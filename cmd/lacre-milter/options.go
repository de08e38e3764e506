package main

import (
	"fmt"

	"lacre.io/milter/config"
	"lacre.io/milter/crypto/smime"
	"lacre.io/milter/keys"
)

// The packages below cmd take option structs of their own; these build
// them from the configuration, so that config is read in one place.

// normalizer is the address normaliser of [keys].
func normalizer(c *config.Config) keys.Normalizer {
	return keys.Normalizer{FoldLocalPartCase: c.Keys.FoldLocalPartCase, SubaddressSeparator: c.Keys.SubaddressSeparator}
}

// keyPolicy is the key policy of [keys] and [smime] trust_anchors: what
// every command that admits or uses a key applies ("keys add", the
// imports, the registration service, the milter's resolver).
func keyPolicy(c *config.Config) (keys.Policy, error) {
	anchors, err := c.TrustAnchorPool()
	if err != nil {
		return keys.Policy{}, err
	}
	return keys.Policy{MinRSABits: c.Keys.MinRSABits, Normalizer: normalizer(c), TrustAnchors: anchors}, nil
}

// resolverOptions are the resolver's options: the policy, [static],
// [store] cache_ttl, [encryption] protect_headers and pgp_format.
func resolverOptions(c *config.Config) (keys.ResolverOptions, error) {
	p, err := keyPolicy(c)
	if err != nil {
		return keys.ResolverOptions{}, err
	}
	var formats map[string]keys.Format
	if len(c.Static.Formats) > 0 {
		formats = make(map[string]keys.Format, len(c.Static.Formats))
		for a, f := range c.Static.Formats {
			formats[a] = keys.Format(f)
		}
	}
	return keys.ResolverOptions{
		Policy:         p,
		NeverEncrypt:   c.Static.NeverEncrypt,
		Addresses:      c.Static.Addresses,
		Domains:        c.Static.Domains,
		CacheTTL:       c.Store.CacheTTL.D(),
		ProtectHeaders: c.Encryption.ProtectHeaders,
		PGPFormat:      keys.Format(c.Encryption.PGPFormat),
		Formats:        formats,
	}, nil
}

// smimeOptions are the S/MIME choices of [smime] for the milter.
func smimeOptions(c *config.Config) (smime.Options, error) {
	var o smime.Options
	switch c.SMIME.Cipher {
	case config.CipherAES256CBC:
		o.Cipher = smime.AES256CBC
	case config.CipherAES256GCM:
		o.Cipher = smime.AES256GCM
	default:
		return o, fmt.Errorf("smime.cipher: %q is not one of %q, %q", c.SMIME.Cipher, config.CipherAES256CBC, config.CipherAES256GCM)
	}
	switch c.SMIME.RSAPadding {
	case config.PaddingPKCS1v15:
		o.RSAPadding = smime.PKCS1v15
	case config.PaddingOAEP:
		o.RSAPadding = smime.OAEP
	default:
		return o, fmt.Errorf("smime.rsa_padding: %q is not one of %q, %q", c.SMIME.RSAPadding, config.PaddingPKCS1v15, config.PaddingOAEP)
	}
	o.SubjectKeyID = c.SMIME.SubjectKeyID
	return o, nil
}
