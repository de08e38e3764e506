package crypto

import (
	"fmt"
	"mime"
	"strings"
	"unicode/utf8"
)

// The rules of issue 15 as the tests' oracles see them, written apart
// from encrypt.go so that a change there cannot change them too.

// oracleSigned reports whether the message's (first) Content-Type names a
// signed layer: multipart/signed or S/MIME application/pkcs7-mime with
// smime-type=signed-data. Header
// protection is not applied to such mail.
func oracleSigned(fields []Field) bool {
	for _, f := range fields {
		if !strings.EqualFold(f.Name, "Content-Type") {
			continue
		}
		v := strings.NewReplacer("\r", "", "\n", "").Replace(f.Value)
		t, _, _ := strings.Cut(v, ";")
		switch strings.ToLower(strings.Trim(t, " \t")) {
		case "multipart/signed":
			return true
		case "application/pkcs7-mime", "application/x-pkcs7-mime":
			_, params, err := mime.ParseMediaType(v)
			return err == nil && strings.ToLower(params["smime-type"]) == "signed-data"
		}
		return false
	}
	return false
}

// oracleProtects reports whether header protection applies to a message.
func oracleProtects(fields []Field, protect bool) bool { return protect && !oracleSigned(fields) }

// oracleConcealed are the fields that, besides the Subject, carry what the
// author wrote and must not stay readable outside when headers are
// protected.
var oracleConcealed = []string{"thread-topic", "x-original-subject", "original-subject", "x-spam-prev-subject",
	"keywords", "comments", "summary"}

func oracleIsConcealed(name string) bool {
	for _, c := range oracleConcealed {
		if strings.ToLower(name) == c {
			return true
		}
	}
	return false
}

// oracleDefaultType checks the Content-Type written for a body that had
// none: us-ascii only for 7-bit bodies, utf-8 for valid UTF-8 with 8-bit
// bytes, no charset at all otherwise.
func oracleDefaultType(ct string, body []byte) error {
	mt, params, err := mime.ParseMediaType(strings.NewReplacer("\r", "", "\n", "").Replace(ct))
	if err != nil || mt != "text/plain" {
		return fmt.Errorf("inner Content-Type %q for a message without one, want text/plain (%v)", ct, err)
	}
	eight := false
	for _, c := range body {
		if c >= 0x80 {
			eight = true
			break
		}
	}
	want := "us-ascii"
	switch {
	case eight && utf8.Valid(body):
		want = "utf-8"
	case eight:
		want = ""
	}
	if got, ok := params["charset"]; got != want || (want == "") == ok {
		return fmt.Errorf("inner Content-Type %q for a message without one: charset %q, want %q", ct, got, want)
	}
	return nil
}
