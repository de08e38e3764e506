package gpgmailgate

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"lacre.io/milter/keys"
)

// ReadCertDir returns one entry per file of gpg-mailgate's S/MIME
// certificate directory ([smime] cert_path), for the address the file is
// named after.
//
// How gpg-mailgate kept it (gpg-mailgate.py, get_cert_for_email, and
// register-handler.py): every regular file of the directory (no
// subdirectories; a symbolic link to a file counts) is one PEM
// certificate, and its name is the address it encrypts to, compared with
// the recipient in lower case when [default] mail_case_insensitive = yes,
// as written otherwise. register-handler.py saved the signer's
// certificate of any S/MIME-signed mail to register@ under the sender's
// address (local part as written, domain in lower case) without checking
// that the certificate names that address, and gpg-mailgate encrypted to
// it without checking its validity. So every file goes through the
// admission rules here: the certificate must name the address of its
// file, be valid now, and hold no private key.
//
// A file whose name has no "@" was never used by gpg-mailgate (no
// recipient matches it): it is skipped, as is a subdirectory.
func ReadCertDir(dir string) ([]Entry, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory (want gpg-mailgate's [smime] cert_path, e.g. /var/gpgmailgate/smime)", dir)
	}
	des, err := os.ReadDir(dir) // sorted by name
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, de := range des {
		name := de.Name()
		origin := "file " + name
		path := filepath.Join(dir, name)
		st, err := os.Stat(path) // follows a symbolic link, as os.path.isfile does
		switch {
		case err != nil:
			return nil, err
		case st.IsDir():
			out = append(out, Entry{Origin: origin, Skip: "a directory: gpg-mailgate read only the files of cert_path"})
			continue
		case !st.Mode().IsRegular():
			out = append(out, Entry{Origin: origin, Skip: "not a regular file: gpg-mailgate read only the files of cert_path"})
			continue
		case !strings.Contains(name, "@"):
			out = append(out, Entry{Origin: origin, Skip: "the file name is not an address: gpg-mailgate found certificates by file name, so it never used this one"})
			continue
		}
		data, err := keys.ReadKeyFile(path)
		if err != nil {
			return nil, err
		}
		out = append(out, Entry{Origin: origin, Address: name, Data: data, Certificate: true})
	}
	return out, nil
}
