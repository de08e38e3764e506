package crypto

import (
	"fmt"
	"strings"
	"testing"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// BenchmarkEncrypt measures Encrypt for the sizes and keys of
// docs/performance.md. MB/s counts the original body.
func BenchmarkEncrypt(b *testing.B) {
	for _, kind := range []testkeys.Kind{testkeys.Curve25519, testkeys.RSA3072} {
		key, _ := keystest.Key(b, kind, "alice@example.org")
		for _, size := range []int{4 << 10, 1 << 20} {
			fields, _ := Split([]byte(crlf(stdHeader + "Subject: bench\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n")))
			body := []byte(strings.Repeat("All work and no play makes Jack a dull boy. 0123456789 abcdefghijklm\r\n", size/70+1)[:size])
			name := fmt.Sprintf("%s/%dKiB", map[testkeys.Kind]string{testkeys.Curve25519: "X25519", testkeys.RSA3072: "RSA3072"}[kind], size>>10)
			b.Run(name, func(b *testing.B) {
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := Encrypt(fields, body, []*keys.Key{key}, Options{}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
