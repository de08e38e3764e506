package web

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"lacre.io/milter/keys"
)

// maxBody bounds every request body: a key or certificate file is at most 1 MiB
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
	mux.HandleFunc("GET /healthz", s.healthz)
	if wkd != nil {
		mux.Handle("/.well-known/openpgpkey/", wkd)
	}
	return s.securityHeaders(mux)
}

// healthz is 200 "ok" when the store answers and takes writes, else 503
// with the reason (for the operator's monitoring; it names no address).
func (s *Service) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	if err := s.Health(ctx); err != nil {
		s.opt.Log.Error("health check failed", "error", err)
		http.Error(w, "unavailable: key store", http.StatusServiceUnavailable)
		return
	}
	io.WriteString(w, "ok\n")
}

// securityHeaders sets the usual headers on every response: no scripts
// at all, no framing, no referrer leaking tokens, no caching of forms. It
// refuses cross-site POSTs.
func (s *Service) securityHeaders(next http.Handler) http.Handler {
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
		if r.Method == http.MethodPost && !s.sameOrigin(r) {
			err := userError(403, "cross_origin", "requests from other sites are refused")
			if strings.HasPrefix(r.URL.Path, "/api/") {
				s.apiFail(w, r, err)
			} else {
				s.render(w, http.StatusForbidden, "error.html", pageData{Error: err.Msg})
			}
			return
		}
		next.ServeHTTP(w, r)
	})
}

// sameOrigin checks the browser's own account of where a POST comes from
// (Fetch Metadata, then Origin). Clients that send neither (scripts, old
// browsers) pass: the CSRF token (forms) and the JSON content type (API)
// still hold. Same-site is refused too: a sibling host is another party.
func (s *Service) sameOrigin(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "same-origin", "none":
		return true
	case "":
	default: // cross-site, same-site
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	if err != nil || u.Host == "" {
		return false // including "null"
	}
	if b, err := url.Parse(s.opt.BaseURL); err == nil && strings.EqualFold(b.Scheme, u.Scheme) && strings.EqualFold(b.Host, u.Host) {
		return true
	}
	return strings.EqualFold(u.Host, r.Host)
}

// clientIP is the source that rate limits count. Behind reverse proxies
// (Options.TrustedProxies), the X-Forwarded-For hops are read from the
// right, all header lines together: each trusted proxy appended the
// address of its peer, so the right-most hop that is not a trusted proxy
// is the client. Hops left of it were written by the client and prove
// nothing. An IPv6 client is counted by its /64, which one host usually
// has whole.
func (s *Service) clientIP(r *http.Request) string {
	return source(s.clientAddr(r))
}

func (s *Service) clientAddr(r *http.Request) netip.Addr {
	peer := parseHop(r.RemoteAddr)
	if !peer.IsValid() || !s.trusted(peer) {
		return peer
	}
	var hops []string
	for _, line := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(line, ",")...)
	}
	last := peer
	for i := len(hops) - 1; i >= 0; i-- {
		a := parseHop(hops[i])
		if !a.IsValid() {
			return last // a trusted proxy wrote nonsense: count the proxy
		}
		if !s.trusted(a) {
			return a
		}
		last = a
	}
	return last
}

func (s *Service) trusted(a netip.Addr) bool {
	for _, p := range s.opt.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// parseHop reads "192.0.2.1", "192.0.2.1:1234", "2001:db8::1" or
// "[2001:db8::1]:1234".
func parseHop(h string) netip.Addr {
	h = strings.TrimSpace(h)
	if ap, err := netip.ParseAddrPort(h); err == nil {
		return ap.Addr().Unmap()
	}
	if a, err := netip.ParseAddr(strings.Trim(h, "[]")); err == nil {
		return a.Unmap()
	}
	if host, _, err := net.SplitHostPort(h); err == nil {
		if a, err := netip.ParseAddr(host); err == nil {
			return a.Unmap()
		}
	}
	return netip.Addr{}
}

func source(a netip.Addr) string {
	if !a.IsValid() {
		return "unknown"
	}
	if a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		return p.String()
	}
	return a.String()
}

// CSRF protection for the forms: a random value in a SameSite=Strict
// cookie, and in each form its HMAC under the server's secret. A value
// that an attacker planted in the cookie (from a sibling host) is useless
// without the matching HMAC, which only this server computes; Origin and
// Sec-Fetch-Site are checked as well (sameOrigin).
const csrfCookie = "lacre_csrf"

func (s *Service) csrfMAC(cookie string) string {
	m := hmac.New(sha256.New, s.opt.Secret)
	io.WriteString(m, "lacre-csrf\x00"+cookie)
	return hex.EncodeToString(m.Sum(nil))
}

func (s *Service) csrfToken(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) == 64 {
		return s.csrfMAC(c.Value)
	}
	var b [32]byte
	rand.Read(b[:])
	v := hex.EncodeToString(b[:])
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: v, Path: "/", HttpOnly: true,
		Secure: strings.HasPrefix(s.opt.BaseURL, "https:"), SameSite: http.SameSiteStrictMode})
	return s.csrfMAC(v)
}

func (s *Service) csrfOK(r *http.Request) bool {
	c, err := r.Cookie(csrfCookie)
	if err != nil || len(c.Value) != 64 {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(s.csrfMAC(c.Value)), []byte(r.FormValue("csrf"))) == 1
}

type pageData struct {
	CSRF, Error, Address, Key, Token string
	Action                           string
	Encrypted                        bool
	Expires                          string
	Keys                             []PendingKey
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

// fail shows err on page, with the form filled in again (the pasted key
// too) and a fresh CSRF value, so the user can correct and resend; errors
// that are ours get a generic message.
func (s *Service) fail(w http.ResponseWriter, r *http.Request, page string, d pageData, err error) {
	var ue *Error
	var mbe *http.MaxBytesError
	d.CSRF = s.csrfToken(w, r)
	switch {
	case errors.As(err, &ue):
		d.Error = ue.Msg
		s.render(w, ue.Status, page, d)
	case errors.As(err, &mbe):
		d.Error = "the request is too large (a key file may be at most 1 MiB)"
		s.render(w, http.StatusRequestEntityTooLarge, page, d)
	default:
		s.opt.Log.Error("request failed", "path", r.URL.Path, "error", err)
		d.Error = "the service could not handle the request right now; please try again later"
		s.render(w, http.StatusServiceUnavailable, page, d)
	}
}

// parseForm reads the form, reporting a body over maxBody as such (413)
// rather than as a missing field.
func parseForm(r *http.Request) error {
	var err error
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "multipart/form-data" {
		err = r.ParseMultipartForm(maxBody)
	} else {
		err = r.ParseForm()
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return err
	}
	if err != nil {
		return userError(400, "bad_request", "the form could not be read")
	}
	return nil
}

func (s *Service) formSubmit(w http.ResponseWriter, r *http.Request) {
	client := s.clientIP(r)
	// The form is read (at most maxBody) before the per-client limit is
	// checked, so that a refused form comes back with the key in it; the
	// key is parsed only after every limit.
	if err := parseForm(r); err != nil {
		s.fail(w, r, "index.html", pageData{}, err)
		return
	}
	d := pageData{Address: r.FormValue("address"), Key: r.FormValue("key")}
	if err := s.CheckClient(r.Context(), client); err != nil {
		s.fail(w, r, "index.html", d, err)
		return
	}
	if !s.csrfOK(r) {
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
			if utf8.Valid(b) && (bytes.Contains(b, []byte("-----BEGIN PGP")) || bytes.Contains(b, []byte("-----BEGIN CERTIFICATE"))) {
				d.Key = string(b) // shown again if the submission fails
			}
		}
	}
	if len(bytes.TrimSpace(key)) == 0 {
		s.fail(w, r, "index.html", d, userError(400, "no_key", "paste your public key or choose its file"))
		return
	}
	p, err := s.Submit(r.Context(), d.Address, key, client)
	if err != nil {
		if ue := (*Error)(nil); errors.As(err, &ue) && ue.Rule == keys.RuleSecret {
			// Never send private key material back: the page would hold
			// it (in the browser's memory, maybe its session store).
			d.Key = ""
		}
		s.fail(w, r, "index.html", d, err)
		return
	}
	s.render(w, http.StatusAccepted, "pending.html", pendingPage(p))
}

func pendingPage(p *Pending) pageData {
	return pageData{Address: p.Address, Action: string(p.Action), Encrypted: p.Encrypted, Expires: p.Expires.UTC().Format("2006-01-02 15:04 MST"), Keys: p.Keys}
}

func (s *Service) formRemove(w http.ResponseWriter, r *http.Request) {
	client := s.clientIP(r)
	if err := parseForm(r); err != nil {
		s.fail(w, r, "remove.html", pageData{}, err)
		return
	}
	d := pageData{Address: r.FormValue("address")}
	if err := s.CheckClient(r.Context(), client); err != nil {
		s.fail(w, r, "remove.html", d, err)
		return
	}
	if !s.csrfOK(r) {
		s.fail(w, r, "remove.html", d, userError(403, "csrf", "the form expired; please submit it again"))
		return
	}
	p, err := s.RequestRemoval(r.Context(), d.Address, client)
	if err != nil {
		s.fail(w, r, "remove.html", d, err)
		return
	}
	s.render(w, http.StatusAccepted, "pending.html", pendingPage(p))
}

// confirmPage shows a button rather than acting on GET: mail scanners and
// link previews fetch links, and must not use up the single-use token.
// It names the key the link binds, so the user can check it is theirs.
func (s *Service) confirmPage(w http.ResponseWriter, r *http.Request) {
	d := pageData{CSRF: s.csrfToken(w, r), Token: r.URL.Query().Get("token")}
	client, now := s.clientIP(r), s.opt.Now()
	if !s.fails.allow(client, now) {
		s.fail(w, r, "error.html", pageData{}, errLimited)
		return
	}
	req, err := s.store.FindRequest(r.Context(), hashToken(strings.TrimSpace(d.Token)), now)
	if errors.Is(err, keys.ErrNotFound) {
		s.fails.fail(client, now)
	}
	if err == nil {
		d.Action, d.Address = string(req.Action), req.Address
		for _, k := range req.Keys {
			d.Keys = append(d.Keys, pendingKey(k))
		}
	}
	s.render(w, http.StatusOK, "confirm.html", d)
}

func (s *Service) formConfirm(w http.ResponseWriter, r *http.Request) {
	if err := parseForm(r); err != nil {
		s.fail(w, r, "error.html", pageData{}, err)
		return
	}
	d := pageData{Token: r.FormValue("token")}
	if !s.csrfOK(r) {
		s.fail(w, r, "confirm.html", d, userError(403, "csrf", "the form expired; please press the button again"))
		return
	}
	req, err := s.Confirm(r.Context(), d.Token, s.clientIP(r))
	if err != nil {
		s.fail(w, r, "error.html", d, err)
		return
	}
	s.render(w, http.StatusOK, "done.html", donePage(req))
}

func donePage(req *keys.Request) pageData {
	d := pageData{Address: req.Address, Action: string(req.Action)}
	for _, k := range req.Keys {
		d.Keys = append(d.Keys, pendingKey(k))
	}
	return d
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

// apiKey is a key in the API's answers. For a certificate, UserIDs are
// the addresses it is issued to, and Subject, Issuer, Serial are set.
type apiKey struct {
	Fingerprint string     `json:"fingerprint"`
	UserIDs     []string   `json:"user_ids"`
	Kind        keys.Kind  `json:"kind"`              // "openpgp" or "x509"
	Expires     *time.Time `json:"expires,omitempty"` // absent: never
	Subject     string     `json:"subject,omitempty"`
	Issuer      string     `json:"issuer,omitempty"`
	Serial      string     `json:"serial,omitempty"`
}

type apiPending struct {
	Status    string    `json:"status"` // "pending"
	Address   string    `json:"address"`
	Action    string    `json:"action"`
	Encrypted bool      `json:"encrypted"`
	Expires   time.Time `json:"expires"`
	Keys      []apiKey  `json:"keys,omitempty"`
}

func apiKeys(ks []PendingKey) []apiKey {
	var out []apiKey
	for _, k := range ks {
		a := apiKey{Fingerprint: k.Fingerprint, UserIDs: k.UserIDs, Kind: k.Kind, Subject: k.Subject, Issuer: k.Issuer, Serial: k.Serial}
		if !k.Expires.IsZero() {
			e := k.Expires.UTC()
			a.Expires = &e
		}
		out = append(out, a)
	}
	return out
}

func apiPendingOf(p *Pending) apiPending {
	return apiPending{Status: "pending", Address: p.Address, Action: string(p.Action), Encrypted: p.Encrypted, Expires: p.Expires.UTC(), Keys: apiKeys(p.Keys)}
}

func (s *Service) apiSubmit(w http.ResponseWriter, r *http.Request) {
	client := s.clientIP(r)
	if err := s.CheckClient(r.Context(), client); err != nil {
		s.apiFail(w, r, err)
		return
	}
	var in struct {
		Address string `json:"address"`
		Key     string `json:"key"`
	}
	if err := decodeJSON(r, &in); err != nil {
		s.apiFail(w, r, err)
		return
	}
	p, err := s.Submit(r.Context(), in.Address, []byte(in.Key), client)
	if err != nil {
		s.apiFail(w, r, err)
		return
	}
	s.apiReply(w, http.StatusAccepted, apiPendingOf(p))
}

func (s *Service) apiRemove(w http.ResponseWriter, r *http.Request) {
	client := s.clientIP(r)
	if err := s.CheckClient(r.Context(), client); err != nil {
		s.apiFail(w, r, err)
		return
	}
	var in struct {
		Address string `json:"address"`
	}
	if err := decodeJSON(r, &in); err != nil {
		s.apiFail(w, r, err)
		return
	}
	p, err := s.RequestRemoval(r.Context(), in.Address, client)
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
	req, err := s.Confirm(r.Context(), in.Token, s.clientIP(r))
	if err != nil {
		s.apiFail(w, r, err)
		return
	}
	out := map[string]any{"status": "done", "address": req.Address, "action": string(req.Action)}
	if ks := apiKeys(donePage(req).Keys); len(ks) > 0 {
		out["keys"] = ks
	}
	s.apiReply(w, http.StatusOK, out)
}
