package aliases

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
)

// pfConfig is what postconf reports: main.cf parameters (with $name
// expanded, defaults included) and master.cf services with their -o
// overrides.
type pfConfig struct {
	main      map[string]string
	overrides map[string]map[string]string // "service/type" -> param -> value
	commands  map[string]string            // "service/type" -> command (8th field)
	masterOK  bool                         // master.cf could be read
}

// mainParams are the main.cf parameters the expansion reads.
var mainParams = []string{
	"myorigin", "mydomain", "mydestination", "inet_interfaces", "proxy_interfaces",
	"parent_domain_matches_subdomains", "append_at_myorigin", "append_dot_mydomain",
	"recipient_delimiter", "propagate_unmatched_extensions", "owner_request_special",
	"double_bounce_sender",
	"canonical_maps", "canonical_classes", "recipient_canonical_maps", "recipient_canonical_classes",
	"virtual_alias_maps", "virtual_alias_recursion_limit", "virtual_alias_expansion_limit",
	"virtual_alias_address_length_limit",
	"alias_maps", "local_transport",
	"receive_override_options", "cleanup_service_name",
}

// readConfig asks postconf for the parameters (postconf -x NAME...) and
// the master.cf overrides (postconf -P -x) and services (postconf -M).
func readConfig(ctx context.Context, r *runner, log *slog.Logger) (*pfConfig, error) {
	c := &pfConfig{main: map[string]string{}, overrides: map[string]map[string]string{}, commands: map[string]string{}}
	// Without -h, so that a parameter this Postfix does not know (a
	// warning, and no line) cannot shift the values.
	out, _, err := r.run(ctx, log, "", r.postconf, append([]string{"-x"}, mainParams...)...)
	if err != nil {
		return nil, fmt.Errorf("postconf: %w", err)
	}
	for name, val := range parseParamLines(out) {
		c.main[name] = val
	}
	for _, p := range mainParams {
		if _, ok := c.main[p]; !ok {
			return nil, fmt.Errorf("postconf did not report %s", p)
		}
	}
	// master.cf: a missing file is not an error (a config dir made only
	// for postmap), but then no service overrides apply.
	out, _, err = r.run(ctx, nil, "", r.postconf, "-M")
	if err == nil {
		c.masterOK = true
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 8 {
				c.commands[f[0]+"/"+f[1]] = f[7]
			}
		}
		out, _, err = r.run(ctx, nil, "", r.postconf, "-P", "-x")
		if err != nil {
			return nil, fmt.Errorf("postconf -P: %w", err)
		}
		for name, val := range parseParamLines(out) {
			// service/type/parameter
			i := strings.LastIndexByte(name, '/')
			if i < 0 {
				continue
			}
			svc, p := name[:i], name[i+1:]
			if c.overrides[svc] == nil {
				c.overrides[svc] = map[string]string{}
			}
			c.overrides[svc][p] = val
		}
	} else if log != nil {
		log.Debug("aliases: no master.cf, no service overrides", "err", err)
	}
	return c, nil
}

func parseParamLines(out []byte) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 4<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " = ")
		if !ok {
			name, ok = strings.CutSuffix(sc.Text(), " =")
			if !ok {
				continue
			}
			val = ""
		}
		m[strings.TrimSpace(name)] = strings.TrimSpace(val)
	}
	return m
}

// findService resolves a master.cf service name ("smtp", "127.0.0.1:10025",
// or "name/type") to its "service/type" key.
func (c *pfConfig) findService(name string) (string, bool) {
	if strings.Count(name, "/") == 1 {
		_, ok := c.commands[name]
		return name, ok
	}
	for _, typ := range []string{"inet", "unix", "pass", "unix-dgram", "fifo"} {
		if _, ok := c.commands[name+"/"+typ]; ok {
			return name + "/" + typ, true
		}
	}
	return "", false
}

// get returns param as service svc sees it: its -o override, or main.cf.
func (c *pfConfig) get(svc, param string) string {
	if o, ok := c.overrides[svc][param]; ok {
		return o
	}
	return c.main[param]
}

// splitList splits a Postfix list parameter at commas and whitespace,
// keeping {braced} text (inline:{ a=b, c=d }) together.
func splitList(s string) []string {
	var out []string
	var cur strings.Builder
	depth := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '{':
			depth++
			cur.WriteByte(c)
		case c == '}':
			if depth > 0 {
				depth--
			}
			cur.WriteByte(c)
		case depth == 0 && (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteByte(c)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

// hasWord reports whether the list value s names w (case-insensitive).
func hasWord(s, w string) bool {
	for _, x := range splitList(s) {
		if strings.EqualFold(x, w) {
			return true
		}
	}
	return false
}

func yes(s string) bool { return strings.EqualFold(strings.TrimSpace(s), "yes") }
