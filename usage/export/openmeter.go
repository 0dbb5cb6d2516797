package export

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/tollgate-authz/tollgate/usage"
)

// OpenMeter's ingest endpoint and batch content type.
const (
	openMeterEventsPath      = "/api/v1/events"
	cloudEventsBatch         = "application/cloudevents-batch+json"
	DefaultCloudEventsSource = "tollgate"
)

// OpenMeterOptions configure an OpenMeter exporter.
type OpenMeterOptions struct {
	// URL is OpenMeter's root (OpenMeter Cloud, or a self-hosted
	// instance); events go to {URL}/api/v1/events. Required.
	URL string
	// Token is sent as a Bearer token when set (OpenMeter Cloud needs one;
	// a self-hosted instance may not). Never in an error.
	Token string
	// Source is the CloudEvents source. OpenMeter de-duplicates by source
	// and id together, so every replica must use the same one. Default
	// "tollgate".
	Source string
	// Types maps an Event's Meter to the CloudEvent type OpenMeter's meter
	// matches (its eventType); a meter not in the map is sent as is.
	Types map[string]string
	// HTTPClient carries the requests. Default: a client with a
	// DefaultHTTPTimeout timeout.
	HTTPClient *http.Client
	// Now is the clock that reads an HTTP-date Retry-After.
	Now func() time.Time
}

// Validate checks the options NewOpenMeter trusts.
func (o OpenMeterOptions) Validate() error {
	if o.URL == "" {
		return errors.New("openmeter: a URL is required")
	}
	if strings.ContainsAny(o.Token, " \t\r\n") {
		return errors.New("openmeter: the token contains white space")
	}
	return checkURL("openmeter: url", o.URL, o.Token != "")
}

// OpenMeter exports events to OpenMeter's ingest API as a batch of
// CloudEvents 1.0 (application/cloudevents-batch+json), one request per
// Export. OpenMeter answers 204 and de-duplicates by the CloudEvent's
// source and id.
type OpenMeter struct {
	post   *poster
	source string
	types  map[string]string
}

var _ usage.Exporter = (*OpenMeter)(nil)

// NewOpenMeter returns an OpenMeter exporter. It trusts opts: call
// Validate first.
func NewOpenMeter(opts OpenMeterOptions) *OpenMeter {
	if opts.Source == "" {
		opts.Source = DefaultCloudEventsSource
	}
	return &OpenMeter{
		post:   newPoster("openmeter", strings.TrimRight(opts.URL, "/")+openMeterEventsPath, opts.Token, opts.HTTPClient, opts.Now),
		source: opts.Source,
		types:  opts.Types,
	}
}

// Name is "openmeter".
func (m *OpenMeter) Name() string { return "openmeter" }

// Export sends events as one batch. When OpenMeter refuses a batch for
// good (a 400: one event it cannot parse refuses the batch), the batch is
// split to find the events it refuses; the others are delivered.
func (m *OpenMeter) Export(ctx context.Context, events []usage.Event) error {
	if len(events) == 0 {
		return nil
	}
	var o outcome
	var stopped bool
	sendSplit(ctx, events, m.send, &o, &stopped)
	return o.err(len(events))
}

func (m *OpenMeter) send(ctx context.Context, events []usage.Event) error {
	body, err := m.encode(nil, events)
	if err != nil {
		return &Error{Provider: "openmeter", Kind: KindRejected, Message: "encoding the batch", Err: err}
	}
	a, err := m.post.post(ctx, cloudEventsBatch, body)
	if err != nil {
		return err
	}
	if a.status/100 == 2 {
		return nil
	}
	return m.post.refusal(a, problemCode(a.body), problemDetail(a.body))
}

// cloudEvent is one CloudEvents 1.0 event in JSON.
type cloudEvent struct {
	SpecVersion     string    `json:"specversion"`
	ID              string    `json:"id"`
	Source          string    `json:"source"`
	Type            string    `json:"type"`
	Subject         string    `json:"subject"`
	Time            string    `json:"time,omitempty"`
	DataContentType string    `json:"datacontenttype"`
	Data            cloudData `json:"data"`
}

// cloudData is the event's payload: what an OpenMeter meter aggregates
// (valueProperty "$.units") and groups by ("$.route", "$.status", ...).
type cloudData struct {
	Units    int64  `json:"units"`
	Reserved int64  `json:"reserved"`
	Meter    string `json:"meter"`
	Route    string `json:"route"`
	Status   int    `json:"status"`
	Subject  string `json:"subject"` // tollgate's subject; the CloudEvent's is the customer
	Start    string `json:"start,omitempty"`
}

// encode appends events as a JSON array of CloudEvents. Subject is the
// billing customer (tollgate's subject when the event names none); time is
// End in RFC 3339.
func (m *OpenMeter) encode(b []byte, events []usage.Event) ([]byte, error) {
	batch := make([]cloudEvent, len(events))
	for i, e := range events {
		customer := e.Customer
		if customer == "" {
			customer = e.Subject
		}
		typ := e.Meter
		if t, ok := m.types[e.Meter]; ok {
			typ = t
		}
		batch[i] = cloudEvent{
			SpecVersion: "1.0", ID: e.ID, Source: m.source, Type: typ, Subject: customer,
			Time: rfc3339(e.End), DataContentType: "application/json",
			Data: cloudData{Units: e.Units, Reserved: e.Reserved, Meter: e.Meter, Route: e.Route, Status: e.Status, Subject: e.Subject, Start: rfc3339(e.Start)},
		}
	}
	out, err := json.Marshal(batch)
	if err != nil {
		return nil, err
	}
	return append(b, out...), nil
}

func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// problemDetail and problemCode read an RFC 9457 problem (what OpenMeter
// answers), or any JSON with a message.
func problemDetail(body []byte) string {
	var p struct {
		Title   string `json:"title"`
		Detail  string `json:"detail"`
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &p) != nil {
		return ""
	}
	switch {
	case p.Detail != "":
		return p.Detail
	case p.Message != "":
		return p.Message
	}
	return p.Title
}

func problemCode(body []byte) string {
	var p struct {
		Code string `json:"code"`
	}
	if json.Unmarshal(body, &p) != nil {
		return ""
	}
	return p.Code
}
