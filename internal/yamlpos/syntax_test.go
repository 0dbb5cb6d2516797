package yamlpos

import (
	"strings"
	"testing"
)

// Broken files, and the line each problem is on. yaml.v3 alone names the
// line before for most of them, line 1 or none for the rest (see syntax.go).
func TestSyntaxErrorLines(t *testing.T) {
	const unclosedList = `# head
a: 1
b: 2
c: 3
e: [1, 2
f: 6
g: 7
`
	const badIndent = `# config
server:
  grpc: 1
  admin: 2
log:
  level: info
 bad: 1
`
	tests := []struct {
		name string
		data string
		want string
	}{
		{"unclosed [", unclosedList, "f.yaml:5: the list opened with [ on this line is not closed (did not find expected ',' or ']')"},
		{"unclosed [ at the end", "a: 1\nb: 2\nc: 3\nd: 4\ne: [1, 2\n", "f.yaml:5: the list opened with [ on this line is not closed (did not find expected ',' or ']')"},
		{"unclosed [ on line 1", "[a, b\n", "f.yaml:1: the list opened with [ on this line is not closed (did not find expected ',' or ']')"},
		{"unclosed {", "a: 1\nb: {x: 1\nc: 3\n", "f.yaml:2: the mapping opened with { on this line is not closed (did not find expected ',' or '}')"},
		{"unclosed { inside a list", "# c\n# d\nroutes:\n  - name: a\n    match: {path: {prefix: /v1}\n  - name: b\n",
			"f.yaml:5: the mapping opened with { on this line is not closed (did not find expected ',' or '}')"},
		{"bad indent", badIndent, "f.yaml:7: did not find expected key (is the indentation right? the mapping it is in starts on line 2)"},
		{"bad indent, mapping on line 1", "a:\n  b: 1\n c: 2\n", "f.yaml:3: did not find expected key (is the indentation right? the mapping it is in starts on line 1)"},
		{"bad indent in a nested mapping", "server:\n  a: x\nlog:\n  level: info\nentitlements:\n   source: file\n  file: {path: e.yaml}\n",
			"f.yaml:7: did not find expected key (is the indentation right? the mapping it is in starts on line 1)"},
		{"key inside a list", "a:\n  - x\n  y: 1\n", "f.yaml:3: did not find expected '-' indicator (is the indentation right? the list it is in starts on line 2)"},
		{"indented too far", "a: 1\n b: 2\n", `f.yaml:2: mapping values are not allowed in this context (is the indentation right? a value that holds ": " must be quoted)`},
		{"colon in a value on line 1", "a: b: c\n", `f.yaml:1: mapping values are not allowed in this context (is the indentation right? a value that holds ": " must be quoted)`},
		{"unclosed quote", "a: 1\nb: \"abc\nc: 3\n", "f.yaml:2: the quoted string that starts on this line is not closed (found unexpected end of stream)"},
		{"tab", "a: 1\n\tb: 2\n", "f.yaml:2: found a tab character that violates indentation"},
		{"no colon", "a: 1\na b\nc: 2\n", "f.yaml:2: could not find expected ':'"},
		{"stray ]", "a: [1, 2]]\n", "f.yaml:1: did not find expected key"},
		{"@ on line 1", "a: @x\n", "f.yaml:1: found character that cannot start any token"},
		{"unknown anchor", "a: 1\nb: 2\nc: [*x]\n", "f.yaml:3: *x names no anchor (&x) above it"},
		{"control character", "a: 1\nb: \a\n", "f.yaml:2: control character U+0007 is not allowed in YAML"},
		{"not UTF-8", "a: 1\nb: \xff\n", "f.yaml:2: the file is not UTF-8 text here (invalid leading UTF-8 octet)"},
		{"byte order mark", "\xEF\xBB\xBFa: 1\nb: [1\n", "f.yaml:2: the list opened with [ on this line is not closed (did not find expected ',' or ']')"},
		{"CRLF", "a: 1\r\nb: 2\r\nc: [1\r\nd: 2\r\n", "f.yaml:3: the list opened with [ on this line is not closed (did not find expected ',' or ']')"},
		{"file ends after [", "a: 1\nb: [\n", "f.yaml:2: the file ends where a value is expected (is a [ or { not closed?)"},
		{"directive twice", "%YAML 1.1\n%YAML 1.1\n---\na: 1\n", "f.yaml:2: found duplicate %YAML directive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v map[string]any
			_, err := Decode("f.yaml", []byte(tt.data), &v, "")
			if err == nil || err.Error() != tt.want {
				t.Errorf("error = %v\nwant    %s", err, tt.want)
			}
		})
	}
}

// The search for the line costs a parse per halving: a long file is fine.
func TestSyntaxErrorLineInALongFile(t *testing.T) {
	var b strings.Builder
	for i := range 20000 {
		b.WriteString("  - id: s")
		b.WriteString(strings.Repeat("x", i%7))
		b.WriteString("\n")
	}
	head := "subjects:\n" + b.String()
	data := head + " bad: 1\n" + b.String()
	var v map[string]any
	_, err := Decode("f.yaml", []byte(data), &v, "")
	want := "f.yaml:20002: did not find expected key (is the indentation right? the mapping it is in starts on line 1)"
	if err == nil || err.Error() != want {
		t.Errorf("error = %v\nwant    %s", err, want)
	}
}
