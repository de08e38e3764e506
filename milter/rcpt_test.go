package milter

import (
	"fmt"
	"strings"
	"testing"
)

// rcptStep is one RCPT with the macros the MTA sends before it (nil: no
// macro packet at all).
type rcptStep struct {
	macros []string
	arg    string
	want   string // "continue", or the reply's SMTP code and enhanced code
}

func runRcpts(t *testing.T, f *fixture, nonSMTP bool, steps []rcptStep) {
	t.Helper()
	m := f.connect(t, nonSMTP)
	if a, err := m.s.Mail("sender@example.net", nil); err != nil || a.Code != actContinue {
		t.Fatalf("mail: %+v %v", a, err)
	}
	for _, st := range steps {
		if st.macros != nil {
			if err := m.s.Macros(codeRcpt, st.macros...); err != nil {
				t.Fatal(err)
			}
		}
		a, err := m.s.Rcpt(st.arg, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := "continue"
		if a.Code == actReplyCode {
			got = fmt.Sprintf("%d %s", a.SMTPCode, strings.Fields(a.SMTPText)[0])
		} else if a.Code != actContinue {
			got = string(rune(a.Code))
		}
		if got != st.want {
			t.Errorf("RCPT %s with macros %q: %s, want %s", st.arg, st.macros, got, st.want)
		}
	}
}

// TestRecipientIsWhatTheMTADeliversTo: the class comes from {rcpt_addr},
// the MTA's own parse of the recipient, never from the raw argument.
// alice has a key, nobody has none; the transaction's class is fixed by
// the first recipient, so a second recipient of another class gets 452.
func TestRecipientIsWhatTheMTADeliversTo(t *testing.T) {
	f := newFixture(t, nil)
	ra := func(addr string) []string { return []string{"i", "Q", "{rcpt_addr}", addr} }
	for _, tc := range []struct {
		name  string
		steps []rcptStep
	}{
		{"a comment in the argument: Postfix delivers to alice", []rcptStep{
			{ra("alice@example.org"), "<alice(c)@example.org>", "continue"},
			{ra("nobody@example.org"), "<nobody@example.org>", "452 4.5.3"}, // alice fixed an encrypted class
		}},
		{"quoted pair, quoted domain, escaped @", []rcptStep{
			{ra("alice@example.org"), `<"a\lice"@example.org>`, "continue"},
			{ra("alice@example.org"), `<"alice"@"example.org">`, "continue"},
			{ra("alice@example.org"), `<alice\@example.org>`, "continue"},
			{ra("nobody@example.org"), "<nobody@example.org>", "452 4.5.3"},
		}},
		{"Postfix's quoting of a local part", []rcptStep{
			{ra(`"alice"@example.org`), `<"alice"@example.org>`, "continue"},
			{ra("nobody@example.org"), "<nobody@example.org>", "452 4.5.3"},
		}},
		{"the MTA's parse wins over the argument", []rcptStep{
			{ra("nobody@example.org"), "<alice@example.org>", "continue"},
			{ra("alice@example.org"), "<x@example.org>", "452 4.5.3"}, // clear class already
		}},
		{"no macro: the recipient waits", []rcptStep{
			{nil, "<alice@example.org>", "451 4.1.3"},
			{[]string{"i", "Q"}, "<alice@example.org>", "451 4.1.3"},
			{[]string{"{rcpt_addr}", ""}, "<alice@example.org>", "451 4.1.3"},
		}},
		{"a macro is for its own RCPT only", []rcptStep{
			{ra("nobody@example.org"), "<nobody@example.org>", "continue"},
			{nil, "<alice@example.org>", "451 4.1.3"},
		}},
		{"a {rcpt_addr} we cannot parse waits", []rcptStep{
			{ra("alice(c)@example.org"), "<alice@example.org>", "451 4.1.3"},
			{ra("alice@exa mple.org"), "<alice@example.org>", "451 4.1.3"},
		}},
		{"Sendmail's local mailer: user only, domain from a plain argument", []rcptStep{
			{ra("alice"), "<alice@example.org>", "continue"},
			{ra("nobody"), "<nobody@example.org>", "452 4.5.3"},
			{ra("alice"), "<alice@example.org(c)>", "451 4.1.3"},
			{ra("alice"), "<alice>", "451 4.1.3"},
		}},
		{"a recipient Postfix rejected does not fix the class", []rcptStep{
			{[]string{"{rcpt_addr}", "<x@example.org>:", "{rcpt_mailer}", "error"}, "<alice@example.org>", "continue"},
			{ra("nobody@example.org"), "<nobody@example.org>", "continue"},
			{ra("alice@example.org"), "<alice@example.org>", "452 4.5.3"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { runRcpts(t, f, false, tc.steps) })
	}
	if !strings.Contains(f.logs.String(), `msg="recipient address not understood"`) {
		t.Error("no log line for recipients not understood")
	}
}

// TestNonSMTPRecipientNotUnderstoodIsHeld: mail from sendmail(1) cannot
// have a recipient refused; it is held, never delivered in clear.
func TestNonSMTPRecipientNotUnderstoodIsHeld(t *testing.T) {
	f := newFixture(t, nil)
	m := f.connect(t, true)
	m.noRcptAddr = true
	r := m.send("QL", []string{"<alice@example.org>"}, []byte(plainMsg))
	if r.quarantine == "" || !strings.Contains(r.quarantine, "not understood") {
		t.Fatalf("quarantine %q, want held for the recipient not understood; ended at %s with %+v", r.quarantine, r.endedAt, r.final)
	}
}
