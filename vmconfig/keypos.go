package vmconfig

import (
	"bytes"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The toml package records where each key is but does not export it, and
// its records are keyed without array indexes (every [[vm]] shares "vm.name").
// keyScanner recovers positions from the text itself. It only has to be
// right for documents the toml package accepted; for anything else it must
// merely terminate without panicking.

// keyEvent is one key or table header in document order.
type keyEvent struct {
	segs []string // unindexed, as toml's MetaData.Keys reports them
	path string   // indexed, e.g. vm[1].nic[0].queues
	off  int
}

type keyScanner struct {
	s      []byte
	i      int
	cur    string         // indexed path of the current table
	arrays map[string]int // indexed path of an array of tables -> element count
	curSeg []string
	pos    map[string]int // indexed path (keys, headers, array elements) -> byte offset
	events []keyEvent
}

// segment renders one key part the way paths are built everywhere in this
// package: bare when possible, quoted otherwise, so "a.b" and a.b differ.
func segment(k string) string {
	if k == "" {
		return `""`
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return strconv.Quote(k)
		}
	}
	return k
}

func joinPath(base, seg string) string {
	if base == "" {
		return segment(seg)
	}
	return base + "." + segment(seg)
}

func indexPath(base string, i int) string {
	return base + "[" + strconv.Itoa(i) + "]"
}

func scanKeys(data []byte) *keyScanner {
	sc := &keyScanner{s: data, arrays: map[string]int{}, pos: map[string]int{}}
	sc.i = bomLen(data)
	sc.run()
	return sc
}

// bomLen is the length of the byte order mark the toml package reads over
// (UTF-8, and the UTF-16 ones some editors add); offsets stay file offsets.
func bomLen(data []byte) int {
	switch {
	case bytes.HasPrefix(data, []byte("\xef\xbb\xbf")):
		return 3
	case bytes.HasPrefix(data, []byte("\xff\xfe")), bytes.HasPrefix(data, []byte("\xfe\xff")):
		return 2
	}
	return 0
}

func (sc *keyScanner) eof() bool { return sc.i >= len(sc.s) }

func (sc *keyScanner) peek(k int) byte {
	if sc.i+k < len(sc.s) {
		return sc.s[sc.i+k]
	}
	return 0
}

func (sc *keyScanner) skipWS() {
	for !sc.eof() && (sc.s[sc.i] == ' ' || sc.s[sc.i] == '\t') {
		sc.i++
	}
}

// skipWSNL skips blanks, newlines and comments (inside arrays and, since
// TOML 1.1, inline tables).
func (sc *keyScanner) skipWSNL() {
	for !sc.eof() {
		switch sc.s[sc.i] {
		case ' ', '\t', '\r', '\n':
			sc.i++
		case '#':
			sc.skipLine()
		default:
			return
		}
	}
}

// skipLine moves past the next newline.
func (sc *keyScanner) skipLine() {
	for !sc.eof() && sc.s[sc.i] != '\n' {
		sc.i++
	}
	if !sc.eof() {
		sc.i++
	}
}

func (sc *keyScanner) record(path string, segs []string, off int, event bool) {
	if _, ok := sc.pos[path]; !ok {
		sc.pos[path] = off
	}
	if event {
		sc.events = append(sc.events, keyEvent{segs: append([]string(nil), segs...), path: path, off: off})
	}
}

func (sc *keyScanner) run() {
	for {
		sc.skipWSNL()
		if sc.eof() {
			return
		}
		start := sc.i
		if sc.s[sc.i] == '[' {
			sc.header()
		} else {
			sc.keyValue(sc.cur, sc.curSeg)
		}
		// Whatever follows on the line is a comment or, in a malformed
		// document, junk; either way the next item starts on a new line.
		sc.skipWS()
		if !sc.eof() && sc.s[sc.i] != '\n' && sc.s[sc.i] != '\r' && sc.s[sc.i] != '#' || sc.i == start {
			sc.skipLine()
		}
	}
}

func (sc *keyScanner) header() {
	start := sc.i
	array := sc.peek(1) == '['
	if array {
		sc.i += 2
	} else {
		sc.i++
	}
	sc.skipWS()
	keys, ok := sc.key()
	if !ok {
		return
	}
	sc.skipWS()
	if array {
		if sc.peek(0) != ']' || sc.peek(1) != ']' {
			return
		}
		sc.i += 2
	} else {
		if sc.peek(0) != ']' {
			return
		}
		sc.i++
	}
	path := ""
	for j, k := range keys {
		path = joinPath(path, k)
		last := j == len(keys)-1
		if last && array {
			n := sc.arrays[path]
			sc.arrays[path] = n + 1
			path = indexPath(path, n)
		} else if n, ok := sc.arrays[path]; ok && n > 0 {
			path = indexPath(path, n-1)
		}
	}
	sc.cur = path
	sc.curSeg = keys
	sc.record(path, keys, start, true)
}

// keyValue scans "key = value" at the current position inside table base.
func (sc *keyScanner) keyValue(base string, baseSegs []string) bool {
	start := sc.i
	keys, ok := sc.key()
	if !ok {
		return false
	}
	sc.skipWS()
	if sc.peek(0) != '=' {
		return false
	}
	sc.i++
	sc.skipWS()
	path := base
	for _, k := range keys {
		path = joinPath(path, k)
	}
	segs := append(append([]string(nil), baseSegs...), keys...)
	sc.record(path, segs, start, true)
	sc.value(path, segs)
	return true
}

// key reads a dotted key; each part may be bare, "basic" or 'literal'.
func (sc *keyScanner) key() ([]string, bool) {
	var keys []string
	for {
		sc.skipWS()
		if sc.eof() {
			return nil, false
		}
		switch c := sc.s[sc.i]; c {
		case '"':
			raw, ok := sc.quoted('"')
			if !ok {
				return nil, false
			}
			keys = append(keys, unescapeBasic(raw))
		case '\'':
			raw, ok := sc.quoted('\'')
			if !ok {
				return nil, false
			}
			keys = append(keys, raw)
		default:
			j := sc.i
			for j < len(sc.s) && isBare(sc.s[j]) {
				j++
			}
			if j == sc.i {
				return nil, false
			}
			keys = append(keys, string(sc.s[sc.i:j]))
			sc.i = j
		}
		sc.skipWS()
		if sc.peek(0) != '.' {
			return keys, true
		}
		sc.i++
	}
}

func isBare(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// quoted reads a single-line string starting at the quote and returns its
// raw contents.
func (sc *keyScanner) quoted(q byte) (string, bool) {
	j := sc.i + 1
	for j < len(sc.s) {
		c := sc.s[j]
		if c == '\n' {
			return "", false
		}
		if q == '"' && c == '\\' {
			j += 2
			continue
		}
		if c == q {
			raw := string(sc.s[sc.i+1 : j])
			sc.i = j + 1
			return raw, true
		}
		j++
	}
	sc.i = len(sc.s)
	return "", false
}

// multiline skips a """ or ”' string; the opening delimiter is at sc.i.
func (sc *keyScanner) multiline(q byte) {
	j := sc.i + 3
	for j < len(sc.s) {
		c := sc.s[j]
		if q == '"' && c == '\\' {
			j += 2
			continue
		}
		if c == q && j+2 < len(sc.s) && sc.s[j+1] == q && sc.s[j+2] == q {
			j += 3
			// Up to two more quotes belong to the content: """a""""".
			for k := 0; k < 2 && j < len(sc.s) && sc.s[j] == q; k++ {
				j++
			}
			sc.i = j
			return
		}
		j++
	}
	sc.i = len(sc.s)
}

func (sc *keyScanner) value(path string, segs []string) {
	if sc.eof() {
		return
	}
	switch c := sc.s[sc.i]; c {
	case '"', '\'':
		if sc.peek(1) == c && sc.peek(2) == c {
			sc.multiline(c)
		} else {
			sc.quoted(c)
		}
	case '[':
		sc.i++
		for n := 0; ; n++ {
			sc.skipWSNL()
			if sc.eof() {
				return
			}
			if sc.s[sc.i] == ']' {
				sc.i++
				return
			}
			before := sc.i
			el := indexPath(path, n)
			sc.record(el, segs, sc.i, false)
			sc.value(el, segs)
			if sc.i == before {
				return
			}
			sc.skipWSNL()
			if sc.peek(0) == ',' {
				sc.i++
			}
		}
	case '{':
		sc.i++
		for {
			sc.skipWSNL()
			if sc.eof() {
				return
			}
			if sc.s[sc.i] == '}' {
				sc.i++
				return
			}
			if !sc.keyValue(path, segs) {
				return
			}
			sc.skipWSNL()
			if sc.peek(0) == ',' {
				sc.i++
			}
		}
	default:
		for !sc.eof() {
			switch sc.s[sc.i] {
			case ',', ']', '}', '#', '\n', '\r':
				return
			}
			sc.i++
		}
	}
}

// unescapeBasic decodes the escapes of a TOML basic string; on a malformed
// escape it keeps the raw text, which only costs a missed position.
func unescapeBasic(raw string) string {
	if !strings.Contains(raw, `\`) {
		return raw
	}
	var b strings.Builder
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c != '\\' || i+1 >= len(raw) {
			b.WriteByte(c)
			continue
		}
		i++
		switch raw[i] {
		case 'b':
			b.WriteByte('\b')
		case 't':
			b.WriteByte('\t')
		case 'n':
			b.WriteByte('\n')
		case 'f':
			b.WriteByte('\f')
		case 'r':
			b.WriteByte('\r')
		case 'e':
			b.WriteByte(0x1b)
		case '"':
			b.WriteByte('"')
		case '\\':
			b.WriteByte('\\')
		case 'x', 'u', 'U':
			n := map[byte]int{'x': 2, 'u': 4, 'U': 8}[raw[i]]
			if i+n >= len(raw) {
				return raw
			}
			v, err := strconv.ParseUint(raw[i+1:i+1+n], 16, 32)
			if err != nil || !utf8.ValidRune(rune(v)) {
				return raw
			}
			b.WriteRune(rune(v))
			i += n
		default:
			return raw
		}
	}
	return b.String()
}

// lineIndex converts byte offsets to Pos.
type lineIndex struct {
	file   string
	starts []int
	size   int
	data   []byte
}

func newLineIndex(file string, data []byte) *lineIndex {
	li := &lineIndex{file: file, starts: []int{0}, size: len(data), data: data}
	for i, c := range data {
		if c == '\n' {
			li.starts = append(li.starts, i+1)
		}
	}
	return li
}

func (li *lineIndex) pos(off int) Pos {
	if off < 0 {
		off = 0
	}
	if off > li.size {
		off = li.size
	}
	l := sort.Search(len(li.starts), func(i int) bool { return li.starts[i] > off }) - 1
	return Pos{File: li.file, Line: l + 1, Col: off - li.starts[l] + 1}
}

// clamp keeps a position reported by someone else inside the file.
func (li *lineIndex) clamp(line, col int) Pos {
	if line < 1 {
		line = 1
	}
	if line > len(li.starts) {
		line = len(li.starts)
	}
	end := li.size
	if line < len(li.starts) {
		end = li.starts[line] - 1
	}
	if max := end - li.starts[line-1] + 1; col > max {
		col = max
	}
	if col < 1 {
		col = 1
	}
	return Pos{File: li.file, Line: line, Col: col}
}

// firstNonBlank moves a position to the first non-blank byte of its line.
func (li *lineIndex) firstNonBlank(p Pos) Pos {
	p = li.clamp(p.Line, 1)
	off := li.starts[p.Line-1]
	for off < len(li.data) && (li.data[off] == ' ' || li.data[off] == '\t') {
		off++
	}
	return li.pos(off)
}
