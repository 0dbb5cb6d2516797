package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/tollgate-authz/tollgate/authz"
	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/identity"
	"github.com/tollgate-authz/tollgate/quota"
)

func cmdValidate(args []string, stdout io.Writer) error {
	fs := newFlags("validate")
	cfgPath := fs.String("config", "", "config file")
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
	p, err := build(cfg, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		return err
	}
	defer p.close()
	fmt.Fprintf(stdout, "%s: ok (%d plans, %d routes, entitlements: %s)\n", *cfgPath,
		len(cfg.Policy.PlanNames()), len(cfg.Policy.Routes()), p.describe)
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
	Allowed         bool              `json:"allowed"`
	Status          int               `json:"status"`
	Code            string            `json:"code"`
	Shadow          bool              `json:"shadow,omitempty"`
	Route           string            `json:"route,omitempty"`
	Subject         string            `json:"subject,omitempty"`
	Plan            string            `json:"plan,omitempty"`
	Headers         map[string]string `json:"headers,omitempty"`
	HeadersToRemove []string          `json:"headers_to_remove,omitempty"`
	Body            json.RawMessage   `json:"body,omitempty"`
	Quotas          []quotaState      `json:"quotas,omitempty"`
	DynamicMetadata json.RawMessage   `json:"dynamic_metadata,omitempty"`
}

func cmdCheck(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("check")
	cfgPath := fs.String("config", "", "config file")
	method := fs.String("method", "GET", "HTTP method")
	path := fs.String("path", "/", "request path, with query")
	host := fs.String("host", "localhost", "host (:authority)")
	principal := fs.String("principal", "", "mTLS peer principal")
	raw := fs.Bool("raw-headers", false, "send headers in header_map, as Envoy does with encode_raw_headers")
	var hdrs headerFlags
	ctxExt := kvFlags{}
	fs.Var(&hdrs, "H", "header 'name: value' (repeatable)")
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
	store, err := newQuotaStore(cfg, nil, nil)
	if err != nil {
		return err
	}
	defer store.close()
	dry := &dryQuotas{store: store.Quotas}
	p, err := build(cfg, slog.New(slog.DiscardHandler), dry)
	if err != nil {
		return err
	}
	defer p.close()
	resp, res := p.server.Decide(ctx, checkRequest(strings.ToUpper(*method), *path, *host, *principal, headers, ctxExt, *raw))

	out := checkOutput{
		Allowed: res.Allowed, Status: res.Status, Code: res.Code.String(), Shadow: res.Shadow,
		Route: res.Route, Subject: res.Subject, Plan: res.Plan, Headers: map[string]string{},
	}
	var opts []*corev3.HeaderValueOption
	if ok := resp.GetOkResponse(); ok != nil {
		opts = ok.GetHeaders()
		out.HeadersToRemove = ok.GetHeadersToRemove()
	}
	if d := resp.GetDeniedResponse(); d != nil {
		opts = d.GetHeaders()
		out.Body = json.RawMessage(d.GetBody())
		if !json.Valid(out.Body) { // a gRPC client's denial is one line of text
			out.Body, _ = json.Marshal(d.GetBody())
		}
	}
	for _, o := range opts {
		out.Headers[o.GetHeader().GetKey()] = o.GetHeader().GetValue()
	}
	if ok := resp.GetOkResponse(); ok != nil {
		for _, o := range ok.GetResponseHeadersToAdd() {
			out.Headers[o.GetHeader().GetKey()] = o.GetHeader().GetValue()
		}
	}
	out.Quotas = dry.state
	if md := resp.GetDynamicMetadata(); md != nil {
		out.DynamicMetadata, _ = protojson.Marshal(md)
	}
	enc := json.NewEncoder(stdout)
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

func cmdHashKey(args []string, stdin io.Reader, stdout io.Writer) error {
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

// quotaState is one counter as `tollgate check` reports it.
type quotaState struct {
	Key     string `json:"counter"`
	Limit   int64  `json:"limit"`
	Used    int64  `json:"used"`
	Cost    int64  `json:"cost"`
	Fits    bool   `json:"fits"`
	ResetAt string `json:"resets_at"`
}

// dryQuotas answers Spend from the counters' current use and spends nothing,
// so `tollgate check` shows quota state without consuming any.
type dryQuotas struct {
	store authz.Quotas
	state []quotaState
}

func (d *dryQuotas) Spend(ctx context.Context, group string, items []quota.Item, used []int64) (int, error) {
	denied := -1
	pk, _ := d.store.(quota.Peeker)
	for i, it := range items {
		var u int64
		if pk != nil {
			var err error
			if u, err = pk.Peek(ctx, group, it); err != nil {
				return -1, err
			}
		}
		used[i] = u
		// The server spends items naming one counter as one summed cost
		// (saturating), so check that sum, not each item's own cost.
		fits := quota.Fits(u, counterCost(items, it.Key), it.Limit)
		if !fits && denied < 0 {
			denied = i
		}
		d.state = append(d.state, quotaState{
			Key: strings.ReplaceAll(it.Key, "\x00", "/"), Limit: it.Limit, Used: u, Cost: it.Cost, Fits: fits,
			ResetAt: it.Reset.UTC().Format(time.RFC3339),
		})
	}
	return denied, nil
}

// counterCost is the summed cost of the items naming counter key, each
// negative cost counting as 0, saturating at math.MaxInt64: what a store
// spends on that counter for the request.
func counterCost(items []quota.Item, key string) int64 {
	var c int64
	for _, it := range items {
		if it.Key != key {
			continue
		}
		if c += max(it.Cost, 0); c < 0 {
			return math.MaxInt64
		}
	}
	return c
}
