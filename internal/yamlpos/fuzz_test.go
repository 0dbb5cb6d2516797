package yamlpos

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
)

// FuzzDecode: any bytes decode or give errors, never a panic; every error
// line names the file and no Go type; and the walk never refuses what
// yaml.v3 accepts.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"wait: 1s\ncount: 2\ntags: [a]\nlimits: {a: 1}\ninner: {path: a}\nnamed: {a: {limit: 1}}\neither: x\n",
		"inner: &i {path: a}\nitems: [*i, {<<: *i, poll_interval: 1s}]\n",
		"any: &a [*a]\n",
		"a: [1, 2\n",
		"# c\nserver:\n  a: 1\n bad: 2\n",
		"by_num: {1: a, ~: b}\npair: [1]\non: maybe\nat: x\n",
		"\xEF\xBB\xBFwait: \a\n",
		"named:\n  a: {limit: x, limt: 1}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var v kinds
		d, err := Decode("f.yaml", data, &v, "")
		if (d == nil) == (err == nil) {
			t.Fatalf("Doc %v and error %v: want exactly one", d, err)
		}
		if err == nil {
			return
		}
		for _, line := range strings.Split(err.Error(), "\n") {
			if !strings.HasPrefix(line, "f.yaml:") {
				t.Fatalf("error line %q does not start with the file", line)
			}
			for _, leak := range []string{"yamlpos.", "cannot unmarshal", "not found in type", "time.Duration"} {
				if strings.Contains(line, leak) {
					t.Fatalf("error line %q shows a Go type or yaml.v3's words (%q)", line, leak)
				}
			}
		}
		// What the walk refuses, yaml.v3 refuses too.
		var root yaml.Node
		if yaml.Unmarshal(data, &root) != nil {
			return
		}
		if ps := newChecker(reflect.TypeOf(&v)).check(&root, reflect.TypeOf(&v)); len(ps) > 0 {
			var w kinds
			dec := yaml.NewDecoder(bytes.NewReader(data))
			dec.KnownFields(true)
			if dec.Decode(&w) == nil {
				t.Fatalf("the walk refused what yaml.v3 accepts: %v", ps)
			}
		}
	})
}
