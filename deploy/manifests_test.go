package deploy

import (
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// tollgateBin is the tollgate binary built from the repo root by TestMain.
var tollgateBin, buildErr = "", error(nil)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tollgate-deploy-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tollgateBin = filepath.Join(dir, "tollgate")
	// deploy/ sits inside the repo: the root module is "..".
	cmd := exec.Command("go", "build", "-o", tollgateBin, ".")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		buildErr = fmt.Errorf("go build of the tollgate binary: %v\n%s", err, out)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// allDocs decodes every document of every YAML file under deploy/.
func allDocs(t *testing.T) []Doc {
	t.Helper()
	var docs []Doc
	err := filepath.WalkDir(".", func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		// Not Kubernetes objects: the chart's sources (templates and values;
		// helm_test.go renders them) and promtool's rule tests.
		if e.IsDir() && (path == "helm" || path == filepath.Join("monitoring", "tests")) {
			return filepath.SkipDir
		}
		if e.IsDir() || !(strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			return nil
		}
		ds, err := ReadFile(path)
		if err != nil {
			t.Error(err)
			return nil
		}
		docs = append(docs, ds...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return docs
}

func TestManifestsDecodeStrictly(t *testing.T) {
	docs := allDocs(t)
	// The chart's objects too, as rendered with each of its value sets.
	for _, vs := range chartValueSets {
		docs = append(docs, renderChart(t, vs.file, nil).Docs...)
	}
	seen := map[string]int{}
	for _, d := range docs {
		seen[d.APIVersion+" "+d.Kind]++
		t.Logf("ok %s", d)
	}
	// Every kind the decoder knows is used at least once, so none of the
	// strict paths is dead.
	for k := range decoders {
		if seen[k] == 0 {
			t.Errorf("no manifest of %s under deploy/ or rendered from the chart", k)
		}
	}
}

// TestDecodeRejects proves the decoding can fail: each broken document must
// be refused, and each good one (the control) accepted.
func TestDecodeRejects(t *testing.T) {
	const deployment = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec:
  %s: 1
  selector: {matchLabels: {app: d}}
  template:
    metadata: {labels: {app: d}}
    spec:
      containers:
        - name: c
          image: i
          ports: [{%s: 80}]
`
	const serviceEntry = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
%s: {name: se}
spec:
  hosts: [tollgate.local]
  %s: ["*"]
  %s: STATIC
  ports: [{number: 9191, name: grpc, protocol: GRPC}]
  endpoints: [{address: 127.0.0.1}]
`
	const mesh = `
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    extensionProviders:
      - name: tollgate
        envoyExtAuthzGrpc:
          service: tollgate.local
          port: 9191
          timeout: 0.2s
          %s
`
	cases := []struct {
		name, doc string
		wantErr   string // "" for a document that must decode
	}{
		{"deployment/control", fmt.Sprintf(deployment, "replicas", "containerPort"), ""},
		{"deployment/misspelt field", fmt.Sprintf(deployment, "replica", "containerPort"), `unknown field "spec.replica"`},
		{"deployment/wrong case", fmt.Sprintf(deployment, "replicas", "containerport"), `unknown field "spec.template.spec.containers[0].ports[0].containerport"`},
		{"service/duplicate key", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {selector: {app: a}, selector: {app: b}}\n", `already set`},
		{"configmap/misspelt data", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndate: {a: b}\n", `unknown field "date"`},
		{"serviceentry/control", fmt.Sprintf(serviceEntry, "metadata", "exportTo", "resolution"), ""},
		{"serviceentry/misspelt spec field", fmt.Sprintf(serviceEntry, "metadata", "exportTo", "resolutions"), `unknown field "resolutions"`},
		{"serviceentry/proto name not JSON name", fmt.Sprintf(serviceEntry, "metadata", "export_to", "resolution"), `lowerCamelCase): export_to`},
		{"serviceentry/misspelt metadata", fmt.Sprintf(serviceEntry, "metdata", "exportTo", "resolution"), `unknown field "metdata"`},
		{"authorizationpolicy/bad enum", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {action: CUSTOMER, provider: {name: tollgate}}\n", `CUSTOMER`},
		{"authorizationpolicy/status not allowed", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {action: CUSTOM, provider: {name: tollgate}}\nstatus: {}\n", `unknown field "status"`},
		{"requestauthentication/misspelt field", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r}\nspec: {jwtRules: [{issuer: i, outputClaimsToHeaders: [{header: x-jwt-sub, claim: sub}]}]}\n", `outputClaimsToHeaders`},
		{"mesh/control", fmt.Sprintf(mesh, "failOpen: false"), ""},
		{"mesh/wrong case", fmt.Sprintf(mesh, "failopen: false"), `failopen`},
		{"mesh/http-only field on the grpc provider", fmt.Sprintf(mesh, "includeRequestHeadersInCheck: [x-api-key]"), `includeRequestHeadersInCheck`},
		{"mesh/unknown data key", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata: {mesh: '{}', meshconfig: '{}'}\n", `data.meshconfig`},
		{"unknown kind", "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {}\n", `unknown kind "Gateway"`},
		{"unknown apiVersion", "apiVersion: apps/v1beta1\nkind: Deployment\nmetadata: {name: d}\n", `unknown kind "Deployment"`},
		{"no kind", "metadata: {name: x}\n", `unknown kind ""`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, ok, err := Decode([]byte(c.doc))
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("control document refused: %v", err)
			case c.wantErr == "" && !ok:
				t.Fatal("control document read as empty")
			case c.wantErr != "" && err == nil:
				t.Fatalf("accepted; want an error containing %q", c.wantErr)
			case c.wantErr != "" && !strings.Contains(err.Error(), c.wantErr):
				t.Fatalf("error %q does not contain %q", err, c.wantErr)
			}
		})
	}
}

// tollgateConfigMaps returns every ConfigMap that carries a tollgate.yaml.
func tollgateConfigMaps(t *testing.T, docs []Doc) []Doc {
	var out []Doc
	for _, d := range docs {
		if cm, ok := d.Object.(*corev1.ConfigMap); ok && cm.Data["tollgate.yaml"] != "" {
			out = append(out, d)
		}
	}
	if len(out) == 0 {
		t.Fatal("no ConfigMap with a tollgate.yaml under deploy/")
	}
	return out
}

// validate writes a ConfigMap's files to a directory, as the kubelet mounts
// them, and runs `tollgate validate` on its tollgate.yaml, with env
// ("NAME=value") added to its environment.
func validate(t *testing.T, data map[string]string, env ...string) (string, error) {
	t.Helper()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	dir := t.TempDir()
	for name, content := range data {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(tollgateBin, "validate", "--config", filepath.Join(dir, "tollgate.yaml"))
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestTollgateConfigsValidate(t *testing.T) {
	cms := tollgateConfigMaps(t, allDocs(t))
	for _, d := range cms {
		t.Run(d.File, func(t *testing.T) {
			out, err := validate(t, d.Object.(*corev1.ConfigMap).Data)
			if err != nil {
				t.Fatalf("tollgate validate: %v\n%s", err, out)
			}
			t.Log(strings.TrimSpace(out))
		})
	}
	// The check can fail: a misspelt key must be refused by the real binary.
	t.Run("misspelt key is refused", func(t *testing.T) {
		data := map[string]string{}
		for k, v := range cms[0].Object.(*corev1.ConfigMap).Data {
			data[k] = v
		}
		if !strings.Contains(data["tollgate.yaml"], "drain_timeout:") {
			t.Fatal("fixture: no drain_timeout in the first tollgate.yaml")
		}
		data["tollgate.yaml"] = strings.Replace(data["tollgate.yaml"], "drain_timeout:", "drain_timout:", 1)
		out, err := validate(t, data)
		if err == nil {
			t.Fatalf("tollgate validate accepted a misspelt key:\n%s", out)
		}
		if !strings.Contains(out, "drain_timout") {
			t.Fatalf("error does not name the field:\n%s", out)
		}
	})
}

// tollgateConfig is the part of tollgate.yaml the manifests depend on.
type tollgateConfig struct {
	Server struct {
		GRPCAddress   string `json:"grpc_address"`
		AdminAddress  string `json:"admin_address"`
		DrainTimeout  string `json:"drain_timeout"`
		ShutdownDelay string `json:"shutdown_delay"`
	} `json:"server"`
	Identity     []any `json:"identity"`
	Entitlements struct {
		Cache struct {
			Timeout string `json:"timeout"`
		} `json:"cache"`
	} `json:"entitlements"`
}

func parseTollgate(t *testing.T, d Doc) tollgateConfig {
	t.Helper()
	var c tollgateConfig
	if err := yaml.Unmarshal([]byte(d.Object.(*corev1.ConfigMap).Data["tollgate.yaml"]), &c); err != nil {
		t.Fatalf("%s: %v", d, err)
	}
	return c
}

func dur(t *testing.T, s string) time.Duration {
	t.Helper()
	v, err := time.ParseDuration(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func hostPort(t *testing.T, addr string) (string, int) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return h, n
}

func one[T any](t *testing.T, docs []Doc, dir string) T {
	t.Helper()
	var found []T
	for _, d := range docs {
		if o, ok := d.Object.(T); ok && strings.HasPrefix(d.File, dir) {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("want exactly one %T under %s, found %d", zero, dir, len(found))
	}
	return found[0]
}

// TestSidecarWiring checks that the pieces agree with each other: the pod,
// both tollgate configs, and the Istio provider, policies and ServiceEntry.
func TestSidecarWiring(t *testing.T) {
	docs := allDocs(t)
	dep := one[*appsv1.Deployment](t, docs, "kubernetes/")
	svc := one[*corev1.Service](t, docs, "kubernetes/")
	pod := dep.Spec.Template.Spec

	var tg *corev1.Container
	for i := range pod.Containers {
		c := &pod.Containers[i]
		if c.Name == "tollgate" {
			tg = c
		}
		sc := c.SecurityContext
		if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil ||
			len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
			t.Errorf("container %s: want runAsNonRoot, readOnlyRootFilesystem, no privilege escalation, drop ALL", c.Name)
		}
		if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() {
			t.Errorf("container %s: want cpu and memory requests and a memory limit", c.Name)
		}
	}
	if tg == nil {
		t.Fatal("no tollgate container")
	}
	if got := strings.Join(tg.Args, " "); got != "serve --config /etc/tollgate/tollgate.yaml" {
		t.Errorf("tollgate args %q", got)
	}
	// GOMEMLIMIT keeps the GC (GOGC=400) from taking the heap past the
	// pod's memory limit: it must sit under it, with headroom.
	env := map[string]string{}
	for _, e := range tg.Env {
		env[e.Name] = e.Value
	}
	limit := tg.Resources.Limits.Memory().Value()
	if soft, err := goMemLimit(env["GOMEMLIMIT"]); err != nil {
		t.Errorf("GOMEMLIMIT %q: %v", env["GOMEMLIMIT"], err)
	} else if soft > limit*95/100 || soft < limit/2 {
		t.Errorf("GOMEMLIMIT %q is %d bytes; want 50%%–95%% of limits.memory (%d bytes)", env["GOMEMLIMIT"], soft, limit)
	}
	var cmName string
	for _, m := range tg.VolumeMounts {
		if m.MountPath == "/etc/tollgate" {
			for _, v := range pod.Volumes {
				if v.Name == m.Name && v.ConfigMap != nil {
					cmName = v.ConfigMap.Name
				}
			}
		}
	}
	if cmName == "" {
		t.Fatal("no ConfigMap mounted at /etc/tollgate")
	}
	adminPort := map[string]int32{}
	for _, p := range tg.Ports {
		adminPort[p.Name] = p.ContainerPort
	}
	for name, probe := range map[string]*corev1.Probe{"liveness": tg.LivenessProbe, "readiness": tg.ReadinessProbe} {
		if probe == nil || probe.HTTPGet == nil {
			t.Errorf("tollgate %s probe: want httpGet", name)
			continue
		}
		want := map[string]string{"liveness": "/healthz", "readiness": "/readyz"}[name]
		if probe.HTTPGet.Path != want || adminPort[probe.HTTPGet.Port.String()] == 0 {
			t.Errorf("tollgate %s probe: %s on port %s, want %s on a named container port", name, probe.HTTPGet.Path, probe.HTTPGet.Port.String(), want)
		}
	}

	// Both tollgate configs (plain and Istio) must fit this pod.
	cms := tollgateConfigMaps(t, docs)
	for _, d := range cms {
		if d.Name != cmName {
			t.Errorf("%s: ConfigMap %q, but the pod mounts %q", d, d.Name, cmName)
		}
		c := parseTollgate(t, d)
		if h, _ := hostPort(t, c.Server.GRPCAddress); h != "127.0.0.1" {
			t.Errorf("%s: grpc_address %s: want loopback only", d, c.Server.GRPCAddress)
		}
		h, p := hostPort(t, c.Server.AdminAddress)
		if h != "0.0.0.0" && h != "" {
			t.Errorf("%s: admin_address %s: the kubelet probes the pod IP, not loopback", d, c.Server.AdminAddress)
		}
		if int32(p) != adminPort["admin"] {
			t.Errorf("%s: admin port %d, container port %d", d, p, adminPort["admin"])
		}
		stop := dur(t, c.Server.ShutdownDelay) + dur(t, c.Server.DrainTimeout)
		if grace := pod.TerminationGracePeriodSeconds; grace == nil || time.Duration(*grace)*time.Second <= stop+time.Second {
			t.Errorf("%s: terminationGracePeriodSeconds must exceed shutdown_delay+drain_timeout (%v)", d, stop)
		}
	}

	// The Service reaches the app's named port.
	for k, v := range svc.Spec.Selector {
		if dep.Spec.Template.Labels[k] != v {
			t.Errorf("Service selector %s=%s does not select the pod", k, v)
		}
	}
	ports := map[string]bool{}
	for _, c := range pod.Containers {
		for _, p := range c.Ports {
			ports[p.Name] = true
		}
	}
	for _, p := range svc.Spec.Ports {
		if !ports[p.TargetPort.String()] {
			t.Errorf("Service port %s: targetPort %s is no container port", p.Name, p.TargetPort.String())
		}
	}

	// Istio: provider ↔ ServiceEntry ↔ tollgate's gRPC address, policies ↔ pod.
	var mesh *Doc
	for i := range docs {
		if docs[i].Mesh != nil {
			mesh = &docs[i]
		}
	}
	if mesh == nil {
		t.Fatal("no Istio mesh ConfigMap")
	}
	if len(mesh.Mesh.ExtensionProviders) != 1 {
		t.Fatalf("want one extension provider, got %d", len(mesh.Mesh.ExtensionProviders))
	}
	prov := mesh.Mesh.ExtensionProviders[0]
	grpc := prov.GetEnvoyExtAuthzGrpc()
	if grpc == nil {
		t.Fatal("provider is not envoyExtAuthzGrpc")
	}
	if grpc.Timeout == nil || grpc.Timeout.AsDuration() > 200*time.Millisecond {
		t.Errorf("provider timeout %v: set it, at most Envoy's 200ms (Istio's default is 600s)", grpc.Timeout)
	}
	if grpc.FailOpen || grpc.StatusOnError != "503" {
		t.Errorf("provider failOpen=%v statusOnError=%q: want false and 503", grpc.FailOpen, grpc.StatusOnError)
	}

	var istioTG *Doc
	for i := range cms {
		if strings.HasPrefix(cms[i].File, "istio/") {
			istioTG = &cms[i]
		}
	}
	if istioTG == nil {
		t.Fatal("no tollgate ConfigMap under istio/")
	}
	ic := parseTollgate(t, *istioTG)
	gh, gp := hostPort(t, ic.Server.GRPCAddress)
	if dur(t, ic.Entitlements.Cache.Timeout) >= grpc.Timeout.AsDuration() {
		t.Errorf("entitlements.cache.timeout %s is not under the provider timeout %v", ic.Entitlements.Cache.Timeout, grpc.Timeout.AsDuration())
	}

	se := one[*networkingv1.ServiceEntry](t, docs, "istio/")
	if len(se.Spec.Hosts) != 1 || se.Spec.Hosts[0] != grpc.Service {
		t.Errorf("ServiceEntry hosts %v, provider service %q", se.Spec.Hosts, grpc.Service)
	}
	if len(se.Spec.Ports) != 1 || se.Spec.Ports[0].Number != grpc.Port || se.Spec.Ports[0].Protocol != "GRPC" || int(grpc.Port) != gp {
		t.Errorf("ServiceEntry ports %v, provider port %d, tollgate gRPC port %d: want one GRPC port, all equal", se.Spec.Ports, grpc.Port, gp)
	}
	if len(se.Spec.Endpoints) != 1 || se.Spec.Endpoints[0].Address != gh {
		t.Errorf("ServiceEntry endpoints %v, tollgate listens on %s", se.Spec.Endpoints, gh)
	}

	var custom, deny int
	for _, d := range docs {
		ap, ok := d.Object.(*securityv1.AuthorizationPolicy)
		if !ok {
			continue
		}
		for k, v := range ap.Spec.GetSelector().GetMatchLabels() {
			if dep.Spec.Template.Labels[k] != v {
				t.Errorf("%s: selector %s=%s does not select the pod", d, k, v)
			}
		}
		switch ap.Spec.Action.String() {
		case "CUSTOM":
			custom++
			if ap.Spec.GetProvider().GetName() != prov.Name {
				t.Errorf("%s: provider %q, mesh config names %q", d, ap.Spec.GetProvider().GetName(), prov.Name)
			}
		case "DENY":
			deny++
		}
	}
	if custom != 1 || deny != 1 {
		t.Errorf("want one CUSTOM and one DENY AuthorizationPolicy, got %d and %d", custom, deny)
	}

	ra := one[*securityv1.RequestAuthentication](t, docs, "istio/")
	var claimHeaders []string
	for _, r := range ra.Spec.JwtRules {
		for _, h := range r.OutputClaimToHeaders {
			if h.Claim == "sub" {
				claimHeaders = append(claimHeaders, h.Header)
			}
		}
	}
	trusted := ""
	for _, id := range ic.Identity {
		if m, ok := id.(map[string]any); ok {
			if th, ok := m["trusted_header"].(map[string]any); ok {
				trusted, _ = th["header"].(string)
			}
		}
	}
	if len(claimHeaders) != 1 || trusted == "" || claimHeaders[0] != trusted {
		t.Errorf("RequestAuthentication copies sub to %v; tollgate trusts header %q: want the same one", claimHeaders, trusted)
	}
}

// goMemLimit parses a GOMEMLIMIT value: bytes, with an optional B, KiB,
// MiB, GiB or TiB suffix.
func goMemLimit(v string) (int64, error) {
	mult := int64(1)
	for i, u := range []string{"TiB", "GiB", "MiB", "KiB", "B"} {
		if n, ok := strings.CutSuffix(v, u); ok {
			v, mult = n, int64(1)<<(10*(4-i))
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("not a positive size")
	}
	return n * mult, nil
}
