package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/identity"
	"github.com/tollgate-authz/tollgate/internal/app"
)

func cmdValidate(ctx context.Context, args []string, std stdio) error {
	fs := newFlags("validate", std.out)
	cfgPath := fs.String("config", "", "the config file")
	connect := fs.Bool("connect", false, "also connect to each Redis the config names (source, quota store) and fail if one does not answer")
	timeout := fs.Duration("timeout", 5*time.Second, "bound on --connect")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireConfig(fs, *cfgPath); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	// Built as serve builds it, without connecting to anything: what
	// validate accepts, serve starts with.
	a, err := app.New(cfg, app.Options{Version: version, Lazy: true})
	if err != nil {
		return err
	}
	defer a.Close()
	connected := ""
	if *connect {
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		if err := a.Connect(ctx); err != nil {
			return err
		}
		connected = ", connected"
	}
	fmt.Fprintf(std.out, "%s: ok (%d plans, %d routes, entitlements: %s%s)\n", *cfgPath,
		len(cfg.Policy.PlanNames()), len(cfg.Policy.Routes()), a.SourceSummary(), connected)
	return nil
}

// headerFlags collects repeated -H 'name: value' flags.
type headerFlags []string

func (h *headerFlags) String() string     { return strings.Join(*h, ", ") }
func (h *headerFlags) Set(v string) error { *h = append(*h, v); return nil }

// kvFlags collects repeated --context key=value flags.
type kvFlags map[string]string

func (m kvFlags) String() string { return fmt.Sprint(map[string]string(m)) }
func (m kvFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q is not key=value", v)
	}
	m[k] = val
	return nil
}

// checkOutput is what `tollgate check` prints.
type checkOutput struct {
	Allowed bool   `json:"allowed"`
	Status  int    `json:"status"`
	Code    string `json:"code"`
	Shadow  bool   `json:"shadow,omitempty"`
	// Error is why the entitlements or quota store gave no answer
	// (entitlements_unavailable): what serve's client never sees.
	Error   string `json:"error,omitempty"`
	Route   string `json:"route,omitempty"`
	Subject string `json:"subject,omitempty"`
	Plan    string `json:"plan,omitempty"`
	// UpstreamHeaders, on an allow, are what Envoy sets on the request it
	// sends upstream, in order; HeadersToRemove what it strips from it.
	UpstreamHeaders []header `json:"upstream_headers,omitempty"`
	HeadersToRemove []string `json:"headers_to_remove,omitempty"`
	// ResponseHeaders are what the client gets: with the denial, or added
	// to the upstream's response on an allow.
	ResponseHeaders []header         `json:"response_headers,omitempty"`
	Body            json.RawMessage  `json:"body,omitempty"`
	Quotas          []app.QuotaState `json:"quotas,omitempty"`
	DynamicMetadata json.RawMessage  `json:"dynamic_metadata,omitempty"`
}

// header is one header as Envoy applies it. Append is set when the value
// is added beside an existing one instead of replacing it.
type header struct {
	Name   string `json:"name"`
	Value  string `json:"value"`
	Append bool   `json:"append,omitempty"`
}

func headersOf(opts []*corev3.HeaderValueOption) []header {
	hs := make([]header, 0, len(opts))
	for _, o := range opts {
		h := header{Name: o.GetHeader().GetKey(), Value: o.GetHeader().GetValue()}
		if v := o.GetHeader().GetRawValue(); len(v) > 0 && h.Value == "" {
			h.Value = string(v)
		}
		switch o.GetAppendAction() {
		case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			h.Append = true
		case corev3.HeaderValueOption_ADD_IF_ABSENT, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
		}
		hs = append(hs, h)
	}
	return hs
}

func cmdCheck(ctx context.Context, args []string, std stdio) error {
	fs := newFlags("check", std.out)
	cfgPath := fs.String("config", "", "the config file")
	method := fs.String("method", "GET", "HTTP method")
	path := fs.String("path", "/", "request path, with query")
	host := fs.String("host", "localhost", "host (:authority)")
	principal := fs.String("principal", "", "mTLS peer principal")
	raw := fs.Bool("raw-headers", false, "send headers in header_map, as Envoy does with encode_raw_headers")
	var hdrs headerFlags
	ctxExt := kvFlags{}
	fs.Var(&hdrs, "H", "request header 'name: value' (repeatable)")
	fs.Var(ctxExt, "context", "context extension key=value (repeatable)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireConfig(fs, *cfgPath); err != nil {
		return err
	}
	headers := map[string]string{":method": strings.ToUpper(*method), ":path": *path, ":authority": *host}
	for _, h := range hdrs {
		k, v, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(k) == "" {
			return fmt.Errorf("%w: check: -H %q is not 'name: value'", errUsage, h)
		}
		k, v = strings.ToLower(strings.TrimSpace(k)), strings.TrimSpace(v)
		if old, dup := headers[k]; dup {
			v = old + "," + v // Envoy joins repeated headers with a comma
		}
		headers[k] = v
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	dry := &app.DryQuotas{}
	// The server's warnings (a source's breaker opening, say) go to stderr.
	log := slog.New(slog.NewTextHandler(std.errOut, &slog.HandlerOptions{Level: slog.LevelWarn}))
	a, err := app.New(cfg, app.Options{Version: version, Logger: log, Lazy: true, WrapQuotas: func(q authz.Quotas) authz.Quotas {
		dry.Store = q
		return dry
	}})
	if err != nil {
		return err
	}
	defer a.Close()
	resp, res := a.Decide(ctx, checkRequest(strings.ToUpper(*method), *path, *host, *principal, headers, ctxExt, *raw))

	out := checkOutput{
		Allowed: res.Allowed, Status: res.Status, Code: res.Code.String(), Shadow: res.Shadow,
		Route: res.Route, Subject: res.Subject, Plan: res.Plan,
	}
	if res.Err != nil {
		out.Error = res.Err.Error()
	}
	if ok := resp.GetOkResponse(); ok != nil {
		out.UpstreamHeaders = headersOf(ok.GetHeaders())
		out.HeadersToRemove = ok.GetHeadersToRemove()
		out.ResponseHeaders = headersOf(ok.GetResponseHeadersToAdd())
	}
	if d := resp.GetDeniedResponse(); d != nil {
		out.ResponseHeaders = headersOf(d.GetHeaders())
		out.Body = json.RawMessage(d.GetBody())
		if !json.Valid(out.Body) { // a gRPC client's denial is one line of text
			out.Body, _ = json.Marshal(d.GetBody())
		}
	}
	out.Quotas = dry.State
	if md := resp.GetDynamicMetadata(); md != nil {
		out.DynamicMetadata, _ = protojson.Marshal(md)
	}
	enc := json.NewEncoder(std.out)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// checkRequest builds a CheckRequest shaped as Envoy sends it.
func checkRequest(method, path, host, principal string, headers, ctxExt map[string]string, raw bool) *authv3.CheckRequest {
	h := &authv3.AttributeContext_HttpRequest{Method: method, Path: path, Host: host, Protocol: "HTTP/1.1", Scheme: "http"}
	if raw {
		h.HeaderMap = &corev3.HeaderMap{}
		for k, v := range headers {
			h.HeaderMap.Headers = append(h.HeaderMap.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
		}
	} else {
		h.Headers = headers
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:            &authv3.AttributeContext_Peer{Principal: principal},
		Request:           &authv3.AttributeContext_Request{Http: h},
		ContextExtensions: ctxExt,
	}}
}

func cmdHashKey(_ context.Context, args []string, std stdio) error {
	stdin, stdout := std.in, std.out
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
		// A key that looks like a flag is hashed with: echo -- -h | tollgate hash-key -
		printHelp(stdout, newFlags("hash-key", stdout).FlagSet)
		return errHelp
	}
	if len(args) != 1 {
		return fmt.Errorf("%w: hash-key: give exactly one KEY, or - to read it from stdin", errUsage)
	}
	key := args[0]
	if key == "-" {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && line == "" {
			return fmt.Errorf("hash-key: reading stdin: %w", err)
		}
		key = strings.TrimRight(line, "\r\n")
	}
	if key == "" {
		return fmt.Errorf("%w: hash-key: the key is empty", errUsage)
	}
	fmt.Fprintln(stdout, identity.HashKey(key))
	return nil
}
