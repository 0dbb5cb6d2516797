package deploy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	egv1alpha1 "github.com/envoyproxy/gateway/api/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// TestEnvoyGatewayWiring checks that the Envoy Gateway example's objects
// agree with each other and with the Helm chart's Service (release
// "tollgate" in namespace "tollgate", as the example's comment installs it).
func TestEnvoyGatewayWiring(t *testing.T) {
	docs := allDocs(t)
	gw := one[*gatewayv1.Gateway](t, docs, "envoy-gateway/")
	route := one[*gatewayv1.HTTPRoute](t, docs, "envoy-gateway/")
	sp := one[*egv1alpha1.SecurityPolicy](t, docs, "envoy-gateway/")
	grant := one[*gatewayv1beta1.ReferenceGrant](t, docs, "envoy-gateway/")

	// The route hangs off the Gateway's listener.
	listeners := map[string]bool{}
	for _, l := range gw.Spec.Listeners {
		listeners[string(l.Name)] = true
	}
	if len(route.Spec.ParentRefs) != 1 {
		t.Fatalf("HTTPRoute parentRefs %d, want 1", len(route.Spec.ParentRefs))
	}
	pr := route.Spec.ParentRefs[0]
	if string(pr.Name) != gw.Name || route.Namespace != gw.Namespace || pr.SectionName == nil || !listeners[string(*pr.SectionName)] {
		t.Errorf("HTTPRoute %s/%s parentRef %s section %s: want the Gateway %s/%s and one of its listeners", route.Namespace, route.Name, pr.Name, deref(pr.SectionName), gw.Namespace, gw.Name)
	}

	// The policy applies to that route (targetRefs are local to its namespace).
	if sp.Namespace != route.Namespace || len(sp.Spec.TargetRefs) != 1 {
		t.Fatalf("SecurityPolicy %s/%s: want one targetRef in the route's namespace %s", sp.Namespace, sp.Name, route.Namespace)
	}
	tr := sp.Spec.TargetRefs[0]
	if tr.Group != gatewayv1.GroupName || tr.Kind != "HTTPRoute" || string(tr.Name) != route.Name {
		t.Errorf("SecurityPolicy targets %s/%s %s, want HTTPRoute %s", tr.Group, tr.Kind, tr.Name, route.Name)
	}

	// Its ext_authz: gRPC, fail closed, 503, a timeout within Envoy's usual
	// 200ms that leaves room for tollgate's source timeout.
	ea := sp.Spec.ExtAuth
	if ea == nil || ea.GRPC == nil || ea.HTTP != nil {
		t.Fatal("SecurityPolicy: want extAuth.grpc, and no extAuth.http")
	}
	if ea.FailOpen == nil || *ea.FailOpen {
		t.Error("extAuth.failOpen: want false, explicitly")
	}
	if ea.StatusOnError == nil || *ea.StatusOnError != 503 {
		t.Errorf("extAuth.statusOnError %v, want 503", ea.StatusOnError)
	}
	if len(ea.HeadersToExtAuth) != 0 {
		t.Errorf("extAuth.headersToExtAuth %v: leave it unset, so tollgate sees every credential header", ea.HeadersToExtAuth)
	}
	if ea.Timeout == nil {
		t.Fatal("extAuth.timeout unset: Envoy Gateway's default is 10s")
	}
	timeout := dur(t, string(*ea.Timeout))
	if timeout > 200*time.Millisecond {
		t.Errorf("extAuth.timeout %v: want at most 200ms", timeout)
	}

	// The backend is the chart's Service, on its gRPC port, and the chart's
	// source timeout fits inside the policy's.
	r := renderChart(t, "", nil)
	var svc *corev1.Service
	for _, d := range r.Docs {
		if s, ok := d.Object.(*corev1.Service); ok {
			svc = s
		}
	}
	if svc == nil {
		t.Fatal("the chart rendered no Service")
	}
	const chartNamespace = "tollgate" // where RenderChart installs it, as the example's comment does
	grpcPort := int32(0)
	for _, p := range svc.Spec.Ports {
		if p.Name == "grpc" {
			grpcPort = p.Port
		}
	}
	refs := ea.GRPC.BackendRefs
	if ea.GRPC.BackendRef != nil || len(refs) != 1 {
		t.Fatalf("extAuth.grpc: want one entry in backendRefs, got %d (and backendRef %v)", len(refs), ea.GRPC.BackendRef)
	}
	br := refs[0].BackendObjectReference
	if (br.Group != nil && *br.Group != "") || (br.Kind != nil && *br.Kind != "Service") {
		t.Errorf("backendRef group %s kind %s: want a core Service", deref(br.Group), deref(br.Kind))
	}
	if string(br.Name) != svc.Name || br.Namespace == nil || string(*br.Namespace) != chartNamespace || br.Port == nil || int32(*br.Port) != grpcPort {
		t.Errorf("backendRef %s/%s:%s, the chart's Service is %s/%s:%d", deref(br.Namespace), br.Name, deref(br.Port), chartNamespace, svc.Name, grpcPort)
	}
	for _, d := range r.Docs {
		if cm, ok := d.Object.(*corev1.ConfigMap); ok {
			c := parseTollgate(t, d)
			if st := dur(t, c.Entitlements.Cache.Timeout); st >= timeout {
				t.Errorf("chart ConfigMap %s: entitlements.cache.timeout %v is not under extAuth.timeout %v", cm.Name, st, timeout)
			}
		}
	}

	// A policy in another namespace than the Service needs a grant there.
	if string(*br.Namespace) != sp.Namespace {
		ok := grant.Namespace == string(*br.Namespace)
		from, to := false, false
		for _, f := range grant.Spec.From {
			from = from || (string(f.Group) == egv1alpha1.GroupName && f.Kind == "SecurityPolicy" && string(f.Namespace) == sp.Namespace)
		}
		for _, g := range grant.Spec.To {
			to = to || (g.Group == "" && g.Kind == "Service" && (g.Name == nil || string(*g.Name) == svc.Name))
		}
		if !ok || !from || !to {
			t.Errorf("ReferenceGrant %s/%s does not let SecurityPolicies in %s refer to Service %s/%s", grant.Namespace, grant.Name, sp.Namespace, *br.Namespace, svc.Name)
		}
	}
}

// deref prints what a pointer points at, or "(unset)".
func deref[T any](p *T) string {
	if p == nil {
		return "(unset)"
	}
	return fmt.Sprint(*p)
}

// TestGatewayDecodeRejects: the Envoy Gateway, Gateway API, PDB and
// prometheus-operator types are decoded as strictly as the others.
func TestGatewayDecodeRejects(t *testing.T) {
	cases := []struct {
		name, doc, wantErr string
	}{
		{"securitypolicy/control", "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: p}\nspec: {extAuth: {grpc: {backendRefs: [{name: tollgate, port: 9191}]}, failOpen: false}}\n", ""},
		{"securitypolicy/misspelt field", "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: p}\nspec: {extAuth: {grpc: {backendRefs: [{name: tollgate, port: 9191}]}, failopen: false}}\n", `unknown field "spec.extAuth.failopen"`},
		{"securitypolicy/http field on grpc", "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: p}\nspec: {extAuth: {grpc: {backendRefs: [{name: tollgate, port: 9191}], path: /x}}}\n", `unknown field "spec.extAuth.grpc.path"`},
		{"httproute/misspelt field", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {parentRef: [{name: g}]}\n", `unknown field "spec.parentRef"`},
		{"gateway/misspelt field", "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {gatewayClass: eg, listeners: []}\n", `unknown field "spec.gatewayClass"`},
		{"referencegrant/v1 is not what Envoy Gateway watches", "apiVersion: gateway.networking.k8s.io/v1\nkind: ReferenceGrant\nmetadata: {name: g}\nspec: {}\n", `unknown kind "ReferenceGrant"`},
		{"pdb/misspelt field", "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: p}\nspec: {maxUnavaliable: 1}\n", `unknown field "spec.maxUnavaliable"`},
		{"servicemonitor/misspelt field", "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {name: s}\nspec: {selector: {}, endpoints: [{port: admin, intervall: 30s}]}\n", `unknown field "spec.endpoints[0].intervall"`},
		{"prometheusrule/misspelt field", "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata: {name: r}\nspec: {groups: [{name: g, rules: [{alert: A, expr: up, fore: 5m}]}]}\n", `unknown field "spec.groups[0].rules[0].fore"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := Decode([]byte(c.doc))
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("control refused: %v", err)
			case c.wantErr != "" && err == nil:
				t.Fatalf("accepted; want an error containing %q", c.wantErr)
			case c.wantErr != "" && !strings.Contains(err.Error(), c.wantErr):
				t.Fatalf("error %q does not contain %q", err, c.wantErr)
			}
		})
	}
}

// TestEnvoyGatewayDocs: the extAuth block the README ("Attach to Envoy
// Gateway") shows decodes strictly and is the example's, so the two cannot
// drift. It is looked for in README.md and docs/*.md, wherever the section
// lives.
func TestEnvoyGatewayDocs(t *testing.T) {
	sp := one[*egv1alpha1.SecurityPolicy](t, allDocs(t), "envoy-gateway/")
	files, _ := filepath.Glob("../docs/*.md")
	files = append([]string{"../README.md"}, files...)
	var found int
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, block := range yamlBlocks(string(data)) {
			if !strings.HasPrefix(block, "extAuth:") {
				continue
			}
			found++
			js, err := yaml.YAMLToJSONStrict([]byte(block))
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			var doc struct {
				ExtAuth egv1alpha1.ExtAuth `json:"extAuth"`
			}
			strictErrs, err := kjson.UnmarshalStrict(js, &doc)
			if err == nil {
				err = errors.Join(strictErrs...)
			}
			if err != nil {
				t.Fatalf("%s: extAuth block: %v", f, err)
			}
			if !reflect.DeepEqual(&doc.ExtAuth, sp.Spec.ExtAuth) {
				t.Errorf("%s: the extAuth block differs from envoy-gateway/paid-api.yaml's:\n%s", f, block)
			}
		}
	}
	if found == 0 {
		t.Error("no ```yaml block starting with extAuth: in README.md or docs/")
	}
}

// yamlBlocks returns the contents of the ```yaml fences in a Markdown text,
// each unindented by its fence's indentation.
func yamlBlocks(md string) []string {
	var blocks []string
	lines := strings.Split(md, "\n")
	for i := 0; i < len(lines); i++ {
		fence := strings.TrimLeft(lines[i], " ")
		if fence != "```yaml" {
			continue
		}
		indent := len(lines[i]) - len(fence)
		var b strings.Builder
		for i++; i < len(lines) && strings.TrimSpace(lines[i]) != "```"; i++ {
			l := lines[i]
			if len(l) >= indent {
				l = l[indent:]
			}
			b.WriteString(l + "\n")
		}
		blocks = append(blocks, b.String())
	}
	return blocks
}
