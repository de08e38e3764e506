package web

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net"
	"net/http"
	"strings"
	"time"
)

// maxBody bounds every request body: a key file is at most 1 MiB
// (keys.MaxKeyBytes), plus the form's own fields.
const maxBody = 1<<20 + 64<<10

// Handler returns the service's HTTP handler: the pages, the JSON API
// (docs/api.md) and, when wkd is not nil, the Web Key Directory.
func (s *Service) Handler(wkd http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.page("index.html"))
	mux.HandleFunc("GET /remove", s.page("remove.html"))
	mux.HandleFunc("POST /submit", s.formSubmit)
	mux.HandleFunc("POST /remove", s.formRemove)
	mux.HandleFunc("GET /confirm", s.confirmPage)
	mux.HandleFunc("POST /confirm", s.formConfirm)
	mux.HandleFunc("POST /api/v1/submit", s.apiSubmit)
	mux.HandleFunc("POST /api/v1/remove", s.apiRemove)
	mux.HandleFunc("POST /api/v1/confirm", s.apiConfirm)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	if wkd != nil {
		mux.Handle("/.well-known/openpgpkey/", wkd)
	}
	return securityHeaders(mux)
}

// securityHeaders sets the usual headers on every response: no scripts
// at all, no framing, no referrer leaking tokens, no caching of forms.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		if !strings.HasPrefix(r.URL.Path, "/.well-known/") {
			h.Set("Cache-Control", "no-store")
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		next.ServeHTTP(w, r)
	})
}

// clientIP is the address rate limits count. Behind a reverse proxy on the
// same host (the recommended setup), the proxy's X-Forwarded-For is used;
// from anywhere else the header is ignored, since anybody can set it.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		if xff := r.Header.Get("X-Forwarded-For"); xff != "" {
			parts := strings.Split(xff, ",")
			if fwd := net.ParseIP(strings.TrimSpace(parts[len(parts)-1])); fwd != nil {
				return fwd.String()
			}
		}
	}
	return host
}

// CSRF protection for the forms: a random value in a SameSite=Strict
// cookie that each form must repeat (double submit). Cross-site pages can
// neither read the cookie nor make the browser send it.
const csrfCookie = "lacre_csrf"

func (s *Service) csrfToken(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) == 64 {
		return c.Value
	}
	var b [32]byte
	rand.Read(b[:])
	v := hex.EncodeToString(b[:])
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: v, Path: "/", HttpOnly: true,
		Secure: strings.HasPrefix(s.opt.BaseURL, "https:"), SameSite: http.SameSiteStrictMode})
	return v
}

func csrfOK(r *http.Request) bool {
	c, err := r.Cookie(csrfCookie)
	if err != nil || len(c.Value) != 64 {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(c.Value), []byte(r.FormValue("csrf"))) == 1
}

type pageData struct {
	CSRF, Error, Address, Key, Token string
	Action                           string
	Encrypted                        bool
	Expires                          string
}

func (s *Service) render(w http.ResponseWriter, status int, name string, d pageData) {
	var b bytes.Buffer
	if err := s.opt.Templates.Page(&b, name, d); err != nil {
		s.opt.Log.Error("rendering a page", "page", name, "error", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b.Bytes())
}

func (s *Service) page(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.render(w, http.StatusOK, name, pageData{CSRF: s.csrfToken(w, r), Address: r.URL.Query().Get("address")})
	}
}

// fail shows err on page (with the form filled in again), or a generic
// message for errors that are ours.
func (s *Service) fail(w http.ResponseWriter, r *http.Request, page string, d pageData, err error) {
	var ue *Error
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &ue):
		d.Error = ue.Msg
		d.CSRF = s.csrfToken(w, r)
		s.render(w, ue.Status, page, d)
	case errors.As(err, &mbe):
		d.Error = "the request is too large (a key file may be at most 1 MiB)"
		s.render(w, http.StatusRequestEntityTooLarge, page, d)
	default:
		s.opt.Log.Error("request failed", "path", r.URL.Path, "error", err)
		d.Error = "the service could not handle the request right now; please try again later"
		s.render(w, http.StatusServiceUnavailable, "error.html", d)
	}
}

func (s *Service) formSubmit(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseMultipartForm(maxBody); err != nil && !errors.Is(err, http.ErrNotMultipart) {
		s.fail(w, r, "index.html", pageData{}, err)
		return
	}
	d := pageData{Address: r.FormValue("address"), Key: r.FormValue("key")}
	if !csrfOK(r) {
		s.fail(w, r, "index.html", d, userError(403, "csrf", "the form expired; please submit it again"))
		return
	}
	key := []byte(d.Key)
	if f, _, err := r.FormFile("keyfile"); err == nil {
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, maxBody))
		if err != nil {
			s.fail(w, r, "index.html", d, err)
			return
		}
		if len(bytes.TrimSpace(b)) > 0 {
			key = b
		}
	}
	if len(bytes.TrimSpace(key)) == 0 {
		s.fail(w, r, "index.html", d, userError(400, "no_key", "paste your public key or choose its file"))
		return
	}
	p, err := s.Submit(r.Context(), d.Address, key, clientIP(r))
	if err != nil {
		s.fail(w, r, "index.html", d, err)
		return
	}
	s.render(w, http.StatusAccepted, "pending.html", pendingPage(p))
}

func pendingPage(p *Pending) pageData {
	return pageData{Address: p.Address, Action: string(p.Action), Encrypted: p.Encrypted, Expires: p.Expires.UTC().Format("2006-01-02 15:04 MST")}
}

func (s *Service) formRemove(w http.ResponseWriter, r *http.Request) {
	d := pageData{Address: r.FormValue("address")}
	if !csrfOK(r) {
		s.fail(w, r, "remove.html", d, userError(403, "csrf", "the form expired; please submit it again"))
		return
	}
	p, err := s.RequestRemoval(r.Context(), d.Address, clientIP(r))
	if err != nil {
		s.fail(w, r, "remove.html", d, err)
		return
	}
	s.render(w, http.StatusAccepted, "pending.html", pendingPage(p))
}

// confirmPage shows a button rather than acting on GET: mail scanners and
// link previews fetch links, and must not use up the single-use token.
func (s *Service) confirmPage(w http.ResponseWriter, r *http.Request) {
	s.render(w, http.StatusOK, "confirm.html", pageData{CSRF: s.csrfToken(w, r), Token: r.URL.Query().Get("token")})
}

func (s *Service) formConfirm(w http.ResponseWriter, r *http.Request) {
	d := pageData{Token: r.FormValue("token")}
	if !csrfOK(r) {
		s.fail(w, r, "confirm.html", d, userError(403, "csrf", "the form expired; please press the button again"))
		return
	}
	req, err := s.Confirm(r.Context(), d.Token)
	if err != nil {
		s.fail(w, r, "error.html", d, err)
		return
	}
	s.render(w, http.StatusOK, "done.html", pageData{Address: req.Address, Action: string(req.Action)})
}

// JSON API (docs/api.md). Requests must be application/json: a browser
// cannot send that cross-site without a CORS preflight, which this
// service never grants, so the API needs no CSRF token.

type apiError struct {
	Code    string `json:"code"`
	Rule    string `json:"rule,omitempty"`
	Message string `json:"message"`
}

func (s *Service) apiReply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (s *Service) apiFail(w http.ResponseWriter, r *http.Request, err error) {
	var ue *Error
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &ue):
		s.apiReply(w, ue.Status, map[string]apiError{"error": {Code: ue.Code, Rule: string(ue.Rule), Message: ue.Msg}})
	case errors.As(err, &mbe):
		s.apiReply(w, http.StatusRequestEntityTooLarge, map[string]apiError{"error": {Code: "too_large", Message: "the request is larger than 1 MiB"}})
	default:
		s.opt.Log.Error("API request failed", "path", r.URL.Path, "error", err)
		s.apiReply(w, http.StatusServiceUnavailable, map[string]apiError{"error": {Code: "unavailable", Message: "try again later"}})
	}
}

func decodeJSON(r *http.Request, v any) error {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		return userError(415, "content_type", "send Content-Type: application/json")
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return userError(400, "bad_request", "the body is not the JSON object expected: %v", err)
	}
	return nil
}

type apiPending struct {
	Status    string    `json:"status"` // "pending"
	Address   string    `json:"address"`
	Action    string    `json:"action"`
	Encrypted bool      `json:"encrypted"`
	Expires   time.Time `json:"expires"`
}

func apiPendingOf(p *Pending) apiPending {
	return apiPending{Status: "pending", Address: p.Address, Action: string(p.Action), Encrypted: p.Encrypted, Expires: p.Expires.UTC()}
}

func (s *Service) apiSubmit(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Address string `json:"address"`
		Key     string `json:"key"`
	}
	if err := decodeJSON(r, &in); err != nil {
		s.apiFail(w, r, err)
		return
	}
	p, err := s.Submit(r.Context(), in.Address, []byte(in.Key), clientIP(r))
	if err != nil {
		s.apiFail(w, r, err)
		return
	}
	s.apiReply(w, http.StatusAccepted, apiPendingOf(p))
}

func (s *Service) apiRemove(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Address string `json:"address"`
	}
	if err := decodeJSON(r, &in); err != nil {
		s.apiFail(w, r, err)
		return
	}
	p, err := s.RequestRemoval(r.Context(), in.Address, clientIP(r))
	if err != nil {
		s.apiFail(w, r, err)
		return
	}
	s.apiReply(w, http.StatusAccepted, apiPendingOf(p))
}

func (s *Service) apiConfirm(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Token string `json:"token"`
	}
	if err := decodeJSON(r, &in); err != nil {
		s.apiFail(w, r, err)
		return
	}
	req, err := s.Confirm(r.Context(), in.Token)
	if err != nil {
		s.apiFail(w, r, err)
		return
	}
	s.apiReply(w, http.StatusOK, map[string]string{"status": "done", "address": req.Address, "action": string(req.Action)})
}
