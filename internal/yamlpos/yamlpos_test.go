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
		"f.yaml:1: cannot unmarshal !!str `x` into int",
		"f.yaml:2: field b not found in type struct { A int \"yaml:\\\"a\\\"\" }",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if err := Errors("f.yaml", errors.New("yaml: line 3: mapping values are not allowed")); err.Error() != "f.yaml:3: mapping values are not allowed" {
		t.Errorf("syntax error = %q", err)
	}
}
