package deploy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

const (
	rulesFile     = "monitoring/prometheusrule.yaml"
	ruleTestsFile = "monitoring/tests/alerts.test.yaml"
	dashboardFile = "monitoring/grafana-dashboard.json"
)

// The alerts docs/operations.md (Alerts) asks for, and the metrics the
// dashboard must show (issue 16: decisions by code, latency, cache hit
// ratio, source health and breaker, quota store mode, shed Checks, export
// backlog).
var (
	wantAlerts = []string{
		"TollgateEntitlementSourceDown", "TollgateEntitlementSourceUnauthorized", "TollgateServingStale",
		"TollgateQuotaStoreDegraded", "TollgateShedding", "TollgateErrorRatioHigh", "TollgateReloadFailing", "TollgateLogDropping",
		"TollgateUsageExportBacklog", "TollgateUsageEventsDropped",
		"TollgateTopUpNotCredited", "TollgatePaymentsUnreconciled", "TollgatePaymentFacilitatorFailing",
	}
	wantDashboardMetrics = []string{
		"tollgate_checks_total", "tollgate_check_duration_seconds_bucket", "tollgate_entitlement_cache_total",
		"tollgate_entitlement_source_calls_total", "tollgate_entitlement_source_errors_total",
		"tollgate_entitlement_source_breaker_state", "tollgate_quota_store_mode", "tollgate_checks_shed_total",
		"tollgate_usage_outbox_backlog", "tollgate_usage_outbox_oldest_age_seconds", "tollgate_usage_events_exported_total",
		"tollgate_usage_export_failures_total", "tollgate_usage_events_dropped_total",
		"tollgate_payments_total", "tollgate_payment_reconciliations_total",
	}
)

func promRule(t *testing.T) *monitoringv1.PrometheusRule {
	t.Helper()
	docs, err := ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 1 {
		t.Fatalf("%s: %d documents, want one PrometheusRule", rulesFile, len(docs))
	}
	pr, ok := docs[0].Object.(*monitoringv1.PrometheusRule)
	if !ok {
		t.Fatalf("%s: a %s, want a PrometheusRule", rulesFile, docs[0].Kind)
	}
	return pr
}

var promql = parser.NewParser(parser.Options{})

// metricNames parses a PromQL expression and returns the metric names its
// selectors name.
func metricNames(expr string) ([]string, error) {
	e, err := promql.ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == "__name__" && name == "" {
				name = m.Value
			}
		}
		if name != "" && !slices.Contains(names, name) {
			names = append(names, name)
		}
		return nil
	})
	return names, nil
}

// ruleTests is the part of a promtool test file the checks below read.
type ruleTests struct {
	RuleFiles []string `json:"rule_files"`
	Tests     []struct {
		Name          string `json:"name"`
		AlertRuleTest []struct {
			Alertname string `json:"alertname"`
			ExpAlerts []any  `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

// TestPrometheusRule checks the rules without promtool: each expression
// parses, each alert has a severity and says what is wrong, docs/operations.md's
// alerts are all there, and each has a promtool test that sees it fire and
// one that sees it stay quiet.
func TestPrometheusRule(t *testing.T) {
	pr := promRule(t)
	var alerts []string
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a recording rule %q; this file holds alerts only", g.Name, r.Record)
				continue
			}
			alerts = append(alerts, r.Alert)
			if _, err := metricNames(r.Expr.String()); err != nil {
				t.Errorf("%s: %v", r.Alert, err)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: want a summary and a description", r.Alert)
			}
		}
	}
	sorted := slices.Sorted(slices.Values(alerts))
	if want := slices.Sorted(slices.Values(wantAlerts)); !slices.Equal(sorted, want) {
		t.Errorf("alerts %v, want %v", sorted, want)
	}

	data, err := os.ReadFile(ruleTestsFile)
	if err != nil {
		t.Fatal(err)
	}
	var rt ruleTests
	if err := yaml.Unmarshal(data, &rt); err != nil { // promtool's format has more than ruleTests reads
		t.Fatal(err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range rt.Tests {
		for _, a := range tc.AlertRuleTest {
			if !slices.Contains(alerts, a.Alertname) {
				t.Errorf("test %q: alert %q is not in %s", tc.Name, a.Alertname, rulesFile)
			}
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	for _, a := range alerts {
		if !fires[a] || !quiet[a] {
			t.Errorf("%s: want a promtool test where it fires (%v) and one where it does not (%v)", a, fires[a], quiet[a])
		}
	}
}

// promtoolPath finds promtool: $PROMTOOL, then the repository's .tools/bin
// (`make promtool` puts it there), then $PATH.
func promtoolPath() string {
	if p := os.Getenv("PROMTOOL"); p != "" {
		return p
	}
	if p, err := filepath.Abs("../.tools/bin/promtool"); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	p, _ := exec.LookPath("promtool")
	return p
}

// TestPromtool runs `promtool check rules` on the PrometheusRule's groups
// and `promtool test rules` on the unit tests in monitoring/tests/. It is
// skipped when promtool is not installed (`make promtool`).
func TestPromtool(t *testing.T) {
	promtool := promtoolPath()
	if promtool == "" {
		t.Skip("promtool not found: `make promtool` installs it into .tools/bin, or set PROMTOOL")
	}
	dir := t.TempDir()
	rules, err := yaml.Marshal(promRule(t).Spec)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(ruleTestsFile)
	if err != nil {
		t.Fatal(err)
	}
	var rt ruleTests
	if err := yaml.Unmarshal(data, &rt); err != nil {
		t.Fatal(err)
	}
	if len(rt.RuleFiles) != 1 {
		t.Fatalf("%s: rule_files %v, want the one file this test writes", ruleTestsFile, rt.RuleFiles)
	}
	for name, content := range map[string][]byte{rt.RuleFiles[0]: rules, "alerts.test.yaml": data} {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{
		{"check", "rules", "--lint=all", "--lint-fatal", rt.RuleFiles[0]},
		{"test", "rules", "alerts.test.yaml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			continue
		}
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
	}
}

// dashboard is the part of a Grafana dashboard JSON the checks read.
type dashboard struct {
	Title, UID    string
	SchemaVersion int `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name, Type string
			Query      any
		}
	}
	Panels []panel
}

type panel struct {
	ID         int
	Type       string
	Title      string
	Datasource *struct{ Type, UID string }
	GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
	Targets    []struct {
		RefID string `json:"refId"`
		Expr  string
	}
}

// grafanaVars are Grafana's interval variables, replaced by a duration
// before parsing; $namespace and $job sit inside label values and parse as
// they are.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")

func readDashboard(t *testing.T) (dashboard, []string) {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, grafanaVars.Replace(tg.Expr))
		}
	}
	// label_values(METRIC{...}, label) in the variables' queries.
	labelValues := regexp.MustCompile(`^label_values\((.+), *\w+\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(map[string]any)["query"].(string)
		m := labelValues.FindStringSubmatch(q)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(selector, label)", v.Name, q)
			continue
		}
		exprs = append(exprs, m[1])
	}
	return d, exprs
}

// TestGrafanaDashboard checks the dashboard's shape (what Grafana would
// otherwise show as a broken panel) and that it shows what the issue asks.
func TestGrafanaDashboard(t *testing.T) {
	d, exprs := readDashboard(t)
	if d.UID == "" || d.Title == "" || d.SchemaVersion == 0 {
		t.Errorf("uid %q, title %q, schemaVersion %d: want all set", d.UID, d.Title, d.SchemaVersion)
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside Grafana's 24 columns", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: want the ${datasource} variable and at least one query", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if refs[tg.RefID] || tg.RefID == "" {
				t.Errorf("panel %q: refId %q empty or repeated", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
		}
	}
	shown := map[string]bool{}
	for _, e := range exprs {
		names, err := metricNames(e)
		if err != nil {
			t.Errorf("%q: %v", e, err)
		}
		for _, n := range names {
			shown[n] = true
		}
	}
	for _, m := range wantDashboardMetrics {
		if !shown[m] {
			t.Errorf("the dashboard shows no %s", m)
		}
	}
}

// TestMonitoringMetricsExist checks that every metric the dashboard and the
// alerts name is one a running tollgate serves. It starts the built binary
// with the http source (a stand-in billing service answering one key and
// failing every other), a quota, and a metered route with an outbox (for
// the usage export metrics), sends an allowed Check and one whose lookup
// fails, then reads /metrics. client_golang leaves a metric vector
// out of /metrics until it has a series (no HELP or TYPE line either), so
// the Checks are what make the source and quota vectors appear; a name
// still missing after them is reported, never assumed.
func TestMonitoringMetricsExist(t *testing.T) {
	t.Parallel() // each runs its own tollgate; the drain takes seconds
	// Every name the dashboard and the rules use.
	used := map[string][]string{} // name → where
	pr := promRule(t)
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			names, err := metricNames(r.Expr.String())
			if err != nil {
				t.Fatalf("%s: %v", r.Alert, err)
			}
			for _, n := range names {
				used[n] = append(used[n], "alert "+r.Alert)
			}
		}
	}
	_, exprs := readDashboard(t)
	for _, e := range exprs {
		names, err := metricNames(e)
		if err != nil {
			t.Fatalf("dashboard %q: %v", e, err)
		}
		for _, n := range names {
			used[n] = append(used[n], "dashboard")
		}
	}

	goodKey := "good-key"
	sum := sha256.Sum256([]byte(goodKey))
	goodPath := "/v1/entitlements/api-keys/" + hex.EncodeToString(sum[:])
	billing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == goodPath {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"subject": "acme", "plan": "pro", "status": "active"}`)
			return
		}
		http.Error(w, "down", http.StatusInternalServerError)
	}))
	defer billing.Close()

	grpcAddr, adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	dir := t.TempDir()
	// Generous timeouts: a busy machine must not turn the allowed Check's
	// lookup into a timeout.
	config := fmt.Sprintf(`server:
  grpc_address: %s
  admin_address: %s
  envoy_timeout: 1m
  drain_timeout: 1s
log:
  allow_sample_rate: 0
identity:
  - api_key: {header: x-api-key}
entitlements:
  source: http
  http:
    url: %s
    timeout: 30s
  cache:
    timeout: 30s
plans:
  pro:
    features: [search]
    quotas:
      requests: {limit: 100, period: day}
routes:
  - name: search
    match: {method: GET, path: {prefix: /v1/search}}
    feature: search
    quota: requests
    meter: {event: searches}
  - name: paid
    match: {method: GET, path: {prefix: /v1/paid}}
    price: "0.001"
payments:
  x402:
    network: eip155:84532
    asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
    asset_name: USDC
    asset_version: "2"
    decimals: 6
    pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
    facilitator: {url: "http://127.0.0.1:1"}
metering:
  key_env: TOLLGATE_MONITORING_METER_KEY
  outbox: {path: %s}
`, grpcAddr, adminAddr, billing.URL, filepath.Join(dir, "usage.db"))
	path := filepath.Join(dir, "tollgate.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := startTollgate(t, []string{"serve", "--config", path}, adminAddr,
		"TOLLGATE_MONITORING_METER_KEY=monitoring-test-signing-key-0123456789")
	conn := dial(t, grpcAddr)
	for _, c := range []struct {
		key  string
		want int
	}{
		{goodKey, http.StatusOK},                       // a source call, a quota spend
		{"unknown-key", http.StatusServiceUnavailable}, // a failed source call, nothing cached
	} {
		if got := check(t, conn, "GET", "/v1/search", map[string]string{"x-api-key": c.key}); got != c.want {
			t.Fatalf("Check with %s: %d, want %d\n%s", c.key, got, c.want, srv.log())
		}
	}

	served := map[string]bool{}
	for _, line := range strings.Split(string(scrape(t, "http://"+adminAddr+"/metrics")), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		served[line[:strings.IndexAny(line, "{ ")]] = true
	}
	srv.stop(t)

	var names []string
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if !served[n] {
			t.Errorf("%s (used by %s) is not in tollgate's /metrics", n, strings.Join(slices.Compact(used[n]), ", "))
		}
	}
	t.Logf("checked %d metric names against /metrics", len(names))
}
