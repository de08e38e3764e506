package keys

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/mail"
	"sort"
	"strings"
	"time"

	pgperrors "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

// Rule names a requirement that a submitted key failed. Callers (the CLI,
// the web service) can show the message as is; tests match on the rule.
type Rule string

// The rules a key must pass, in the order they are checked.
const (
	RuleFormat     Rule = "format"      // not OpenPGP data, or malformed
	RuleTooLarge   Rule = "size"        // larger than MaxKeyBytes
	RuleSecret     Rule = "public-only" // secret key material present
	RuleSelfSig    Rule = "self-signature"
	RuleRevoked    Rule = "revoked"
	RuleExpired    Rule = "expired"
	RuleStrength   Rule = "strength"
	RuleEncryption Rule = "encryption-subkey"
	RuleUserID     Rule = "user-id"
)

// RejectError says why a key was refused.
type RejectError struct {
	Rule Rule
	Key  string // "0x…" key ID, "" when the data did not parse as a key
	Msg  string

	cause error // ErrStaleCopy, or nil
}

// Unwrap returns ErrStaleCopy when the store's copy of the key won.
func (e *RejectError) Unwrap() error { return e.cause }

func (e *RejectError) Error() string {
	if e.Key == "" {
		return e.Msg
	}
	return "key " + e.Key + ": " + e.Msg
}

func reject(k *openpgp.Entity, rule Rule, format string, args ...any) *RejectError {
	id := ""
	if k != nil {
		id = "0x" + strings.ToUpper(k.PrimaryKey.KeyIdString())
	}
	return &RejectError{Rule: rule, Key: id, Msg: fmt.Sprintf(format, args...)}
}

// Policy is the set of rules a key must pass to be stored or used.
type Policy struct {
	// MinRSABits is the smallest RSA modulus accepted ([keys]
	// min_rsa_bits); 0 means 2048.
	MinRSABits int
	// Normalizer compares a key's User IDs with the address it is for.
	Normalizer Normalizer
	// TrustAnchors, when not nil, requires S/MIME certificates to chain to
	// one of these roots ([smime] trust_anchors; see CertificatePolicy).
	TrustAnchors *x509.CertPool
}

// certificates is the policy for X.509 keys.
func (p Policy) certificates() CertificatePolicy {
	return CertificatePolicy{Policy: p, TrustAnchors: p.TrustAnchors}
}

// packetConfig is the go-crypto view of the policy. Key selection for
// encryption uses the same config, so a key that passed Validate is the
// key that Encrypt will accept.
func (p Policy) packetConfig(now time.Time) *packet.Config {
	bits := p.MinRSABits
	if bits == 0 {
		bits = 2048
	}
	return &packet.Config{MinRSABits: uint16(bits), Time: func() time.Time { return now }}
}

// Validate checks that k may encrypt mail for address at time now. The
// address must already be normalised with p.Normalizer. The error is a
// *RejectError naming the first rule that failed.
func (p Policy) Validate(k *Key, address string, now time.Time) error {
	if k.cert != nil {
		return p.certificates().Validate(k.cert, address, now)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	e := k.entity
	if e.PrivateKey != nil || hasSecretSubkey(e) {
		return reject(e, RuleSecret, "contains secret key material; submit only the public key")
	}
	if err := p.usable(k, now); err != nil {
		return err
	}
	return p.checkUserID(k, address, now)
}

// Usable checks the rules that can change over time (revocation, expiry,
// strength, a usable encryption subkey) without the User ID rule. The
// milter calls it before encrypting, because a key that was valid when it
// was registered may have expired since.
func (p Policy) Usable(k *Key, now time.Time) error {
	if k.cert != nil {
		return p.certificates().Usable(k.cert, now)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return p.usable(k, now)
}

// usable is Usable with k's lock held.
func (p Policy) usable(k *Key, now time.Time) error {
	e := k.entity
	cfg := p.packetConfig(now)
	if e.PrimaryKey.CreationTime.After(now) {
		return reject(e, RuleSelfSig, "the key was created in the future (%s); check the clock of the computer that made it",
			e.PrimaryKey.CreationTime.UTC().Format(time.RFC3339))
	}
	if _, err := e.PrimarySelfSignature(time.Time{}, cfg); err != nil {
		return reject(e, RuleSelfSig, "the primary key has no valid self-signature")
	}
	if e.Revoked(now) {
		return reject(e, RuleRevoked, "the key has been revoked%s", revocationReason(e.Revocations))
	}
	if _, err := e.VerifyPrimaryKey(now, cfg); err != nil {
		if errors.Is(err, pgperrors.ErrKeyExpired) {
			return reject(e, RuleExpired, "the key expired on %s", dateOr(k.expires(), "an unknown date"))
		}
		return reject(e, RuleSelfSig, "the primary key is not valid now: %v", err)
	}
	if err := p.checkStrength(e.PrimaryKey, cfg); err != nil {
		return reject(e, RuleStrength, "the primary key %s", err)
	}
	ek, err := e.EncryptionKeyWithError(now, cfg)
	if err != nil {
		return reject(e, RuleEncryption, "%s", p.explainNoEncryptionKey(e, now, cfg))
	}
	// go-crypto checks RSA sizes only for RSA sign-and-encrypt keys, not
	// for RSA encrypt-only (algorithm 2) subkeys: check the one it chose.
	if err := p.checkStrength(ek.PublicKey, cfg); err != nil {
		return reject(e, RuleStrength, "the encryption subkey 0x%s %s", strings.ToUpper(ek.PublicKey.KeyIdString()), err)
	}
	return nil
}

// checkUpdate decides whether submitted may replace stored, a copy of the
// same key already in the store (ErrStaleCopy when it may not). Storing replaces the copy, so an older
// export would silently drop a revocation or an extended expiry that the
// store has: refuse copies that are older or lack a revocation.
func (p Policy) checkUpdate(stored, submitted *Key, now time.Time) error {
	if stored.cert != nil || submitted.cert != nil {
		// A certificate's fingerprint covers all of it: the same
		// fingerprint is the same certificate, never a newer copy.
		return nil
	}
	// One lock at a time: both keys have the same fingerprint.
	revoked := func(k *Key) bool {
		k.mu.Lock()
		defer k.mu.Unlock()
		return k.entity.Revoked(now)
	}
	if revoked(stored) && !revoked(submitted) {
		return stale(reject(submitted.entity, RuleRevoked, "the key store holds a revoked copy of this key; a copy without the revocation cannot replace it"))
	}
	if s, n := latestSelfSignature(stored.entity), latestSelfSignature(submitted.entity); n.Before(s) {
		return stale(reject(submitted.entity, RuleSelfSig, "the key store holds a newer copy of this key (signed %s, this one %s); export the current key (gpg --export --armor) and submit that",
			s.UTC().Format("2006-01-02"), n.UTC().Format("2006-01-02")))
	}
	return nil
}

func stale(e *RejectError) *RejectError {
	e.cause = ErrStaleCopy
	return e
}

// latestSelfSignature returns the creation time of the newest signature
// the key made on itself (on its User IDs, subkeys, or revocations).
func latestSelfSignature(e *openpgp.Entity) time.Time {
	var t time.Time
	later := func(sig *packet.Signature) {
		// go-crypto keeps third-party certifications apart
		// (Identity.OtherCertifications): these lists are self-signatures.
		if sig != nil && sig.CreationTime.After(t) {
			t = sig.CreationTime
		}
	}
	for _, r := range e.Revocations {
		later(r.Packet)
	}
	for _, d := range e.DirectSignatures {
		later(d.Packet)
	}
	for _, id := range e.Identities {
		for _, s := range id.SelfCertifications {
			later(s.Packet)
		}
		for _, s := range id.Revocations {
			later(s.Packet)
		}
	}
	for _, sk := range e.Subkeys {
		for _, s := range sk.Bindings {
			later(s.Packet)
		}
		for _, s := range sk.Revocations {
			later(s.Packet)
		}
	}
	return t
}

// checkStrength repeats go-crypto's key requirements in words an operator
// understands ("RSA 1024 bits, below the minimum of 2048").
func (p Policy) checkStrength(pk *packet.PublicKey, cfg *packet.Config) error {
	algo := pk.PubKeyAlgo
	switch algo {
	case packet.PubKeyAlgoRSA, packet.PubKeyAlgoRSAEncryptOnly, packet.PubKeyAlgoRSASignOnly:
		bits, err := pk.BitLength()
		if err != nil {
			return fmt.Errorf("has an unreadable RSA modulus")
		}
		if int(bits) < int(cfg.MinimumRSABits()) {
			return fmt.Errorf("is RSA %d bits, below the minimum of %d", bits, cfg.MinimumRSABits())
		}
	case packet.PubKeyAlgoDSA, packet.PubKeyAlgoElGamal:
		return fmt.Errorf("uses %s, which is no longer accepted; use RSA ≥ %d bits or Curve25519", algoName(algo), cfg.MinimumRSABits())
	case packet.PubKeyAlgoECDH, packet.PubKeyAlgoECDSA, packet.PubKeyAlgoEdDSA:
		curve, err := pk.Curve()
		if err != nil || cfg.RejectCurve(curve) {
			return fmt.Errorf("uses the elliptic curve %q, which is not accepted", curve)
		}
	}
	return nil
}

// explainNoEncryptionKey says why no (sub)key can encrypt now, naming each
// candidate's state, e.g. "no valid encryption subkey (the only one expired
// on 2024-05-01)".
func (p Policy) explainNoEncryptionKey(e *openpgp.Entity, now time.Time, cfg *packet.Config) string {
	var why []string
	for _, s := range e.Subkeys {
		sig, err := s.LatestValidBindingSignature(time.Time{}, cfg)
		if err != nil {
			continue
		}
		if sig.FlagsValid && !sig.FlagEncryptCommunications && !sig.FlagEncryptStorage {
			continue // a signing subkey is not a candidate
		}
		id := "0x" + strings.ToUpper(s.PublicKey.KeyIdString())
		switch {
		case !s.PublicKey.PubKeyAlgo.CanEncrypt():
			continue
		case s.Revoked(sig, now):
			why = append(why, id+" was revoked")
		case s.PublicKey.CreationTime.After(now):
			why = append(why, id+" is created in the future")
		case s.Expired(sig, now):
			exp := "an unknown date"
			if sig.KeyLifetimeSecs != nil {
				exp = s.PublicKey.CreationTime.Add(time.Duration(*sig.KeyLifetimeSecs) * time.Second).UTC().Format("2006-01-02")
			}
			why = append(why, id+" expired on "+exp)
		default:
			if err := p.checkStrength(s.PublicKey, cfg); err != nil {
				why = append(why, id+" "+err.Error())
			} else {
				why = append(why, id+" is not usable")
			}
		}
	}
	switch len(why) {
	case 0:
		return "no encryption subkey (the key can only sign; create one with gpg --quick-add-key FPR cv25519 encr)"
	case 1:
		return "no valid encryption subkey (the only one, " + why[0] + ")"
	default:
		return "no valid encryption subkey (" + strings.Join(why, "; ") + ")"
	}
}

// checkUserID requires a valid, self-signed, unrevoked User ID whose e-mail
// address is address. Without it, anybody could register their own key
// for somebody else's address (the confirmation mail is the second guard).
func (p Policy) checkUserID(k *Key, address string, now time.Time) error {
	cfg := p.packetConfig(now)
	var seen []string
	invalid := false
	for name, id := range k.entity.Identities {
		email := userIDAddress(id.UserId, name)
		if email == "" {
			continue
		}
		norm, err := p.Normalizer.Normalize(email)
		if err != nil {
			continue
		}
		seen = append(seen, norm)
		if norm != address {
			continue
		}
		if sig, err := id.Verify(now, cfg); err == nil && sig != nil {
			return nil
		}
		invalid = true // another User ID with the same address may still be valid
	}
	if invalid {
		return reject(k.entity, RuleUserID, "the User ID for %s has no valid self-signature now (revoked or expired)", address)
	}
	sort.Strings(seen)
	has := "no e-mail address at all"
	if len(seen) > 0 {
		has = strings.Join(seen, ", ")
	}
	return reject(k.entity, RuleUserID, "no User ID carries the address %s (the key has: %s)", address, has)
}

// userIDAddress extracts the e-mail address of a User ID, which is
// conventionally "Name <addr>" but may be a bare address.
func userIDAddress(uid *packet.UserId, name string) string {
	if uid != nil && uid.Email != "" {
		return uid.Email
	}
	if a, err := mail.ParseAddress(name); err == nil {
		return a.Address
	}
	if strings.Contains(name, "@") && !strings.ContainsAny(name, " <>") {
		return name
	}
	return ""
}

func revocationReason(revs []*packet.VerifiableSignature) string {
	for _, r := range revs {
		if r.Packet != nil && r.Packet.RevocationReasonText != "" {
			return fmt.Sprintf(" on %s (reason: %q)", r.Packet.CreationTime.UTC().Format("2006-01-02"), r.Packet.RevocationReasonText)
		}
		if r.Packet != nil {
			return " on " + r.Packet.CreationTime.UTC().Format("2006-01-02")
		}
	}
	return ""
}

func dateOr(t time.Time, alt string) string {
	if t.IsZero() {
		return alt
	}
	return t.UTC().Format("2006-01-02")
}

func algoName(a packet.PublicKeyAlgorithm) string {
	switch a {
	case packet.PubKeyAlgoDSA:
		return "DSA"
	case packet.PubKeyAlgoElGamal:
		return "ElGamal"
	}
	return fmt.Sprintf("algorithm %d", a)
}
