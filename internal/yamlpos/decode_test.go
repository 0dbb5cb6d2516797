package yamlpos

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	yaml "go.yaml.in/yaml/v3"
)

type record struct {
	Name  string `yaml:"name"`
	Items []struct {
		ID    string `yaml:"id"`
		Count int    `yaml:"count"`
	} `yaml:"items"`
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name string
		data string
		hint string
		want string // the error, or "" for none
	}{
		{"good", "name: a\nitems:\n  - id: x\n", "", ""},
		{"empty", "", "", "f.yaml: the file is empty"},
		{"white space", " \n\t\n", "", "f.yaml: the file is empty"},
		{"empty with hint", "\n", `write "items: []" for none`, `f.yaml: the file is empty (write "items: []" for none)`},
		{"comments only", "# nothing yet\n  # still nothing\n", "", "f.yaml: the file is empty"},
		{"unknown field", "name: a\nextra: 1\n", "", "f.yaml:2: extra: unknown field; valid fields here: name, items"},
		{"unknown nested field", "items:\n  - id: x\n    colour: red\n", "", "f.yaml:3: items[0].colour: unknown field; valid fields here: id, count"},
		{"near miss", "items:\n  - id: x\n    cuont: 2\n", "", "f.yaml:3: items[0].cuont: unknown field; did you mean `count`?"},
		{"wrong type", "items:\n  - count: many\n", "", `f.yaml:2: items[0].count: expected a whole number, got "many"`},
		{"two problems", "name: [a]\nextra: 1\n", "", "f.yaml:1: name: expected a string, got a list\nf.yaml:2: extra: unknown field; valid fields here: name, items"},
		{"problems in line order", "items:\n  - {id: [x], count: y}\n  - nme: z\nnme: a\n", "",
			"f.yaml:2: items[0].id: expected a string, got a list\n" +
				"f.yaml:2: items[0].count: expected a whole number, got \"y\"\n" +
				"f.yaml:3: items[1].nme: unknown field; valid fields here: id, count\n" +
				"f.yaml:4: nme: unknown field; did you mean `name`?"},
		{"not a mapping", "- a\n- b\n", "", "f.yaml:1: expected a mapping, got a list"},
		{"list of scalars", "items: x\n", "", `f.yaml:1: items: expected a list, got "x"`},
		{"written twice", "name: a\nitems: []\nname: b\n", "", "f.yaml:3: name: is written twice (first on line 1)"},
		{"written twice, and more", "name: a\nname: b\nitems: [{id: x, id: y}]\nextra: 1\n", "",
			"f.yaml:2: name: is written twice (first on line 1)\n" +
				"f.yaml:3: items[0].id: is written twice (first on line 3)\n" +
				"f.yaml:4: extra: unknown field; valid fields here: name, items"},
		{"syntax", "name: a\n  b: c\n", "", `f.yaml:2: mapping values are not allowed in this context (is the indentation right? a value that holds ": " must be quoted)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v record
			d, err := Decode("f.yaml", []byte(tt.data), &v, tt.hint)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Fatalf("error =\n%s\nwant\n%s", got, tt.want)
			}
			if (d == nil) != (err != nil) {
				t.Errorf("Doc = %v with error %v: want exactly one", d, err)
			}
		})
	}
}

// kinds has a field of each kind of value the walk knows.
type kinds struct {
	Wait     time.Duration      `yaml:"wait"`
	At       time.Time          `yaml:"at"`
	Count    int                `yaml:"count"`
	Streams  uint32             `yaml:"streams"`
	Small    int8               `yaml:"small"`
	Size     uint64             `yaml:"size"`
	On       bool               `yaml:"on"`
	Rate     *float64           `yaml:"rate"`
	Tags     []string           `yaml:"tags"`
	Limits   map[string]int     `yaml:"limits"`
	ByNum    map[int]string     `yaml:"by_num"`
	Pair     [2]int             `yaml:"pair"`
	Any      any                `yaml:"any"`
	Inner    inner              `yaml:"inner"`
	Items    []inner            `yaml:"items"`
	Named    namedList          `yaml:"named"`
	Either   oneOrMany          `yaml:"either"`
	Extra    map[string]any     `yaml:"extra"`
	Nested   map[string][]inner `yaml:"nested"`
	Skipped  int                `yaml:"-"`
	Lower    int
	Embedded `yaml:",inline"`
}

type inner struct {
	Path         string        `yaml:"path"`
	PollInterval time.Duration `yaml:"poll_interval"`
}

type Embedded struct {
	Shared string `yaml:"shared"`
}

// namedList is read from a mapping of name to item, as policy.Plans is.
type namedList []namedItem

type namedItem struct {
	Name  string `yaml:"-"`
	Limit int64  `yaml:"limit"`
}

func (l *namedList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: named must be a mapping of name to item", n.Line)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		var it namedItem
		b, err := yaml.Marshal(n.Content[i+1])
		if err != nil {
			return err
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(&it); err != nil {
			return fmt.Errorf("line %d: %v", n.Content[i+1].Line, err)
		}
		it.Name = n.Content[i].Value
		*l = append(*l, it)
	}
	return nil
}

// oneOrMany takes a scalar or a list, as policy.StringList does.
type oneOrMany []string

func (s *oneOrMany) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*s = oneOrMany{n.Value}
		return nil
	}
	var l []string
	if err := n.Decode(&l); err != nil {
		return err
	}
	*s = l
	return nil
}

func TestDecodeTypes(t *testing.T) {
	tests := []struct {
		name string
		data string
		want string
	}{
		{"duration", "wait: soon\n", `f.yaml:1: wait: expected a duration such as 500ms, got "soon"`},
		{"duration without unit", "wait: 5\n", "f.yaml:1: wait: expected a duration such as 500ms, got 5 (a duration needs a unit, as in 5s)"},
		{"duration as mapping", "wait: {s: 5}\n", "f.yaml:1: wait: expected a duration such as 500ms, got a mapping"},
		{"time", "at: tomorrow\n", `f.yaml:1: at: expected a date and time such as 2026-12-01T00:00:00Z, got "tomorrow"`},
		{"whole number", "count: 2x\n", `f.yaml:1: count: expected a whole number, got "2x"`},
		{"uint32 too big", "streams: 5000000000\n", "f.yaml:1: streams: expected a whole number from 0 to 4294967295, got 5000000000"},
		{"uint32 negative", "streams: -1\n", "f.yaml:1: streams: expected a whole number from 0 to 4294967295, got -1"},
		{"int8", "small: 300\n", "f.yaml:1: small: expected a whole number from -128 to 127, got 300"},
		{"uint64", "size: -2\n", "f.yaml:1: size: expected a whole number, 0 or more, got -2"},
		{"bool", "on: maybe\n", `f.yaml:1: on: expected true or false, got "maybe"`},
		{"float through pointer", "rate: high\n", `f.yaml:1: rate: expected a number, got "high"`},
		{"list", "tags: {a: b}\n", "f.yaml:1: tags: expected a list, got a mapping"},
		{"list item", "tags: [a, [b]]\n", "f.yaml:1: tags[1]: expected a string, got a list"},
		{"map value", "limits:\n  a: 1\n  b: many\n", `f.yaml:3: limits.b: expected a whole number, got "many"`},
		{"map key", "by_num: {x: a}\n", `f.yaml:1: by_num: expected a whole number, got "x"`},
		{"map", "limits: [1]\n", "f.yaml:1: limits: expected a mapping, got a list"},
		{"array length", "pair: [1, 2, 3]\n", "f.yaml:1: pair: expected a list of 2 items, got 3"},
		{"struct", "inner: /x\n", `f.yaml:1: inner: expected a mapping, got "/x"`},
		{"struct in list", "items:\n  - path: a\n  - poll_intreval: 1s\n", "f.yaml:3: items[1].poll_intreval: unknown field; did you mean `poll_interval`?"},
		{"list of structs in map", "nested:\n  a:\n    - {path: a, pollInterval: 1s}\n", "f.yaml:3: nested.a[0].pollInterval: unknown field; did you mean `poll_interval`?"},
		{"custom list from mapping", "named:\n  a: {limit: 1}\n  b:\n    limt: 2\n", "f.yaml:4: named.b.limt: unknown field; did you mean `limit`?"},
		{"custom type in custom list", "named:\n  a: {limit: lots}\n", `f.yaml:2: named.a.limit: expected a whole number, got "lots"`},
		{"custom error", "named: [a]\n", "f.yaml:1: named: named must be a mapping of name to item"},
		{"custom scalar or list", "either: [a, {b: c}]\n", "f.yaml:1: either[1]: expected a string, got a mapping"},
		{"custom refusal of a mapping", "either: {a: b}\n", "f.yaml:1: either: expected a list, got a mapping"},
		{"skipped field", "skipped: 1\n", "f.yaml:1: skipped: unknown field; valid fields here: wait, at, count, streams, small, size, on, rate, tags, limits, by_num, pair, any, inner, items, named, either, extra, nested, lower, shared"},
		{"inline field", "shraed: x\n", "f.yaml:1: shraed: unknown field; did you mean `shared`?"},
		{"field of another section", "poll_interval: 1s\n", "f.yaml:1: poll_interval: unknown field; did you mean `inner.poll_interval`?"},
		{"alias to a bad value", "inner: &i {path: a, poll_interval: x}\nitems: [*i]\n",
			"f.yaml:1: inner.poll_interval: expected a duration such as 500ms, got \"x\"\n" +
				"f.yaml:1: items[0].poll_interval: expected a duration such as 500ms, got \"x\""},
		{"merge", "base: &b {path: a}\n", "f.yaml:1: base: unknown field; valid fields here: wait, at, count, streams, small, size, on, rate, tags, limits, by_num, pair, any, inner, items, named, either, extra, nested, lower, shared"},
		{"merged bad field", "items:\n  - &b {path: a}\n  - <<: *b\n    pth: b\n", "f.yaml:4: items[1].pth: unknown field; did you mean `path`?"},
		{"merge of a scalar", "items:\n  - <<: x\n", "f.yaml:2: items[0]: << must be followed by a mapping or a list of mappings"},
		{"key that is a list", "inner:\n  ? [a]\n  : 1\n", "f.yaml:2: inner: a key must be a single value, not a list"},
		{"key written twice in a map", "limits: {a: 1, a: 2}\n", "f.yaml:1: limits.a: is written twice (first on line 1)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v kinds
			_, err := Decode("f.yaml", []byte(tt.data), &v, "")
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("error =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

// The walk must accept whatever yaml.v3 accepts: these are all valid.
func TestDecodeAcceptsWhatYAMLDoes(t *testing.T) {
	docs := []string{
		"wait: 1m30s\nat: 2026-12-01T00:00:00Z\ncount: 0x10\nstreams: 7\nsmall: -128\nsize: 1e3\non: yes\nrate: 1\n",
		"count: 1.0\non: off\nrate: .inf\n",
		"wait:\nat: ~\ninner: null\ntags:\nrate: null\n",
		"tags: [1, true, 1.5, '2', null]\nlimits: {a: 1, '2': 3}\nby_num: {1: a, 0x2: b}\npair: [1, 2]\n",
		"any: {a: [1, {b: c}]}\nextra: {x: [1], y: {z: 1}}\n",
		"inner: &i {path: a}\nitems: [*i, {<<: *i, poll_interval: 1s}, {<<: [*i]}]\n",
		"named: {a: {limit: 1}, b: {}}\neither: a\n",
		"either: [a, b]\nshared: x\nlower: 3\n",
		"~: ignored\ninner: {~: ignored, path: a}\n",
		"&k count: 1\n",
		"inner: {&k path: a}\nitems: [{*k : b}]\n",
		"nested: {a: [{path: b}]}\n",
		"---\nwait: 1s\n...\n",
	}
	for i, doc := range docs {
		var v kinds
		if _, err := Decode("f.yaml", []byte(doc), &v, ""); err != nil {
			t.Errorf("doc %d: %v\n%s", i, err, doc)
		}
		if v.Embedded.Shared == "" && i == 7 {
			t.Errorf("doc %d: inline field not decoded: %+v", i, v)
		}
	}
}

func TestDocErrorf(t *testing.T) {
	const data = "name: a\nitems:\n  - id: x\n  - id: y\n    count: 2\n"
	var v record
	d, err := Decode("f.yaml", []byte(data), &v, "")
	if err != nil {
		t.Fatal(err)
	}
	if v.Name != "a" || len(v.Items) != 2 || v.Items[1].Count != 2 {
		t.Fatalf("decoded %+v", v)
	}
	tests := []struct {
		name string
		doc  *Doc
		path string
		want string
	}{
		{"top field", d, "name", "f.yaml:1: name: bad 7"},
		{"nested field", d, "items[1].count", "f.yaml:5: items[1].count: bad 7"},
		{"field not written", d, "items[0].count", "f.yaml:3: items[0].count: bad 7"},
		{"index out of range", d, "items[5].id", "f.yaml:2: items[5].id: bad 7"},
		{"not read from YAML", Named("mem"), "items[1].count", "mem: items[1].count: bad 7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.doc.Errorf(tt.path, "bad %d", 7).Error(); got != tt.want {
				t.Errorf("Errorf(%q) = %q, want %q", tt.path, got, tt.want)
			}
		})
	}
}

func TestDocLine(t *testing.T) {
	var v struct {
		Server struct {
			GRPC int `yaml:"grpc"`
		} `yaml:"server"`
	}
	d, err := Decode("f.yaml", []byte("# head\nserver:\n  grpc: 1\n"), &v, "")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		doc  *Doc
		path string
		want int
	}{
		{d, "server", 2},
		{d, "server.grpc", 3},
		{d, "server.missing", 2},
		{Named("mem"), "server.grpc", 0},
	}
	for _, tt := range tests {
		if got := tt.doc.Line(tt.path); got != tt.want {
			t.Errorf("Line(%q) = %d, want %d", tt.path, got, tt.want)
		}
	}
}

// Past 100 problems, the rest are counted: aliases can repeat one problem
// millions of times.
func TestDecodeCapsProblems(t *testing.T) {
	doc := "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\ngrid: *c\n"
	var v struct {
		Grid [][][]int `yaml:"grid"`
	}
	_, err := Decode("f.yaml", []byte(doc), &v, "")
	if err == nil {
		t.Fatal("want errors")
	}
	lines := strings.Split(err.Error(), "\n")
	if got, want := len(lines), 101; got != want {
		t.Fatalf("%d lines, want %d", got, want)
	}
	// 3 unknown fields (a, b, c) and 1000 strings where a number is due.
	if got, want := lines[100], "f.yaml: and 903 more problems"; got != want {
		t.Errorf("last line = %q, want %q", got, want)
	}
}

// A problem the walk does not reach (it stops at an alias that holds
// itself) is still reported, from yaml.v3's own error, in words.
func TestDecodeFallsBackToYAMLErrors(t *testing.T) {
	var v kinds
	_, err := Decode("f.yaml", []byte("count: 1\nany: &a [*a]\n"), &v, "")
	want := "f.yaml:2: anchor 'a' value contains itself"
	if err == nil || err.Error() != want {
		t.Errorf("error = %v, want %s", err, want)
	}
}

// subjectsDoc is shaped like an entitlements file, the largest file read.
type subjectsDoc struct {
	Subjects []struct {
		ID        string           `yaml:"id"`
		Plan      string           `yaml:"plan"`
		Status    string           `yaml:"status"`
		APIKeys   []string         `yaml:"api_key_sha256"`
		Quotas    map[string]int64 `yaml:"quotas"`
		Credits   *int64           `yaml:"credits"`
		PeriodEnd time.Time        `yaml:"period_end"`
	} `yaml:"subjects"`
}

func subjectsYAML(n int) []byte {
	var b bytes.Buffer
	b.WriteString("subjects:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - id: s%d\n    plan: pro\n    status: active\n    api_key_sha256: [%064x]\n    quotas: {calls: 5000}\n    credits: 250\n    period_end: 2026-12-01T00:00:00Z\n", i, i)
	}
	return b.Bytes()
}

// BenchmarkDecode: a 1,000-subject file. The walk that finds problems
// costs a share of this beside yaml.v3's own decoding.
func BenchmarkDecode(b *testing.B) {
	data := subjectsYAML(1000)
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		var v subjectsDoc
		if _, err := Decode("f.yaml", data, &v, ""); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkYAMLDecode is yaml.v3 alone on the same file, to compare.
func BenchmarkYAMLDecode(b *testing.B) {
	data := subjectsYAML(1000)
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		var v subjectsDoc
		var root yaml.Node
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&v); err != nil {
			b.Fatal(err)
		}
		if err := yaml.Unmarshal(data, &root); err != nil {
			b.Fatal(err)
		}
	}
}
