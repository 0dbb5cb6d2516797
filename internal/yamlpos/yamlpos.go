// Package yamlpos reads YAML files strictly and says what is wrong with
// them the way a compiler would: "file:line: field.path: problem", one line
// per problem, in the user's words (the nearest valid field name, the kind
// of value expected, the line a syntax error is really on) and never a Go
// type name. Decode reads a file and gives a Doc whose Errorf names the
// line of a field for the checks that come after decoding; Line and Errors
// are the parts it is built from.
//
// Cost: on top of yaml.v3's decoding, Decode parses the file into nodes
// once and walks them beside the Go type (a fifth more time, about). A file
// with a syntax error is parsed a few more times to find the line, at most
// once per halving of the file.
package yamlpos

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	yaml "go.yaml.in/yaml/v3"
)

// Line returns the line of the node at path (for example "routes[2].match.path"),
// or of its nearest ancestor that exists; 0 when nothing matches.
func Line(root *yaml.Node, path string) int {
	n := root
	if n == nil {
		return 0
	}
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := n.Line
	for _, part := range splitPath(path) {
		next, keyLine := child(n, part)
		if next == nil {
			if keyLine > 0 {
				return keyLine
			}
			return line
		}
		n = next
		line = n.Line
		if keyLine > 0 {
			line = keyLine
		}
	}
	return line
}

// splitPath turns "a.b[2].c" into ["a", "b", "[2]", "c"].
func splitPath(path string) []string {
	var parts []string
	for _, seg := range strings.Split(path, ".") {
		for seg != "" {
			i := strings.IndexByte(seg, '[')
			switch {
			case i < 0:
				parts = append(parts, seg)
				seg = ""
			case i > 0:
				parts = append(parts, seg[:i])
				seg = seg[i:]
			default:
				j := strings.IndexByte(seg, ']')
				if j < 0 {
					parts = append(parts, seg)
					seg = ""
					continue
				}
				parts = append(parts, seg[:j+1])
				seg = seg[j+1:]
			}
		}
	}
	return parts
}

// child steps into a mapping by key or a sequence by "[i]". It returns the
// value node and, for mappings, the line of the key.
func child(n *yaml.Node, part string) (*yaml.Node, int) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if strings.HasPrefix(part, "[") {
		i, err := strconv.Atoi(strings.Trim(part, "[]"))
		if err != nil || n.Kind != yaml.SequenceNode || i < 0 || i >= len(n.Content) {
			return nil, 0
		}
		return n.Content[i], 0
	}
	if n.Kind != yaml.MappingNode {
		return nil, 0
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == part {
			return n.Content[i+1], n.Content[i].Line
		}
	}
	return nil, 0
}

var (
	lineRe       = regexp.MustCompile(`(?s)^line (\d+): (.*)$`)
	unmarshalRe  = regexp.MustCompile("(?s)^cannot unmarshal (!!\\w+)(?: `(.*)`)? into (.+)$")
	notFoundRe   = regexp.MustCompile(`(?s)^field (.*) not found in type (.+)$`)
	definedRe    = regexp.MustCompile(`(?s)^mapping key "(.*)" already defined at line (\d+)$`)
	alreadySetRe = regexp.MustCompile(`(?s)^field (.*) already set in type (.+)$`)
	containsRe   = regexp.MustCompile(`(?s)^anchor '(.*)' value contains itself$`)
)

// Errors turns a decode error from yaml.v3 into one "file:line: message"
// error per problem, as a compiler would write them, and in words rather
// than Go types: "expected a whole number, got "many"", not "cannot
// unmarshal !!str `many` into int". Decode says more (the field's path, the
// nearest valid name), as it knows the document and the type.
func Errors(file string, err error) error {
	c := &checker{}
	return joinProblems(file, c.translate(nil, err))
}

func joinProblems(file string, ps []problem) error {
	errs := make([]error, len(ps))
	for i, p := range ps {
		errs[i] = p.err(file)
	}
	return errors.Join(errs...)
}

// messages splits a yaml.v3 error into its problems, without "yaml: ".
func messages(err error) []string {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		return te.Errors
	}
	return []string{strings.TrimPrefix(err.Error(), "yaml: ")}
}

// splitLine splits "line 3: message" into 3 and "message"; 0 when the
// message names no line.
func splitLine(msg string) (int, string) {
	if m := lineRe.FindStringSubmatch(msg); m != nil {
		if n, err := strconv.Atoi(m[1]); err == nil {
			return n, m[2]
		}
	}
	return 0, msg
}

// translate turns the problems of a yaml.v3 decode error into problems in
// the user's words. root, when not nil, is the document, to find the path
// of the field a message is about.
func (c *checker) translate(root *yaml.Node, err error) []problem {
	var ps []problem
	for _, m := range messages(err) {
		line, msg := splitLine(m)
		p := problem{line: line, msg: c.plain(msg)}
		switch {
		case notFoundRe.MatchString(msg):
			sm := notFoundRe.FindStringSubmatch(msg)
			name := sm[1]
			p.path, p.msg = name, "unknown field"
			if path, ok := find(root, func(k *yaml.Node) bool { return k.Line == line && k.Value == name }, true); ok {
				p.path = path
			}
			if t, ok := c.types[sm[2]]; ok && t.Kind() == reflect.Struct {
				p.msg = c.unknown(name, c.fieldsOf(t))
			}
		case definedRe.MatchString(msg):
			sm := definedRe.FindStringSubmatch(msg)
			key, _ := strconv.Unquote(`"` + sm[1] + `"`)
			p.path, p.msg = key, "is written twice (first on line "+sm[2]+")"
			if path, ok := find(root, func(k *yaml.Node) bool { return k.Line == line && k.Value == key }, true); ok {
				p.path = path
			}
		case containsRe.MatchString(msg):
			anchor := containsRe.FindStringSubmatch(msg)[1]
			if _, n := findNode(root, func(n *yaml.Node) bool { return n.Anchor == anchor }, false); n != nil {
				p.line = n.Line
			}
		case unmarshalRe.MatchString(msg):
			sm := unmarshalRe.FindStringSubmatch(msg)
			kind, value := yaml.ScalarNode, strings.TrimSuffix(sm[2], "...")
			switch sm[1] {
			case "!!seq":
				kind = yaml.SequenceNode
			case "!!map":
				kind = yaml.MappingNode
			}
			match := func(n *yaml.Node) bool {
				return n.Line == line && n.Kind == kind && strings.HasPrefix(n.Value, value)
			}
			if path, ok := find(root, match, false); ok {
				p.path = path
			}
		}
		ps = append(ps, p)
	}
	return ps
}

// plain rewrites a message of yaml.v3 so that it names no Go type.
func (c *checker) plain(msg string) string {
	if m := unmarshalRe.FindStringSubmatch(msg); m != nil {
		var what string
		switch {
		case m[1] == "!!seq":
			what = "a list"
		case m[1] == "!!map":
			what = "a mapping"
		case m[1] == "!!str":
			what = strconv.Quote(m[2])
		default:
			what = m[2]
		}
		return fmt.Sprintf("expected %s, got %s", c.describeName(m[3]), what)
	}
	if m := notFoundRe.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("unknown field %s", m[1])
	}
	if m := alreadySetRe.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("field %s is set twice", m[1])
	}
	return msg
}

// basicTypes are the Go types a yaml.v3 message may name without the
// decoded type at hand.
var basicTypes = func() map[string]reflect.Type {
	m := make(map[string]reflect.Type)
	for _, v := range []any{false, 0, int8(0), int16(0), int32(0), int64(0), uint(0), uint8(0), uint16(0),
		uint32(0), uint64(0), uintptr(0), float32(0), float64(0), "", time.Duration(0), time.Time{}} {
		t := reflect.TypeOf(v)
		m[t.String()] = t
	}
	return m
}()

// describeName says what a value of the Go type named name is written as.
func (c *checker) describeName(name string) string {
	name = strings.TrimLeft(name, "*")
	if t, ok := c.types[name]; ok {
		return describe(t)
	}
	if t, ok := basicTypes[name]; ok {
		return describe(t)
	}
	switch {
	case strings.HasPrefix(name, "["):
		return "a list"
	case strings.HasPrefix(name, "map["), strings.HasPrefix(name, "struct {"):
		return "a mapping"
	}
	return "a value of another kind"
}

// find returns the path of the first node, in document order, for which
// match is true: among the keys of mappings when keys, else among values.
func find(root *yaml.Node, match func(*yaml.Node) bool, keys bool) (string, bool) {
	path, n := findNode(root, match, keys)
	return path, n != nil
}

func findNode(root *yaml.Node, match func(*yaml.Node) bool, keys bool) (string, *yaml.Node) {
	if root == nil {
		return "", nil
	}
	var steps []string // the path to n, built only for the match
	path := func() string {
		var b strings.Builder
		for _, s := range steps {
			if b.Len() > 0 && !strings.HasPrefix(s, "[") {
				b.WriteByte('.')
			}
			b.WriteString(s)
		}
		return b.String()
	}
	var walk func(n *yaml.Node) (string, *yaml.Node)
	walk = func(n *yaml.Node) (string, *yaml.Node) {
		if !keys && n.Kind != yaml.DocumentNode && match(n) {
			return path(), n
		}
		switch n.Kind {
		case yaml.DocumentNode:
			for _, e := range n.Content {
				if p, m := walk(e); m != nil {
					return p, m
				}
			}
		case yaml.SequenceNode:
			for i, e := range n.Content {
				steps = append(steps, "["+strconv.Itoa(i)+"]")
				p, m := walk(e)
				steps = steps[:len(steps)-1]
				if m != nil {
					return p, m
				}
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				steps = append(steps, k.Value)
				if keys && match(k) {
					return path(), k
				}
				p, m := walk(v)
				steps = steps[:len(steps)-1]
				if m != nil {
					return p, m
				}
			}
		}
		return "", nil
	}
	return walk(root)
}
