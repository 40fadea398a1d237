package vmconfig

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"
)

// field is a value read from the config and the path of the key it came
// from (in its [[vm]] or in [defaults]).
type field[T any] struct {
	v    T
	set  bool
	path string
}

func (f field[T]) or(def field[T]) field[T] {
	if f.set {
		return f
	}
	return def
}

// table reads one TOML table and remembers which keys were used, so the
// rest can be reported as unknown.
type table struct {
	p    *parser
	path string
	what string // prefix for messages, e.g. `vm "web": `
	m    map[string]any
	used map[string]bool
}

func (p *parser) newTable(path, what string, v any) *table {
	m, ok := v.(map[string]any)
	if !ok {
		p.errorf(path, "%s must be a table, not %s", strings.TrimSuffix(what, ": "), tomlType(v))
		m = nil
	}
	return &table{p: p, path: path, what: what, m: m, used: map[string]bool{}}
}

// tables reads an array of tables ([[vm]] or vm = [{...}]).
func (p *parser) tables(path, what string, v any) []*table {
	var elems []any
	switch v := v.(type) {
	case []map[string]any:
		for _, m := range v {
			elems = append(elems, m)
		}
	case []any:
		elems = v
	default:
		p.errorf(path, "%s must be an array of tables, written [[%s]], not %s", what, unindexed(path), tomlType(v))
		return nil
	}
	out := make([]*table, 0, len(elems))
	for i, e := range elems {
		ip := indexPath(path, i)
		if _, ok := e.(map[string]any); !ok {
			p.errorf(ip, "%s %d must be a table, not %s", what, i, tomlType(e))
			continue
		}
		out = append(out, p.newTable(ip, fmt.Sprintf("%s %d: ", what, i), e))
	}
	return out
}

// unindexed turns vm[2].nic into vm.nic for messages.
func unindexed(path string) string {
	var b strings.Builder
	depth := 0
	for i := 0; i < len(path); i++ {
		switch c := path[i]; {
		case c == '[':
			depth++
		case c == ']':
			depth--
		case depth == 0:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func (t *table) key(k string) string { return joinPath(t.path, k) }

func (t *table) get(k string) (any, bool) {
	t.used[k] = true
	v, ok := t.m[k]
	return v, ok
}

func (t *table) errorf(k, format string, args ...any) {
	t.p.errorf(t.key(k), t.what+format, args...)
}

func (t *table) warnf(k, format string, args ...any) {
	t.p.warnf(t.key(k), t.what+format, args...)
}

func (t *table) str(k string) field[string] {
	v, ok := t.get(k)
	if !ok {
		return field[string]{path: t.key(k)}
	}
	s, ok := v.(string)
	if !ok {
		t.errorf(k, "%s must be a string, not %s", k, tomlType(v))
		return field[string]{path: t.key(k)}
	}
	return field[string]{v: s, set: true, path: t.key(k)}
}

func (t *table) integer(k string, min, max int) field[int] {
	v, ok := t.get(k)
	if !ok {
		return field[int]{path: t.key(k)}
	}
	n, ok := v.(int64)
	if !ok {
		t.errorf(k, "%s must be an integer, not %s", k, tomlType(v))
		return field[int]{path: t.key(k)}
	}
	if n < int64(min) || n > int64(max) {
		t.errorf(k, "%s = %d is out of range: use %d to %d", k, n, min, max)
		return field[int]{path: t.key(k)}
	}
	return field[int]{v: int(n), set: true, path: t.key(k)}
}

func (t *table) boolean(k string) field[bool] {
	v, ok := t.get(k)
	if !ok {
		return field[bool]{path: t.key(k)}
	}
	b, ok := v.(bool)
	if !ok {
		t.errorf(k, "%s must be true or false, not %s", k, tomlType(v))
		return field[bool]{path: t.key(k)}
	}
	return field[bool]{v: b, set: true, path: t.key(k)}
}

// strList reads a list of strings. Like every list key, it also accepts
// one value on its own (k = "x" is k = ["x"]): one rule for all list keys,
// so that no key takes a shape another one refuses.
func (t *table) strList(k string) (field[[]string], []string) {
	var paths []string
	f := field[[]string]{path: t.key(k)}
	v, ok := t.get(k)
	if !ok {
		return f, nil
	}
	if s, ok := v.(string); ok {
		f.v, f.set = []string{s}, true
		return f, []string{t.key(k)}
	}
	list, ok := v.([]any)
	if !ok {
		t.errorf(k, "%s must be a string or a list of strings, like %s = [\"...\"], not %s", k, k, tomlType(v))
		return f, nil
	}
	f.set = true
	f.v = []string{}
	bad := false
	for i, e := range list {
		s, ok := e.(string)
		if !ok {
			t.p.errorf(indexPath(t.key(k), i), "%s%s[%d] must be a string, not %s", t.what, k, i, tomlType(e))
			bad = true
			continue
		}
		f.v = append(f.v, s)
		paths = append(paths, indexPath(t.key(k), i))
	}
	if bad {
		f.set = false
	}
	return f, paths
}

// prefixes reads a list of addresses in CIDR form, keeping the host part.
func (t *table) prefixes(k string) field[[]netip.Prefix] {
	list, paths := t.strList(k)
	f := field[[]netip.Prefix]{path: list.path, set: list.set}
	for i, s := range list.v {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			t.p.errorf(paths[i], "%s%s: %q is not an address with prefix length, like \"10.0.0.2/24\" or \"fd00::2/64\"", t.what, k, s)
			continue
		}
		if pfx.Addr().Zone() != "" {
			t.p.errorf(paths[i], "%s%s: %q has a zone; remove the %%zone part", t.what, k, s)
			continue
		}
		f.v = append(f.v, pfx)
	}
	return f
}

func (t *table) finish(known []string) {
	t.finishHint(known, nil)
}

// finishHint reports unknown keys; hints maps a key that belongs elsewhere
// to where it goes.
func (t *table) finishHint(known []string, hints map[string]string) {
	var unknown []string
	for k := range t.m {
		if !t.used[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		msg := fmt.Sprintf("unknown key %q", k)
		if h, ok := hints[k]; ok {
			msg += "; " + h
		} else if s := closest(k, known); s != "" {
			msg += fmt.Sprintf("; did you mean %q?", s)
		} else {
			msg += "; known keys are " + strings.Join(known, ", ")
		}
		t.errorf(k, "%s", msg)
	}
}

// closest returns the known key within edit distance 2 of k, if any.
func closest(k string, known []string) string {
	best, bestD := "", 3
	for _, c := range known {
		// A short key is "close" to too much: only suggest when less than
		// half of it changes.
		if d := editDistance(strings.ToLower(k), c); d < bestD && 2*d < len(k) {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			cur[j] = min(c, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	case []map[string]any:
		return "an array of tables"
	case time.Time:
		return "a date/time"
	}
	return fmt.Sprintf("%T", v)
}

// Known keys, in the order the example config documents them.
func (t *table) enum(k string, allowed []string) field[string] {
	f := t.str(k)
	if f.set && !contains(allowed, f.v) {
		t.errorf(k, "unknown %s %q: use one of %s", k, f.v, strings.Join(allowed, ", "))
		f.set = false
	}
	return f
}

// memory accepts MiB as an integer or a string with a K, M, G or T suffix
// (binary units; "512M", "1G", "1GiB").
func (t *table) memory(k string) field[int] {
	f := field[int]{path: t.key(k)}
	v, ok := t.get(k)
	if !ok {
		return f
	}
	const maxMiB = 1 << 24
	var mib int64
	switch v := v.(type) {
	case int64:
		mib = v
	case string:
		n, err := parseSize(v)
		if err != nil {
			t.errorf(k, "memory %q: %v", v, err)
			return f
		}
		mib = n
	default:
		t.errorf(k, "memory must be MiB as an integer or a size like \"512M\" or \"2G\", not %s", tomlType(v))
		return f
	}
	if mib < 1 || mib > maxMiB {
		t.errorf(k, "memory %v is out of range: use 1 MiB to 16 TiB", v)
		return f
	}
	f.v, f.set = int(mib), true
	return f
}

func parseSize(s string) (int64, error) {
	num := strings.TrimRight(s, "KMGTiBkmgtb")
	unit := strings.ToUpper(strings.TrimSuffix(strings.TrimSuffix(s[len(num):], "iB"), "B"))
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || n < 0 {
		return 0, errors.New("want a whole number with an optional K, M, G or T suffix, like \"512M\"")
	}
	shift := map[string]int{"K": -10, "": 0, "M": 0, "G": 10, "T": 20}
	sh, ok := shift[unit]
	if !ok {
		return 0, fmt.Errorf("unknown unit %q: use K, M, G or T", s[len(num):])
	}
	if sh < 0 {
		if n%1024 != 0 {
			return 0, errors.New("not a whole number of MiB")
		}
		return n / 1024, nil
	}
	if n > 1<<40>>sh {
		return 0, errors.New("too large")
	}
	return n << sh, nil
}

// vlanList reads a list of VLAN ids; like every list key, it also accepts
// one id on its own (k = 10 is k = [10]).
func (t *table) vlanList(k string) (field[[]int], []string) {
	f := field[[]int]{path: t.key(k)}
	v, ok := t.get(k)
	if !ok {
		return f, nil
	}
	if id, ok := v.(int64); ok {
		v = []any{id}
	}
	list, ok := v.([]any)
	if !ok {
		t.errorf(k, "%s must be a VLAN id or a list of them, like %s = [10, 20], not %s", k, k, tomlType(v))
		return f, nil
	}
	f.set = true
	var paths []string
	for i, e := range list {
		ep := indexPath(t.key(k), i)
		id, ok := e.(int64)
		if !ok || id < 1 || id > 4094 {
			t.p.errorf(ep, "%s%s[%d] = %v is not a VLAN id: use 1 to 4094", t.what, k, i, e)
			continue
		}
		f.v = append(f.v, int(id))
		paths = append(paths, ep)
	}
	return f, paths
}
