package smime

import (
	"bytes"
	"crypto/x509"
	"testing"

	"lacre.io/milter/internal/smimetest"
)

// Benchmarks of one S/MIME encryption as the milter will do it: Encrypt
// and the base64 MIME entity (EncryptEntity). Targets (issue 18): 4 KiB to
// one RSA-2048 certificate ≤ 150 µs; 1 MiB ≥ 150 MB/s. Figures and the
// machine are in docs/smime.md.
//
//	go test ./crypto/smime -run '^$' -bench . -benchtime 2s -count 5

func benchEncrypt(b *testing.B, kind smimetest.KeyKind, size int, opts Options) {
	c := smimetest.New(b, smimetest.Spec{Key: kind, Addresses: []string{"bench@example.org"}})
	certs := []*x509.Certificate{c.Cert}
	inner := append([]byte("Content-Type: text/plain; charset=utf-8\r\n\r\n"), bytes.Repeat([]byte("0123456789abcdef\r\n"), size/18+1)...)[:size]
	b.SetBytes(int64(size))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := EncryptEntity(inner, certs, opts); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncrypt4KiBRSA2048(b *testing.B) { benchEncrypt(b, smimetest.RSA2048, 4<<10, Options{}) }
func BenchmarkEncrypt1MiBRSA2048(b *testing.B) { benchEncrypt(b, smimetest.RSA2048, 1<<20, Options{}) }
func BenchmarkEncrypt4KiBRSA2048OAEPGCM(b *testing.B) {
	benchEncrypt(b, smimetest.RSA2048, 4<<10, Options{Cipher: AES256GCM, RSAPadding: OAEP})
}
func BenchmarkEncrypt1MiBRSA2048GCM(b *testing.B) {
	benchEncrypt(b, smimetest.RSA2048, 1<<20, Options{Cipher: AES256GCM})
}
func BenchmarkEncrypt4KiBRSA4096(b *testing.B) { benchEncrypt(b, smimetest.RSA4096, 4<<10, Options{}) }
func BenchmarkEncrypt4KiBP256(b *testing.B)    { benchEncrypt(b, smimetest.P256, 4<<10, Options{}) }
