package yamlpos

import (
	"testing"
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
		{"unknown field", "name: a\nextra: 1\n", "", "f.yaml:2: field extra not found in type yamlpos.record"},
		{"unknown nested field", "items:\n  - id: x\n    colour: red\n", "", "f.yaml:3: field colour not found in type struct { ID string \"yaml:\\\"id\\\"\"; Count int \"yaml:\\\"count\\\"\" }"},
		{"wrong type", "items:\n  - count: many\n", "", "f.yaml:2: cannot unmarshal !!str `many` into int"},
		{"two problems", "name: [a]\nextra: 1\n", "", "f.yaml:1: cannot unmarshal !!seq into string\nf.yaml:2: field extra not found in type yamlpos.record"},
		{"syntax", "name: a\n  b: c\n", "", "f.yaml:2: mapping values are not allowed in this context"},
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
				t.Fatalf("error = %q, want %q", got, tt.want)
			}
			if (d == nil) != (err != nil) {
				t.Errorf("Doc = %v with error %v: want exactly one", d, err)
			}
		})
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
