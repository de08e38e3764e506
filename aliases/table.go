package aliases

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// TableError is a Postfix table that cannot be read: a missing or
// unreadable file, a postmap failure, a lookup that timed out. The
// expansion is then unknown: the caller must answer a temporary failure.
type TableError struct {
	Table string // TYPE:NAME as configured
	Err   error
}

func (e *TableError) Error() string { return "postfix table " + e.Table + ": " + e.Err.Error() }
func (e *TableError) Unwrap() error { return e.Err }

// Table methods: how a table is answered.
const (
	// MethodMemory: the table is dumped once with "postmap -s" into memory
	// and dumped again when its file changes; a lookup is a map access.
	MethodMemory = "memory"
	// MethodQuery: each key (or each address's candidate keys at once) is
	// asked with "postmap -q -", and the answer cached for CacheTTL.
	MethodQuery = "query"
)

// memoryTypes are the table types whose whole content postmap -s can
// list, with the suffix of the file Postfix reads ("" = the file itself;
// inline has no file).
var memoryTypes = map[string][]string{
	"hash":     {".db"},
	"btree":    {".db"},
	"lmdb":     {".lmdb"},
	"cdb":      {".cdb"},
	"dbm":      {".dir", ".pag"},
	"sdbm":     {".dir", ".pag"},
	"texthash": {""},
	"inline":   nil,
}

// patternTypes are the types Postfix opens with DICT_FLAG_PATTERN: they
// see only the full address (mail_addr_find(3) sends the partial keys
// user@domain, user and @domain only to tables with fixed keys), and their
// keys are not folded to lower case (regexp and pcre fold themselves
// unless the pattern asks otherwise).
var patternTypes = map[string]bool{
	"regexp": true, "pcre": true, "cidr": true, "randmap": true,
	"fail": true, "socketmap": true, "tcp": true,
}

// runner runs Postfix's command-line tools.
type runner struct {
	postconf, postmap string
	configDir         string

	mu     sync.Mutex
	warned map[string]bool // warnings already logged (once each)
}

// warnOnce logs a tool's warning the first time it is seen: a table that
// warns on every run (nis:mail.aliases without NIS) must not flood the log.
func (r *runner) warnOnce(log *slog.Logger, cmd, msg string) {
	r.mu.Lock()
	if r.warned == nil {
		r.warned = map[string]bool{}
	}
	seen := r.warned[msg]
	if !seen && len(r.warned) < 1000 {
		r.warned[msg] = true
	}
	r.mu.Unlock()
	if !seen {
		log.Warn("aliases: postfix tool warning (logged once)", "cmd", cmd, "stderr", msg)
	}
}

func (r *runner) cmd(ctx context.Context, bin string, args ...string) *exec.Cmd {
	if r.configDir != "" {
		args = append([]string{"-c", r.configDir}, args...)
	}
	c := exec.CommandContext(ctx, bin, args...)
	c.Env = append(os.Environ(), "LC_ALL=C")
	c.WaitDelay = time.Second
	return c
}

// run runs bin and returns stdout. Postfix tools report errors with
// "fatal:" on stderr and exit 1, the same status as "not found", so
// stderr decides: a line with "fatal:" or "error:" (or another exit
// status) is an error; warnings are logged.
func (r *runner) run(ctx context.Context, log *slog.Logger, stdin string, bin string, args ...string) (out []byte, found bool, err error) {
	c := r.cmd(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if stdin != "" {
		c.Stdin = strings.NewReader(stdin)
	}
	runErr := c.Run()
	if ctx.Err() != nil {
		return nil, false, ctx.Err()
	}
	msg := strings.TrimSpace(stderr.String())
	for _, line := range strings.Split(msg, "\n") {
		if strings.Contains(line, "fatal:") || strings.Contains(line, "error:") || strings.Contains(line, "panic:") {
			return nil, false, errors.New(line)
		}
	}
	if msg != "" && log != nil {
		r.warnOnce(log, bin+" "+strings.Join(args, " "), msg)
	}
	if runErr != nil {
		var ee *exec.ExitError
		if errors.As(runErr, &ee) && ee.ExitCode() == 1 {
			return stdout.Bytes(), false, nil
		}
		if msg != "" {
			return nil, false, fmt.Errorf("%v: %s", runErr, msg)
		}
		return nil, false, runErr
	}
	return stdout.Bytes(), true, nil
}

// table is one Postfix lookup table, TYPE:NAME.
type table struct {
	name    string // as configured
	typ     string // outer type (proxy for proxy:hash:...)
	pattern bool   // full address only, key case kept
	method  string
	log     *slog.Logger
	r       *runner

	mem *memTable
	pat *patTable
	q   *ttlCache[queryResult]
}

// currentMethod is how the table is answered now, and why a pattern table
// is asked through postmap instead (its content is outside the subset).
func (t *table) currentMethod(ctx context.Context) (method, note string) {
	if t.pat == nil {
		return t.method, ""
	}
	_, _, _ = t.pat.get(ctx, "lacre-check@lacre.invalid")
	t.pat.mu.Lock()
	defer t.pat.mu.Unlock()
	if t.pat.unsup != nil {
		return MethodQuery, t.pat.unsup.Error()
	}
	return MethodPattern, ""
}

type queryResult struct {
	val   string
	found bool
}

// tableSet makes each distinct table once, whatever parameters name it.
type tableSet struct {
	r        *runner
	log      *slog.Logger
	ttl      time.Duration
	size     int
	interval time.Duration
	now      func() time.Time
	// noPattern: ask postmap for regexp and pcre tables too.
	noPattern bool

	mu     sync.Mutex
	tables map[string]*table
}

func (s *tableSet) get(name string) (*table, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.tables[name]; ok {
		return t, nil
	}
	typ, rest, ok := strings.Cut(name, ":")
	if !ok || typ == "" || rest == "" {
		return nil, fmt.Errorf("table %q: not TYPE:NAME", name)
	}
	inner := typ
	if typ == "proxy" {
		if it, _, ok := strings.Cut(rest, ":"); ok {
			inner = it
		}
	}
	t := &table{name: name, typ: typ, pattern: patternTypes[inner], log: s.log, r: s.r}
	if suffixes, ok := memoryTypes[typ]; ok {
		var files []string
		for _, suf := range suffixes {
			files = append(files, rest+suf)
		}
		t.method = MethodMemory
		t.mem = &memTable{t: t, files: files, interval: s.interval, now: s.now, lock: make(chan struct{}, 1)}
	} else {
		t.method = MethodQuery
		t.q = newTTLCache[queryResult](s.ttl, s.size, s.now)
		if (typ == "regexp" || typ == "pcre") && !s.noPattern {
			t.method = MethodPattern
			t.pat = &patTable{path: rest, posix: typ == "regexp", interval: s.interval, now: s.now}
		}
	}
	s.tables[name] = t
	return t, nil
}

// foldKey is the key Postfix looks up: tables with fixed keys are opened
// with DICT_FLAG_FOLD_FIX and see the key in lower case.
func (t *table) foldKey(key string) string {
	if t.pattern {
		return key
	}
	return strings.ToLower(key)
}

// lookup looks key up (already folded with foldKey). batch are other keys
// the caller will probably ask next (the candidate keys of one address):
// a queried table asks them in the same postmap run.
func (t *table) lookup(ctx context.Context, key string, batch []string) (string, bool, error) {
	if err := ctx.Err(); err != nil {
		return "", false, &TableError{Table: t.name, Err: err}
	}
	if noWait(ctx) {
		return t.lookupNoWait(key)
	}
	if t.pat != nil {
		v, ok, err := t.pat.get(ctx, key)
		if err == nil {
			return v, ok, nil
		}
		if !errors.Is(err, errUnsupported) {
			return "", false, &TableError{Table: t.name, Err: err}
		}
		// outside the subset: ask postmap
	}
	if t.mem != nil {
		v, ok, err := t.mem.get(ctx, key)
		if err != nil {
			return "", false, &TableError{Table: t.name, Err: err}
		}
		return v, ok, nil
	}
	res, err := t.q.do(ctx, key, func(ctx context.Context) (queryResult, error) {
		return t.query(ctx, key, batch)
	})
	if err != nil {
		return "", false, &TableError{Table: t.name, Err: err}
	}
	return res.val, res.found, nil
}

// query runs one "postmap -q -" for key and the uncached keys of batch,
// caches the batch's answers and returns key's.
func (t *table) query(ctx context.Context, key string, batch []string) (queryResult, error) {
	keys := []string{key}
	seen := map[string]bool{key: true}
	for _, k := range batch {
		if seen[k] || k == "" {
			continue
		}
		seen[k] = true
		if _, ok := t.q.get(k); !ok {
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		if strings.ContainsAny(k, "\n\r\t") || k == "" {
			return queryResult{}, fmt.Errorf("cannot look up key %q", k)
		}
	}
	out, _, err := t.r.run(ctx, t.log, strings.Join(keys, "\n")+"\n", t.r.postmap, "-q", "-", t.name)
	if err != nil {
		return queryResult{}, err
	}
	found := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "\t")
		if ok {
			if _, dup := found[k]; !dup {
				found[k] = v
			}
		}
	}
	if err := sc.Err(); err != nil {
		return queryResult{}, err
	}
	var res queryResult
	for _, k := range keys {
		v, ok := found[k]
		r := queryResult{val: v, found: ok}
		if k == key {
			res = r
			continue
		}
		t.q.put(k, r)
	}
	return res, nil
}

// memTable is a table held in memory, dumped with postmap -s.
type memTable struct {
	t        *table
	files    []string
	interval time.Duration
	now      func() time.Time
	lock     chan struct{} // serialises checks and reloads, heeding ctx

	mu      sync.RWMutex
	data    map[string]string
	err     error
	sig     []fileSig
	checked time.Time
	loaded  bool
	loads   int
}

type fileSig struct {
	dev, ino     uint64
	size         int64
	mtime, ctime time.Time
}

func statSig(path string) (fileSig, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileSig{}, err
	}
	s := fileSig{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.dev, s.ino = uint64(st.Dev), st.Ino
		s.ctime = time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
	}
	return s, nil
}

func (m *memTable) get(ctx context.Context, key string) (string, bool, error) {
	m.mu.RLock()
	fresh := m.loaded && m.now().Sub(m.checked) < m.interval
	if fresh {
		var v string
		var ok bool
		err := m.err
		if err == nil {
			v, ok = m.data[key]
		}
		m.mu.RUnlock()
		return v, ok, err
	}
	m.mu.RUnlock()
	if err := m.refresh(ctx); err != nil {
		return "", false, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.err != nil {
		return "", false, m.err
	}
	v, ok := m.data[key]
	return v, ok, nil
}

// refresh stats the table's files and dumps the table again if they
// changed (inode, size, mtime or ctime: postmap renames a new file into
// place, chmod changes ctime) or if the last attempt failed.
func (m *memTable) refresh(ctx context.Context) error {
	select {
	case m.lock <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-m.lock }()

	m.mu.RLock()
	fresh := m.loaded && m.now().Sub(m.checked) < m.interval
	m.mu.RUnlock()
	if fresh {
		return nil
	}
	sigs := make([]fileSig, len(m.files))
	var statErr error
	for i, f := range m.files {
		s, err := statSig(f)
		if err != nil {
			statErr = err
			break
		}
		sigs[i] = s
	}
	m.mu.RLock()
	same := m.loaded && m.err == nil && statErr == nil && sigsEqual(sigs, m.sig)
	m.mu.RUnlock()
	if same {
		m.mu.Lock()
		m.checked = m.now()
		m.mu.Unlock()
		return nil
	}
	if statErr != nil {
		m.set(nil, nil, statErr)
		return nil
	}
	if len(m.files) == 0 && m.loaded && m.err == nil {
		m.mu.Lock()
		m.checked = m.now()
		m.mu.Unlock()
		return nil
	}
	out, _, err := m.t.r.run(ctx, m.t.log, "", m.t.r.postmap, "-s", m.t.name)
	if ctx.Err() != nil {
		return ctx.Err() // ours, not the table's: try again next time
	}
	if err != nil {
		m.set(nil, nil, err)
		return nil
	}
	data := make(map[string]string)
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "\t"); ok {
			data[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		m.set(nil, nil, err)
		return nil
	}
	m.set(data, sigs, nil)
	if m.t.log != nil {
		m.t.log.Debug("aliases: table loaded", "table", m.t.name, "entries", len(data))
	}
	return nil
}

func (m *memTable) set(data map[string]string, sig []fileSig, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil && m.t.log != nil && (m.err == nil || m.err.Error() != err.Error()) {
		m.t.log.Warn("aliases: table cannot be read", "table", m.t.name, "err", err)
	}
	m.data, m.sig, m.err = data, sig, err
	m.checked = m.now()
	m.loaded = true
	if err == nil {
		m.loads++
	}
}

func sigsEqual(a, b []fileSig) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.dev != y.dev || x.ino != y.ino || x.size != y.size || !x.mtime.Equal(y.mtime) || !x.ctime.Equal(y.ctime) {
			return false
		}
	}
	return true
}
