package aliases

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// PostfixOptions configure NewPostfix. The zero value reads the default
// Postfix configuration with default caching.
type PostfixOptions struct {
	// ConfigDir is the Postfix configuration directory (postconf -c,
	// postmap -c); "" = Postfix's default (/etc/postfix).
	ConfigDir string
	// Service is the master.cf service that runs the milter, e.g. "smtp"
	// (port 25), "submission", "127.0.0.1:10025", or "name/type". Its -o
	// overrides of receive_override_options and cleanup_service_name
	// apply, and the cleanup service it names supplies the mapping
	// parameters. "" = main.cf only.
	Service string
	// CacheTTL bounds how long an expansion, a queried key, or a table in
	// memory is reused before the tables are consulted again: a table
	// rebuilt with postmap is used within CacheTTL. 0 = 30s; < 0 = no
	// cache (tables in memory are then stat()ed on every lookup).
	CacheTTL time.Duration
	// CacheSize bounds the number of cached expansions and, per queried
	// table, of cached keys. 0 = 10000.
	CacheSize int
	// Postconf and Postmap are the binaries; "" = found in PATH, else
	// /usr/sbin. postmap also reads postalias-built tables (it tries keys
	// with and without the NUL postalias adds), so postalias is not used.
	Postconf, Postmap string
	// Logger receives table errors and reloads; nil = discard.
	Logger *slog.Logger

	now func() time.Time // tests
}

// Limits of the expansion that Postfix has no parameter for.
const (
	// canonicalRecursion is cleanup_map11.c's MAX_RECURSION.
	canonicalRecursion = 10
	// aliasNesting approximates local(8)'s "state.level > 100": each
	// alias hop raises the level by three (deliver_recipient,
	// deliver_switch, deliver_alias).
	aliasNesting = 33
	// reinjectDepth bounds cleanup -> local -> cleanup cycles, which
	// Postfix breaks with its Delivered-To: loop check.
	reinjectDepth = 20
	// maxTargets bounds the work for one recipient (a mailing list in
	// aliases(5) is not limited by virtual_alias_expansion_limit).
	maxTargets = 10000
)

// ErrLimit is returned (wrapped) when an expansion exceeds Postfix's
// recursion or expansion limits or loops: Postfix defers such mail
// ("4.6.0 Alias expansion error") or bounces it at delivery, so the milter
// must not guess its mailboxes.
var ErrLimit = errors.New("alias expansion limit exceeded")

// Table describes one lookup table the expansion uses.
type Table struct {
	Param  string // the parameter that names it, e.g. "virtual_alias_maps"
	Name   string // TYPE:NAME
	Method string // MethodMemory or MethodQuery
}

// mapStage is one cleanup(8) service's address mapping.
type mapStage struct {
	service     string // cleanup service, for messages
	mapping     bool   // false: no_address_mappings
	delim       string // recipient_delimiter
	rcptCanon   []*table
	canon       []*table
	virtual     []*table
	propCanon   bool
	propVirtual bool
	recurLimit  int
	expanLimit  int
	addrLimit   int
}

// localStage is local(8)'s aliases(5) expansion.
type localStage struct {
	enabled  bool // local_transport is local(8)
	aliases  []*table
	propAlis bool
	delim    string
	ownerReq bool
	reinject *mapStage // cleanup service for forwarded recipients
}

// Postfix expands recipients with Postfix's own configuration and tables.
type Postfix struct {
	log    *slog.Logger
	now    func() time.Time
	tables *tableSet
	list   []Table

	myorigin, mydomain string
	appendAt, appendDt bool
	delim              string
	ownerReq           bool
	doubleBounce       string
	mydest             []string // mydestination patterns, files read
	destTables         []*table
	destParent         bool
	ifaces             map[netip.Addr]bool

	smtpd   *mapStage
	local   localStage
	noMapSt bool // the milter's smtpd has no_address_mappings

	cache *ttlCache[Expansion]
}

// NewPostfix reads the Postfix configuration through postconf and
// prepares the tables (it does not load them: Check does, or the first
// lookup). It fails if postconf cannot be run, a table name is malformed
// or opts.Service is not in master.cf.
func NewPostfix(ctx context.Context, opts PostfixOptions) (*Postfix, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := opts.now
	if now == nil {
		now = time.Now
	}
	ttl := opts.CacheTTL
	if ttl == 0 {
		ttl = 30 * time.Second
	}
	size := opts.CacheSize
	if size <= 0 {
		size = 10000
	}
	interval := time.Second
	if ttl < interval {
		interval = max(ttl, 0)
	}
	r := &runner{postconf: findBin(opts.Postconf, "postconf"), postmap: findBin(opts.Postmap, "postmap"), configDir: opts.ConfigDir}
	cfg, err := readConfig(ctx, r, log)
	if err != nil {
		return nil, err
	}
	p := &Postfix{log: log, now: now,
		tables: &tableSet{r: r, log: log, ttl: ttl, size: size, interval: interval, now: now, tables: map[string]*table{}},
		cache:  newTTLCache[Expansion](ttl, size, now)}

	m := cfg.main
	p.myorigin = strings.ToLower(strings.TrimSuffix(m["myorigin"], "."))
	p.mydomain = strings.ToLower(m["mydomain"])
	p.appendAt = yes(m["append_at_myorigin"])
	p.appendDt = yes(m["append_dot_mydomain"])
	p.doubleBounce = m["double_bounce_sender"]
	p.destParent = hasWord(m["parent_domain_matches_subdomains"], "mydestination")
	if err := p.setDestinations(m["mydestination"]); err != nil {
		return nil, err
	}
	p.ifaces = interfaceAddrs(ctx, m["inet_interfaces"], m["proxy_interfaces"])

	// The milter's smtpd: receive_override_options and the cleanup
	// service it hands mail to.
	smtpdSvc := ""
	if opts.Service != "" {
		if !cfg.masterOK {
			return nil, fmt.Errorf("service %q: master.cf cannot be read", opts.Service)
		}
		s, ok := cfg.findService(opts.Service)
		if !ok {
			return nil, fmt.Errorf("service %q is not in master.cf", opts.Service)
		}
		smtpdSvc = s
	}
	noMap := hasWord(cfg.get(smtpdSvc, "receive_override_options"), "no_address_mappings")
	cleanupName := cfg.get(smtpdSvc, "cleanup_service_name")
	if noMap {
		// FILTER_README's before-filter smtpd: the mapping happens after
		// the content filter, when the mail comes back through the
		// default cleanup service. Expanding as that cleanup will is the
		// fail-closed choice (see docs/aliases.md).
		cleanupName = m["cleanup_service_name"]
		p.noMapSt = true
		log.Info("aliases: the milter's smtpd has receive_override_options=no_address_mappings; expanding as the re-injection cleanup service will",
			"service", opts.Service, "cleanup", cleanupName)
	}
	p.smtpd, err = p.newMapStage(cfg, cleanupName+"/unix")
	if err != nil {
		return nil, err
	}

	// local(8), named by local_transport (transport[:nexthop]).
	lt, _, _ := strings.Cut(m["local_transport"], ":")
	localSvc := lt + "/unix"
	p.delim = cfg.get(localSvc, "recipient_delimiter")
	p.ownerReq = yes(cfg.get(localSvc, "owner_request_special"))
	p.local = localStage{
		// Unknown (no master.cf) counts as local(8): expanding aliases
		// that are not used encrypts for more mailboxes, never fewer.
		enabled:  !cfg.masterOK || cfg.commands[localSvc] == "local" || cfg.commands[localSvc] == "",
		propAlis: hasWord(cfg.get(localSvc, "propagate_unmatched_extensions"), "alias"),
		delim:    cfg.get(localSvc, "recipient_delimiter"),
		ownerReq: p.ownerReq,
	}
	if p.local.enabled {
		if p.local.aliases, err = p.tablesOf("alias_maps", cfg.get(localSvc, "alias_maps")); err != nil {
			return nil, err
		}
	}
	p.local.reinject, err = p.newMapStage(cfg, cfg.get(localSvc, "cleanup_service_name")+"/unix")
	if err != nil {
		return nil, err
	}
	return p, nil
}

func findBin(given, name string) string {
	if given != "" {
		return given
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return "/usr/sbin/" + name
}

func (p *Postfix) newMapStage(cfg *pfConfig, svc string) (*mapStage, error) {
	get := func(param string) string { return cfg.get(svc, param) }
	st := &mapStage{service: svc, mapping: true, delim: get("recipient_delimiter")}
	var err error
	if hasWord(get("recipient_canonical_classes"), "envelope_recipient") {
		if st.rcptCanon, err = p.tablesOf("recipient_canonical_maps", get("recipient_canonical_maps")); err != nil {
			return nil, err
		}
	}
	if hasWord(get("canonical_classes"), "envelope_recipient") {
		if st.canon, err = p.tablesOf("canonical_maps", get("canonical_maps")); err != nil {
			return nil, err
		}
	}
	if st.virtual, err = p.tablesOf("virtual_alias_maps", get("virtual_alias_maps")); err != nil {
		return nil, err
	}
	prop := get("propagate_unmatched_extensions")
	st.propCanon, st.propVirtual = hasWord(prop, "canonical"), hasWord(prop, "virtual")
	for _, x := range []struct {
		param string
		dst   *int
	}{{"virtual_alias_recursion_limit", &st.recurLimit}, {"virtual_alias_expansion_limit", &st.expanLimit},
		{"virtual_alias_address_length_limit", &st.addrLimit}} {
		n, err := strconv.Atoi(get(x.param))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%s = %q: not a positive number", x.param, get(x.param))
		}
		*x.dst = n
	}
	return st, nil
}

func (p *Postfix) tablesOf(param, value string) ([]*table, error) {
	var out []*table
	for _, name := range splitList(value) {
		t, err := p.tables.get(name)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", param, err)
		}
		out = append(out, t)
		dup := false
		for _, x := range p.list {
			if x.Param == param && x.Name == name {
				dup = true
			}
		}
		if !dup {
			p.list = append(p.list, Table{Param: param, Name: name, Method: t.method})
		}
	}
	return out, nil
}

// Tables lists the tables the expansion uses, in the order it consults
// them (for check-config).
func (p *Postfix) Tables() []Table { return append([]Table(nil), p.list...) }

// Check does one lookup in each table (loading the tables kept in
// memory) and returns every table that cannot be read.
func (p *Postfix) Check(ctx context.Context) error {
	var errs []error
	seen := map[string]bool{}
	for _, t := range p.list {
		if seen[t.Name] {
			continue
		}
		seen[t.Name] = true
		tb, _ := p.tables.get(t.Name)
		key := tb.foldKey("lacre-check@lacre.invalid")
		if _, _, err := tb.lookup(ctx, key, nil); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", t.Param, err))
		}
	}
	return errors.Join(errs...)
}

// setDestinations prepares $mydestination: names, .parent patterns,
// !negations, /file/name (read now, as Postfix reads it at start) and
// type:table entries.
func (p *Postfix) setDestinations(v string) error {
	for _, pat := range splitList(v) {
		neg := strings.HasPrefix(pat, "!")
		body := strings.TrimPrefix(pat, "!")
		switch {
		case strings.HasPrefix(body, "/"):
			b, err := os.ReadFile(body)
			if err != nil {
				return fmt.Errorf("mydestination: %w", err)
			}
			for _, x := range splitList(stripComments(string(b))) {
				if neg {
					x = "!" + x
				}
				p.mydest = append(p.mydest, strings.ToLower(x))
			}
		case strings.Contains(body, ":") && !strings.HasPrefix(body, "["):
			t, err := p.tables.get(body)
			if err != nil {
				return fmt.Errorf("mydestination: %w", err)
			}
			p.destTables = append(p.destTables, t)
			p.list = append(p.list, Table{Param: "mydestination", Name: body, Method: t.method})
			p.mydest = append(p.mydest, pat) // kept in order; matched by name
		default:
			p.mydest = append(p.mydest, strings.ToLower(pat))
		}
	}
	return nil
}

func stripComments(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}

// interfaceAddrs is the set of addresses of $inet_interfaces and
// $proxy_interfaces ("all" = every address of this host).
func interfaceAddrs(ctx context.Context, inet, proxy string) map[netip.Addr]bool {
	set := map[netip.Addr]bool{}
	add := func(a netip.Addr) { set[a.Unmap()] = true }
	for _, v := range append(splitList(inet), splitList(proxy)...) {
		switch strings.ToLower(v) {
		case "all":
			if addrs, err := net.InterfaceAddrs(); err == nil {
				for _, a := range addrs {
					if pfx, err := netip.ParsePrefix(a.String()); err == nil {
						add(pfx.Addr())
					}
				}
			}
			continue
		case "loopback-only":
			add(netip.MustParseAddr("127.0.0.1"))
			add(netip.MustParseAddr("::1"))
			continue
		}
		if a, err := netip.ParseAddr(strings.Trim(v, "[]")); err == nil {
			add(a)
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		ips, err := net.DefaultResolver.LookupNetIP(lctx, "ip", v)
		cancel()
		if err == nil {
			for _, a := range ips {
				add(a)
			}
		}
	}
	return set
}

// isLocal is resolve_local(3): domain matches $mydestination, or is an
// address literal of $inet_interfaces or $proxy_interfaces.
func (p *Postfix) isLocal(ctx context.Context, domain string) (bool, error) {
	d := strings.ToLower(strings.TrimSuffix(domain, "."))
	if d == "" {
		return false, nil
	}
	if strings.HasPrefix(d, "[") && strings.HasSuffix(d, "]") {
		lit := strings.TrimPrefix(d[1:len(d)-1], "ipv6:")
		if a, err := netip.ParseAddr(lit); err == nil {
			return p.ifaces[a.Unmap()], nil
		}
		return false, nil
	}
	for _, pat := range p.mydest {
		neg := strings.HasPrefix(pat, "!")
		body := strings.TrimPrefix(pat, "!")
		var hit bool
		if strings.Contains(body, ":") && !strings.HasPrefix(body, "[") {
			t, _ := p.tables.get(body)
			_, ok, err := t.lookup(ctx, t.foldKey(d), nil)
			if err != nil {
				return false, err
			}
			hit = ok
		} else if strings.HasPrefix(body, ".") {
			hit = strings.HasSuffix(d, body)
		} else {
			hit = d == body || (p.destParent && strings.HasSuffix(d, "."+body))
		}
		if hit {
			return !neg, nil
		}
	}
	return false, nil
}

// canon is trivial-rewrite's canonicalisation of a recipient: a bare
// user gets @$myorigin, a domain without a dot gets .$mydomain (when
// append_dot_mydomain is on), a trailing dot goes.
func (p *Postfix) canon(addr string) string {
	addr = strings.TrimSpace(addr)
	if strings.HasPrefix(addr, "<") && strings.HasSuffix(addr, ">") {
		addr = addr[1 : len(addr)-1]
	}
	local, domain, hasAt := splitAt(addr)
	if !hasAt {
		if !p.appendAt || p.myorigin == "" {
			return addr
		}
		return addr + "@" + p.myorigin
	}
	domain = strings.TrimSuffix(domain, ".")
	if p.appendDt && p.mydomain != "" && domain != "" && !strings.Contains(domain, ".") &&
		!strings.HasPrefix(domain, "[") {
		domain += "." + p.mydomain
	}
	return local + "@" + domain
}
