package envoytest

import (
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
)

// Paths into the derived config: keys and list indexes separated by "/",
// and name=X for the list element with that name (keys hold dots).
const (
	hcmPath    = "static_resources/listeners/0/filter_chains/0/filters/name=envoy.filters.network.http_connection_manager/typed_config"
	routesPath = hcmPath + "/route_config/virtual_hosts/0/routes"
	authzPath  = hcmPath + "/http_filters/name=envoy.filters.http.ext_authz/typed_config"
	tgAddr     = "static_resources/clusters/name=tollgate/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address"
	upAddr     = "static_resources/clusters/name=upstream/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address"
)

var disabled = map[string]any{"envoy.filters.http.ext_authz": map[string]any{
	"@type":    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
	"disabled": true,
}}

func TestDerive(t *testing.T) {
	shipped, err := os.ReadFile("../../envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	type check struct {
		path string
		want any // nil: the path must not exist
	}
	cases := []struct {
		name    string
		src     []byte // nil: the repo's envoy.yaml
		changes Changes
		checks  []check
		wantErr string
	}{
		{
			name: "no changes: ports 0, addresses as shipped",
			checks: []check{
				{"admin/address/socket_address", map[string]any{"address": "127.0.0.1", "port_value": 0}},
				{"static_resources/listeners/0/address/socket_address", map[string]any{"address": "127.0.0.1", "port_value": 0}},
				{tgAddr + "/socket_address", map[string]any{"address": "127.0.0.1", "port_value": 9191}},
				{upAddr + "/socket_address", map[string]any{"address": "127.0.0.1", "port_value": 8081}},
				{routesPath + "/0/typed_per_filter_config", disabled}, // /healthz, as shipped
				{routesPath + "/1/typed_per_filter_config", nil},
				{authzPath + "/failure_mode_allow", false},
				{hcmPath + "/access_log/0/name", "envoy.access_loggers.stdout"},
				{hcmPath + "/early_header_mutation_extensions", nil},
			},
		},
		{
			name:    "tollgate and upstream on loopback ports",
			changes: Changes{Tollgate: "127.0.0.1:40001", Upstream: "127.0.0.1:40002"},
			checks: []check{
				{tgAddr + "/socket_address", map[string]any{"address": "127.0.0.1", "port_value": 40001}},
				{upAddr + "/socket_address", map[string]any{"address": "127.0.0.1", "port_value": 40002}},
			},
		},
		{
			name:    "tollgate on a unix socket",
			changes: Changes{Tollgate: "unix:///tmp/x/tollgate.sock"},
			checks: []check{
				{tgAddr, map[string]any{"pipe": map[string]any{"path": "/tmp/x/tollgate.sock"}}},
			},
		},
		{
			name:    "ext_authz off on every route",
			changes: Changes{NoAuthz: true},
			checks: []check{
				{routesPath + "/0/typed_per_filter_config", disabled},
				{routesPath + "/1/typed_per_filter_config", disabled},
			},
		},
		{
			name:    "access log to a file, shipped format",
			changes: Changes{AccessLog: "/tmp/x/access.log"},
			checks: []check{
				{hcmPath + "/access_log/0/name", "envoy.access_loggers.file"},
				{hcmPath + "/access_log/0/typed_config/path", "/tmp/x/access.log"},
				{hcmPath + "/access_log/0/typed_config/log_format/json_format/request_id", "%REQ(X-REQUEST-ID)%"},
			},
		},
		{
			name: "routes before the catch-all, filters before ext_authz",
			changes: Changes{
				Routes:             []any{map[string]any{"match": map[string]any{"prefix": "/beta"}, "route": map[string]any{"cluster": "upstream"}}},
				FiltersBeforeAuthz: []any{map[string]any{"name": "test.filter"}},
				FailureModeAllow:   true,
				StripTrusted:       true,
			},
			checks: []check{
				{routesPath + "/0/match", map[string]any{"path": "/healthz"}},
				{routesPath + "/1/match", map[string]any{"prefix": "/beta"}},
				{routesPath + "/2/match", map[string]any{"prefix": "/"}},
				{hcmPath + "/http_filters/0/name", "test.filter"},
				{hcmPath + "/http_filters/1/name", "envoy.filters.http.ext_authz"},
				{hcmPath + "/http_filters/2/name", "envoy.filters.http.router"},
				{authzPath + "/failure_mode_allow", true},
				{authzPath + "/failure_mode_allow_header_add", true},
				{hcmPath + "/early_header_mutation_extensions/0/typed_config/mutations/0/remove_on_match/key_matcher/prefix", "x-tollgate-"},
			},
		},
		{
			name:    "a gRPC cluster speaks HTTP/2",
			changes: Changes{GRPCClusters: map[string]string{"grpc_upstream": "127.0.0.1:40003"}},
			checks: []check{
				{"static_resources/clusters/name=grpc_upstream/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address",
					map[string]any{"address": "127.0.0.1", "port_value": 40003}},
				{"static_resources/clusters/name=grpc_upstream/typed_extension_protocol_options/envoy.extensions.upstreams.http.v3.HttpProtocolOptions/explicit_http_config",
					map[string]any{"http2_protocol_options": map[string]any{}}},
			},
		},
		{
			name:    "an address that is not host:port",
			changes: Changes{Upstream: "localhost"},
			wantErr: "does not have the expected shape",
		},
		{
			name:    "no listeners",
			src:     []byte("admin: {}\nstatic_resources: {listeners: []}\n"),
			wantErr: "listeners is missing or empty",
		},
		{
			name:    "not YAML",
			src:     []byte("admin: ["),
			wantErr: "envoy.yaml:",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := c.src
			if src == nil {
				src = shipped
			}
			cfg, statPrefix, err := Derive(src, c.changes)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("Derive error = %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got, want := statPrefix, "api"; got != want {
				t.Errorf("stat prefix = %q, want %q", got, want)
			}
			var root map[string]any
			if err := yaml.Unmarshal(cfg, &root); err != nil {
				t.Fatalf("derived config is not YAML: %v", err)
			}
			for _, ch := range c.checks {
				got, ok := at(root, ch.path)
				if ch.want == nil {
					if ok {
						t.Errorf("%s = %v, want none", ch.path, got)
					}
					continue
				}
				if !reflect.DeepEqual(got, ch.want) {
					t.Errorf("%s = %#v, want %#v", ch.path, got, ch.want)
				}
			}
		})
	}
}

// at follows path through the tree.
func at(v any, path string) (any, bool) {
	for _, p := range strings.Split(path, "/") {
		switch x := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = x[p]; !ok {
				return nil, false
			}
		case []any:
			if name, ok := strings.CutPrefix(p, "name="); ok {
				v = nil
				for _, e := range x {
					if m, _ := e.(map[string]any); m["name"] == name {
						v = m
					}
				}
				if v == nil {
					return nil, false
				}
				continue
			}
			i, err := strconv.Atoi(p)
			if err != nil || i >= len(x) {
				return nil, false
			}
			v = x[i]
		default:
			return nil, false
		}
	}
	return v, true
}
