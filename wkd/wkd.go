// Package wkd serves confirmed keys through the OpenPGP Web Key Directory
// (draft-koch-openpgp-webkey-service), so that senders' own mail clients
// find a user's key and encrypt before the mail ever reaches the gateway.
package wkd

import (
	"context"
	"crypto/sha1"
	"net/http"
	"strings"
	"time"

	"lacre.io/milter/keys"
)

// zbase32 is the z-base-32 alphabet (draft §3.1, from RFC 6189 §5.1.6).
const zbase32 = "ybndrfg8ejkmcpqxot1uwisza345h769"

// Hash returns the WKD hash of a local part: the z-base-32 encoding of
// the SHA-1 of the local part mapped to lower case (draft §3.1).
func Hash(local string) string {
	sum := sha1.Sum([]byte(strings.ToLower(local)))
	var out [32]byte
	// 160 bits → 32 five-bit symbols, most significant bit first.
	var acc uint64
	bits, o := 0, 0
	for _, b := range sum {
		acc = acc<<8 | uint64(b)
		bits += 8
		for bits >= 5 {
			bits -= 5
			out[o] = zbase32[(acc>>uint(bits))&31]
			o++
		}
	}
	return string(out[:])
}

// Store is what the handler needs of the key store.
type Store interface {
	KeysFor(ctx context.Context, address string) ([]*keys.Key, error)
}

// Handler serves /.well-known/openpgpkey/ for the given domains:
//
//	direct method:   /.well-known/openpgpkey/hu/HASH?l=LOCAL   (domain from Host)
//	advanced method: /.well-known/openpgpkey/DOMAIN/hu/HASH?l=LOCAL
//	policy files:    /.well-known/openpgpkey/policy and …/DOMAIN/policy
//
// Keys are found through the "l" parameter, which GnuPG, Thunderbird and
// OpenKeychain send; a request whose hash does not match "l" is 404, so a
// caller cannot ask for one address under another's hash. Only usable keys
// are served, each with only the User IDs for the address asked for.
type Handler struct {
	Store   Store
	Domains []string // lower-case A-label domains served; nil serves none
	// Policy decides which keys are served (usable ones only); its
	// Normalizer normalises the addresses asked for.
	Policy keys.Policy
	// Now is the clock for the usability check; nil means time.Now.
	Now func() time.Time
}

const prefix = "/.well-known/openpgpkey/"

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, prefix)
	if !ok {
		http.NotFound(w, r)
		return
	}
	domain := hostDomain(r.Host)
	parts := strings.Split(rest, "/")
	if len(parts) >= 2 && parts[0] != "hu" {
		// Advanced method: the domain is in the path.
		domain, parts = strings.ToLower(parts[0]), parts[1:]
	}
	if !h.serves(domain) {
		http.NotFound(w, r)
		return
	}
	switch {
	case len(parts) == 1 && parts[0] == "policy":
		// An empty policy file says "this domain has a WKD" (draft §4.5).
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Access-Control-Allow-Origin", "*")
		return
	case len(parts) == 2 && parts[0] == "hu":
		h.serveKey(w, r, domain, parts[1])
	default:
		http.NotFound(w, r)
	}
}

func (h *Handler) serves(domain string) bool {
	for _, d := range h.Domains {
		if d == domain {
			return true
		}
	}
	return false
}

func (h *Handler) serveKey(w http.ResponseWriter, r *http.Request, domain, hash string) {
	local := r.URL.Query().Get("l")
	if local == "" || len(hash) != 32 || Hash(local) != hash {
		http.NotFound(w, r)
		return
	}
	addr, err := h.Policy.Normalizer.Normalize(local + "@" + domain)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	ks, err := h.Store.KeysFor(r.Context(), addr)
	if err != nil {
		// The store is down: a temporary error, so clients retry rather
		// than conclude there is no key.
		http.Error(w, "key store unavailable", http.StatusServiceUnavailable)
		return
	}
	now := h.Now
	if now == nil {
		now = time.Now
	}
	var body []byte
	for _, k := range ks {
		if h.Policy.Usable(k, now()) != nil {
			continue
		}
		body = append(body, k.ExportFor(addr, h.Policy.Normalizer)...)
	}
	if len(body) == 0 {
		http.NotFound(w, r)
		return
	}
	// Binary keys (draft §3.1), readable by web clients such as Mailvelope.
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Access-Control-Allow-Origin", "*")
	w.Header().Set("Cache-Control", "max-age=3600")
	if r.Method == http.MethodHead {
		return
	}
	w.Write(body)
}

// hostDomain returns the domain of a Host header for the direct method:
// lower-cased, without port, and without the "openpgpkey." label of the
// advanced method's host name.
func hostDomain(host string) string {
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.Contains(host[i:], "]") {
		host = host[:i]
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	return strings.TrimPrefix(host, "openpgpkey.")
}
