package deploy

import (
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"golang.org/x/mod/modfile"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

const chartDir = "helm/tollgate"

// chartValueSets are the values the chart is tested with: its defaults and
// each file under ci/ (the directory chart-testing reads too).
var chartValueSets = []struct{ name, file string }{
	{"default", ""},
	{"redis", "ci/redis-values.yaml"},
	{"sidecar", "ci/sidecar-values.yaml"},
}

// kubeVersion is the Kubernetes release whose API types the rendered
// objects are decoded into: k8s.io/api v0.N.x in go.mod is Kubernetes 1.N.
// (Helm's own default, from client-go in the build info, is missing from a
// test binary, which would render for Helm's fallback, 1.20.)
func kubeVersion(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	mf, err := modfile.ParseLax("go.mod", data, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range mf.Require {
		var minor, patch int
		if r.Mod.Path == "k8s.io/api" {
			if _, err := fmt.Sscanf(r.Mod.Version, "v0.%d.%d", &minor, &patch); err != nil {
				t.Fatalf("k8s.io/api %s: %v", r.Mod.Version, err)
			}
			return fmt.Sprintf("v1.%d.%d", minor, patch)
		}
	}
	t.Fatal("go.mod requires no k8s.io/api")
	return ""
}

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// chartValues reads a values file of the chart ("" for none) and lays extra
// over it, maps merged key by key, as `-f file --set ...` would.
func chartValues(t *testing.T, file string, extra map[string]any) chartutil.Values {
	t.Helper()
	vals := chartutil.Values{}
	if file != "" {
		v, err := chartutil.ReadValuesFile(filepath.Join(chartDir, file))
		if err != nil {
			t.Fatal(err)
		}
		vals = v
	}
	return mergeValues(vals, extra)
}

func mergeValues(dst, src map[string]any) map[string]any {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				dst[k] = mergeValues(maps.Clone(dm), sm)
				continue
			}
		}
		dst[k] = v
	}
	return dst
}

func renderChart(t *testing.T, file string, extra map[string]any) *Rendered {
	t.Helper()
	r, err := RenderChart(loadChart(t), "tollgate", "tollgate", chartValues(t, file, extra), kubeVersion(t))
	if err != nil {
		t.Fatalf("render with %q: %v", file, err)
	}
	return r
}

// only returns the one object of type T among docs.
func only[T any](t *testing.T, docs []Doc) T {
	t.Helper()
	var found []T
	for _, d := range docs {
		if o, ok := d.Object.(T); ok {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("want exactly one %T, rendered %d", zero, len(found))
	}
	return found[0]
}

func container(t *testing.T, pod corev1.PodSpec, name string) *corev1.Container {
	t.Helper()
	for i := range pod.Containers {
		if pod.Containers[i].Name == name {
			return &pod.Containers[i]
		}
	}
	t.Fatalf("no container %q", name)
	return nil
}

func hardened(c *corev1.Container) bool {
	sc := c.SecurityContext
	return sc != nil && sc.RunAsNonRoot != nil && *sc.RunAsNonRoot && sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem &&
		sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation && sc.Capabilities != nil &&
		len(sc.Capabilities.Drop) == 1 && sc.Capabilities.Drop[0] == "ALL"
}

func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// checkTollgateContainer checks the container against what tollgate takes
// and against the config the ConfigMap gives it: its arguments, the ports
// the config listens on, the probes' paths and port, GOMEMLIMIT, the mount.
func checkTollgateContainer(t *testing.T, pod corev1.PodSpec, cm *corev1.ConfigMap, mode string) {
	t.Helper()
	tg := container(t, pod, "tollgate")
	if got := strings.Join(tg.Args, " "); got != "serve --config /etc/tollgate/tollgate.yaml" {
		t.Errorf("args %q", got)
	}
	if !hardened(tg) {
		t.Error("want runAsNonRoot, readOnlyRootFilesystem, no privilege escalation, drop ALL")
	}
	var mounted string
	for _, m := range tg.VolumeMounts {
		if m.MountPath == "/etc/tollgate" {
			for _, v := range pod.Volumes {
				if v.Name == m.Name && v.ConfigMap != nil {
					mounted = v.ConfigMap.Name
				}
			}
		}
	}
	if mounted != cm.Name {
		t.Errorf("ConfigMap mounted at /etc/tollgate is %q, the chart's is %q", mounted, cm.Name)
	}
	ports := map[string]int32{}
	for _, p := range tg.Ports {
		ports[p.Name] = p.ContainerPort
	}
	var c tollgateConfig
	if err := yaml.Unmarshal([]byte(cm.Data["tollgate.yaml"]), &c); err != nil {
		t.Fatal(err)
	}
	gh, gp := hostPort(t, c.Server.GRPCAddress)
	ah, ap := hostPort(t, c.Server.AdminAddress)
	switch mode {
	case "service":
		if gh != "0.0.0.0" || ports["grpc"] != int32(gp) {
			t.Errorf("grpc_address %s, container port grpc %d: want every interface, on that port", c.Server.GRPCAddress, ports["grpc"])
		}
	case "sidecar":
		if _, listed := ports["grpc"]; gh != "127.0.0.1" || listed {
			t.Errorf("grpc_address %s, container ports %v: want loopback only, and no grpc container port", c.Server.GRPCAddress, ports)
		}
	}
	if ah != "0.0.0.0" || ports["admin"] != int32(ap) {
		t.Errorf("admin_address %s, container port admin %d: want every interface (the kubelet probes the pod IP), on that port", c.Server.AdminAddress, ports["admin"])
	}
	for name, want := range map[string]string{"liveness": "/healthz", "readiness": "/readyz"} {
		p := map[string]*corev1.Probe{"liveness": tg.LivenessProbe, "readiness": tg.ReadinessProbe}[name]
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != want || p.HTTPGet.Port.String() != "admin" {
			t.Errorf("%s probe %+v: want httpGet %s on port admin", name, p, want)
		}
	}
	env := map[string]string{}
	for _, e := range tg.Env {
		env[e.Name] = e.Value
	}
	limit := tg.Resources.Limits.Memory().Value()
	if soft, err := goMemLimit(env["GOMEMLIMIT"]); err != nil || soft > limit*95/100 || soft < limit/2 {
		t.Errorf("GOMEMLIMIT %q (%v): want 50%%–95%% of limits.memory (%d bytes)", env["GOMEMLIMIT"], err, limit)
	}
	stop := dur(t, c.Server.ShutdownDelay) + dur(t, c.Server.DrainTimeout)
	if g := pod.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= stop+time.Second {
		t.Errorf("terminationGracePeriodSeconds must exceed shutdown_delay+drain_timeout (%v)", stop)
	}
}

func TestHelmChart(t *testing.T) {
	cases := []struct {
		name, file string
		mode       string
		kinds      []string // sorted
		image      string
	}{
		{"default", "", "service", []string{"ConfigMap", "Deployment", "PodDisruptionBudget", "Service"}, "tollgate:dev"},
		{"redis", "ci/redis-values.yaml", "service", []string{"ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceMonitor"},
			"registry.example.com/tollgate@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
		{"sidecar", "ci/sidecar-values.yaml", "sidecar", []string{"ConfigMap"}, "tollgate:0.1.0"},
	}
	if len(cases) != len(chartValueSets) {
		t.Fatal("a value set in chartValueSets has no case here")
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := renderChart(t, c.file, nil)
			var kinds []string
			for _, d := range r.Docs {
				kinds = append(kinds, d.Kind)
				if d.Namespace != "" {
					t.Errorf("%s: namespace %q; the release's namespace applies", d, d.Namespace)
				}
			}
			slices.Sort(kinds)
			if !slices.Equal(kinds, c.kinds) {
				t.Fatalf("rendered %v, want %v", kinds, c.kinds)
			}
			cm := only[*corev1.ConfigMap](t, r.Docs)
			// The variables the pod sets from Secrets (a Redis password)
			// get a stand-in value.
			var env []string
			for _, d := range r.Docs {
				if dep, ok := d.Object.(*appsv1.Deployment); ok {
					for _, e := range container(t, dep.Spec.Template.Spec, "tollgate").Env {
						if e.ValueFrom != nil {
							env = append(env, e.Name+"=stand-in")
						}
					}
				}
			}
			if out, err := validate(t, cm.Data, env...); err != nil {
				t.Fatalf("tollgate validate: %v\n%s", err, out)
			}
			if c.mode == "sidecar" {
				if !strings.Contains(r.Notes, `include "tollgate.container" .Subcharts.tollgate`) {
					t.Errorf("NOTES do not say how to add the sidecar:\n%s", r.Notes)
				}
				return
			}

			dep := only[*appsv1.Deployment](t, r.Docs)
			pod := dep.Spec.Template.Spec
			checkTollgateContainer(t, pod, cm, c.mode)
			if got := container(t, pod, "tollgate").Image; got != c.image {
				t.Errorf("image %q, want %q", got, c.image)
			}
			podLabels := dep.Spec.Template.Labels
			if !selects(dep.Spec.Selector.MatchLabels, podLabels) {
				t.Error("the Deployment's selector does not select its pods")
			}

			svc := only[*corev1.Service](t, r.Docs)
			if !selects(svc.Spec.Selector, podLabels) {
				t.Errorf("Service selector %v does not select the pods", svc.Spec.Selector)
			}
			tg := container(t, pod, "tollgate")
			byName := map[string]corev1.ContainerPort{}
			for _, p := range tg.Ports {
				byName[p.Name] = p
			}
			var svcPorts []string
			for _, p := range svc.Spec.Ports {
				svcPorts = append(svcPorts, p.Name)
				cp, ok := byName[p.TargetPort.String()]
				if !ok || cp.ContainerPort != p.Port {
					t.Errorf("Service port %s (%d) → %s: no container port of that name and number", p.Name, p.Port, p.TargetPort.String())
				}
				if p.Name == "grpc" && (p.AppProtocol == nil || *p.AppProtocol != "kubernetes.io/h2c") {
					t.Errorf("Service port grpc: appProtocol %v, want kubernetes.io/h2c (gRPC is HTTP/2)", p.AppProtocol)
				}
			}
			if !slices.Equal(svcPorts, []string{"grpc", "admin"}) {
				t.Errorf("Service ports %v, want grpc and admin", svcPorts)
			}

			pdb := only[*policyv1.PodDisruptionBudget](t, r.Docs)
			if !selects(pdb.Spec.Selector.MatchLabels, podLabels) || pdb.Spec.MaxUnavailable == nil || pdb.Spec.MinAvailable != nil {
				t.Errorf("PodDisruptionBudget %+v: want maxUnavailable, selecting the pods", pdb.Spec)
			}

			for _, d := range r.Docs {
				sm, ok := d.Object.(*monitoringv1.ServiceMonitor)
				if !ok {
					continue
				}
				if !selects(sm.Spec.Selector.MatchLabels, svc.Labels) {
					t.Errorf("ServiceMonitor selector %v does not select the Service (%v)", sm.Spec.Selector.MatchLabels, svc.Labels)
				}
				if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "admin" || sm.Spec.Endpoints[0].Path != "/metrics" {
					t.Errorf("ServiceMonitor endpoints %+v: want /metrics on the Service's admin port", sm.Spec.Endpoints)
				}
				if sm.Labels["release"] != "kube-prometheus-stack" {
					t.Errorf("ServiceMonitor labels %v: serviceMonitor.labels not applied", sm.Labels)
				}
			}
		})
	}
}

// TestHelmLint runs Helm's own linter (`helm lint --strict`) with each
// value set: chart metadata, values against the schema, templates that
// render to YAML, deprecated API versions.
func TestHelmLint(t *testing.T) {
	kv, err := chartutil.ParseKubeVersion(kubeVersion(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, vs := range chartValueSets {
		t.Run(vs.name, func(t *testing.T) {
			l := action.NewLint()
			l.Strict, l.Namespace, l.KubeVersion = true, "tollgate", kv
			res := l.Run([]string{chartDir}, chartValues(t, vs.file, nil))
			for _, err := range res.Errors {
				t.Error(err)
			}
			for _, m := range res.Messages {
				if m.Severity > support.InfoSev {
					t.Errorf("%s", m)
				}
			}
		})
	}
}

// TestHelmChartRefuses proves the checks can fail: each value set must be
// refused by Helm (the schema, the chart's own checks) or by the strict
// decoding of what it rendered.
func TestHelmChartRefuses(t *testing.T) {
	cfg := func(grpc, admin string) string {
		return fmt.Sprintf("server:\n  grpc_address: %s\n  admin_address: %s\n", grpc, admin)
	}
	cases := []struct {
		name    string
		vals    map[string]any
		wantErr string // "" for the control
	}{
		{"control", map[string]any{"replicaCount": 3}, ""},
		{"misspelt value", map[string]any{"replicas": 3}, "replicas"},
		{"misspelt nested value", map[string]any{"serviceMonitor": map[string]any{"enable": true}}, "enable"},
		{"unknown mode", map[string]any{"mode": "daemonset"}, "mode"},
		{"config on another gRPC port", map[string]any{"config": cfg("0.0.0.0:9000", "0.0.0.0:9090")}, "does not listen on ports.grpc"},
		{"config on another admin port", map[string]any{"config": cfg("0.0.0.0:9191", "0.0.0.0:9000")}, "does not listen on ports.admin"},
		{"loopback gRPC for a shared service", map[string]any{"config": cfg("127.0.0.1:9191", "0.0.0.0:9090")}, "loopback only, but mode service"},
		{"loopback admin", map[string]any{"config": cfg("0.0.0.0:9191", "127.0.0.1:9090")}, "the kubelet probes the pod IP"},
		{"config not YAML", map[string]any{"config": "server: [\n"}, "config: not YAML"},
		{"misspelt field in extraEnv", map[string]any{"extraEnv": []any{map[string]any{"name": "X", "valu": "y"}}}, `unknown field "spec.template.spec.containers[0].env[2].valu"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := RenderChart(loadChart(t), "tollgate", "tollgate", chartValues(t, "", c.vals), kubeVersion(t))
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("control refused: %v", err)
			case c.wantErr != "" && err == nil:
				t.Fatalf("rendered; want an error containing %q", c.wantErr)
			case c.wantErr != "" && !strings.Contains(err.Error(), c.wantErr):
				t.Fatalf("error %q does not contain %q", err, c.wantErr)
			}
		})
	}
}

// TestHelmChartRestartChecksum: the pods roll when a part of tollgate.yaml
// that needs a restart changes, and not for what tollgate reloads live.
func TestHelmChartRestartChecksum(t *testing.T) {
	base := string(loadChart(t).Values["config"].(string))
	checksum := func(config string) string {
		t.Helper()
		r := renderChart(t, "", map[string]any{"config": config})
		return only[*appsv1.Deployment](t, r.Docs).Spec.Template.Annotations["checksum/restart"]
	}
	edit := func(old, new string) string {
		t.Helper()
		if !strings.Contains(base, old) {
			t.Fatalf("fixture: %q not in the default config", old)
		}
		return strings.Replace(base, old, new, 1)
	}
	orig := checksum(base)
	if orig == "" {
		t.Fatal("no checksum/restart annotation")
	}
	cases := []struct {
		name, config string
		roll         bool
	}{
		{"same config", base, false},
		{"plans (reloaded live)", edit("features: [search, chat]", "features: [search, chat, export]"), false},
		{"log (reloaded live)", edit("level: info", "level: debug"), false},
		{"server (restart)", edit("drain_timeout: 10s", "drain_timeout: 12s"), true},
		{"entitlements (restart)", edit("ttl: 30s", "ttl: 60s"), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := checksum(c.config) != orig; got != c.roll {
				t.Errorf("pods roll: %v, want %v", got, c.roll)
			}
		})
	}
}

// TestHelmChartSidecarInParentChart renders the chart in sidecar mode as a
// dependency of a stand-in API chart whose Deployment includes the
// tollgate.container and tollgate.volume templates, as values.yaml tells
// users to.
func TestHelmChartSidecarInParentChart(t *testing.T) {
	sub := loadChart(t)
	const tmpl = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: paid-api
spec:
  selector: {matchLabels: {app: paid-api}}
  template:
    metadata: {labels: {app: paid-api}}
    spec:
      terminationGracePeriodSeconds: 30
      containers:
        - name: app
          image: docker.io/hashicorp/http-echo:1.0
        {{- include "tollgate.container" .Subcharts.tollgate | nindent 8 }}
      volumes:
        {{- include "tollgate.volume" .Subcharts.tollgate | nindent 8 }}
`
	parent := &chart.Chart{
		Metadata: &chart.Metadata{
			APIVersion: "v2", Name: "paid-api", Version: "0.1.0",
			Dependencies: []*chart.Dependency{{Name: "tollgate", Version: sub.Metadata.Version, Repository: "file://../tollgate"}},
		},
		Templates: []*chart.File{{Name: "templates/deployment.yaml", Data: []byte(tmpl)}},
		Values:    map[string]any{},
	}
	parent.AddDependency(sub)
	vals := chartutil.Values{"tollgate": map[string]any(chartValues(t, "ci/sidecar-values.yaml", nil))}
	r, err := RenderChart(parent, "paid-api", "paid-api", vals, kubeVersion(t))
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, d := range r.Docs {
		kinds = append(kinds, d.Kind)
	}
	slices.Sort(kinds)
	if !slices.Equal(kinds, []string{"ConfigMap", "Deployment"}) {
		t.Fatalf("rendered %v, want the tollgate ConfigMap and the API's Deployment", kinds)
	}
	cm := only[*corev1.ConfigMap](t, r.Docs)
	dep := only[*appsv1.Deployment](t, r.Docs)
	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 2 || pod.Containers[0].Name != "app" {
		t.Fatalf("containers %d: want app and tollgate", len(pod.Containers))
	}
	checkTollgateContainer(t, pod, cm, "sidecar")
	if got := container(t, pod, "tollgate").Image; got != "tollgate:0.1.0" {
		t.Errorf("image %q: the subchart's values did not apply", got)
	}
}

// TestHelmChartServes runs the real binary the way the rendered pod would:
// the container's arguments, with the ConfigMap's files where the pod
// mounts them, then asks the probes' paths on the admin port and the gRPC
// health service on the gRPC port. Both listeners bind 127.0.0.1 here
// (the config says 0.0.0.0, which tests do not bind), on free ports given
// to the chart as ports.grpc and ports.admin.
func TestHelmChartServes(t *testing.T) {
	t.Parallel() // each runs its own tollgate; the drain takes seconds
	grpcPort, adminPort := freePort(t), freePort(t)
	r := renderChart(t, "", map[string]any{"ports": map[string]any{"grpc": grpcPort, "admin": adminPort}})
	cm := only[*corev1.ConfigMap](t, r.Docs)
	tg := container(t, only[*appsv1.Deployment](t, r.Docs).Spec.Template.Spec, "tollgate")

	dir := t.TempDir()
	for name, content := range cm.Data {
		content = strings.ReplaceAll(content, "0.0.0.0:", "127.0.0.1:")
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var args []string
	for _, a := range tg.Args {
		args = append(args, strings.Replace(a, "/etc/tollgate", dir, 1))
	}
	ports := map[string]int32{}
	for _, p := range tg.Ports {
		ports[p.Name] = p.ContainerPort
	}
	srv := startTollgate(t, args, fmt.Sprintf("127.0.0.1:%d", ports["admin"]))
	for _, p := range []*corev1.Probe{tg.LivenessProbe, tg.ReadinessProbe} {
		url := fmt.Sprintf("http://127.0.0.1:%d%s", ports[p.HTTPGet.Port.String()], p.HTTPGet.Path)
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %d, want 200", url, resp.StatusCode)
		}
	}
	if got := grpcHealth(t, fmt.Sprintf("127.0.0.1:%d", ports["grpc"])); got != "SERVING" {
		t.Errorf("gRPC health on the container's grpc port: %s, want SERVING", got)
	}
	srv.stop(t)
}
