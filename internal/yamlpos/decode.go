package yamlpos

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"

	yaml "go.yaml.in/yaml/v3"
)

// Doc is a YAML file that has been decoded into a value, kept so that the
// problems found while validating that value can name the line they are on.
type Doc struct {
	name string
	root *yaml.Node // nil when the values were not read from YAML
}

// Decode reads data, called name in errors, into v. It is strict: a field
// that v has no place for is an error, and so is a file of nothing but white
// space or comments, which is far more often a write caught half way than a wish for
// nothing. hint, when not "", is added to that error in brackets to say how
// to write "nothing" on purpose.
//
// Errors are one line per problem, as "file:line: field.path: problem", in
// the user's words: an unknown field comes with the nearest valid name
// ("did you mean `poll_interval`?"), a value of the wrong type with what was
// expected ("expected a duration such as 500ms, got "soon""), a syntax
// error with the line where it is. Every problem found is reported; for a
// syntax error, which stops the reading, that is one.
func Decode(name string, data []byte, v any, hint string) (*Doc, error) {
	empty := func() error {
		if hint != "" {
			return fmt.Errorf("%s: the file is empty (%s)", name, hint)
		}
		return fmt.Errorf("%s: the file is empty", name)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, empty()
	}
	root := new(yaml.Node)
	if err := yaml.Unmarshal(data, root); err != nil {
		return nil, syntaxError(name, data, err)
	}
	if root.Kind == 0 { // comments only: no document
		return nil, empty()
	}
	// The walk finds every problem, where it is; the decoder stops at some
	// and does not say where others are.
	t := reflect.TypeOf(v)
	c := newChecker(t)
	if ps := c.check(root, t); len(ps) > 0 {
		return nil, joinProblems(name, ps)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, empty()
		}
		// What the walk did not see (it gives up on aliases past a bound).
		return nil, joinProblems(name, c.translate(root, err))
	}
	return &Doc{name: name, root: root}, nil
}

// Named is a Doc for values that were built in memory, not read from YAML:
// its errors name the field but no line.
func Named(name string) *Doc { return &Doc{name: name} }

// Line returns the line of the field at path, as the function Line does; 0
// for a Doc that was not read from YAML.
func (d *Doc) Line(path string) int {
	if d.root == nil {
		return 0
	}
	return Line(d.root, path)
}

// Errorf reports a problem with the field at path as
// "file:line: path: message", or "file: path: message" when the Doc was not
// read from YAML.
func (d *Doc) Errorf(path, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if d.root == nil {
		return fmt.Errorf("%s: %s: %s", d.name, path, msg)
	}
	return fmt.Errorf("%s:%d: %s: %s", d.name, Line(d.root, path), path, msg)
}
