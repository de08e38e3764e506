package web

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/smimetest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

// chromium finds Debian's headless browser. Without it the browser test
// is skipped, except under CI, where that is a failure.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is required in CI (apt-get install chromium)")
	}
	t.Skip("chromium not installed")
	return ""
}

// TestBrowserSubmitAndConfirm fills in the form in a real (headless)
// browser, as a user would: without JavaScript on the page, labelled
// fields, a submit button. It then follows the confirmation link; then
// does the same with an S/MIME certificate chosen as a file.
// With LACRE_SCREENSHOTS=DIR it saves a screenshot of each page there
// (docs/screenshots is made that way).
func TestBrowserSubmitAndConfirm(t *testing.T) {
	exe := chromium(t)
	f := newFixture(t)
	// Not t.TempDir: Chromium may still write to its profile while it
	// exits, which would fail the test's cleanup.
	profile, err := os.MkdirTemp("", "lacre-chromium")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(profile)
	alice := testkeys.Generate(t, testkeys.Curve25519, "alice@example.org")

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(profile), chromedp.WindowSize(420, 900), // a phone-sized window
	}
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	shots := os.Getenv("LACRE_SCREENSHOTS")
	shot := func(name string) chromedp.Action {
		return chromedp.ActionFunc(func(ctx context.Context) error {
			if shots == "" {
				return nil
			}
			var png []byte
			// Quality 100 gives PNG; lower values give JPEG.
			if err := chromedp.FullScreenshot(&png, 100).Do(ctx); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(shots, name), png, 0o644)
		})
	}

	var status string
	err = chromedp.Run(ctx,
		chromedp.Navigate(f.srv.URL+"/"),
		chromedp.WaitVisible(`label[for="address"]`),
		chromedp.SendKeys(`#address`, "alice@example.org"),
		chromedp.SetValue(`#key`, string(testkeys.ArmoredPublic(t, alice))),
		shot("1-register.png"),
		chromedp.Click(`button[type="submit"]`),
		chromedp.WaitVisible(`p.ok`),
		chromedp.Text(`p.ok`, &status),
		shot("2-check-mailbox.png"),
	)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(status, "alice@example.org") {
		t.Fatalf("after submitting: %q", status)
	}
	token := openMail(t, f.mailer.last(t).msg, alice)
	var shown string
	err = chromedp.Run(ctx,
		chromedp.Navigate(f.srv.URL+"/confirm?token="+token),
		chromedp.WaitVisible(`button[type="submit"]`),
		chromedp.Text(`li code`, &shown),
		shot("3-confirm.png"),
		chromedp.Click(`button[type="submit"]`),
		chromedp.WaitVisible(`p.ok`),
		chromedp.Text(`p.ok`, &status),
		shot("4-done.png"),
	)
	if err != nil {
		t.Fatal(err)
	}
	// The confirmation page names the key the button binds (issue 12).
	if ak := keystest.Parse(t, alice); shown != ak.Fingerprint {
		t.Errorf("the confirmation page shows %q, want the key's fingerprint %s", shown, ak.Fingerprint)
	}
	if !strings.Contains(status, "Your key is active") {
		t.Fatalf("after confirming: %q", status)
	}
	ks, _ := f.store.KeysFor(context.Background(), "alice@example.org")
	if len(ks) != 1 {
		t.Fatalf("the store has %d keys after the browser confirmed", len(ks))
	}
	// An error is shown on the page, with the form filled in again.
	var errText string
	err = chromedp.Run(ctx,
		chromedp.Navigate(f.srv.URL+"/"),
		chromedp.WaitVisible(`#address`),
		chromedp.SendKeys(`#address`, "bob@example.org"),
		chromedp.SetValue(`#key`, string(testkeys.ArmoredPublic(t, alice))),
		chromedp.Click(`button[type="submit"]`),
		chromedp.WaitVisible(`p.error`),
		chromedp.Text(`p.error`, &errText),
		shot("5-error.png"),
	)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errText, "no User ID carries the address bob@example.org") {
		t.Fatalf("error shown: %q", errText)
	}

	// An S/MIME certificate, chosen as a DER file in the file field: the
	// confirmation mail is S/MIME, and confirming binds the certificate
	// in place of the key.
	cert := smimetest.New(t, smimetest.Spec{Addresses: []string{"alice@example.org"}, CommonName: "Alice Browser"})
	cerFile := smimetest.WriteFile(t, t.TempDir(), "alice.cer", cert.Cert.Raw)
	err = chromedp.Run(ctx,
		chromedp.Navigate(f.srv.URL+"/"),
		chromedp.WaitVisible(`#address`),
		chromedp.SendKeys(`#address`, "alice@example.org"),
		chromedp.SetUploadFiles(`#keyfile`, []string{cerFile}),
		shot("6-register-certificate.png"),
		chromedp.Click(`button[type="submit"]`),
		chromedp.WaitVisible(`p.ok`),
		chromedp.Text(`p.ok`, &status),
	)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(status, "encrypted to this certificate alone") {
		t.Fatalf("after submitting a certificate: %q", status)
	}
	token = smimeToken(t, f.mailer.last(t).msg, cert)
	err = chromedp.Run(ctx,
		chromedp.Navigate(f.srv.URL+"/confirm?token="+token),
		chromedp.WaitVisible(`button[type="submit"]`),
		chromedp.Text(`li`, &shown),
		shot("7-confirm-certificate.png"),
		chromedp.Click(`button[type="submit"]`),
		chromedp.WaitVisible(`p.ok`),
		chromedp.Text(`p.ok`, &status),
	)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(shown, "CN=Alice Browser") || !strings.Contains(shown, "expires "+cert.Cert.NotAfter.UTC().Format("2006-01-02")) {
		t.Errorf("the confirmation page shows %q, want the certificate's subject and expiry", shown)
	}
	if !strings.Contains(status, "Your certificate is active") {
		t.Fatalf("after confirming the certificate: %q", status)
	}
	ks, _ = f.store.KeysFor(context.Background(), "alice@example.org")
	if len(ks) != 1 || ks[0].Kind() != keys.KindX509 {
		t.Fatalf("the store has %v after the certificate was confirmed", ks)
	}
}
