package web

// S/MIME certificates in the registration service (issue 18). A
// submission may hold OpenPGP keys, one S/MIME certificate (with its
// chain), or both; each key and the certificate get a request, a token
// and a confirmation mail of their own, the certificate's in S/MIME
// encrypted to it alone. Opening that mail needs the certificate's
// private key: the proof of possession that the certificate alone (which
// anybody may hold: it is sent with every signed message) cannot give.

import (
	"bytes"
	"slices"

	"lacre.io/milter/keys"
)

// Rules of a certificate submission that package keys does not name.
const (
	// RuleCertificateCount: a file holds one end-entity certificate for
	// the address (and its issuers), not several.
	RuleCertificateCount keys.Rule = "certificate-count"
)

// splitSubmission separates submitted key data into its OpenPGP part and
// its certificate part (either may be nil):
//
//   - binary data starting with an ASN.1 SEQUENCE (0x30) is DER: a
//     certificate, a PKCS #7 bundle, or key material that the
//     certificate parser refuses; other binary data is OpenPGP;
//   - text without a PEM block other than OpenPGP armour is OpenPGP, as
//     before certificates were accepted;
//   - text with other PEM blocks ("BEGIN CERTIFICATE", "BEGIN PKCS7",
//     but also "BEGIN PRIVATE KEY") is split: the OpenPGP armour blocks,
//     each from its BEGIN line to the end of its END line, make the
//     OpenPGP part, the rest the certificate part. Each part then goes to
//     its own strict parser, so nothing in the text is silently dropped
//     (keys.Parse ignores text around armour, which would otherwise hide
//     a certificate pasted after a key, and the certificate parser
//     refuses every PEM block that is not a certificate).
func splitSubmission(data []byte) (pgp, cert []byte) {
	if len(data) > 0 && data[0] == 0x30 {
		return nil, data
	}
	const begin, beginPGP, endPGP = "-----BEGIN ", "-----BEGIN PGP ", "-----END PGP "
	if bytes.Count(data, []byte(begin)) == bytes.Count(data, []byte(beginPGP)) {
		return data, nil
	}
	if !bytes.Contains(data, []byte(beginPGP)) {
		return nil, data
	}
	rest := data
	for {
		i := bytes.Index(rest, []byte(beginPGP))
		if i < 0 {
			break
		}
		cert = append(cert, rest[:i]...)
		rest = rest[i:]
		j := bytes.Index(rest, []byte(endPGP))
		if j < 0 {
			pgp, rest = append(pgp, rest...), nil
			break
		}
		k := j + bytes.IndexByte(rest[j:], '\n') + 1
		if k <= j {
			k = len(rest)
		}
		pgp = append(append(pgp, rest[:k]...), '\n')
		rest = rest[k:]
	}
	return pgp, append(cert, rest...)
}

// parseSubmission parses a submission's keys for addr (normalised): its
// OpenPGP keys, then its certificate. It checks no admission rule (see
// parseKeys) but refuses a certificate file that holds more than one
// end-entity certificate for addr: keys.ParseCertificate would pick one
// and keep the others as mere issuers (whether marked CA or not: a
// self-signed certificate made with "openssl req -x509" is), and the user would never learn
// that mail is not encrypted to it.
func (s *Service) parseSubmission(data []byte, addr string) ([]*keys.Key, error) {
	pgp, certData := splitSubmission(data)
	var out []*keys.Key
	if certData != nil {
		c, err := keys.ParseCertificate(certData, addr, s.opt.Policy.Normalizer)
		if err != nil {
			return nil, err
		}
		leaves := 0
		for _, x := range append(slices.Clone(c.Chain), c.Cert) {
			for _, a := range keys.CertificateAddresses(x) {
				if n, err := s.opt.Policy.Normalizer.Normalize(a); err == nil && n == addr {
					leaves++
					break
				}
			}
		}
		if leaves > 1 {
			return nil, &Error{Status: 400, Code: "invalid_key", Rule: RuleCertificateCount,
				Msg: "the file holds more than one certificate for " + addr + "; submit one certificate (with its issuers) at a time"}
		}
		out = append(out, keys.FromCertificate(c))
	}
	if pgp != nil {
		ks, err := keys.Parse(pgp)
		if err != nil {
			return nil, err
		}
		out = append(ks, out...)
	}
	return out, nil
}
