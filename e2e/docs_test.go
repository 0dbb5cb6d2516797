//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/tollgate-authz/tollgate/internal/docstest"
	"github.com/tollgate-authz/tollgate/internal/envoytest"
)

// TestDocEnvoyFragments: every Envoy fragment the docs show (a block
// annotated <!-- test: envoy-fragment PLACE -->), put into the repository's
// envoy.yaml at its place, passes `envoy --mode validate`. Clusters the
// fragment names and envoy.yaml lacks (the collector, a JWT issuer) are
// added as plain HTTP/2 clusters, as the docs say to.
func TestDocEnvoyFragments(t *testing.T) {
	envoy, err := envoytest.Find(repoRoot)
	if errors.Is(err, envoytest.ErrNotFound) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	base, err := os.ReadFile(filepath.Join(repoRoot, "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	blocks, _, err := docstest.Read(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, b := range blocks {
		if b.Kind != "envoy-fragment" {
			continue
		}
		n++
		t.Run(b.Where(), func(t *testing.T) {
			cfg, err := placeEnvoyFragment(base, b.Arg, docstest.EnvoyText(b.Text))
			if err != nil {
				t.Fatalf("%s: %v", b.Where(), err)
			}
			path := filepath.Join(t.TempDir(), "envoy.yaml")
			if err := os.WriteFile(path, cfg, 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(envoy, "--mode", "validate", "-c", path, "--log-level", "warn", "--disable-hot-restart").CombinedOutput()
			if err != nil {
				t.Errorf("%s: envoy --mode validate: %v\n%s\nthe config:\n%s", b.Where(), err, out, cfg)
			}
		})
	}
	if n == 0 {
		t.Error("the docs show no envoy-fragment block")
	}
}

// placeEnvoyFragment puts a fragment into envoy.yaml at place:
//
//	hcm           a mapping merged into the HTTP connection manager's typed_config
//	http_filters  filters: each replaces the one of its name (kept as it was
//	              when the fragment gives only the name), or goes before the router
//	route         a mapping merged into the catch-all route
//	cluster       a mapping merged into the tollgate cluster
//	clusters      {clusters: [...]}: each replaces the cluster of its name, or is added
func placeEnvoyFragment(envoyYAML []byte, place, fragment string) ([]byte, error) {
	var root map[string]any
	if err := yaml.Unmarshal(envoyYAML, &root); err != nil {
		return nil, err
	}
	var frag any
	if err := yaml.Unmarshal([]byte(fragment), &frag); err != nil {
		return nil, fmt.Errorf("the fragment is not YAML: %v", err)
	}
	sr := root["static_resources"].(map[string]any)
	hcm := sr["listeners"].([]any)[0].(map[string]any)["filter_chains"].([]any)[0].(map[string]any)["filters"].([]any)[0].(map[string]any)["typed_config"].(map[string]any)
	fm, isMap := frag.(map[string]any)
	switch place {
	case "hcm":
		if !isMap {
			return nil, errors.New("hcm: want a mapping")
		}
		for k, v := range fm {
			hcm[k] = v
		}
	case "http_filters":
		list, ok := frag.([]any)
		if !ok {
			return nil, errors.New("http_filters: want a list")
		}
		filters := hcm["http_filters"].([]any)
		var out []any
		for _, f := range list {
			f := f.(map[string]any)
			if old := namedIn(filters, f["name"]); old != nil && len(f) == 1 {
				f = old
			}
			out = append(out, f)
		}
		for _, f := range filters {
			if namedIn(out, f.(map[string]any)["name"]) == nil {
				out = append(out, f) // the router, and filters the fragment leaves alone
			}
		}
		hcm["http_filters"] = out
	case "route":
		if !isMap {
			return nil, errors.New("route: want a mapping")
		}
		routes := hcm["route_config"].(map[string]any)["virtual_hosts"].([]any)[0].(map[string]any)["routes"].([]any)
		r := routes[len(routes)-1].(map[string]any)
		for k, v := range fm {
			r[k] = v
		}
	case "cluster":
		if !isMap {
			return nil, errors.New("cluster: want a mapping")
		}
		c := namedIn(sr["clusters"].([]any), "tollgate")
		for k, v := range fm {
			c[k] = v
		}
	case "clusters":
		list, ok := fm["clusters"].([]any)
		if !isMap || !ok {
			return nil, errors.New("clusters: want {clusters: [...]}")
		}
		clusters := sr["clusters"].([]any)
		for _, c := range list {
			name := c.(map[string]any)["name"]
			replaced := false
			for i, old := range clusters {
				if old.(map[string]any)["name"] == name {
					clusters[i], replaced = c, true
				}
			}
			if !replaced {
				clusters = append(clusters, c)
			}
		}
		sr["clusters"] = clusters
	default:
		return nil, fmt.Errorf("unknown place %q", place)
	}
	// Clusters a fragment refers to that envoy.yaml lacks.
	for _, name := range clusterRefs(frag) {
		if namedIn(sr["clusters"].([]any), name) == nil {
			sr["clusters"] = append(sr["clusters"].([]any), stubCluster(name))
		}
	}
	return yaml.Marshal(root)
}

// namedIn is the element of l whose name is name, or nil.
func namedIn(l []any, name any) map[string]any {
	for _, e := range l {
		if m, ok := e.(map[string]any); ok && m["name"] == name {
			return m
		}
	}
	return nil
}

// clusterRefs are the cluster names a fragment refers to (cluster_name:,
// and cluster: inside an http_uri).
func clusterRefs(v any) []string {
	var refs []string
	var walk func(v any, parent string)
	walk = func(v any, parent string) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				if s, ok := e.(string); ok && (k == "cluster_name" || (k == "cluster" && parent == "http_uri")) {
					refs = append(refs, s)
				}
				walk(e, k)
			}
		case []any:
			for _, e := range v {
				walk(e, parent)
			}
		}
	}
	walk(v, "")
	return refs
}

// stubCluster is a static HTTP/2 cluster on loopback: enough for Envoy to
// validate a fragment that sends to it.
func stubCluster(name string) map[string]any {
	return map[string]any{
		"name": name, "type": "STATIC", "connect_timeout": "1s",
		"typed_extension_protocol_options": map[string]any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": map[string]any{
				"@type":                "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
				"explicit_http_config": map[string]any{"http2_protocol_options": map[string]any{}},
			},
		},
		"load_assignment": map[string]any{"cluster_name": name, "endpoints": []any{map[string]any{"lb_endpoints": []any{
			map[string]any{"endpoint": map[string]any{"address": map[string]any{"socket_address": map[string]any{"address": "127.0.0.1", "port_value": 4317}}}},
		}}}},
	}
}
