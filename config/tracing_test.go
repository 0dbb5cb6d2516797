package config

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestTracingDefaults(t *testing.T) {
	c := Default()
	got := c.Tracing
	if got.Enabled || got.Protocol != "grpc" || got.Endpoint != "http://127.0.0.1:4317" || *got.SampleRatio != 1 ||
		got.ServiceName != "tollgate" || got.Timeout != 10*time.Second || got.MaxQueue != 2048 {
		t.Errorf("defaults = %+v (ratio %v)", got, *got.SampleRatio)
	}
	h, err := Parse("t.yaml", []byte("entitlements: {file: {path: e.yaml}}\ntracing: {protocol: http, sample_ratio: 0}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := h.Tracing.Endpoint, "http://127.0.0.1:4318"; got != want {
		t.Errorf("http endpoint = %q, want %q", got, want)
	}
	if got := *h.Tracing.SampleRatio; got != 0 {
		t.Errorf("sample_ratio 0 became %v", got)
	}
}

func TestTracingChecked(t *testing.T) {
	t.Setenv("TOLLGATE_TEST_OTLP_HEADERS", "authorization=Bearer%20s3cret-token,x-scope=team-a")
	t.Setenv("TOLLGATE_TEST_OTLP_BAD", "authorization")
	t.Setenv("TOLLGATE_TEST_OTLP_BAD_VALUE", "authorization=%zzs3cret-token")
	base := "entitlements: {file: {path: e.yaml}}\n"
	tests := []struct {
		name string
		doc  string
		want string // "" means valid
	}{
		{"valid grpc", "tracing: {enabled: true, endpoint: 'http://otel:4317', sample_ratio: 0.5}\n", ""},
		{"valid http with path", "tracing: {enabled: true, protocol: http, endpoint: 'https://otel.example.com/otlp/v1/traces'}\n", ""},
		{"valid headers", "tracing: {enabled: true, headers_env: TOLLGATE_TEST_OTLP_HEADERS}\n", ""},
		{"checked when off", "tracing: {endpoint: 'otel:4317'}\n", `t.yaml:2: tracing.endpoint: "otel:4317" is not a URL: write http://HOST:PORT`},
		{"grpc path", "tracing: {endpoint: 'http://otel:4317/v1/traces'}\n", "tracing.endpoint: \"http://otel:4317/v1/traces\" has a path"},
		{"userinfo", "tracing: {endpoint: 'http://user:hunter2@otel:4317'}\n", "tracing.endpoint: \"http://xxxxx@otel:4317\" has credentials in it"},
		{"protocol", "tracing: {protocol: zipkin}\n", `tracing.protocol: "zipkin" is not grpc or http`},
		{"ratio", "tracing: {sample_ratio: 1.5}\n", "tracing.sample_ratio: 1.5 is not between 0 and 1"},
		{"negative ratio", "tracing: {sample_ratio: -0.1}\n", "tracing.sample_ratio: -0.1 is not between 0 and 1"},
		{"timeout", "tracing: {timeout: -1s}\n", "tracing.timeout: must not be negative"},
		{"queue", "tracing: {max_queue: -1}\n", "tracing.max_queue: must not be negative"},
		{"unset headers", "tracing: {headers_env: TOLLGATE_TEST_OTLP_NONE}\n", "tracing.headers_env: environment variable TOLLGATE_TEST_OTLP_NONE is unset or empty"},
		{"bad headers", "tracing: {headers_env: TOLLGATE_TEST_OTLP_BAD}\n", "tracing.headers_env: $TOLLGATE_TEST_OTLP_BAD: pair 1 is not name=value"},
		{"bad header value", "tracing: {headers_env: TOLLGATE_TEST_OTLP_BAD_VALUE}\n", "pair 1 (authorization): the value is not percent-encoded text"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("t.yaml", []byte(base+tt.doc))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("err = %v, want none", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			for _, secret := range []string{"hunter2", "s3cret"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q holds a secret", err)
				}
			}
		})
	}
}

func TestTracingHeaders(t *testing.T) {
	got, err := TracingHeaders("Authorization=Bearer%20abc, x-team = a%2Cb")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["authorization"] != "Bearer abc" || got["x-team"] != "a,b" {
		t.Errorf("TracingHeaders = %q", got)
	}
}

// TestTracingDocExample: the tracing block docs/tracing.md shows loads, with
// its commented defaults uncommented too.
func TestTracingDocExample(t *testing.T) {
	doc, err := os.ReadFile("../docs/tracing.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```yaml\ntracing:\n")
	block, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("docs/tracing.md has no ```yaml block starting with tracing:")
	}
	t.Setenv("OTEL_COLLECTOR_HEADERS", "api-key=abc")
	for _, uncomment := range []bool{false, true} {
		b := block
		if uncomment {
			lines := strings.Split(b, "\n")
			for i, l := range lines {
				if rest, ok := strings.CutPrefix(l, "  # "); ok {
					lines[i] = "  " + rest
				}
			}
			b = strings.Join(lines, "\n")
		}
		c, err := Parse("t.yaml", []byte("entitlements: {file: {path: e.yaml}}\ntracing:\n"+b))
		if err != nil {
			t.Fatalf("uncommented %v: %v\n%s", uncomment, err, b)
		}
		if !c.Tracing.Enabled || c.Tracing.Endpoint != "http://otel-collector:4317" {
			t.Errorf("uncommented %v: %+v", uncomment, c.Tracing)
		}
	}
}
