// Package yamlpos finds where a field of a YAML document was written, so that
// validation errors can name the file, the line and the field. Decode reads a
// file strictly and gives a Doc whose Errorf does the naming; Line and Errors
// are the parts it is built from.
package yamlpos

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

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

var lineRe = regexp.MustCompile(`^line (\d+): (.*)$`)

// Errors turns a decode error from yaml.v3 into one "file:line: message" error
// per problem, so that the output names the place as a compiler would.
func Errors(file string, err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		errs := make([]error, 0, len(te.Errors))
		for _, msg := range te.Errors {
			errs = append(errs, located(file, msg))
		}
		return errors.Join(errs...)
	}
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	return located(file, msg)
}

func located(file, msg string) error {
	if m := lineRe.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("%s:%s: %s", file, m[1], m[2])
	}
	return fmt.Errorf("%s: %s", file, msg)
}
