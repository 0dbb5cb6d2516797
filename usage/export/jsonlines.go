package export

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/tollgate-authz/tollgate/usage"
)

// DefaultHTTPName is the HTTP exporter's default name.
const DefaultHTTPName = "http"

// HTTPOptions configure the generic HTTP exporter.
type HTTPOptions struct {
	// URL receives the events. Required; https unless the host is
	// loopback when a Token is set.
	URL string
	// Token, when set, is sent as a Bearer token. Never in an error.
	Token string
	// Name names the exporter in logs and metrics. Default "http".
	Name string
	// HTTPClient carries the requests. Default: a client with a
	// DefaultHTTPTimeout timeout.
	HTTPClient *http.Client
	// Now is the clock that reads an HTTP-date Retry-After.
	Now func() time.Time
}

// Validate checks the options NewHTTP trusts.
func (o HTTPOptions) Validate() error {
	if o.URL == "" {
		return errors.New("http exporter: a URL is required")
	}
	if strings.ContainsAny(o.Token, " \t\r\n") {
		return errors.New("http exporter: the token contains white space")
	}
	return checkURL("http exporter: url", o.URL, o.Token != "")
}

// HTTP exports events to a team's own endpoint: one POST per Export whose
// body is JSON lines (application/x-ndjson), one usage.Event per line. Any
// 2xx is delivery. The receiver de-duplicates by the event's "id": a batch
// is sent again after a timeout or a restart.
//
// Answers are read as for any HTTP API: 429 and 503 with Retry-After wait
// as told; 5xx, 408, 409 and no answer are retried; 401 and 403 (auth),
// 404, 405 and 415 (endpoint) are retried too, as faults of configuration;
// any other 4xx refuses the batch for good, and the batch is split to find
// the events refused, which are dropped (or dead-lettered).
type HTTP struct {
	post *poster
	name string
}

var _ usage.Exporter = (*HTTP)(nil)

// NewHTTP returns an HTTP exporter. It trusts opts: call Validate first.
func NewHTTP(opts HTTPOptions) *HTTP {
	if opts.Name == "" {
		opts.Name = DefaultHTTPName
	}
	return &HTTP{post: newPoster(opts.Name, opts.URL, opts.Token, opts.HTTPClient, opts.Now), name: opts.Name}
}

// Name is HTTPOptions.Name.
func (h *HTTP) Name() string { return h.name }

// Export sends events as one body of JSON lines.
func (h *HTTP) Export(ctx context.Context, events []usage.Event) error {
	if len(events) == 0 {
		return nil
	}
	var o outcome
	var stopped bool
	sendSplit(ctx, events, h.send, &o, &stopped)
	return o.err(len(events))
}

func (h *HTTP) send(ctx context.Context, events []usage.Event) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, e := range events {
		if err := enc.Encode(e); err != nil {
			return &Error{Provider: h.name, Kind: KindRejected, Message: "encoding event " + e.ID, Err: err}
		}
	}
	a, err := h.post.post(ctx, "application/x-ndjson", buf.Bytes())
	if err != nil {
		return err
	}
	if a.status/100 == 2 {
		return nil
	}
	return h.post.refusal(a, problemCode(a.body), problemDetail(a.body))
}
