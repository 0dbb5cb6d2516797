// Package deploy holds tollgate's Kubernetes, Istio and Envoy Gateway
// manifests, its Helm chart and its monitoring. Its Go code
// reads them back strictly into the real API types, so that a misspelt field
// fails the test here instead of being dropped silently by kubectl or istiod.
//
// It is its own module so that the Kubernetes, Istio, Envoy Gateway, Helm and
// Prometheus packages never enter the tollgate binary's module graph.
package deploy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"

	egv1alpha1 "github.com/envoyproxy/gateway/api/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Doc is one decoded YAML document.
type Doc struct {
	File  string // as given to ReadFile
	Index int    // position of the document in its file, from 0

	APIVersion, Kind, Namespace, Name string

	// Object is the decoded object, of the type decoders names for its
	// apiVersion and kind: *appsv1.Deployment, *corev1.ConfigMap,
	// *monitoringv1.ServiceMonitor, *gatewayv1.HTTPRoute,
	// *egv1alpha1.SecurityPolicy, *securityv1.AuthorizationPolicy, ...
	Object any

	// Mesh is data.mesh of Istio's mesh ConfigMap (istio-system/istio),
	// decoded as a MeshConfig; nil for every other document.
	Mesh *meshv1alpha1.MeshConfig
}

func (d Doc) String() string {
	return fmt.Sprintf("%s#%d (%s %s)", d.File, d.Index, d.Kind, d.Name)
}

// ReadFile decodes every document of a multi-document YAML file. A file with
// no document at all is an error; empty documents (comments only) are skipped.
func ReadFile(path string) ([]Doc, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs []Doc
	var errs []error
	for i := 0; ; i++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		d, ok, err := Decode(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: document %d: %w", path, i, err))
			continue
		}
		if ok {
			d.File, d.Index = path, i
			docs = append(docs, d)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("%s: no YAML document", path)
	}
	return docs, nil
}

// Decode decodes one YAML document into the API type its apiVersion and kind
// name. ok is false for an empty document. Every field must be known to that
// type, spelt exactly (JSON names are case-sensitive), and given once.
func Decode(doc []byte) (d Doc, ok bool, err error) {
	js, err := yaml.YAMLToJSONStrict(doc) // duplicate keys are errors
	if err != nil {
		return d, false, err
	}
	if t := bytes.TrimSpace(js); len(t) == 0 || string(t) == "null" {
		return d, false, nil
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(js, &tm); err != nil {
		return d, false, fmt.Errorf("not a Kubernetes object: %w", err)
	}
	key := tm.APIVersion + " " + tm.Kind
	dec, found := decoders[key]
	if !found {
		return d, false, fmt.Errorf("unknown kind %q (apiVersion %q): known are %s", tm.Kind, tm.APIVersion, knownKinds())
	}
	d.APIVersion, d.Kind = tm.APIVersion, tm.Kind
	if err := dec(js, &d); err != nil {
		return d, false, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	return d, true, nil
}

// decoders maps "apiVersion kind" to a strict decoder filling d.Object.
var decoders = map[string]func(js []byte, d *Doc) error{
	"apps/v1 Deployment": func(js []byte, d *Doc) error {
		o := &appsv1.Deployment{}
		return k8sStrict(js, o, d, &o.ObjectMeta)
	},
	"v1 Service": func(js []byte, d *Doc) error {
		o := &corev1.Service{}
		return k8sStrict(js, o, d, &o.ObjectMeta)
	},
	"v1 ConfigMap": func(js []byte, d *Doc) error {
		o := &corev1.ConfigMap{}
		if err := k8sStrict(js, o, d, &o.ObjectMeta); err != nil {
			return err
		}
		if o.Namespace == "istio-system" && o.Name == "istio" {
			return decodeMeshConfigMap(o, d)
		}
		return nil
	},
	"policy/v1 PodDisruptionBudget": func(js []byte, d *Doc) error {
		o := &policyv1.PodDisruptionBudget{}
		return k8sStrict(js, o, d, &o.ObjectMeta)
	},
	"monitoring.coreos.com/v1 ServiceMonitor": func(js []byte, d *Doc) error {
		o := &monitoringv1.ServiceMonitor{}
		return k8sStrict(js, o, d, &o.ObjectMeta)
	},
	"monitoring.coreos.com/v1 PrometheusRule": func(js []byte, d *Doc) error {
		o := &monitoringv1.PrometheusRule{}
		return k8sStrict(js, o, d, &o.ObjectMeta)
	},
	"gateway.networking.k8s.io/v1 Gateway": func(js []byte, d *Doc) error {
		o := &gatewayv1.Gateway{}
		return k8sStrict(js, o, d, &o.ObjectMeta)
	},
	"gateway.networking.k8s.io/v1 HTTPRoute": func(js []byte, d *Doc) error {
		o := &gatewayv1.HTTPRoute{}
		return k8sStrict(js, o, d, &o.ObjectMeta)
	},
	// v1beta1: the version Envoy Gateway watches.
	"gateway.networking.k8s.io/v1beta1 ReferenceGrant": func(js []byte, d *Doc) error {
		o := &gatewayv1beta1.ReferenceGrant{}
		return k8sStrict(js, o, d, &o.ObjectMeta)
	},
	"gateway.envoyproxy.io/v1alpha1 SecurityPolicy": func(js []byte, d *Doc) error {
		o := &egv1alpha1.SecurityPolicy{}
		return k8sStrict(js, o, d, &o.ObjectMeta)
	},
	"networking.istio.io/v1 ServiceEntry": func(js []byte, d *Doc) error {
		env, err := istioEnvelope(js, d)
		if err != nil {
			return err
		}
		o := &networkingv1.ServiceEntry{TypeMeta: env.TypeMeta, ObjectMeta: env.Metadata}
		d.Object = o
		return protoStrict(env.Spec, &o.Spec)
	},
	"security.istio.io/v1 AuthorizationPolicy": func(js []byte, d *Doc) error {
		env, err := istioEnvelope(js, d)
		if err != nil {
			return err
		}
		o := &securityv1.AuthorizationPolicy{TypeMeta: env.TypeMeta, ObjectMeta: env.Metadata}
		d.Object = o
		return protoStrict(env.Spec, &o.Spec)
	},
	"security.istio.io/v1 RequestAuthentication": func(js []byte, d *Doc) error {
		env, err := istioEnvelope(js, d)
		if err != nil {
			return err
		}
		o := &securityv1.RequestAuthentication{TypeMeta: env.TypeMeta, ObjectMeta: env.Metadata}
		d.Object = o
		return protoStrict(env.Spec, &o.Spec)
	},
}

func knownKinds() string {
	var ks []string
	for k := range decoders {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}

// k8sStrict decodes a Kubernetes struct the way the API server does with
// strict field validation: case-sensitive names, no unknown fields, no
// duplicates (sigs.k8s.io/json, the decoder behind kubectl --validate=strict).
func k8sStrict(js []byte, o any, d *Doc, meta *metav1.ObjectMeta) error {
	strictErrs, err := kjson.UnmarshalStrict(js, o)
	if err != nil {
		return err
	}
	if err := errors.Join(strictErrs...); err != nil {
		return err
	}
	d.Object, d.Namespace, d.Name = o, meta.Namespace, meta.Name
	return nil
}

// envelope is an Istio object with its spec left raw. The client-go types'
// Spec fields unmarshal with jsonpb's AllowUnknownFields, so the spec is
// decoded separately with protojson; everything around it, strictly here.
type envelope struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            json.RawMessage   `json:"spec"`
}

func istioEnvelope(js []byte, d *Doc) (*envelope, error) {
	env := &envelope{}
	strictErrs, err := kjson.UnmarshalStrict(js, env)
	if err != nil {
		return nil, err
	}
	if err := errors.Join(strictErrs...); err != nil {
		return nil, err
	}
	if len(env.Spec) == 0 {
		return nil, errors.New("spec is missing")
	}
	d.Namespace, d.Name = env.Metadata.Namespace, env.Metadata.Name
	return env, nil
}

// protoStrict decodes JSON into a proto message, failing on unknown fields.
// protojson also accepts proto field names (export_to for exportTo), which
// the CRD schemas do not, so every key must come back under the same name
// when the message is marshalled again.
func protoStrict(js []byte, m proto.Message) error {
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, m); err != nil {
		return err
	}
	out, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return err
	}
	in, back := map[string]bool{}, map[string]bool{}
	if err := keyPaths(js, in); err != nil {
		return err
	}
	if err := keyPaths(out, back); err != nil {
		return err
	}
	var bad []string
	for p := range in {
		if !back[p] {
			bad = append(bad, strings.TrimPrefix(p, "."))
		}
	}
	if len(bad) > 0 {
		slices.Sort(bad)
		return fmt.Errorf("fields not spelt as their JSON names (lowerCamelCase): %s", strings.Join(bad, ", "))
	}
	return nil
}

// keyPaths records the path of every object key in a JSON document.
func keyPaths(js []byte, out map[string]bool) error {
	var v any
	if err := json.Unmarshal(js, &v); err != nil {
		return err
	}
	var walk func(v any, prefix string)
	walk = func(v any, prefix string) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				p := prefix + "." + k
				out[p] = true
				walk(x, p)
			}
		case []any:
			for i, x := range v {
				walk(x, fmt.Sprintf("%s[%d]", prefix, i))
			}
		}
	}
	walk(v, "")
	return nil
}

// decodeMeshConfigMap decodes Istio's mesh ConfigMap: data.mesh is YAML for
// a MeshConfig, data.meshNetworks for MeshNetworks.
func decodeMeshConfigMap(cm *corev1.ConfigMap, d *Doc) error {
	for k, v := range cm.Data {
		var m proto.Message
		switch k {
		case "mesh":
			d.Mesh = &meshv1alpha1.MeshConfig{}
			m = d.Mesh
		case "meshNetworks":
			m = &meshv1alpha1.MeshNetworks{}
		default:
			return fmt.Errorf("data.%s: istiod reads only data.mesh and data.meshNetworks", k)
		}
		js, err := yaml.YAMLToJSONStrict([]byte(v))
		if err != nil {
			return fmt.Errorf("data.%s: %w", k, err)
		}
		if err := protoStrict(js, m); err != nil {
			return fmt.Errorf("data.%s: %w", k, err)
		}
	}
	if d.Mesh == nil {
		return errors.New("data.mesh is missing")
	}
	return nil
}
