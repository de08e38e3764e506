package aliases

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"regexp/syntax"
	"strconv"
	"strings"
	"sync"
	"time"
)

// MethodPattern: a regexp or pcre table evaluated in this process, with
// Go's regexp engine, because asking postmap costs a process per address.
// Only tables entirely within a conservative subset of regexp_table(5) and
// pcre_table(5) are evaluated so (see parsePatternTable); any other
// table, and any key outside the subset (non-ASCII keys, empty or
// unmatched $n substitutions), is asked through postmap -q as before.
const MethodPattern = "pattern"

// errUnsupported: the table (or the key) is outside the subset.
var errUnsupported = errors.New("outside the in-process subset")

type patRule struct {
	op     int // ruleMatch, ruleIf, ruleEndif
	neg    bool
	re     *regexp.Regexp
	result []patPart
	end    int // ruleIf: index of its endif
}

const (
	ruleMatch = iota
	ruleIf
	ruleEndif
)

// patPart is a literal or a $n reference of a result template.
type patPart struct {
	lit   string
	group int // > 0: $group
}

// parsePatternTable parses a regexp_table(5) (posix) or pcre_table(5)
// file. It returns errUnsupported (wrapped) for anything outside the
// subset it can evaluate exactly like Postfix:
//   - rules "[!]/pattern/flags result" and "if [!]/pattern/flags" ...
//     "endif", comments, continuation lines; '/' as the delimiter only;
//   - regexp flags i and m (x, basic regular expressions, is refused);
//     pcre flags i, m, s, U (x, A, E, X and others are refused);
//   - regexp patterns that Go parses as POSIX ERE, without a backslash
//     inside a bracket expression (literal there in POSIX, an escape in
//     Go); pcre patterns that Go parses (no look-around, back-references,
//     possessive or atomic groups: Go rejects them);
//   - results with $n, ${n}, $(n) and $$, n within the pattern's groups.
func parsePatternTable(posix bool, content string) ([]patRule, error) {
	var rules []patRule
	var stack []int
	lines := logicalLines(content)
	for _, ln := range lines {
		p := ln.text
		word := strings.ToLower(leadingWord(p))
		switch {
		case word == "endif":
			if strings.TrimSpace(p[5:]) != "" || len(stack) == 0 {
				return nil, fmt.Errorf("line %d: %w: endif", ln.no, errUnsupported)
			}
			rules[stack[len(stack)-1]].end = len(rules)
			stack = stack[:len(stack)-1]
			rules = append(rules, patRule{op: ruleEndif})
			continue
		case word == "if":
			r, rest, err := parsePattern(posix, strings.TrimSpace(p[2:]))
			if err != nil || rest != "" {
				return nil, fmt.Errorf("line %d: %w: if", ln.no, errUnsupported)
			}
			r.op = ruleIf
			stack = append(stack, len(rules))
			rules = append(rules, r)
			continue
		}
		r, rest, err := parsePattern(posix, p)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", ln.no, err)
		}
		if rest == "" {
			return nil, fmt.Errorf("line %d: %w: no result", ln.no, errUnsupported)
		}
		if r.result, err = parseResult(rest, r.re.NumSubexp()); err != nil {
			return nil, fmt.Errorf("line %d: %w", ln.no, err)
		}
		if r.neg && hasGroups(r.result) {
			return nil, fmt.Errorf("line %d: %w: $n with a negated pattern", ln.no, errUnsupported)
		}
		r.op = ruleMatch
		rules = append(rules, r)
	}
	if len(stack) != 0 {
		return nil, fmt.Errorf("%w: if without endif", errUnsupported)
	}
	return rules, nil
}

type logicalLine struct {
	no   int
	text string
}

// logicalLines joins continuation lines (starting with whitespace) and
// drops blank and comment lines, as readllines(3) does.
func logicalLines(content string) []logicalLine {
	var out []logicalLine
	for i, raw := range strings.Split(content, "\n") {
		raw = strings.TrimRight(raw, "\r")
		t := strings.TrimSpace(raw)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		if (raw[0] == ' ' || raw[0] == '\t') && len(out) > 0 {
			// Postfix keeps the continuation's leading whitespace.
			out[len(out)-1].text += strings.TrimRight(raw, " \t")
			continue
		}
		out = append(out, logicalLine{no: i + 1, text: t})
	}
	return out
}

func leadingWord(s string) string {
	i := 0
	for i < len(s) && (s[i] >= 'a' && s[i] <= 'z' || s[i] >= 'A' && s[i] <= 'Z') {
		i++
	}
	if i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '_') {
		return ""
	}
	return s[:i]
}

// parsePattern parses "[!]/pattern/flags" at the start of s and returns
// the rest of s (trimmed).
func parsePattern(posix bool, s string) (patRule, string, error) {
	var r patRule
	if strings.HasPrefix(s, "!") {
		r.neg = true
		s = strings.TrimLeft(s[1:], " \t")
	}
	if !strings.HasPrefix(s, "/") {
		return r, "", fmt.Errorf("%w: delimiter other than /", errUnsupported)
	}
	i := 1
	for ; i < len(s); i++ {
		if s[i] == '\\' {
			if i+1 >= len(s) {
				return r, "", fmt.Errorf("%w: trailing backslash", errUnsupported)
			}
			i++
			continue
		}
		if s[i] == '/' {
			break
		}
	}
	if i >= len(s) {
		return r, "", fmt.Errorf("%w: unterminated pattern", errUnsupported)
	}
	pat := s[1:i]
	j := i + 1
	for j < len(s) && s[j] != ' ' && s[j] != '\t' {
		j++
	}
	flags := s[i+1 : j]
	rest := strings.TrimSpace(s[j:])
	icase, ungreedy := true, false
	for _, f := range flags {
		switch {
		case f == 'i':
			icase = !icase
		case f == 'm': // no newline in a lookup key: no effect
		case f == 's' && !posix:
		case f == 'U' && !posix:
			ungreedy = !ungreedy
		default:
			return r, "", fmt.Errorf("%w: flag %c", errUnsupported, f)
		}
	}
	if pat == "" {
		return r, "", fmt.Errorf("%w: empty pattern", errUnsupported)
	}
	for _, c := range pat {
		if c >= 0x80 || c < 0x20 {
			return r, "", fmt.Errorf("%w: non-ASCII pattern", errUnsupported)
		}
	}
	prefix := ""
	if icase {
		prefix += "i"
	}
	if ungreedy {
		prefix += "U"
	}
	if prefix != "" {
		prefix = "(?" + prefix + ")"
	}
	var err error
	if posix {
		if bracketBackslash(pat) {
			return r, "", fmt.Errorf("%w: backslash in a bracket expression", errUnsupported)
		}
		if _, err := syntax.Parse(pat, syntax.POSIX); err != nil {
			return r, "", fmt.Errorf("%w: %v", errUnsupported, err)
		}
		r.re, err = regexp.Compile(prefix + pat)
		if err == nil {
			r.re.Longest() // POSIX leftmost-longest
		}
	} else {
		if strings.Contains(pat, `\Z`) || strings.Contains(pat, `\G`) {
			return r, "", fmt.Errorf("%w: pcre-only escape", errUnsupported)
		}
		r.re, err = regexp.Compile(prefix + pat)
	}
	if err != nil {
		return r, "", fmt.Errorf("%w: %v", errUnsupported, err)
	}
	return r, rest, nil
}

// bracketBackslash reports a backslash inside a POSIX bracket expression.
func bracketBackslash(p string) bool {
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '\\':
			i++
		case '[':
			j := i + 1
			if j < len(p) && p[j] == '^' {
				j++
			}
			if j < len(p) && p[j] == ']' {
				j++
			}
			for ; j < len(p) && p[j] != ']'; j++ {
				if p[j] == '\\' {
					return true
				}
				if p[j] == '[' && j+1 < len(p) && (p[j+1] == ':' || p[j+1] == '.' || p[j+1] == '=') {
					k := strings.Index(p[j+2:], string(p[j+1])+"]")
					if k < 0 {
						return true
					}
					j += 2 + k + 1
				}
			}
			i = j
		}
	}
	return false
}

// parseResult splits a result into literals and $n references.
func parseResult(s string, ngroups int) ([]patPart, error) {
	var parts []patPart
	var lit strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' {
			lit.WriteByte(s[i])
			continue
		}
		if i+1 >= len(s) {
			return nil, fmt.Errorf("%w: $ at end of result", errUnsupported)
		}
		var name string
		switch s[i+1] {
		case '$':
			lit.WriteByte('$')
			i++
			continue
		case '{', '(':
			closer := byte('}')
			if s[i+1] == '(' {
				closer = ')'
			}
			k := strings.IndexByte(s[i+2:], closer)
			if k < 0 {
				return nil, fmt.Errorf("%w: unterminated ${", errUnsupported)
			}
			name = s[i+2 : i+2+k]
			i += 2 + k
		default:
			k := i + 1
			for k < len(s) && (isAlnum(s[k]) || s[k] == '_') {
				k++
			}
			name = s[i+1 : k]
			i = k - 1
		}
		n, err := strconv.Atoi(name)
		if err != nil || n < 1 || n > ngroups || name[0] == '0' {
			return nil, fmt.Errorf("%w: substitution $%s", errUnsupported, name)
		}
		if lit.Len() > 0 {
			parts = append(parts, patPart{lit: lit.String()})
			lit.Reset()
		}
		parts = append(parts, patPart{group: n})
	}
	if lit.Len() > 0 {
		parts = append(parts, patPart{lit: lit.String()})
	}
	return parts, nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func hasGroups(parts []patPart) bool {
	for _, p := range parts {
		if p.group > 0 {
			return true
		}
	}
	return false
}

// evalPattern applies the rules to key the way dict_regexp/dict_pcre do:
// the first matching rule wins; if blocks are skipped when their pattern
// does not match. errUnsupported: ask postmap instead.
func evalPattern(rules []patRule, key string) (string, bool, error) {
	for i := 0; i < len(key); i++ {
		if key[i] >= 0x80 || key[i] < 0x20 {
			return "", false, errUnsupported
		}
	}
	for i := 0; i < len(rules); i++ {
		r := rules[i]
		switch r.op {
		case ruleEndif:
			continue
		case ruleIf:
			if r.re.MatchString(key) == r.neg {
				i = r.end // skip to endif
			}
			continue
		}
		if r.neg {
			if !r.re.MatchString(key) {
				return expandResult(r.result, key, nil)
			}
			continue
		}
		m := r.re.FindStringSubmatchIndex(key)
		if m == nil {
			continue
		}
		return expandResult(r.result, key, m)
	}
	return "", false, nil
}

func expandResult(parts []patPart, key string, m []int) (string, bool, error) {
	var b strings.Builder
	for _, p := range parts {
		if p.group == 0 {
			b.WriteString(p.lit)
			continue
		}
		s, e := m[2*p.group], m[2*p.group+1]
		if s < 0 || s == e {
			return "", false, errUnsupported // empty or unmatched group: Postfix's rules differ by version
		}
		b.WriteString(key[s:e])
	}
	if b.Len() == 0 {
		return "", false, errUnsupported
	}
	return b.String(), true, nil
}

// patTable holds a parsed regexp/pcre table and parses it again when its
// file changes.
type patTable struct {
	path     string
	posix    bool
	interval time.Duration
	now      func() time.Time

	mu      sync.Mutex
	rules   []patRule
	unsup   error // the table is outside the subset: use postmap
	err     error // the file cannot be read
	sig     fileSig
	checked time.Time
	loaded  bool
}

// get answers key; errUnsupported means "ask postmap".
func (p *patTable) get(ctx context.Context, key string) (string, bool, error) {
	if err := ctx.Err(); err != nil {
		return "", false, err
	}
	p.mu.Lock()
	if !p.loaded || p.now().Sub(p.checked) >= p.interval {
		p.refreshLocked()
	}
	rules, unsup, err := p.rules, p.unsup, p.err
	p.mu.Unlock()
	if err != nil {
		return "", false, err
	}
	if unsup != nil {
		return "", false, errUnsupported
	}
	return evalPattern(rules, key)
}

func (p *patTable) refreshLocked() {
	p.checked = p.now()
	sig, err := statSig(p.path)
	if err != nil {
		p.err, p.loaded = err, true
		return
	}
	if p.loaded && p.err == nil && sigsEqual([]fileSig{sig}, []fileSig{p.sig}) {
		return
	}
	b, err := os.ReadFile(p.path)
	if err != nil {
		p.err, p.loaded = err, true
		return
	}
	p.rules, p.unsup = parsePatternTable(p.posix, string(b))
	p.sig, p.err, p.loaded = sig, nil, true
}
