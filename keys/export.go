package keys

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"io"
	"sort"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

// Armored returns the certificate as an ASCII-armoured public key block,
// or an X.509 certificate (with its chain) as PEM.
func (k *Key) Armored() []byte {
	if k.cert != nil {
		var b bytes.Buffer
		for _, x := range append([]*x509.Certificate{k.cert.Cert}, k.cert.Chain...) {
			pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: x.Raw})
		}
		return b.Bytes()
	}
	var b bytes.Buffer
	w, _ := armor.Encode(&b, openpgp.PublicKeyType, nil)
	w.Write(k.Raw)
	w.Close()
	b.WriteByte('\n')
	return b.Bytes()
}

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

// ExportFor returns the binary certificate with only the User IDs whose
// address normalises to address (WKD, draft-koch-openpgp-webkey-service
// §3.1: publish only the User IDs for the address asked for, so a lookup
// does not reveal the holder's other addresses). It returns nil when no
// User ID carries the address, and for an X.509 certificate (WKD serves
// OpenPGP keys only).
func (k *Key) ExportFor(address string, n Normalizer) []byte {
	if k.cert != nil {
		return nil
	}
	e := *k.entity // a shallow copy: only the Identities map is replaced
	e.Identities = map[string]*openpgp.Identity{}
	for name, id := range k.entity.Identities {
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
