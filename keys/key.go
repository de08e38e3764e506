// Package keys knows whose OpenPGP keys to use: it parses and validates
// submitted public keys, normalises addresses, stores address→key
// bindings (SQLite) and answers "which keys encrypt mail to this address?"
// fast enough to be asked at RCPT time.
package keys

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	pgperrors "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

// MaxKeyBytes bounds one submitted key file. Real certificates with many
// signatures stay well below 1 MiB; anything larger is an attack or a mistake.
const MaxKeyBytes = 1 << 20

// Key is one parsed OpenPGP certificate (a transferable public key).
//
// One Key may be shared by concurrent sessions (the lookup cache hands the
// same Key to every message for its address). go-crypto checks a
// certificate's signatures lazily, when a question needs them, and stores
// the result in the signature (packet.VerifiableSignature.Valid): asking
// Entity about validity writes to it. So every such question goes through
// the key's lock: the methods of Key and Policy take it, and code that
// hands Entity to go-crypto itself (crypto.Encrypt) holds it with
// LockKeys.
type Key struct {
	Entity      *openpgp.Entity
	Fingerprint string // upper-case hex, 40 (v4) or 64 (v6) digits
	// Raw is the binary certificate as stored and exported.
	Raw []byte

	mu sync.Mutex // see above
}

// LockKeys locks the keys for a caller that uses their Entities with
// go-crypto directly, and returns the function that unlocks them. The
// keys must have distinct fingerprints; they are locked in fingerprint
// order, so two callers never wait for each other in a cycle. Hold the
// locks for the key work only (choosing the subkey, wrapping the session
// key), not while encrypting the message.
func LockKeys(ks []*Key) (unlock func()) {
	sorted := slices.Clone(ks)
	slices.SortFunc(sorted, func(a, b *Key) int { return strings.Compare(a.Fingerprint, b.Fingerprint) })
	for i, k := range sorted {
		if i > 0 && sorted[i-1].Fingerprint == k.Fingerprint {
			panic("keys.LockKeys: two keys with fingerprint " + k.Fingerprint)
		}
		k.mu.Lock()
	}
	return func() {
		for _, k := range sorted {
			k.mu.Unlock()
		}
	}
}

// KeyID returns the 64-bit key ID in the "0x…" form operators know from gpg.
func (k *Key) KeyID() string { return "0x" + strings.ToUpper(k.Entity.PrimaryKey.KeyIdString()) }

// Created returns the primary key's creation time.
func (k *Key) Created() time.Time { return k.Entity.PrimaryKey.CreationTime }

// Expires returns when the primary key expires, or the zero time if never.
func (k *Key) Expires() time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.expires()
}

func (k *Key) expires() time.Time {
	sig, err := k.Entity.PrimarySelfSignature(time.Time{}, nil)
	if err != nil || sig.KeyLifetimeSecs == nil || *sig.KeyLifetimeSecs == 0 {
		return time.Time{}
	}
	return k.Created().Add(time.Duration(*sig.KeyLifetimeSecs) * time.Second)
}

// NextChange returns the first instant after now at which the key's
// usability can change with time alone: the primary key, a subkey or a
// self-signature expiring, or a signature dated in the future becoming
// valid. It is zero when nothing is due. It errs on the early side (any
// signature's expiry counts), which only costs a fresh lookup.
//
// go-crypto compares whole Unix seconds (expired when now.Unix() >
// expiry.Unix()), so an expiry takes effect one second after its second.
func (k *Key) NextChange(now time.Time) time.Time {
	var next time.Time
	consider := func(t time.Time) {
		if t.After(now) && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	expiry := func(created time.Time, secs *uint32) {
		if secs != nil && *secs != 0 {
			consider(time.Unix(created.Add(time.Duration(*secs)*time.Second).Unix()+1, 0))
		}
	}
	sig := func(vs *packet.VerifiableSignature, keyCreated time.Time) {
		if vs == nil || vs.Packet == nil {
			return
		}
		p := vs.Packet
		consider(time.Unix(p.CreationTime.Unix(), 0))
		expiry(p.CreationTime, p.SigLifetimeSecs)
		expiry(keyCreated, p.KeyLifetimeSecs)
	}
	e := k.Entity
	primary := e.PrimaryKey.CreationTime
	consider(time.Unix(primary.Unix(), 0)) // a key made "in the future"
	for _, vs := range e.DirectSignatures {
		sig(vs, primary)
	}
	for _, vs := range e.Revocations {
		sig(vs, primary)
	}
	for _, id := range e.Identities {
		for _, vs := range id.SelfCertifications {
			sig(vs, primary)
		}
		for _, vs := range id.Revocations {
			sig(vs, primary)
		}
	}
	for _, sk := range e.Subkeys {
		consider(time.Unix(sk.PublicKey.CreationTime.Unix(), 0))
		for _, vs := range sk.Bindings {
			sig(vs, sk.PublicKey.CreationTime)
			if vs != nil && vs.Packet != nil && vs.Packet.EmbeddedSignature != nil {
				es := vs.Packet.EmbeddedSignature
				consider(time.Unix(es.CreationTime.Unix(), 0))
				expiry(es.CreationTime, es.SigLifetimeSecs)
			}
		}
		for _, vs := range sk.Revocations {
			sig(vs, sk.PublicKey.CreationTime)
		}
	}
	return next
}

// UserIDs returns the names of the key's User IDs, sorted.
func (k *Key) UserIDs() []string {
	var out []string
	for name := range k.Entity.Identities {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// Armored returns the certificate as an ASCII-armoured public key block.
func (k *Key) Armored() []byte {
	var b bytes.Buffer
	w, _ := armor.Encode(&b, openpgp.PublicKeyType, nil)
	w.Write(k.Raw)
	w.Close()
	b.WriteByte('\n')
	return b.Bytes()
}

// FormatFingerprint normalises a fingerprint as given by an operator
// (any case, spaces from gpg's grouped output) to the stored form.
func FormatFingerprint(s string) string {
	return strings.ToUpper(strings.ReplaceAll(s, " ", ""))
}

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
}

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

// Parse reads one or more certificates from data: binary, or ASCII armour
// with one or several blocks (text around the blocks is ignored, as gpg
// does). Secret keys are refused outright: a gateway must never hold them.
func Parse(data []byte) ([]*Key, error) {
	if len(data) > MaxKeyBytes {
		return nil, &RejectError{Rule: RuleTooLarge, Msg: fmt.Sprintf("key data is %d bytes, more than the %d allowed", len(data), MaxKeyBytes)}
	}
	var binaries [][]byte
	if bytes.Contains(data, []byte("-----BEGIN PGP")) {
		rest := data
		for {
			i := bytes.Index(rest, []byte("-----BEGIN PGP"))
			if i < 0 {
				break
			}
			block, err := armor.Decode(bytes.NewReader(rest[i:]))
			if err != nil {
				return nil, &RejectError{Rule: RuleFormat, Msg: "the ASCII armour is damaged: " + err.Error()}
			}
			if block.Type == openpgp.PrivateKeyType {
				return nil, &RejectError{Rule: RuleSecret, Msg: "this is a secret (private) key; submit only the public key (gpg --export --armor, not --export-secret-keys)"}
			}
			if block.Type != openpgp.PublicKeyType {
				return nil, &RejectError{Rule: RuleFormat, Msg: fmt.Sprintf("the armour block is a %q, not a %q", block.Type, openpgp.PublicKeyType)}
			}
			b, err := io.ReadAll(block.Body)
			if err != nil {
				return nil, &RejectError{Rule: RuleFormat, Msg: "the ASCII armour is damaged: " + err.Error()}
			}
			binaries = append(binaries, b)
			end := bytes.Index(rest[i:], []byte("-----END PGP"))
			if end < 0 {
				break
			}
			rest = rest[i+end+len("-----END PGP"):]
		}
	} else {
		binaries = [][]byte{data}
	}
	var out []*Key
	for _, b := range binaries {
		el, err := openpgp.ReadKeyRing(bytes.NewReader(b))
		if err != nil {
			return nil, &RejectError{Rule: RuleFormat, Msg: "not a valid OpenPGP public key: " + describePGPError(err)}
		}
		for _, e := range el {
			if e.PrivateKey != nil || hasSecretSubkey(e) {
				return nil, reject(e, RuleSecret, "contains secret key material; submit only the public key (gpg --export --armor, not --export-secret-keys)")
			}
			var raw bytes.Buffer
			if err := serialize(&raw, e); err != nil {
				return nil, reject(e, RuleFormat, "cannot be re-encoded: %v", err)
			}
			// Re-encoding can lengthen packets (old one-byte lengths become
			// two); what is stored must stay readable by Parse.
			if raw.Len() > MaxKeyBytes {
				return nil, reject(e, RuleTooLarge, "the key is %d bytes once re-encoded, more than the %d allowed (too many signatures?)", raw.Len(), MaxKeyBytes)
			}
			out = append(out, &Key{
				Entity:      e,
				Fingerprint: strings.ToUpper(hex.EncodeToString(e.PrimaryKey.Fingerprint)),
				Raw:         raw.Bytes(),
			})
		}
	}
	if len(out) == 0 {
		return nil, &RejectError{Rule: RuleFormat, Msg: "no OpenPGP public key found in the data"}
	}
	return out, nil
}

// serialize writes the public certificate like Entity.Serialize, but with
// the User IDs in a fixed order (Entity.Serialize follows Go's random map
// order), so the same key always yields the same bytes and a store can tell
// an unchanged key from a refreshed one.
func serialize(w io.Writer, e *openpgp.Entity) error {
	if err := e.PrimaryKey.Serialize(w); err != nil {
		return err
	}
	for _, r := range e.Revocations {
		if err := r.Packet.Serialize(w); err != nil {
			return err
		}
	}
	for _, d := range e.DirectSignatures {
		if err := d.Packet.Serialize(w); err != nil {
			return err
		}
	}
	names := make([]string, 0, len(e.Identities))
	for name := range e.Identities {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := e.Identities[name].Serialize(w); err != nil {
			return err
		}
	}
	for _, s := range e.Subkeys {
		if err := s.Serialize(w, false); err != nil {
			return err
		}
	}
	return nil
}

func hasSecretSubkey(e *openpgp.Entity) bool {
	for _, s := range e.Subkeys {
		if s.PrivateKey != nil {
			return true
		}
	}
	return false
}

func describePGPError(err error) string {
	var unsupported pgperrors.UnsupportedError
	if errors.As(err, &unsupported) {
		return "unsupported feature: " + string(unsupported)
	}
	return err.Error()
}

// Policy is the set of rules a key must pass to be stored or used.
type Policy struct {
	MinRSABits int
	Normalizer Normalizer
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
	k.mu.Lock()
	defer k.mu.Unlock()
	e := k.Entity
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
	k.mu.Lock()
	defer k.mu.Unlock()
	return p.usable(k, now)
}

// usable is Usable with k's lock held.
func (p Policy) usable(k *Key, now time.Time) error {
	e := k.Entity
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

// CheckUpdate decides whether submitted may replace stored, a copy of the
// same key already in the store. Storing replaces the copy, so an older
// export would silently drop a revocation or an extended expiry that the
// store has: refuse copies that are older or lack a revocation.
func (p Policy) CheckUpdate(stored, submitted *Key, now time.Time) error {
	// One lock at a time: both keys have the same fingerprint.
	revoked := func(k *Key) bool {
		k.mu.Lock()
		defer k.mu.Unlock()
		return k.Entity.Revoked(now)
	}
	if revoked(stored) && !revoked(submitted) {
		return reject(submitted.Entity, RuleRevoked, "the key store holds a revoked copy of this key; a copy without the revocation cannot replace it")
	}
	if s, n := latestSelfSignature(stored.Entity), latestSelfSignature(submitted.Entity); n.Before(s) {
		return reject(submitted.Entity, RuleSelfSig, "the key store holds a newer copy of this key (signed %s, this one %s); export the current key (gpg --export --armor) and submit that",
			s.UTC().Format("2006-01-02"), n.UTC().Format("2006-01-02"))
	}
	return nil
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
	for name, id := range k.Entity.Identities {
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
		return reject(k.Entity, RuleUserID, "the User ID for %s has no valid self-signature now (revoked or expired)", address)
	}
	sort.Strings(seen)
	has := "no e-mail address at all"
	if len(seen) > 0 {
		has = strings.Join(seen, ", ")
	}
	return reject(k.Entity, RuleUserID, "no User ID carries the address %s (the key has: %s)", address, has)
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

// Addresses returns the e-mail addresses of k's User IDs, normalised.
func (p Policy) Addresses(k *Key) []string {
	var out []string
	for name, id := range k.Entity.Identities {
		if a := userIDAddress(id.UserId, name); a != "" {
			if n, err := p.Normalizer.Normalize(a); err == nil {
				out = append(out, n)
			}
		}
	}
	sort.Strings(out)
	return out
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

// ExportFor returns the binary certificate with only the User IDs whose
// address normalises to address (WKD, draft-koch-openpgp-webkey-service
// §3.1: publish only the User IDs for the address asked for, so a lookup
// does not reveal the holder's other addresses). It returns nil when no
// User ID carries the address.
func (k *Key) ExportFor(address string, n Normalizer) []byte {
	e := *k.Entity // a shallow copy: only the Identities map is replaced
	e.Identities = map[string]*openpgp.Identity{}
	for name, id := range k.Entity.Identities {
		if a := userIDAddress(id.UserId, name); a != "" {
			if norm, err := n.Normalize(a); err == nil && norm == address {
				e.Identities[name] = id
			}
		}
	}
	if len(e.Identities) == 0 {
		return nil
	}
	var b bytes.Buffer
	if err := serialize(&b, &e); err != nil {
		return nil
	}
	return b.Bytes()
}
