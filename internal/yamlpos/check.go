package yamlpos

import (
	"encoding"
	"fmt"
	"math"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	yaml "go.yaml.in/yaml/v3"
)

// problem is one thing wrong with a document, found by walking its nodes
// beside the Go type they will be decoded into.
type problem struct {
	line int    // 0: unknown
	path string // "" for the document itself
	msg  string
}

func (p problem) err(file string) error {
	switch {
	case p.line > 0 && p.path != "":
		return fmt.Errorf("%s:%d: %s: %s", file, p.line, p.path, p.msg)
	case p.line > 0:
		return fmt.Errorf("%s:%d: %s", file, p.line, p.msg)
	case p.path != "":
		return fmt.Errorf("%s: %s: %s", file, p.path, p.msg)
	}
	return fmt.Errorf("%s: %s", file, p.msg)
}

// maxProblems is the most problems reported; past it, their number. A
// file with more was not written by hand (or an alias repeats one).
const maxProblems = 100

// maxSteps bounds the nodes one check visits. Aliases can make a file of a
// few hundred bytes a tree of billions of nodes, or a cycle.
const maxSteps = 200000

// checker finds what yaml.v3 would refuse, and says it in the user's words:
// the field's path, what was expected, and the nearest valid field name.
// It decides nothing yaml.v3 does not: a value is tried with the decoder
// itself (Node.Decode), so the two cannot disagree on what is valid, and a
// type with its own UnmarshalYAML has the last word on its values.
type checker struct {
	problems  []problem
	more      int // problems past maxProblems
	steps     int
	following map[*yaml.Node]bool // the anchors of the aliases being walked
	fields    map[reflect.Type]*fieldSet
	// elsewhere lists, by normalized name, the paths of the root type's
	// fields that are reached through structs alone ("pollinterval" →
	// "entitlements.file.poll_interval", "entitlements.stripe.poll_interval").
	elsewhere map[string][]string
	// types are the types reachable from the root by name, to read the Go
	// type names in yaml.v3's own messages.
	types map[string]reflect.Type
}

func newChecker(root reflect.Type) *checker {
	c := &checker{
		steps:     maxSteps,
		following: make(map[*yaml.Node]bool),
		fields:    make(map[reflect.Type]*fieldSet),
		elsewhere: make(map[string][]string),
		types:     make(map[string]reflect.Type),
	}
	c.index(root, "", 0)
	c.collect(root, 0)
	return c
}

// check walks the document and returns its problems in line order.
func (c *checker) check(root *yaml.Node, t reflect.Type) []problem {
	n := root
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		n = n.Content[0]
	}
	c.walk(n, t, "")
	sort.SliceStable(c.problems, func(i, j int) bool { return c.problems[i].line < c.problems[j].line })
	if c.more > 0 {
		c.problems = append(c.problems, problem{msg: fmt.Sprintf("and %d more problems", c.more)})
	}
	return c.problems
}

func (c *checker) add(line int, path, format string, args ...any) {
	if len(c.problems) >= maxProblems {
		c.more++
		return
	}
	c.problems = append(c.problems, problem{line: line, path: path, msg: fmt.Sprintf(format, args...)})
}

var (
	unmarshalerType     = reflect.TypeFor[yaml.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	durationType        = reflect.TypeFor[time.Duration]()
	timeType            = reflect.TypeFor[time.Time]()
)

// implements reports whether a *t (what the decoder holds) implements i.
func implements(t, i reflect.Type) bool {
	return t.Implements(i) || reflect.PointerTo(t).Implements(i)
}

func (c *checker) walk(n *yaml.Node, t reflect.Type, path string) {
	if c.steps <= 0 {
		return
	}
	c.steps--
	if n.Kind == yaml.AliasNode {
		target := n.Alias
		if target == nil || c.following[target] {
			return // an anchor that holds itself: yaml.v3 says so
		}
		c.following[target] = true
		defer delete(c.following, target)
		n = target
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // null leaves any field at its zero value
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t.Kind() == reflect.Interface:
		return // takes anything
	case implements(t, unmarshalerType):
		c.custom(n, t, path)
		return
	case implements(t, textUnmarshalerType):
		c.scalar(n, t, path)
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		c.structure(n, t, path)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			c.add(n.Line, path, "expected %s, got %s", describe(t), got(n))
			return
		}
		c.entries(n, t, path)
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			c.add(n.Line, path, "expected %s, got %s", describe(t), got(n))
			return
		}
		if t.Kind() == reflect.Array && len(n.Content) != t.Len() {
			c.add(n.Line, path, "expected a list of %d items, got %d", t.Len(), len(n.Content))
			return
		}
		for i, e := range n.Content {
			c.walk(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
		}
	default:
		c.scalar(n, t, path)
	}
}

// scalar checks a value that must be one scalar: a number, a duration, a
// time, a string.
func (c *checker) scalar(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind != yaml.ScalarNode {
		if implements(t, textUnmarshalerType) && n.Decode(reflect.New(t).Interface()) == nil {
			return // a TextUnmarshaler that is a list or struct (net.IP) may take one
		}
		c.add(n.Line, path, "expected %s, got %s", describe(t), got(n))
		return
	}
	if t.Kind() == reflect.String && !implements(t, textUnmarshalerType) {
		return // any scalar is text
	}
	if err := n.Decode(reflect.New(t).Interface()); err != nil {
		hint := ""
		if t == durationType && (n.ShortTag() == "!!int" || n.ShortTag() == "!!float") {
			hint = fmt.Sprintf(" (a duration needs a unit, as in %ss)", n.Value)
		}
		c.add(n.Line, path, "expected %s, got %s%s", describe(t), got(n), hint)
	}
}

// custom checks a value whose type reads itself (UnmarshalYAML): the type
// decides. When it refuses a list or a mapping, the items are walked for a
// more precise answer (policy.Plans is a list read from a mapping).
func (c *checker) custom(n *yaml.Node, t reflect.Type, path string) {
	err := n.Decode(reflect.New(t).Interface())
	if err == nil {
		return
	}
	// Only when the refusal is yaml.v3's, about an item; a type that says
	// why in its own words knows best.
	if (t.Kind() == reflect.Slice || t.Kind() == reflect.Map) && (n.Kind == yaml.MappingNode || n.Kind == yaml.SequenceNode) && fromDecoder(err) {
		before := len(c.problems)
		switch {
		case n.Kind == yaml.SequenceNode && t.Kind() == reflect.Slice:
			for i, e := range n.Content {
				c.walk(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
			}
		case n.Kind == yaml.MappingNode:
			c.entries(n, t, path)
		}
		if len(c.problems) > before {
			return
		}
	}
	for _, m := range messages(err) {
		line, msg := splitLine(m)
		if line == 0 {
			line = n.Line
		}
		// A type that decodes a copy of its node wraps yaml.v3's error,
		// whose lines are the copy's: keep the messages only.
		head, rest, wrapped := strings.Cut(msg, "yaml: unmarshal errors:\n")
		if !wrapped {
			c.add(line, path, "%s", c.plain(msg))
			continue
		}
		for _, inner := range strings.Split(rest, "\n") {
			_, inner = splitLine(strings.TrimSpace(inner))
			c.add(line, path, "%s%s", head, c.plain(inner))
		}
	}
}

// fromDecoder reports whether err is yaml.v3's refusal of a value, as
// opposed to a message of a type's own UnmarshalYAML (which may wrap one).
func fromDecoder(err error) bool {
	msg := err.Error()
	for _, s := range []string{"cannot unmarshal ", " not found in type ", " already defined at line ", " already set in type "} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// structure checks a mapping read into a struct: every key a field, every
// field once.
func (c *checker) structure(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind != yaml.MappingNode {
		c.add(n.Line, path, "expected %s, got %s", describe(t), got(n))
		return
	}
	fs := c.fieldsOf(t)
	c.pairs(n, t, path, func(k, v *yaml.Node) {
		name := k.Value
		if ft, ok := fs.byName[name]; ok {
			c.walk(v, ft, join(path, name))
			return
		}
		if fs.inlineMap != nil {
			c.walk(v, fs.inlineMap, join(path, name))
			return
		}
		c.add(k.Line, join(path, name), "%s", c.unknown(name, fs))
	})
}

// entries checks a mapping read into a map (or, for a type that reads
// itself, a slice): keys of the key type, values of the element type.
func (c *checker) entries(n *yaml.Node, t reflect.Type, path string) {
	c.pairs(n, t, path, func(k, v *yaml.Node) {
		if t.Kind() == reflect.Map && t.Key().Kind() != reflect.String {
			c.walk(k, t.Key(), path)
		}
		c.walk(v, t.Elem(), join(path, k.Value))
	})
}

// pairs calls visit for each key and value of mapping n that is read into
// t, reporting what yaml.v3 refuses of keys themselves: a key written twice,
// a key that is not a scalar, a bad merge ("<<").
func (c *checker) pairs(n *yaml.Node, t reflect.Type, path string, visit func(k, v *yaml.Node)) {
	type key struct {
		kind  yaml.Kind
		value string
	}
	first := make(map[key]int)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.Value == "<<" && (k.Tag == "" || k.Tag == "!" || k.ShortTag() == "!!merge") {
			c.merge(k, v, t, path)
			continue
		}
		// yaml.v3 compares keys as written: an alias by its name.
		id := key{k.Kind, k.Value}
		if line, ok := first[id]; ok && k.Kind != yaml.MappingNode && k.Kind != yaml.SequenceNode {
			c.add(k.Line, join(path, k.Value), "is written twice (first on line %d)", line)
			continue
		}
		first[id] = k.Line
		if k.Kind == yaml.AliasNode && k.Alias != nil {
			k = k.Alias
		}
		switch {
		case k.Kind != yaml.ScalarNode:
			c.add(k.Line, path, "a key must be a single value, not %s", got(k))
		case k.ShortTag() == "!!null":
			// yaml.v3 skips a null key
		default:
			visit(k, v)
		}
	}
}

// merge checks the value of a "<<" key: a mapping, or a list of them, each
// read into t as if written in place.
func (c *checker) merge(k, v *yaml.Node, t reflect.Type, path string) {
	deref := func(n *yaml.Node) *yaml.Node {
		if n.Kind == yaml.AliasNode && n.Alias != nil {
			return n.Alias
		}
		return n
	}
	v = deref(v)
	list := []*yaml.Node{v}
	if v.Kind == yaml.SequenceNode {
		list = v.Content
	}
	for _, m := range list {
		if m = deref(m); m.Kind != yaml.MappingNode {
			c.add(k.Line, path, "<< must be followed by a mapping or a list of mappings")
			return
		}
	}
	for _, m := range list {
		c.walk(m, t, path)
	}
}

// unknown says that name is not a field here, and what the user may have
// meant: a near spelling, the same field in another section, or the list.
func (c *checker) unknown(name string, fs *fieldSet) string {
	if s := nearest(name, fs.names()); len(s) > 0 {
		return "unknown field; did you mean " + orList(s, "`") + "?"
	}
	if there := c.elsewhere[normalize(name)]; len(there) > 0 && len(there) <= 3 {
		return "unknown field; did you mean " + orList(there, "`") + "?"
	}
	if names := fs.names(); len(names) > 0 {
		return "unknown field; valid fields here: " + strings.Join(names, ", ")
	}
	return "unknown field; nothing may be set here"
}

func orList(items []string, quote string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = quote + s + quote
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// describe says in words what a value of type t is written as.
func describe(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t {
	case durationType:
		return "a duration such as 500ms"
	case timeType:
		return "a date and time such as 2026-12-01T00:00:00Z"
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64:
		return "a whole number"
	case reflect.Int8, reflect.Int16, reflect.Int32:
		bits := t.Bits()
		return fmt.Sprintf("a whole number from %d to %d", int64(-1)<<(bits-1), int64(1)<<(bits-1)-1)
	case reflect.Uint, reflect.Uint64, reflect.Uintptr:
		return "a whole number, 0 or more"
	case reflect.Uint8, reflect.Uint16, reflect.Uint32:
		return fmt.Sprintf("a whole number from 0 to %d", uint64(math.MaxUint64)>>(64-t.Bits()))
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a mapping"
	}
	if implements(t, textUnmarshalerType) {
		return "a string"
	}
	return "a value of another kind"
}

// got says what was written: the value itself for a scalar (quoted when
// YAML reads it as a string), the kind of thing otherwise.
func got(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	v := n.Value
	if r := []rune(v); len(r) > 40 {
		v = string(r[:37]) + "..."
	}
	if n.ShortTag() == "!!str" {
		return strconv.Quote(v)
	}
	return v
}

// fieldSet is what yaml.v3 reads into a struct: its fields by YAML name
// (inline structs flattened), in the order they are declared.
type fieldSet struct {
	list      []string
	byName    map[string]reflect.Type
	inlineMap reflect.Type // element type of a ",inline" map, if any
}

func (fs *fieldSet) names() []string { return fs.list }

func (c *checker) fieldsOf(t reflect.Type) *fieldSet {
	if fs, ok := c.fields[t]; ok {
		return fs
	}
	fs := &fieldSet{byName: make(map[string]reflect.Type)}
	c.fields[t] = fs
	addFields(fs, t, 0)
	return fs
}

// addFields follows yaml.v3's rules: exported fields, "-" skipped, the
// name from the tag or else the lower-cased field name, ",inline" structs
// and maps merged into the parent.
func addFields(fs *fieldSet, t reflect.Type, depth int) {
	if depth > 8 {
		return
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if f.PkgPath != "" && !f.Anonymous {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "" && !strings.Contains(string(f.Tag), ":") {
			tag = string(f.Tag)
		}
		if tag == "-" {
			continue
		}
		parts := strings.Split(tag, ",")
		if slices.Contains(parts[1:], "inline") {
			ft := f.Type
			switch {
			case ft.Kind() == reflect.Map:
				fs.inlineMap = ft.Elem()
			case ft.Kind() == reflect.Struct && !implements(ft, unmarshalerType):
				addFields(fs, ft, depth+1)
			case ft.Kind() == reflect.Pointer && ft.Elem().Kind() == reflect.Struct && !implements(ft.Elem(), unmarshalerType):
				addFields(fs, ft.Elem(), depth+1)
			}
			continue
		}
		name := parts[0]
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		if _, dup := fs.byName[name]; dup {
			continue
		}
		fs.byName[name] = f.Type
		fs.list = append(fs.list, name)
	}
}

// index records the path of each field reachable from t through structs
// alone.
func (c *checker) index(t reflect.Type, path string, depth int) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || depth > 6 || implements(t, unmarshalerType) || implements(t, textUnmarshalerType) {
		return
	}
	fs := c.fieldsOf(t)
	for _, name := range fs.list {
		key := normalize(name)
		c.elsewhere[key] = append(c.elsewhere[key], join(path, name))
		c.index(fs.byName[name], join(path, name), depth+1)
	}
}

// collect records the types reachable from t by their Go names.
func (c *checker) collect(t reflect.Type, depth int) {
	if depth > 12 {
		return
	}
	if _, ok := c.types[t.String()]; ok {
		return
	}
	c.types[t.String()] = t
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Array:
		c.collect(t.Elem(), depth+1)
	case reflect.Map:
		c.collect(t.Key(), depth+1)
		c.collect(t.Elem(), depth+1)
	case reflect.Struct:
		for i := range t.NumField() {
			c.collect(t.Field(i).Type, depth+1)
		}
	}
}
