package crypto

import (
	"fmt"
	"strings"
	"testing"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// BenchmarkEncryptInline compares EncryptInline with Encrypt (PGP/MIME)
// on the same messages: a text/plain one (the message of BenchmarkEncrypt)
// and a multipart/mixed one of a short quoted-printable text part and a
// base64 attachment filling the rest. The goal (issue 18) is inline
// within 2× PGP/MIME. MB/s counts the original body; cpu-ns/op is the CPU
// time per message (cpuPerOp, smime_bench_test.go).
//
//	go test ./crypto -run '^$' -bench 'EncryptInline' -count 5
func BenchmarkEncryptInline(b *testing.B) {
	for _, kind := range []testkeys.Kind{testkeys.Curve25519, testkeys.RSA3072} {
		key, _ := keystest.Key(b, kind, "alice@example.org")
		kname := map[testkeys.Kind]string{testkeys.Curve25519: "X25519", testkeys.RSA3072: "RSA3072"}[kind]
		for _, size := range []int{4 << 10, 1 << 20} {
			for _, shape := range []string{"text", "mixed"} {
				fields, body := inlineBenchMessage(shape, size)
				for _, format := range []string{"mime", "inline"} {
					enc := Encrypt
					if format == "inline" {
						enc = EncryptInline
					}
					b.Run(fmt.Sprintf("%s/%s/%dKiB/%s", kname, shape, size>>10, format), func(b *testing.B) {
						b.SetBytes(int64(len(body)))
						b.ReportAllocs()
						defer cpuPerOp(b)()
						for b.Loop() {
							if _, err := enc(fields, body, []*keys.Key{key}, Options{}); err != nil {
								b.Fatal(err)
							}
						}
					})
				}
			}
		}
	}
}

// inlineBenchMessage returns a message whose body is size bytes long.
func inlineBenchMessage(shape string, size int) ([]Field, []byte) {
	line := "All work and no play makes Jack a dull boy. 0123456789 abcdefghijklm\r\n"
	if shape == "text" {
		fields, _ := Split([]byte(crlf(stdHeader + "Subject: bench\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n")))
		return fields, []byte(strings.Repeat(line, size/len(line)+1)[:size])
	}
	fields, _ := Split([]byte(crlf(stdHeader + "Subject: bench\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b\"\n\n")))
	head := crlf("--b\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n") +
		strings.Repeat("Gr=C3=BC=C3=9Fe, "+line, 8) +
		crlf("--b\nContent-Type: application/pdf\nContent-Disposition: attachment; filename=\"report.pdf\"\nContent-Transfer-Encoding: base64\n\n")
	tail := crlf("\n--b--\n")
	// The attachment fills the rest: 57 bytes per 78-byte base64 line.
	n := max(0, (size-len(head)-len(tail))/78*57)
	body := head + strings.TrimSuffix(base64Lines(pseudoRandom(n, 3)), "\r\n") + tail
	return fields, []byte(body)
}
