package envoytest

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v3"
)

// Changes say how a test Envoy differs from the repo's envoy.yaml. Whatever
// they do not name stays as shipped: the access log format, path
// normalisation, the ext_authz settings. The ports always become 0.
type Changes struct {
	// Tollgate is the ext_authz server: host:port, or unix:///path for a
	// pipe address. "" keeps the shipped address.
	Tollgate string
	// Upstream is the API behind Envoy, host:port. "" keeps the shipped one.
	Upstream string
	// NoAuthz turns ext_authz off on every route, as envoy.yaml does for
	// /healthz: the same Envoy without tollgate, for comparison.
	NoAuthz bool
	// AccessLog, when set, writes the access log to this file, in the
	// shipped format, instead of to stdout.
	AccessLog string
	// FailureModeAllow sets failure_mode_allow and failure_mode_allow_header_add.
	FailureModeAllow bool
	// StripTrusted adds the early header mutation from docs/envoy.md that
	// drops client-sent x-tollgate-* before any filter runs.
	StripTrusted bool
	// Routes go before the shipped catch-all route, which stays last.
	Routes []any
	// FiltersBeforeAuthz go into the HTTP filter chain just before ext_authz.
	FiltersBeforeAuthz []any
	// GRPCClusters adds a cluster per name at host:port, speaking HTTP/2
	// as the shipped tollgate cluster does: for gRPC APIs behind Envoy.
	GRPCClusters map[string]string
}

// Derive renders envoyYAML (the repo's envoy.yaml) with the changes in c. It
// also returns the HTTP connection manager's stat_prefix, under which Envoy
// counts ext_authz decisions (http.<prefix>.ext_authz.ok, ...).
func Derive(envoyYAML []byte, c Changes) (cfg []byte, statPrefix string, err error) {
	var root map[string]any
	if err := yaml.Unmarshal(envoyYAML, &root); err != nil {
		return nil, "", fmt.Errorf("envoy.yaml: %w", err)
	}
	// The tree helpers panic on an unexpected shape: one recover here
	// instead of a check at every step.
	defer func() {
		if r := recover(); r != nil {
			cfg, statPrefix, err = nil, "", fmt.Errorf("envoy.yaml does not have the expected shape: %v", r)
		}
	}()

	// Ports: 0 everywhere; Start reads the admin address from a file and
	// the listener's port from the admin API.
	mapAt(root, "admin", "address", "socket_address")["port_value"] = 0
	sr := mapAt(root, "static_resources")
	listener := listAt(sr, "listeners")[0].(map[string]any)
	mapAt(listener, "address", "socket_address")["port_value"] = 0

	hcm := mapAt(findNamed(listAt(listAt(listener, "filter_chains")[0].(map[string]any), "filters"),
		"envoy.filters.network.http_connection_manager"), "typed_config")
	statPrefix = hcm["stat_prefix"].(string)
	if c.StripTrusted {
		hcm["early_header_mutation_extensions"] = []any{map[string]any{
			"name": "envoy.http.early_header_mutation.header_mutation",
			"typed_config": map[string]any{
				"@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
				"mutations": []any{map[string]any{
					"remove_on_match": map[string]any{"key_matcher": map[string]any{"prefix": "x-tollgate-"}},
				}},
			},
		}}
	}

	if c.AccessLog != "" {
		al := listAt(hcm, "access_log")[0].(map[string]any)
		alc := mapAt(al, "typed_config")
		al["name"] = "envoy.access_loggers.file"
		al["typed_config"] = map[string]any{
			"@type":      "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
			"path":       c.AccessLog,
			"log_format": alc["log_format"],
		}
	}

	vh := listAt(mapAt(hcm, "route_config"), "virtual_hosts")[0].(map[string]any)
	routes := listAt(vh, "routes")
	if len(c.Routes) > 0 {
		n := len(routes)
		routes = append(append(append([]any{}, routes[:n-1]...), c.Routes...), routes[n-1])
		vh["routes"] = routes
	}
	if c.NoAuthz {
		for _, r := range routes {
			r.(map[string]any)["typed_per_filter_config"] = map[string]any{
				"envoy.filters.http.ext_authz": map[string]any{
					"@type":    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
					"disabled": true,
				},
			}
		}
	}

	filters := listAt(hcm, "http_filters")
	extAuthz := mapAt(findNamed(filters, "envoy.filters.http.ext_authz"), "typed_config")
	if c.FailureModeAllow {
		extAuthz["failure_mode_allow"] = true
		extAuthz["failure_mode_allow_header_add"] = true
	}
	if len(c.FiltersBeforeAuthz) > 0 {
		var out []any
		for _, f := range filters {
			if f.(map[string]any)["name"] == "envoy.filters.http.ext_authz" {
				out = append(out, c.FiltersBeforeAuthz...)
			}
			out = append(out, f)
		}
		hcm["http_filters"] = out
	}

	clusters := listAt(sr, "clusters")
	tgCluster := findNamed(clusters, "tollgate")
	if c.Tollgate != "" {
		addr := mapAt(endpoint(tgCluster), "address")
		if path, ok := strings.CutPrefix(c.Tollgate, "unix://"); ok {
			delete(addr, "socket_address")
			addr["pipe"] = map[string]any{"path": path}
		} else {
			setSocket(mapAt(addr, "socket_address"), c.Tollgate)
		}
	}
	if c.Upstream != "" {
		setSocket(mapAt(endpoint(findNamed(clusters, "upstream")), "address", "socket_address"), c.Upstream)
	}
	names := make([]string, 0, len(c.GRPCClusters))
	for name := range c.GRPCClusters {
		names = append(names, name)
	}
	slices.Sort(names) // the same config from the same changes
	for _, name := range names {
		host, port := splitHostPort(c.GRPCClusters[name])
		clusters = append(clusters, map[string]any{
			"name":                             name,
			"type":                             "STATIC",
			"connect_timeout":                  "1s",
			"typed_extension_protocol_options": tgCluster["typed_extension_protocol_options"], // HTTP/2
			"load_assignment": map[string]any{"cluster_name": name, "endpoints": []any{map[string]any{
				"lb_endpoints": []any{map[string]any{"endpoint": map[string]any{"address": map[string]any{
					"socket_address": map[string]any{"address": host, "port_value": port},
				}}}},
			}}},
		})
		sr["clusters"] = clusters
	}

	cfg, err = yaml.Marshal(root)
	return cfg, statPrefix, err
}

// endpoint is a cluster's first endpoint.
func endpoint(cluster map[string]any) map[string]any {
	ep := listAt(listAt(mapAt(cluster, "load_assignment"), "endpoints")[0].(map[string]any), "lb_endpoints")[0].(map[string]any)
	return mapAt(ep, "endpoint")
}

// YAML tree helpers. They panic on an unexpected shape; Derive recovers.

// mapAt walks path from m, making any mapping that is missing.
func mapAt(m map[string]any, path ...string) map[string]any {
	cur := m
	for _, k := range path {
		next, ok := cur[k].(map[string]any)
		if !ok {
			if cur[k] != nil {
				panic(fmt.Sprintf("%s is %T, not a mapping", k, cur[k]))
			}
			next = map[string]any{}
			cur[k] = next
		}
		cur = next
	}
	return cur
}

func listAt(m map[string]any, key string) []any {
	l, ok := m[key].([]any)
	if !ok || len(l) == 0 {
		panic(fmt.Sprintf("%s is missing or empty", key))
	}
	return l
}

func findNamed(l []any, name string) map[string]any {
	for _, x := range l {
		if m, ok := x.(map[string]any); ok && m["name"] == name {
			return m
		}
	}
	panic(fmt.Sprintf("nothing named %s", name))
}

func setSocket(sa map[string]any, hostport string) {
	host, port := splitHostPort(hostport)
	sa["address"], sa["port_value"] = host, port
}

func splitHostPort(hp string) (string, int) {
	host, p, err := net.SplitHostPort(hp)
	if err != nil {
		panic(err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		panic(err)
	}
	return host, port
}
