package settle

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"

	"github.com/tollgate-authz/tollgate/policy"
)

// bodyUnits finds a response's units in its body as it streams by: the
// meter's member in an OpenAI-compatible JSON body, or in the last event of
// a text/event-stream body that carries it. It keeps at most the meter's
// MaxBodyBytes: a whole JSON body, or one event line at a time.
type bodyUnits struct {
	m        *policy.Meter
	sse      bool
	buf      []byte
	tooLarge bool // a JSON body over the bound: billed at the reservation
	skipping bool // in an event line over the bound
	units    int64
	found    bool
}

func newBodyUnits(m *policy.Meter, contentType string) *bodyUnits {
	ct := strings.ToLower(strings.TrimSpace(strings.SplitN(contentType, ";", 2)[0]))
	return &bodyUnits{m: m, sse: ct == "text/event-stream"}
}

// write takes the next chunk of the body.
func (b *bodyUnits) write(p []byte) {
	if !b.sse {
		if b.tooLarge {
			return
		}
		if int64(len(b.buf)+len(p)) > b.m.MaxBodyBytes {
			b.tooLarge, b.buf = true, nil
			return
		}
		b.buf = append(b.buf, p...)
		return
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if b.skipping { // the rest of a line too large to keep
			if i < 0 {
				return
			}
			b.skipping, p = false, p[i+1:]
			continue
		}
		if i < 0 {
			if int64(len(b.buf)+len(p)) > b.m.MaxBodyBytes {
				b.buf, b.skipping = b.buf[:0], true // skipped, not kept
				return
			}
			b.buf = append(b.buf, p...)
			return
		}
		line := p[:i]
		if len(b.buf) > 0 {
			if int64(len(b.buf)+i) > b.m.MaxBodyBytes {
				line = nil // its end made it too large: skipped
			} else {
				b.buf = append(b.buf, line...)
				line = b.buf
			}
		}
		b.line(line)
		b.buf = b.buf[:0]
		p = p[i+1:]
	}
}

// line reads one line of an event stream.
func (b *bodyUnits) line(l []byte) {
	l = bytes.TrimRight(l, "\r")
	data, ok := bytes.CutPrefix(l, []byte("data:"))
	if !ok {
		return
	}
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return // [DONE], comments, keep-alives
	}
	if u, ok := unitsIn(b.m, data); ok {
		b.units, b.found = u, true
	}
}

// result is the units found once the body has ended.
func (b *bodyUnits) result() (int64, bool) {
	if b.sse {
		if len(b.buf) > 0 && !b.skipping { // a last line without a newline
			b.line(b.buf)
			b.buf = nil
		}
		return b.units, b.found
	}
	if b.tooLarge {
		return 0, false
	}
	return unitsIn(b.m, b.buf)
}

// unitsIn reads the meter's units from one JSON document.
func unitsIn(m *policy.Meter, doc []byte) (int64, bool) {
	var v any
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	if dec.Decode(&v) != nil {
		return 0, false
	}
	if m.Body != nil {
		return member(v, m.Body)
	}
	in, ok1 := member(v, m.Input)
	out, ok2 := member(v, m.Output)
	if !ok1 || !ok2 {
		return 0, false
	}
	return weighted(in, m.InputWeight, out, m.OutputWeight)
}

// member is the whole number at path in v.
func member(v any, path []string) (int64, bool) {
	for _, k := range path {
		o, ok := v.(map[string]any)
		if !ok {
			return 0, false
		}
		if v, ok = o[k]; !ok {
			return 0, false
		}
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, false
	}
	return policy.Units(n.String())
}

// weighted is in×wi + out×wo, or false when it does not fit an int64.
func weighted(in, wi, out, wo int64) (int64, bool) {
	a, ok1 := mul(in, wi)
	b, ok2 := mul(out, wo)
	if !ok1 || !ok2 || a > math.MaxInt64-b {
		return 0, false
	}
	return a + b, true
}

func mul(a, b int64) (int64, bool) {
	if a == 0 || b == 0 {
		return 0, true
	}
	if a > math.MaxInt64/b {
		return 0, false
	}
	return a * b, true
}
