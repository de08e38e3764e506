package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"

	"lacre.io/milter/crypto"
	"lacre.io/milter/keys"
)

// maxMessageBytes bounds what "encrypt" reads from stdin.
const maxMessageBytes = 256 << 20

// encryptCmd runs the encryption engine on one message, outside any MTA:
// for trying a key, checking a client's view of the output, or scripts.
func encryptCmd(e *env, args []string) error {
	fs := e.flags("encrypt")
	protect := fs.Bool("protect-headers", false, "protect headers even if the recipients' choice is off")
	hide := fs.Bool("hide-recipients", false, "write wildcard key IDs even if encryption.hide_recipients is off")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return fmt.Errorf("want at least one recipient address: %w", errUsage)
	}
	c, s, r, err := e.open()
	if err != nil {
		return err
	}
	defer s.Close()

	var to []*keys.Key
	var format keys.Format
	var first string
	protectHeaders := *protect
	for _, a := range pos {
		if _, err := r.Policy().Normalizer.Normalize(a); err != nil {
			return err
		}
		l, err := r.Resolve(context.Background(), a)
		if err != nil {
			return err
		}
		if !l.Encrypt() {
			why := "it has no key"
			if l.AllUnusable() {
				why = "its keys are unusable: " + l.Unusable[0].Error()
			} else if l.Source == keys.SourceNever {
				why = "[static] never_encrypt lists it"
			}
			return fmt.Errorf("%s: the milter would not encrypt its mail (%s)", l.Address, why)
		}
		// One message has one format: the milter puts recipients of
		// different formats in different transactions (452 4.5.3).
		if format == keys.FormatDefault {
			format, first = l.Format, l.Address
		} else if l.Format != format {
			return fmt.Errorf("%s reads %s and %s reads %s: the milter would split them into two messages; encrypt for each separately", first, format, l.Address, l.Format)
		}
		to = append(to, l.Keys...)
		protectHeaders = protectHeaders || l.ProtectHeaders
	}
	sopt, err := smimeOptions(c)
	if err != nil {
		return err
	}

	raw, err := io.ReadAll(io.LimitReader(e.stdin, maxMessageBytes+1))
	if err != nil {
		return err
	}
	if len(raw) > maxMessageBytes {
		return fmt.Errorf("message larger than %d bytes", maxMessageBytes)
	}
	fields, body := crypto.Split(raw)
	if crypto.AlreadyEncrypted(fields, body) {
		fmt.Fprintln(e.stderr, "lacre-milter encrypt: already encrypted; written unchanged")
		_, err := e.stdout.Write(raw)
		return err
	}
	opt := crypto.Options{
		HideRecipients: *hide || c.Encryption.HideRecipients,
		ProtectHeaders: protectHeaders,
		MinRSABits:     c.Keys.MinRSABits,
		SMIME:          sopt,
	}
	var res *crypto.Result
	switch format {
	case keys.FormatSMIME:
		certs := make([]*x509.Certificate, len(to))
		for i, k := range to {
			certs[i] = k.Certificate().Cert
		}
		res, err = crypto.EncryptSMIME(fields, body, certs, opt)
	case keys.FormatPGPInline:
		res, err = crypto.EncryptInline(fields, body, to, opt)
	default:
		res, err = crypto.Encrypt(fields, body, to, opt)
	}
	if err != nil {
		return err
	}
	if res.Unprotected != "" {
		fmt.Fprintf(e.stderr, "lacre-milter encrypt: headers not protected: %s\n", res.Unprotected)
	}
	return crypto.WriteMessage(e.stdout, crypto.Apply(fields, res.Changes), res.Body)
}
