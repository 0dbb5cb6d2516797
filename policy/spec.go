package policy

import (
	"fmt"
	"time"

	yaml "go.yaml.in/yaml/v3"
)

// Spec is the policy part of the config file.
type Spec struct {
	Plans   Plans       `yaml:"plans"`
	Routes  []RouteSpec `yaml:"routes"`
	Default string      `yaml:"default"` // deny (the default), authenticated, or allow
	Billing BillingSpec `yaml:"billing"`
}

// BillingSpec says how subscription states are enforced.
type BillingSpec struct {
	// PastDueGrace lets a past_due subject keep access for this long after
	// past_due_since. 0 denies at once.
	PastDueGrace time.Duration `yaml:"past_due_grace"`
	// EnforcePeriodEnd treats a record whose period_end has passed as expired
	// (subscription_inactive). Off by default: a source that is late to record
	// a renewal must not lock out a paying customer.
	EnforcePeriodEnd bool `yaml:"enforce_period_end"`
	// UpgradeURL is where a refused caller can buy more; plans may override it.
	UpgradeURL string `yaml:"upgrade_url"`
}

// PlanSpec is one plan.
type PlanSpec struct {
	Name       string               `yaml:"-"`
	Features   []string             `yaml:"features"`
	Quotas     map[string]QuotaSpec `yaml:"quotas"`
	UpgradeURL string               `yaml:"upgrade_url"`
}

// QuotaSpec declares an allowance (month, day, hour) or a rate limit
// (minute, second).
type QuotaSpec struct {
	Limit  int64  `yaml:"limit"`
	Period string `yaml:"period"` // month, day, hour, minute, second
	// Align is "calendar" (default: UTC calendar months) or "billing":
	// months start at the subject's period_start.
	Align string `yaml:"align"`
	// Scope is "route" (default: spent by routes that name it) or "all":
	// every non-public route spends one unit, as for a plan-wide rate limit.
	Scope string `yaml:"scope"`
	// OnStoreError is "closed" (default: 503 entitlements_unavailable while
	// the shared store is down) or "open" (count locally on each replica).
	OnStoreError string `yaml:"on_store_error"`
}

// Plans keeps plans in the order they are written, so that
// plans_with_feature lists them cheapest first when the file does.
type Plans []PlanSpec

// UnmarshalYAML reads a mapping of plan name to plan.
func (p *Plans) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: plans must be a mapping of plan name to plan", n.Line)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		var ps PlanSpec
		if err := decodeStrict(n.Content[i+1], &ps); err != nil {
			return err
		}
		ps.Name = n.Content[i].Value
		*p = append(*p, ps)
	}
	return nil
}

// decodeStrict decodes a node rejecting unknown fields, which Node.Decode
// alone does not do.
func decodeStrict(n *yaml.Node, v any) error {
	b, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	// Re-encoding loses line numbers; report the node's own line instead.
	dec := yaml.NewDecoder(bytesReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if te, ok := err.(*yaml.TypeError); ok {
			return fmt.Errorf("line %d: %s", n.Line, stripLine(te.Errors[0]))
		}
		return fmt.Errorf("line %d: %v", n.Line, err)
	}
	return nil
}

// RouteSpec is one route.
type RouteSpec struct {
	Name    string    `yaml:"name"`
	Match   MatchSpec `yaml:"match"`
	Public  bool      `yaml:"public"`
	Feature string    `yaml:"feature"`
	// Quota is the quota this route spends, or "credits" for the subject's
	// prepaid balance.
	Quota string `yaml:"quota"`
	// Cost is what one request spends; default 1.
	Cost *int64 `yaml:"cost"`
	// CostFrom reads the cost from the request instead, falling back to Cost
	// when absent, negative or not an integer. An integer too large for
	// int64 is the largest cost, and so refused.
	CostFrom CostFromSpec `yaml:"cost_from"`
	// MaxCost, when set (≥ 1), is the most one request may cost: a request
	// that costs more is refused with cost_too_large, before any counter is
	// touched. Whatever it is, a cost above the whole limit of the quota it
	// spends is refused the same way.
	MaxCost *int64 `yaml:"max_cost"`
	// Meter settles the request's actual use when the response ends and
	// reports it to billing.
	Meter *MeterSpec `yaml:"meter"`
	// Price makes the route payable per call by machine payment (x402): a
	// decimal amount of the payments asset, such as "0.001" (USDC). A
	// request that pays it is allowed with or without credentials; one
	// refused for want of credentials, quota, credits or plan is offered
	// to pay it. Needs the payments block.
	Price string `yaml:"price"`
}

// CostFromSpec names where a request's cost comes from. Set one field.
// A header can be sent by anyone: use one that a hop in front of tollgate
// (an estimator, a Lua filter) sets and overwrites.
type CostFromSpec struct {
	Header           string `yaml:"header"`
	ContextExtension string `yaml:"context_extension"`
	// Body is a member of the request's JSON body, such as max_tokens
	// (an LLM request's upper bound on its cost). Envoy must send the body
	// (ext_authz with_request_body); a body without it, or not JSON, or
	// cut short by max_request_bytes, costs the route's cost.
	Body string `yaml:"body"`
}

// MatchSpec says which requests a route covers. Every field set must match.
type MatchSpec struct {
	// Host is an exact host or "*.example.com"; the port is ignored.
	Host string `yaml:"host"`
	// Method is one method or a list; empty matches any.
	Method StringList `yaml:"method"`
	Path   PathSpec   `yaml:"path"`
	// ContextExtensions must all be present with these values in the Check's
	// context_extensions (set per route in Envoy's config).
	ContextExtensions map[string]string `yaml:"context_extensions"`
}

// PathSpec sets one of Exact, Prefix or Pattern; none matches any path.
// The query string is ignored.
type PathSpec struct {
	Exact  string `yaml:"exact"`
	Prefix string `yaml:"prefix"`
	// Pattern matches segment by segment: "{name}" or "*" is one segment,
	// a final "{name...}" or "**" is the rest, anything else is literal.
	Pattern string `yaml:"pattern"`
}

// StringList accepts a scalar or a sequence.
type StringList []string

// UnmarshalYAML implements yaml.Unmarshaler.
func (s *StringList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*s = StringList{n.Value}
		return nil
	}
	var l []string
	if err := n.Decode(&l); err != nil {
		return err
	}
	*s = l
	return nil
}
