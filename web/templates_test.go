package web

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTemplateOverride: a file in the operator's folder replaces the
// built-in template of the same name; the others stay built in.
func TestTemplateOverride(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "mail_confirm_add.txt"), []byte("Hallo {{.Address}}, bitte bestätigen: {{.Link}}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "index.html"), []byte(`{{define "content"}}<h1>Schlüssel registrieren</h1>{{end}}`), 0o644)
	tm, err := LoadTemplates(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := tm.Mail(&b, "mail_confirm_add.txt", map[string]any{"Address": "a@example.org", "Link": "https://x/confirm?token=t"}); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(b.String(), "Hallo a@example.org") {
		t.Errorf("mail template not overridden: %q", b.String())
	}
	b.Reset()
	if err := tm.Page(&b, "index.html", pageData{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "Schlüssel registrieren") || !strings.Contains(b.String(), "<footer>") {
		t.Errorf("page not overridden inside the built-in layout:\n%s", b.String())
	}
	b.Reset()
	tm.Page(&b, "remove.html", pageData{})
	if !strings.Contains(b.String(), "Remove your OpenPGP key") {
		t.Error("a template without override is missing")
	}
	// A broken override is an error at start-up, not at the first request.
	os.WriteFile(filepath.Join(dir, "done.html"), []byte(`{{define "content"}}{{.Nope`), 0o644)
	if _, err := LoadTemplates(dir); err == nil || !strings.Contains(err.Error(), "done.html") {
		t.Errorf("broken override: %v", err)
	}
}
