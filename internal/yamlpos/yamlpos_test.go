package yamlpos

import (
	"errors"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
)

const doc = `server:
  grpc: 1
routes:
  - name: a
    feature: x
  - name: b
    match:
      path: /p
`

func TestLine(t *testing.T) {
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(doc), &root); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path string
		want int
	}{
		{"server", 1},
		{"server.grpc", 2},
		{"routes[0].feature", 5},
		{"routes[1]", 6},
		{"routes[1].match.path", 8},
		{"routes[1].missing", 6}, // nearest ancestor
		{"routes[9].name", 3},
		{"nope", 1},
	}
	for _, tt := range tests {
		if got := Line(&root, tt.path); got != tt.want {
			t.Errorf("Line(%q) = %d, want %d", tt.path, got, tt.want)
		}
	}
}

func TestErrors(t *testing.T) {
	var v struct {
		A int `yaml:"a"`
	}
	dec := yaml.NewDecoder(strings.NewReader("a: x\nb: 1\n"))
	dec.KnownFields(true)
	err := Errors("f.yaml", dec.Decode(&v))
	var got []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		got = append(got, e.Error())
	}
	want := []string{
		`f.yaml:1: expected a whole number, got "x"`,
		"f.yaml:2: b: unknown field",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	tests := []struct {
		err  string
		want string
	}{
		{"yaml: line 3: mapping values are not allowed", "f.yaml:3: mapping values are not allowed"},
		{"yaml: line 2: cannot unmarshal !!seq into time.Duration", "f.yaml:2: expected a duration such as 500ms, got a list"},
		{"yaml: line 2: cannot unmarshal !!map into []string", "f.yaml:2: expected a list, got a mapping"},
		{"yaml: line 2: cannot unmarshal !!int `5` into *bool", "f.yaml:2: expected true or false, got 5"},
		{"yaml: line 2: cannot unmarshal !!str `abcdefg...` into map[string]int", `f.yaml:2: expected a mapping, got "abcdefg..."`},
		{"yaml: line 2: cannot unmarshal !!str `x` into config.Mode", `f.yaml:2: expected a value of another kind, got "x"`},
		{"yaml: line 4: mapping key \"a\" already defined at line 1", "f.yaml:4: a: is written twice (first on line 1)"},
		{"yaml: line 4: field a already set in type config.Server", "f.yaml:4: field a is set twice"},
		{"yaml: document contains excessive aliasing", "f.yaml: document contains excessive aliasing"},
	}
	for _, tt := range tests {
		if got := Errors("f.yaml", errors.New(tt.err)).Error(); got != tt.want {
			t.Errorf("Errors(%q) = %q, want %q", tt.err, got, tt.want)
		}
	}
}
