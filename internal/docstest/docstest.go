// Package docstest finds the fenced code blocks of tollgate's Markdown docs
// (README.md and docs/*.md) and how each one is tested, so that a config or
// command the docs show cannot drift from what tollgate accepts.
//
// A block is classified by an HTML comment on the line right before its
// opening fence:
//
//	<!-- test: KIND [ARG...] -->
//
// The kinds, and who checks them:
//
//	tollgate-config        a whole config: loaded and built as `tollgate validate` does
//	config-fragment        part of a config, merged into a small base config, then as above
//	entitlements           an entitlements file, parsed by the file source
//	stripe-customers       a Stripe credential map, loaded by the stripe source
//	envoy-fragment PLACE   part of an Envoy config, put into the repo's envoy.yaml at PLACE
//	                       (hcm, http_filters, route, cluster, clusters) and run through
//	                       `envoy --mode validate` (e2e)
//	envoy-gateway          the SecurityPolicy extAuth block (deploy TestEnvoyGatewayDocs)
//	istio-mesh             the extension provider, as deploy/istio/mesh-config.yaml has it
//	command                shell commands: each tollgate, make, go, curl, envoy or helm
//	                       line is checked or run
//	console                `$ ` lines are commands as above; the rest is their output
//	json TYPE              JSON decoded strictly as TYPE (check-output, problem, record,
//	                       usage-event, invalidation)
//	output REASON          illustrative output, not checked; REASON says why or where it is
//	none REASON            not a config or a command (a diagram, a file tree); REASON required
//
// The tests are in the root package (docs_test.go) and, for Envoy, in e2e/.
package docstest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Block is one fenced code block.
type Block struct {
	File string // relative to the repository root, e.g. "docs/config.md"
	Line int    // of the opening fence, 1-based
	Info string // the fence's info string: "yaml", "sh", ""
	Kind string // the annotation's kind; "" when the block has none
	Arg  string // the rest of the annotation
	Text string // the contents, unindented by the fence's indentation
}

// Where is FILE:LINE, for messages.
func (b Block) Where() string { return fmt.Sprintf("%s:%d", b.File, b.Line) }

// Pending are pages others are still writing: checked once they carry an
// annotation, skipped until then.
var Pending = []string{"docs/x402.md", "docs/mpp.md"}

var annotation = regexp.MustCompile(`^\s*<!--\s*test:\s*(\S+)\s*(.*?)\s*-->\s*$`)

// Files lists README.md and docs/*.md under root, relative to it, with the
// Pending pages that have no annotation yet left out (and returned apart).
func Files(root string) (files, skipped []string, err error) {
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		return nil, nil, err
	}
	files = []string{"README.md"}
	for _, d := range docs {
		rel, _ := filepath.Rel(root, d)
		rel = filepath.ToSlash(rel)
		for _, p := range Pending {
			if rel != p {
				continue
			}
			data, err := os.ReadFile(d)
			if err != nil {
				return nil, nil, err
			}
			if !strings.Contains(string(data), "<!-- test:") {
				skipped = append(skipped, rel)
				rel = ""
			}
		}
		if rel != "" {
			files = append(files, rel)
		}
	}
	return files, skipped, nil
}

// Read parses every file Files lists.
func Read(root string) (blocks []Block, skipped []string, err error) {
	files, skipped, err := Files(root)
	if err != nil {
		return nil, nil, err
	}
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			return nil, nil, err
		}
		bs, err := Parse(f, string(data))
		if err != nil {
			return nil, nil, err
		}
		blocks = append(blocks, bs...)
	}
	return blocks, skipped, nil
}

// Parse returns the fenced blocks of the Markdown text md, read from file.
// An opening fence that is never closed is an error.
func Parse(file, md string) ([]Block, error) {
	var blocks []Block
	lines := strings.Split(md, "\n")
	for i := 0; i < len(lines); i++ {
		trimmed := strings.TrimLeft(lines[i], " ")
		if !strings.HasPrefix(trimmed, "```") {
			continue
		}
		indent := len(lines[i]) - len(trimmed)
		b := Block{File: file, Line: i + 1, Info: strings.TrimSpace(strings.TrimPrefix(trimmed, "```"))}
		if i > 0 {
			if m := annotation.FindStringSubmatch(lines[i-1]); m != nil {
				b.Kind, b.Arg = m[1], m[2]
			}
		}
		var text strings.Builder
		closed := false
		for i++; i < len(lines); i++ {
			if strings.TrimSpace(lines[i]) == "```" {
				closed = true
				break
			}
			l := lines[i]
			if len(l)-len(strings.TrimLeft(l, " ")) >= indent {
				l = l[indent:]
			}
			text.WriteString(l + "\n")
		}
		if !closed {
			return nil, fmt.Errorf("%s: the block opened here is not closed", b.Where())
		}
		b.Text = text.String()
		blocks = append(blocks, b)
	}
	return blocks, nil
}
