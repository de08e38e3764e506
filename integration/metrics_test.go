package integration

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"lacre.io/milter/internal/testkeys"
)

// TestMetrics: with metrics_listen set, /metrics counts what the milter
// did behind Postfix, and /healthz says whether the key store answers.
func TestMetrics(t *testing.T) {
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")
	port := freePort(t)
	s := startSink(t)
	m := startMilter(t, fmt.Sprintf("[milter]\nmetrics_listen = \"127.0.0.1:%d\"\n", port))
	m.keysAdd(t, "alice@example.org", testkeys.ArmoredPublic(t, alice))
	p := startPostfix(t, postfixOptions{RelayPort: s.port, SMTPDMilters: m.addr()})
	for i, rcpt := range []string{"alice@example.org", "bob@example.net", "alice@example.org"} {
		id := fmt.Sprintf("metrics-%d", i)
		if err := p.sendSMTP(t, "sender@example.com", []string{rcpt}, message(id, rcpt, textFields, textBody)); err != nil {
			t.Fatal(err)
		}
		byMessageID(t, s, id)
	}
	get := func(path string) (int, string) {
		t.Helper()
		c := &http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	_, body := get("/metrics")
	value := func(series string) float64 {
		t.Helper()
		re := regexp.MustCompile("(?m)^" + regexp.QuoteMeta(series) + ` ([0-9.e+]+)$`)
		mm := re.FindStringSubmatch(body)
		if mm == nil {
			t.Fatalf("no %s in /metrics:\n%s", series, body)
		}
		v, _ := strconv.ParseFloat(mm[1], 64)
		return v
	}
	for series, want := range map[string]float64{
		`lacre_messages_total{action="encrypted",class="pgp-mime"}`: 2,
		`lacre_messages_total{action="clear",class="clear"}`:        1,
		`lacre_key_lookups_total{result="ok"}`:                      3,
		`lacre_encrypt_duration_seconds_count`:                      2,
		`lacre_sessions_in_flight`:                                  0,
	} {
		if got := value(series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if value(`lacre_message_bytes_total{direction="out"}`) <= value(`lacre_message_bytes_total{direction="in"}`) {
		t.Error("encrypted output should be larger than the input")
	}
	if status, b := get("/healthz"); status != 200 {
		t.Errorf("/healthz: %d %s", status, b)
	}
}
