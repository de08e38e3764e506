package web

import (
	"embed"
	"fmt"
	htmltemplate "html/template"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	texttemplate "text/template"
)

//go:embed templates/*.html templates/*.txt
var builtin embed.FS

// Templates are the pages (html/template, sharing layout.html) and the
// mail bodies (text/template).
type Templates struct {
	pages map[string]*htmltemplate.Template
	mails map[string]*texttemplate.Template
}

// Page names.
var pageNames = []string{"index.html", "remove.html", "pending.html", "confirm.html", "done.html", "error.html"}

// Mail names.
var mailNames = []string{"mail_confirm_add.txt", "mail_confirm_remove.txt"}

// LoadTemplates loads the built-in templates; files of the same name in
// dir (when not "") replace them, so an operator can restyle the pages or
// reword the mail without rebuilding.
func LoadTemplates(dir string) (*Templates, error) {
	read := func(name string) ([]byte, error) {
		if dir != "" {
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err == nil {
				return b, nil
			}
			if !os.IsNotExist(err) {
				return nil, err
			}
		}
		return fs.ReadFile(builtin, "templates/"+name)
	}
	t := &Templates{pages: map[string]*htmltemplate.Template{}, mails: map[string]*texttemplate.Template{}}
	layout, err := read("layout.html")
	if err != nil {
		return nil, fmt.Errorf("templates: %w", err)
	}
	for _, name := range pageNames {
		b, err := read(name)
		if err != nil {
			return nil, fmt.Errorf("templates: %w", err)
		}
		p, err := htmltemplate.New("layout.html").Parse(string(layout))
		if err == nil {
			_, err = p.New(name).Parse(string(b))
		}
		if err != nil {
			return nil, fmt.Errorf("templates: %s: %w", name, err)
		}
		t.pages[name] = p
	}
	for _, name := range mailNames {
		b, err := read(name)
		if err != nil {
			return nil, fmt.Errorf("templates: %w", err)
		}
		m, err := texttemplate.New(name).Option("missingkey=error").Parse(string(b))
		if err != nil {
			return nil, fmt.Errorf("templates: %s: %w", name, err)
		}
		t.mails[name] = m
	}
	return t, nil
}

// Page renders a page inside the layout.
func (t *Templates) Page(w io.Writer, name string, data any) error {
	return t.pages[name].ExecuteTemplate(w, "layout.html", data)
}

// Mail renders a mail body.
func (t *Templates) Mail(w io.Writer, name string, data any) error {
	return t.mails[name].Execute(w, data)
}
