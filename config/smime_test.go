package config

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"lacre.io/milter/internal/smimetest"
)

// TestFormatAndSMIMEOptions: the values of [encryption] pgp_format,
// [static.formats] and [smime], each bad one named with its line.
func TestFormatAndSMIMEOptions(t *testing.T) {
	for _, tc := range []struct {
		src  string
		key  string // "" means valid
		line int
		msg  string
	}{
		{"[encryption]\npgp_format = \"pgp-inline\"\n", "", 0, ""},
		{"[encryption]\npgp_format = \"smime\"\n", "encryption.pgp_format", 2, `"pgp-mime", "pgp-inline"`},
		{"[encryption]\npgp_format = \"\"\n", "encryption.pgp_format", 2, `"pgp-mime", "pgp-inline"`},
		{"[static.formats]\n\"a@example.org\" = \"smime\"\n\"b@example.org\" = \"pgp-inline\"\n", "", 0, ""},
		{"[static.formats]\n\"a@example.org\" = \"smime\"\n\"b@example.org\" = \"html\"\n", "static.formats", 3, `"html" is not one of`},
		{"[static.formats]\n\"a@example.org\" = \"default\"\n", "static.formats", 2, `"default" is not one of`},
		{"\n[static.formats]\n\"example.org\" = \"smime\"\n", "static.formats", 3, "not an address"},
		{"[smime]\ncipher = \"aes-256-gcm\"\nrsa_padding = \"oaep\"\nsubject_key_id = true\n", "", 0, ""},
		{"[smime]\ncipher = \"3des\"\n", "smime.cipher", 2, `"aes-256-cbc", "aes-256-gcm"`},
		{"[smime]\nrsa_padding = \"pss\"\n", "smime.rsa_padding", 2, `"pkcs1v15", "oaep"`},
		{"[smime]\ntrust_anchors = \"missing.pem\"\n", "smime.trust_anchors", 2, "no such file"},
	} {
		_, err := parse(filepath.Join(t.TempDir(), "lacre.toml"), []byte(tc.src))
		if tc.key == "" {
			if err != nil {
				t.Errorf("%q: %v", tc.src, err)
			}
			continue
		}
		want := "line " + strconv.Itoa(tc.line) + ": " + tc.key + ": "
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%q: err = %v, want %q and %q", tc.src, err, want, tc.msg)
			continue
		}
		t.Log(err)
	}
}

// TestTrustAnchorsFile: smime.trust_anchors must be a readable PEM file of
// certificates and nothing else; empty means no chain required. A path is
// relative to the config file, and a reload reads the file again.
func TestTrustAnchorsFile(t *testing.T) {
	root := smimetest.New(t, smimetest.Spec{CA: true, CommonName: "Lacre test root"})
	other := smimetest.New(t, smimetest.Spec{CA: true, CommonName: "Other root", Key: smimetest.P256})
	dir := t.TempDir()
	cfg := filepath.Join(dir, "lacre.toml")
	write := func(name string, data []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(cfg, []byte("[smime]\ntrust_anchors = \"roots.pem\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data []byte // nil: no file
		msg  string // "" means valid
	}{
		{"one root", root.PEM(), ""},
		{"two roots with text around", []byte("# our roots\n" + string(root.PEM()) + "\nsecond:\n" + string(other.PEM())), ""},
		{"missing", nil, "no such file"},
		{"empty", []byte{}, "holds no PEM certificate"},
		{"not PEM", []byte("hello\n"), "holds no PEM certificate"},
		{"DER", root.Cert.Raw, "holds no PEM certificate"},
		{"a private key", append(root.PEM(), root.KeyPEM(t)...), `holds a "PRIVATE KEY" PEM block`},
		{"a broken certificate", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "certificate 1"},
		{"an unreadable block", append(root.PEM(), []byte("-----BEGIN CERTIFICATE-----\n!!!\n")...), "cannot be read"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(filepath.Join(dir, "roots.pem"))
			if tc.data != nil {
				write("roots.pem", tc.data)
			}
			c, err := Load(cfg)
			if tc.msg != "" {
				if err == nil || !strings.Contains(err.Error(), "line 2: smime.trust_anchors: ") || !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("Load = %v, want a smime.trust_anchors problem with %q", err, tc.msg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			pool, err := c.TrustAnchorPool()
			if err != nil || pool == nil {
				t.Fatalf("TrustAnchorPool = %v, %v", pool, err)
			}
			if c.TrustAnchorsPath() != filepath.Join(dir, "roots.pem") {
				t.Errorf("TrustAnchorsPath = %q", c.TrustAnchorsPath())
			}
		})
	}
	// Without the option: no pool, no chain required.
	if pool, err := Default().TrustAnchorPool(); pool != nil || err != nil {
		t.Errorf("default TrustAnchorPool = %v, %v", pool, err)
	}
	// A Config changed after Load reads the file it now names.
	write("roots.pem", root.PEM())
	c, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SMIME.TrustAnchors = "gone.pem"
	if _, err := c.TrustAnchorPool(); err == nil || !strings.Contains(err.Error(), "gone.pem") {
		t.Errorf("TrustAnchorPool after a change = %v", err)
	}
}
