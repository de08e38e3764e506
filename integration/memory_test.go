package integration

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
)

// The memory bound docs/operations.md states for one message: peak RSS
// of lacre-milter serve at most memFactor × the message's size plus
// memBase.
const (
	memFactor = 6
	memBase   = 64 << 20
)

// TestMemoryPeakOneMessage sends one 50 MB message (a base64 attachment,
// as mail carries them) for a keyed recipient to a lacre-milter serve
// process, the way Postfix does (milter protocol 6, body chunks of 65,535
// bytes), checks that it comes back encrypted, and reads the process's
// peak resident size (VmHWM in /proc/PID/status). It fails if the peak is
// above memFactor × size + memBase.
//
// LACRE_IT_MEM_MB=10,25,50 measures several sizes (one fresh process
// each), for the figures in docs/operations.md.
func TestMemoryPeakOneMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("a 50 MB message: not with -short (the -race run)")
	}
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	sizes := []int{50}
	if v := os.Getenv("LACRE_IT_MEM_MB"); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n <= 0 {
				t.Fatalf("LACRE_IT_MEM_MB: %q", v)
			}
			sizes = append(sizes, n)
		}
	}
	for _, mb := range sizes {
		t.Run(fmt.Sprintf("%dMB", mb), func(t *testing.T) {
			m := startMilter(t, "")
			m.keysAdd(t, "alice@example.org", testkeys.ArmoredPublic(t, alice))
			// 3/4 of the size in random bytes: base64 makes it mb MB.
			msg := attachmentMessage(fmt.Sprintf("mem%d", mb), mb*1000*1000*3/4)
			base := vmHWM(t, m)
			start := time.Now()
			body := milterEncrypt(t, m, "alice@example.org", msg)
			took := time.Since(start)
			peak := vmHWM(t, m)
			limit := int64(memFactor*len(msg) + memBase)
			t.Logf("message %d bytes, encrypted body %d bytes in %v; VmHWM %.1f MiB before, %.1f MiB after (%.2f × the message size; the bound is %d × + %d MiB = %.1f MiB)",
				len(msg), len(body), took.Round(time.Millisecond), mib(base), mib(peak), float64(peak)/float64(len(msg)), memFactor, memBase>>20, mib(limit))

			_, sentBody := splitMessage(msg)
			i := bytes.Index(body, []byte("-----BEGIN PGP MESSAGE-----"))
			j := bytes.Index(body, []byte("-----END PGP MESSAGE-----"))
			if i < 0 || j < i {
				t.Fatalf("the replaced body holds no armoured message: %.300q", body)
			}
			inner, _ := pgptest.Decrypt(t, body[i:j+len("-----END PGP MESSAGE-----")], alice)
			if _, innerBody := splitMessage(inner); !bytes.Equal(innerBody, sentBody) {
				t.Fatalf("decrypted body differs (%d vs %d bytes)", len(innerBody), len(sentBody))
			}
			if peak > limit {
				t.Errorf("peak RSS %.1f MiB for a %.1f MB message: above the documented bound of %d × size + %d MiB (%.1f MiB)",
					mib(peak), float64(len(msg))/1e6, memFactor, memBase>>20, mib(limit))
			}
		})
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// vmHWM returns the milter process's peak resident set size in bytes.
func vmHWM(t testing.TB, m *milterProc) int64 {
	t.Helper()
	m.mu.Lock()
	pid := m.cmd.Process.Pid
	m.mu.Unlock()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmHWM:" && f[2] == "kB" {
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// milterEncrypt runs one message through the milter as Postfix does and
// returns the replaced body; it fails unless the milter replaced it.
func milterEncrypt(t testing.TB, m *milterProc, rcpt string, msg []byte) []byte {
	t.Helper()
	// Every protocol flag of version 6, as Postfix 3.7 offers.
	macros := gomilter.NewMacroBag()
	s, err := gomilter.NewClient("tcp", fmt.Sprintf("127.0.0.1:%d", m.port),
		gomilter.WithReadTimeout(2*time.Minute), gomilter.WithWriteTimeout(2*time.Minute),
		gomilter.WithActions(gomilter.OptAddHeader|gomilter.OptChangeHeader|gomilter.OptChangeBody|gomilter.OptQuarantine),
	).Session(macros)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	step := func(what string, a *gomilter.Action, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if a.Type != gomilter.ActionContinue {
			t.Fatalf("%s: the milter answered %+v, want continue", what, a)
		}
	}
	a, err := s.Conn("client.example", gomilter.FamilyInet, 40000, "192.0.2.1")
	step("connect", a, err)
	a, err = s.Helo("client.example")
	step("HELO", a, err)
	a, err = s.Mail("sender@example.com", "")
	step("MAIL", a, err)
	macros.Set(gomilter.MacroQueueId, "MEMTEST")
	macros.Set(gomilter.MacroRcptAddr, rcpt) // as Postfix sends it before each RCPT
	a, err = s.Rcpt(rcpt, "")
	step("RCPT", a, err)
	a, err = s.DataStart()
	step("DATA", a, err)
	header, body := splitMessage(msg)
	for _, l := range strings.Split(strings.TrimSuffix(string(header), "\r\n"), "\r\n") {
		name, value, _ := strings.Cut(l, ":")
		a, err = s.HeaderField(name, strings.TrimPrefix(value, " "), nil)
		step("header "+name, a, err)
	}
	a, err = s.HeaderEnd()
	step("end of header", a, err)
	for len(body) > 0 {
		n := min(len(body), 65535) // Postfix's chunk size
		a, err = s.BodyChunk(body[:n])
		step("body", a, err)
		body = body[n:]
	}
	mods, a, err := s.End()
	if err != nil {
		t.Fatalf("end of message: %v", err)
	}
	if a.Type != gomilter.ActionAccept && a.Type != gomilter.ActionContinue {
		t.Fatalf("end of message: the milter answered %+v", a)
	}
	var out []byte
	for _, md := range mods {
		if md.Type == gomilter.ActionReplaceBody {
			out = append(out, md.Body...)
		}
	}
	if out == nil {
		t.Fatal("the milter did not replace the body")
	}
	return out
}
