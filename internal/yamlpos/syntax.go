package yamlpos

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	yaml "go.yaml.in/yaml/v3"
)

// yaml.v3 names the line of a syntax error from the mark of the construct
// it was reading (the "context") or, without one, of the problem itself.
// Its scanner numbers marks from 1, its parser from 0, so a parser error is
// reported one line early (an unclosed "[" on line 5 as line 4); and a mark
// on the first line is taken for no mark at all, so the line of the problem
// is used instead, or none (a bad indent on line 7 of a mapping that starts
// on line 2 reads "line 1"). The code below parses the file again one line
// down, where no mark is on the first line, and corrects the count by the
// kind of the error: that is the line where the construct starts. Then it
// finds the line of the problem itself, the first line at which the file's
// leading lines fail the same way: for an unclosed "[" or quote that is
// where it opens, for a bad indent or a tab the offending line.

// parserProblems are the messages of yaml.v3's parser; every other syntax
// message comes from its scanner (or reader, which gives no line).
var parserProblems = map[string]bool{
	"did not find expected <stream-start>":   true,
	"did not find expected <document start>": true,
	"found undefined tag handle":             true,
	"did not find expected node content":     true,
	"did not find expected '-' indicator":    true,
	"did not find expected key":              true,
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found duplicate %TAG directive":         true,
}

// encodingProblems are the messages of yaml.v3's reader about bytes that
// are not UTF-8 text; it names no line for them.
var encodingProblems = map[string]bool{
	"invalid leading UTF-8 octet":        true,
	"incomplete UTF-8 octet sequence":    true,
	"invalid trailing UTF-8 octet":       true,
	"invalid length of a UTF-8 sequence": true,
	"invalid Unicode character":          true,
}

var unknownAnchorRe = regexp.MustCompile(`^unknown anchor '(.*)' referenced$`)

// syntaxError turns yaml.v3's error for data that is not YAML into
// "file:line: message", on the line where the problem is.
func syntaxError(file string, data []byte, err error) error {
	line, msg := locate(data, err)
	return problem{line: line, msg: msg}.err(file)
}

// locate returns the line of the syntax error err in data (0 when it
// cannot tell) and its message.
func locate(data []byte, err error) (int, string) {
	line, msg := splitLine(strings.TrimPrefix(err.Error(), "yaml: "))
	switch {
	case encodingProblems[msg]:
		return invalidUTF8(data), "the file is not UTF-8 text here (" + msg + ")"
	case msg == "control characters are not allowed":
		at, r := controlChar(data)
		if at == 0 {
			return 0, msg
		}
		return at, fmt.Sprintf("control character U+%04X is not allowed in YAML", r)
	case unknownAnchorRe.MatchString(msg):
		name := unknownAnchorRe.FindStringSubmatch(msg)[1]
		return aliasLine(data, name), fmt.Sprintf("*%s names no anchor (&%s) above it", name, name)
	}
	start, ok := lineOf(data, msg)
	if !ok {
		return line, msg // yaml.v3's own guess
	}
	at := problemLine(data, msg, start)
	if last := len(lineEnds(data)); at > last && last > 0 {
		// Past the last line: the file ended while more was due.
		if msg == "did not find expected node content" {
			return last, "the file ends where a value is expected (is a [ or { not closed?)"
		}
		at, msg = last, msg+" at the end of the file"
	}
	switch msg {
	case "did not find expected key", "did not find expected '-' indicator":
		what := "mapping"
		if strings.Contains(msg, "'-'") {
			what = "list"
		}
		if at != start {
			return at, fmt.Sprintf("%s (is the indentation right? the %s it is in starts on line %d)", msg, what, start)
		}
	case "found unexpected end of stream":
		return at, "the quoted string that starts on this line is not closed (found unexpected end of stream)"
	case "mapping values are not allowed in this context":
		return at, msg + ` (is the indentation right? a value that holds ": " must be quoted)`
	case "did not find expected ',' or ']'":
		if at == start {
			return at, "the list opened with [ on this line is not closed (did not find expected ',' or ']')"
		}
	case "did not find expected ',' or '}'":
		if at == start {
			return at, "the mapping opened with { on this line is not closed (did not find expected ',' or '}')"
		}
	}
	return at, msg
}

// lineOf parses data again one line down and returns the line, in data, of
// the error with message msg; false if the error is not the same or names
// no line.
func lineOf(data []byte, msg string) (int, bool) {
	down := shifted(data)
	if down == nil {
		return 0, false
	}
	var n yaml.Node
	err := yaml.Unmarshal(down, &n)
	if err == nil {
		return 0, false
	}
	line, m := splitLine(strings.TrimPrefix(err.Error(), "yaml: "))
	if m != msg {
		return 0, false
	}
	if !parserProblems[m] {
		line--
	}
	return line, line > 0
}

// shifted is data one line down; nil for UTF-16, where a byte is no line.
func shifted(data []byte) []byte {
	if bytes.HasPrefix(data, []byte{0xFE, 0xFF}) || bytes.HasPrefix(data, []byte{0xFF, 0xFE}) {
		return nil
	}
	bom := []byte{0xEF, 0xBB, 0xBF}
	out := make([]byte, 0, len(data)+4)
	if bytes.HasPrefix(data, bom) {
		out = append(out, bom...)
		data = data[len(bom):]
	}
	out = append(out, '\n')
	return append(out, data...)
}

// problemLine returns the first line at which the leading lines of data
// fail with msg in the construct that starts on line start: lines before
// the problem parse, or fail otherwise.
func problemLine(data []byte, msg string, start int) int {
	ends := lineEnds(data)
	fails := func(k int) bool {
		line, ok := lineOf(data[:ends[k-1]], msg)
		return ok && line == start
	}
	lo, hi := start, len(ends)
	if lo < 1 || lo > hi {
		return start
	}
	// A guess that costs two parses to confirm, where a search costs one
	// per halving of a file that may be long.
	if g := guess(data[starts(ends, start):], msg); g >= 0 && start+g <= hi {
		at := start + g
		if fails(at) && (at == start || !fails(at-1)) {
			return at
		}
	}
	if !fails(hi) {
		return start
	}
	for lo < hi {
		mid := lo + (hi-lo)/2
		if fails(mid) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// starts returns the offset of line (from 1) in the data that ends holds.
func starts(ends []int, line int) int {
	if line <= 1 {
		return 0
	}
	return ends[line-2]
}

// guess parses from the first line of the construct that fails: its mark
// is then on the first line, which yaml.v3 takes for none, so it names the
// line of the problem instead. It returns that line counted from 0, or -1.
func guess(from []byte, msg string) int {
	var n yaml.Node
	err := yaml.Unmarshal(from, &n)
	if err == nil {
		return -1
	}
	line, m := splitLine(strings.TrimPrefix(err.Error(), "yaml: "))
	switch {
	case m != msg:
		return -1
	case line > 0 && !parserProblems[m]:
		return line - 1 // the scanner counts from 1
	}
	return line
}

// lineEnds returns, for each line of data, the offset just past it.
func lineEnds(data []byte) []int {
	var ends []int
	for i, b := range data {
		if b == '\n' {
			ends = append(ends, i+1)
		}
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		ends = append(ends, len(data))
	}
	return ends
}

// lineAt returns the line of byte offset i.
func lineAt(data []byte, i int) int { return 1 + bytes.Count(data[:i], []byte{'\n'}) }

// invalidUTF8 returns the line of the first byte that is not UTF-8, 0 if
// none is.
func invalidUTF8(data []byte) int {
	if shifted(data) == nil {
		return 0
	}
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && size <= 1 {
			return lineAt(data, i)
		}
		i += size
	}
	return 0
}

// controlChar returns the line and the rune of the first character YAML
// does not allow in a file (the same set as yaml.v3's reader).
func controlChar(data []byte) (int, rune) {
	if shifted(data) == nil {
		return 0, 0
	}
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		ok := r == 0x09 || r == 0x0A || r == 0x0D || (r >= 0x20 && r <= 0x7E) || r == 0x85 ||
			(r >= 0xA0 && r <= 0xD7FF) || (r >= 0xE000 && r <= 0xFFFD) || (r >= 0x10000 && r <= 0x10FFFF)
		if r == 0xFEFF && i == 0 {
			ok = true // the byte order mark
		}
		if !ok && !(r == utf8.RuneError && size <= 1) {
			return lineAt(data, i), r
		}
		i += size
	}
	return 0, 0
}

// aliasLine returns the line of the first alias *name in data, 0 if there
// is none to be found.
func aliasLine(data []byte, name string) int {
	if name == "" {
		return 0
	}
	token := []byte("*" + name)
	for from := 0; from < len(data); {
		i := bytes.Index(data[from:], token)
		if i < 0 {
			return 0
		}
		i += from
		end := i + len(token)
		before := i == 0 || strings.IndexByte(" \t\n\r[{,:-", data[i-1]) >= 0
		after := end == len(data) || strings.IndexByte(" \t\n\r]},", data[end]) >= 0
		if before && after {
			return lineAt(data, i)
		}
		from = i + 1
	}
	return 0
}
