package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chartutil"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// Rendered is a chart rendered the way `helm template` renders it.
type Rendered struct {
	Docs     []Doc  // every object, decoded strictly; File is the template it came from
	Manifest string // the YAML `helm template` prints
	Notes    string // NOTES.txt, rendered
}

// RenderChart renders chart ch as release `release` in namespace with vals,
// with Helm's own install action in client-only dry-run mode (what `helm
// template` does: no cluster, the values checked against values.schema.json)
// for Kubernetes kubeVersion (such as "v1.37.0": what .Capabilities says and
// the chart's kubeVersion is checked against), and decodes every document
// strictly with Decode. A document that does not decode is an error naming
// its template.
func RenderChart(ch *chart.Chart, release, namespace string, vals chartutil.Values, kubeVersion string) (*Rendered, error) {
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		return nil, err
	}
	cfg := &action.Configuration{Log: func(string, ...any) {}}
	in := action.NewInstall(cfg)
	in.ReleaseName, in.Namespace, in.KubeVersion = release, namespace, kv
	in.DryRun, in.ClientOnly, in.Replace, in.IncludeCRDs = true, true, true, true
	if vals == nil {
		vals = chartutil.Values{}
	}
	rel, err := in.Run(ch, vals)
	if err != nil {
		return nil, err
	}
	manifest := rel.Manifest
	for _, h := range rel.Hooks {
		manifest += "\n---\n# Source: " + h.Path + "\n" + h.Manifest
	}
	out := &Rendered{Manifest: manifest, Notes: rel.Info.Notes}
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(manifest)))
	var errs []error
	for i := 0; ; i++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		src := sourceOf(raw)
		d, ok, err := Decode(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", src, err))
			continue
		}
		if ok {
			d.File, d.Index = src, i
			out.Docs = append(out.Docs, d)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// sourceOf reads the "# Source: chart/templates/x.yaml" line Helm puts at
// the top of each rendered document.
func sourceOf(doc []byte) string {
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if s, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte("# Source: ")); ok {
			return string(s)
		}
	}
	return "(no # Source line)"
}
