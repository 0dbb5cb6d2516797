package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Every config error reads "FILE:LINE: field.path: problem": an unknown
// field with the nearest valid name, a wrong type with what was expected,
// no Go type names, every problem on a line of its own.
func TestParseErrorMessages(t *testing.T) {
	const src = "entitlements:\n  file: {path: e.yaml}\n" // lines 1-2
	tests := []struct {
		name string
		doc  string
		want string
	}{
		{"unknown top-level field", src + "sevrer: {}\n",
			"t.yaml:3: sevrer: unknown field; did you mean `server`?"},
		{"unknown nested field", "entitlements:\n  file:\n    path: e.yaml\n    poll_intreval: 1s\n",
			"t.yaml:4: entitlements.file.poll_intreval: unknown field; did you mean `poll_interval`?"},
		{"another spelling", "entitlements:\n  file: {path: e.yaml, pollInterval: 1s}\n",
			"t.yaml:2: entitlements.file.pollInterval: unknown field; did you mean `poll_interval`?"},
		{"field of another section", src + "negative_ttl: 1s\n",
			"t.yaml:3: negative_ttl: unknown field; did you mean `entitlements.cache.negative_ttl`?"},
		{"nothing close", "entitlements:\n  file: {path: e.yaml, colour: red}\n",
			"t.yaml:2: entitlements.file.colour: unknown field; valid fields here: path, poll_interval"},
		{"unknown plan field", src + "plans:\n  free:\n    feature: [search]\n",
			"t.yaml:5: plans.free.feature: unknown field; did you mean `features`?"},
		{"unknown quota field", src + "plans:\n  free:\n    quotas:\n      calls: {limit: 5, perod: day}\n",
			"t.yaml:6: plans.free.quotas.calls.perod: unknown field; did you mean `period`?"},
		{"unknown route field", src + "routes:\n  - name: a\n    match: {path: {prefix: /a}}\n    featur: x\n",
			"t.yaml:6: routes[0].featur: unknown field; did you mean `feature`?"},
		{"unknown path field", src + "routes:\n  - name: a\n    match: {path: {prefx: /a}}\n",
			"t.yaml:5: routes[0].match.path.prefx: unknown field; did you mean `prefix`?"},
		{"unknown redis field", src + "quota_store:\n  store: redis\n  redis: {adress: r:6379}\n",
			"t.yaml:5: quota_store.redis.adress: unknown field; did you mean `address`?"},
		{"duration", src + "server:\n  drain_timeout: soon\n",
			`t.yaml:4: server.drain_timeout: expected a duration such as 500ms, got "soon"`},
		{"duration without a unit", src + "server:\n  drain_timeout: 10\n",
			"t.yaml:4: server.drain_timeout: expected a duration such as 500ms, got 10 (a duration needs a unit, as in 10s)"},
		{"whole number", src + "server: {max_in_flight: lots}\n",
			`t.yaml:3: server.max_in_flight: expected a whole number, got "lots"`},
		{"too big", src + "server: {max_concurrent_streams: 5000000000}\n",
			"t.yaml:3: server.max_concurrent_streams: expected a whole number from 0 to 4294967295, got 5000000000"},
		{"bool", src + "shadow: maybe\n",
			`t.yaml:3: shadow: expected true or false, got "maybe"`},
		{"number", src + "log: {allow_sample_rate: all}\n",
			`t.yaml:3: log.allow_sample_rate: expected a number, got "all"`},
		{"mapping", src + "server: 9191\n",
			"t.yaml:3: server: expected a mapping, got 9191"},
		{"list", src + "routes: {name: a}\n",
			"t.yaml:3: routes: expected a list, got a mapping"},
		{"status code", src + "responses:\n  status:\n    payment_required: x\n",
			`t.yaml:5: responses.status.payment_required: expected a whole number, got "x"`},
		{"quota limit", src + "plans:\n  free:\n    quotas:\n      calls: {limit: lots, period: day}\n",
			`t.yaml:6: plans.free.quotas.calls.limit: expected a whole number, got "lots"`},
		{"method", src + "routes:\n  - match: {method: {get: true}}\n",
			"t.yaml:4: routes[0].match.method: expected a list, got a mapping"},
		{"identity kind", src + "identity: [cookie]\n",
			`t.yaml:3: identity[0]: unknown identity kind "cookie" (want api_key, bearer, jwt, principal or trusted_header)`},
		{"identity option", src + "identity:\n  - api_key:\n      heder: x\n",
			"t.yaml:5: identity[0]: field heder not valid for identity api_key"},
		{"written twice", src + "log: {level: info}\nlog: {level: debug}\n",
			"t.yaml:4: log: is written twice (first on line 3)"},
		{"not a mapping", "- server\n",
			"t.yaml:1: expected a mapping, got a list"},
		{"every problem, in line order", "# t\nsevrer: {}\nentitlements:\n  file: {path: e.yaml, poll_interval: 1}\nplans:\n  free: {feature: [a]}\nshadow: no way\n",
			"t.yaml:2: sevrer: unknown field; did you mean `server`?\n" +
				"t.yaml:4: entitlements.file.poll_interval: expected a duration such as 500ms, got 1 (a duration needs a unit, as in 1s)\n" +
				"t.yaml:6: plans.free.feature: unknown field; did you mean `features`?\n" +
				`t.yaml:7: shadow: expected true or false, got "no way"`},
		{"syntax", "# t\nentitlements:\n  file: {path: e.yaml}\nplans:\n  free: {features: [a}\n",
			"t.yaml:5: the list opened with [ on this line is not closed (did not find expected ',' or ']')"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("t.yaml", []byte(tt.doc))
			got := "<nil>"
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("error:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

// The demo config (examples/tollgate.yaml), each broken in one way a person
// breaks a file, gives the line where it broke.
func TestParseBrokenFiles(t *testing.T) {
	tests := []struct {
		file string
		want string
	}{
		// yaml.v3 alone: "line 54: did not find expected ',' or ']'"
		{"unclosed-list.yaml", ":55: the list opened with [ on this line is not closed (did not find expected ',' or ']')"},
		// yaml.v3 alone: "line 23: did not find expected key"
		{"bad-indent.yaml", ":30: did not find expected key (is the indentation right? the mapping it is in starts on line 24)"},
		{"indented-too-far.yaml", `:30: mapping values are not allowed in this context (is the indentation right? a value that holds ": " must be quoted)`},
		{"unclosed-quote.yaml", ":11: the quoted string that starts on this line is not closed (found unexpected end of stream)"},
		// yaml.v3 alone: "line 27: field poll_intreval not found in type config.FileSource"
		{"unknown-field.yaml", ":27: entitlements.file.poll_intreval: unknown field; did you mean `poll_interval`?"},
		{"wrong-types.yaml", ":8: server.drain_timeout: expected a duration such as 500ms, got 10 (a duration needs a unit, as in 10s)\n" +
			"F:12: log.allow_sample_rate: expected a number, got \"all\"\n" +
			"F:14: shadow: expected true or false, got \"maybe\"\n" +
			"F:66: routes[2].feture: unknown field; did you mean `feature`?"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			name := filepath.Join("testdata", "errors", tt.file)
			data, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Parse(name, data)
			got := "<nil>"
			if err != nil {
				got = err.Error()
			}
			if want := name + strings.ReplaceAll(tt.want, "\nF:", "\n"+name+":"); got != want {
				t.Errorf("error:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// The examples in docs/config.md (the config reference) are what Parse says.
func TestConfigDocErrorExamples(t *testing.T) {
	readme, err := os.ReadFile("../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	file := func(name string) string {
		b, err := os.ReadFile(filepath.Join("testdata", "errors", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	tests := []struct {
		doc  string
		line string // as in docs/config.md
	}{
		{file("unknown-field.yaml"), "tollgate.yaml:27: entitlements.file.poll_intreval: unknown field; did you mean `poll_interval`?"},
		{"entitlements:\n  file: {path: e.yaml}\nnegative_ttl: 1s\n", "tollgate.yaml:3: negative_ttl: unknown field; did you mean `entitlements.cache.negative_ttl`?"},
		{file("wrong-types.yaml"), "tollgate.yaml:8: server.drain_timeout: expected a duration such as 500ms, got 10 (a duration needs a unit, as in 10s)"},
		{file("wrong-types.yaml"), `tollgate.yaml:14: shadow: expected true or false, got "maybe"`},
		{strings.Repeat("\n", 37) + "entitlements: {file: {path: e.yaml}}\nroutes:\n  - name: a\n  - name: b\n    feature: chatt\n",
			`tollgate.yaml:42: routes[1].feature: "chatt" is not a feature of any plan`},
		{file("unclosed-list.yaml"), "tollgate.yaml:55: the list opened with [ on this line is not closed (did not find expected ',' or ']')"},
		{file("bad-indent.yaml"), "tollgate.yaml:30: did not find expected key (is the indentation right? the mapping it is in starts on line 24)"},
	}
	for _, tt := range tests {
		if !strings.Contains(string(readme), tt.line) {
			t.Errorf("docs/config.md does not show %q", tt.line)
		}
		_, err := Parse("tollgate.yaml", []byte(tt.doc))
		if err == nil || !slices.Contains(strings.Split(err.Error(), "\n"), tt.line) {
			t.Errorf("Parse says\n%v\nnot docs/config.md's\n%s", err, tt.line)
		}
	}
}
