package milter

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"lacre.io/milter/aliases"
	"lacre.io/milter/crypto"
)

func benchExpander(o *Options) {
	o.Expander = mapExpander{"clear@example.org": {Input: "clear@example.org", Expanded: true, Targets: []aliases.Target{
		{Addr: "dave@example.org", Kind: aliases.Mailbox}, {Addr: "erin@example.org", Kind: aliases.Mailbox}}}}
}

// mapExpander answers from a map (unexpanded for the rest).
type mapExpander map[string]aliases.Expansion

func (m mapExpander) Expand(ctx context.Context, addr string) (aliases.Expansion, error) {
	if e, ok := m[addr]; ok {
		return e, nil
	}
	return aliases.None{}.Expand(ctx, addr)
}

// BenchmarkMilter drives the server over loopback with go-milter's client,
// as Postfix does: MAIL, RCPT, DATA, the header fields, end of header, the body,
// end of message. It reports messages per second and the p50/p99 latency
// of one message; docs/performance.md has the figures. It runs with the
// runtime settings of lacre-milter serve (cmd/lacre-milter, tuneRuntime).
func BenchmarkMilter(b *testing.B) {
	tuneRuntimeAsServe()
	body := strings.Repeat("All work and no play makes Jack a dull boy. 0123456789 abcdefghijklm\r\n", 4096/70+1)[:4096]
	msg := []byte(plainMsg[:strings.Index(plainMsg, "\r\n\r\n")+4] + body)
	fields, mbody := crypto.Split(msg)
	for _, tc := range []struct {
		name     string
		rcpt     string
		sessions int
		wantEnd  byte
		tweak    func(*Options)
	}{
		{"encrypted/sessions=1", "alice@example.org", 1, actAccept, nil},
		{"encrypted/sessions=16", "alice@example.org", 16, actAccept, nil},
		{"clear/sessions=1", "nobody@example.org", 1, actAccept, nil},
		{"clear/sessions=16", "nobody@example.org", 16, actAccept, nil},
		// An alias of two unkeyed mailboxes, through an expander that
		// answers from memory (as aliases.Postfix from its cache): the
		// milter's own cost of an expansion and its mailbox lookups.
		{"clear-alias/sessions=1", "clear@example.org", 1, actAccept, benchExpander},
		{"clear-alias/sessions=16", "clear@example.org", 16, actAccept, benchExpander},
	} {
		b.Run(tc.name, func(b *testing.B) {
			f := newFixture(b, tc.tweak)
			sessions := make([]*mtaClient, tc.sessions)
			for i := range sessions {
				s, err := dialMTA("tcp", f.addr, 6)
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				if _, err := s.Conn("client.example", gomilter.FamilyInet, 40000, "127.0.0.1"); err != nil {
					b.Fatal(err)
				}
				sessions[i] = s
			}
			// One message: stop where the milter ends it, as Postfix does.
			one := func(s *mtaClient) error {
				if _, err := s.Mail("sender@example.net", nil); err != nil {
					return err
				}
				s.Macros(codeRcpt, "i", "BENCH", "{rcpt_addr}", tc.rcpt)
				if a, err := s.Rcpt(tc.rcpt, nil); err != nil || a.Code != actContinue {
					return fmt.Errorf("rcpt: %v %v", a, err)
				}
				if a, err := s.Data(); err != nil {
					return err
				} else if a.Code == actAccept {
					return s.Abort() // clear mail ends here; Postfix aborts before the next
				}
				for _, fl := range fields {
					a, err := s.HeaderField(fl.Name, fl.Value)
					if err != nil {
						return err
					}
					if a.Code == actAccept {
						return s.Abort() // clear mail from an MTA without DATA (protocol 2) ends here
					}
				}
				if _, err := s.HeaderEnd(); err != nil {
					return err
				}
				if _, err := s.BodyChunk(mbody); err != nil {
					return err
				}
				_, a, err := s.End()
				if err != nil || a.Code != tc.wantEnd {
					return fmt.Errorf("end: %v %v", a, err)
				}
				return nil
			}
			var mu sync.Mutex
			lat := make([]time.Duration, 0, b.N)
			var wg sync.WaitGroup
			next := make(chan struct{}, b.N)
			for range b.N {
				next <- struct{}{}
			}
			close(next)
			errs := make(chan error, len(sessions))
			b.ResetTimer()
			start := time.Now()
			for _, s := range sessions {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var mine []time.Duration
					for range next {
						t0 := time.Now()
						if err := one(s); err != nil {
							errs <- err
							return
						}
						mine = append(mine, time.Since(t0))
					}
					mu.Lock()
					lat = append(lat, mine...)
					mu.Unlock()
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			select {
			case err := <-errs:
				b.Fatal(err)
			default:
			}
			slices.Sort(lat)
			b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "msg/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// BenchmarkMilterConnPerMessage is clear mail as Postfix hands it over
// when every SMTP session carries one message (bench/throughput.sh's
// smtp-source): a new milter connection per message, with option
// negotiation, CONNECT, MAIL, RCPT and DATA, where the milter accepts,
// then QUIT. 16 such MTA connections at a time. It isolates what
// lacre-milter spends per connection and per clear message.
func BenchmarkMilterConnPerMessage(b *testing.B) {
	tuneRuntimeAsServe()
	f := newFixture(b, nil)
	one := func() error {
		s, err := dialMTA("tcp", f.addr, 6)
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
		s.Macros(codeRcpt, "{rcpt_addr}", "nobody@example.org")
		if a, err := s.Rcpt("nobody@example.org", nil); err != nil || a.Code != actContinue {
			return fmt.Errorf("rcpt: %v %v", a, err)
		}
		s.Macros(codeData, "i", "BENCH")
		if a, err := s.Data(); err != nil || a.Code != actAccept {
			return fmt.Errorf("data: %v %v", a, err)
		}
		return nil
	}
	b.SetParallelism(8) // 16 goroutines on 2 cores
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := one(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msg/s")
}

// tuneRuntimeAsServe applies the GC settings lacre-milter serve applies
// (cmd/lacre-milter/runtime.go), unless GOGC or GOMEMLIMIT are set.
func tuneRuntimeAsServe() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(256 << 20)
	}
}
