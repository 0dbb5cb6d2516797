package config

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/tollgate-authz/tollgate/internal/envvar"
)

// Tracing sends OpenTelemetry traces of the Checks to a collector over
// OTLP. Off by default; when off it costs the Check nothing.
type Tracing struct {
	Enabled bool `yaml:"enabled"`
	// Endpoint is the collector's URL: http://host:4317 for grpc (the
	// default), http://host:4318 for http, where /v1/traces is added when
	// the URL has no path. An https URL uses TLS, with the system's roots.
	Endpoint string `yaml:"endpoint"`
	// Protocol is "grpc" (OTLP over gRPC, the default) or "http" (OTLP
	// over HTTP with protobuf bodies).
	Protocol string `yaml:"protocol"`
	// SampleRatio is the share of Checks traced when the request carries
	// no trace context; a Check whose parent (Envoy's span, or the
	// client's) says sampled or not sampled follows it. nil means 1.
	SampleRatio *float64 `yaml:"sample_ratio"`
	// ServiceName is the service.name of the spans. Default "tollgate".
	ServiceName string `yaml:"service_name"`
	// HeadersEnv names a variable holding headers sent with every export,
	// as name=value pairs separated by commas (the form of
	// OTEL_EXPORTER_OTLP_HEADERS), for a collector that wants a token.
	HeadersEnv string `yaml:"headers_env"`
	// Timeout bounds one export. Default 10s.
	Timeout time.Duration `yaml:"timeout"`
	// MaxQueue bounds the spans waiting for export. When the collector is
	// slower than the Checks, spans past it are dropped and counted in
	// tollgate_trace_spans_dropped_total; a Check never waits. Default 2048.
	MaxQueue int `yaml:"max_queue"`
}

// Tracing defaults.
const (
	DefaultTracingServiceName = "tollgate"
	DefaultTracingTimeout     = 10 * time.Second
	DefaultTracingMaxQueue    = 2048
)

func (c *Config) tracingDefaults() {
	t := &c.Tracing
	if t.Protocol == "" {
		t.Protocol = "grpc"
	}
	if t.Endpoint == "" {
		switch t.Protocol {
		case "grpc":
			t.Endpoint = "http://127.0.0.1:4317"
		case "http":
			t.Endpoint = "http://127.0.0.1:4318"
		}
	}
	if t.SampleRatio == nil {
		r := 1.0
		t.SampleRatio = &r
	}
	if t.ServiceName == "" {
		t.ServiceName = DefaultTracingServiceName
	}
	if t.Timeout == 0 {
		t.Timeout = DefaultTracingTimeout
	}
	if t.MaxQueue == 0 {
		t.MaxQueue = DefaultTracingMaxQueue
	}
}

// checkTracing checks the tracing block, enabled or not: a block written
// wrong is reported before the day it is turned on.
func (c *Config) checkTracing(fail func(path, msg string, args ...any)) {
	t := &c.Tracing
	switch t.Protocol {
	case "grpc", "http":
		if !strings.Contains(t.Endpoint, "://") {
			fail("tracing.endpoint", "%q is not a URL: write http://HOST:PORT (https:// for TLS)", Redact(t.Endpoint))
		} else if err := checkHTTPURL(t.Endpoint); err != nil {
			fail("tracing.endpoint", "%v", err)
		} else if u, _ := url.Parse(t.Endpoint); t.Protocol == "grpc" && strings.Trim(u.Path, "/") != "" {
			fail("tracing.endpoint", "%q has a path: a gRPC endpoint is scheme://host:port", Redact(t.Endpoint))
		}
	default:
		fail("tracing.protocol", "%q is not grpc or http", t.Protocol)
	}
	if r := *t.SampleRatio; !(r >= 0 && r <= 1) {
		fail("tracing.sample_ratio", "%v is not between 0 and 1", r)
	}
	if t.Timeout < 0 {
		fail("tracing.timeout", "must not be negative")
	}
	if t.MaxQueue < 0 {
		fail("tracing.max_queue", "must not be negative")
	}
	if t.HeadersEnv != "" {
		if v, err := envvar.Lookup(t.HeadersEnv); err != nil {
			fail("tracing.headers_env", "%v", err)
		} else if _, err := TracingHeaders(v); err != nil {
			fail("tracing.headers_env", "$%s: %v", t.HeadersEnv, err)
		}
	}
}

// TracingHeaders parses headers written as name=value pairs separated by
// commas, each name and value percent-decoded (the form of
// OTEL_EXPORTER_OTLP_HEADERS). Its errors name the pair by position and
// never quote a value: values are tokens.
func TracingHeaders(s string) (map[string]string, error) {
	h := map[string]string{}
	for i, pair := range strings.Split(s, ",") {
		name, value, ok := strings.Cut(pair, "=")
		name = strings.TrimSpace(name)
		n, err := url.PathUnescape(name)
		if !ok || n == "" || err != nil || strings.ContainsAny(n, " :\t\r\n") {
			return nil, fmt.Errorf("pair %d is not name=value", i+1)
		}
		v, err := url.PathUnescape(strings.TrimSpace(value))
		if err != nil || strings.ContainsAny(v, "\r\n") {
			return nil, fmt.Errorf("pair %d (%s): the value is not percent-encoded text", i+1, n)
		}
		h[strings.ToLower(n)] = v
	}
	return h, nil
}
