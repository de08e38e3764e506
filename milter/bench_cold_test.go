package milter

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"lacre.io/milter/aliases"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// coldExpander expands uNNNNNN@alias.example to mbNNNNNN@example.org,
// computed, never cached: an expansion from memory, as aliases.Postfix's
// from a table it holds. It can answer without waiting (Quick), as
// aliases.Postfix can with its tables fresh.
type coldExpander struct{}

func (coldExpander) Expand(_ context.Context, addr string) (aliases.Expansion, error) {
	e, _ := coldExpander{}.Quick(addr)
	return e, nil
}

func (coldExpander) Quick(addr string) (aliases.Expansion, bool) {
	local, ok := strings.CutSuffix(addr, "@alias.example")
	if !ok || !strings.HasPrefix(local, "u") {
		e, _ := aliases.None{}.Expand(context.Background(), addr)
		return e, true
	}
	return aliases.Expansion{Input: addr, Expanded: true,
		Targets: []aliases.Target{{Addr: "mb" + local[1:] + "@example.org", Kind: aliases.Mailbox}}}, true
}

// BenchmarkMilterColdRecipients is case h of bench/throughput.sh without
// Postfix: a new milter connection per message (one message per SMTP
// session), each message to a recipient the milter has not seen, an
// alias of a mailbox without a key, over an SQLite key store of 10,000
// bindings: two uncached key lookups (the alias as written, then its
// mailbox) and an uncached expansion per message. 16 MTA connections at
// a time on GOMAXPROCS threads; ns/op is wall time per message across
// them.
func BenchmarkMilterColdRecipients(b *testing.B) {
	tuneRuntimeAsServe()
	ctx := context.Background()
	path := filepath.Join(b.TempDir(), "keys.db")
	store, err := keys.InitSQLite(ctx, path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	ks, err := keys.Parse(testkeys.Public(b, testkeys.Generate(b, testkeys.Curve25519, "keyed0@example.org")))
	if err != nil {
		b.Fatal(err)
	}
	if err := store.Add(ctx, "keyed0@example.org", ks, false); err != nil {
		b.Fatal(err)
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		b.Fatal(err)
	}
	tx, err := db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	for i := 1; i < 10_000; i++ {
		if _, err := tx.Exec("INSERT INTO bindings(address, fingerprint, added_at) VALUES (?, ?, 1)", fmt.Sprintf("keyed%d@example.org", i), ks[0].Fingerprint); err != nil {
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	db.Close()
	res, err := keys.NewResolver(store, keys.ResolverOptions{
		Policy:   keys.Policy{MinRSABits: 2048, Normalizer: keys.Normalizer{FoldLocalPartCase: true, SubaddressSeparator: "+"}},
		CacheTTL: 30 * time.Second,
	})
	if err != nil {
		b.Fatal(err)
	}
	srv := New(Options{TraceHeader: "X-Lacre", Keys: res, Expander: coldExpander{}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	addr := ln.Addr().String()
	var n atomic.Int64
	one := func() error {
		rcpt := fmt.Sprintf("u%07d@alias.example", n.Add(1))
		s, err := dialMTA("tcp", addr, 6)
		if err != nil {
			return err
		}
		defer s.Close()
		if _, err := s.Conn("client.example", gomilter.FamilyInet, 40000, "127.0.0.1"); err != nil {
			return err
		}
		if _, err := s.Mail("sender@example.net", nil); err != nil {
			return err
		}
		s.Macros(codeRcpt, "{rcpt_addr}", rcpt)
		if a, err := s.Rcpt(rcpt, nil); err != nil || a.Code != actContinue {
			return fmt.Errorf("rcpt: %v %v", a, err)
		}
		s.Macros(codeData, "i", "BENCH")
		if a, err := s.Data(); err != nil || a.Code != actAccept {
			return fmt.Errorf("data: %v %v", a, err)
		}
		return nil
	}
	if err := one(); err != nil { // the store's first lookup
		b.Fatal(err)
	}
	b.SetParallelism(8) // 16 goroutines on 2 cores
	cpu0 := processCPU()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := one(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	// CPU time of the process (milter and its MTA clients) per message:
	// steadier than ns/op on a machine that runs other work too.
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
}

// processCPU is the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
