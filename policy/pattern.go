package policy

import (
	"fmt"
	"strings"
)

type segKind uint8

const (
	segLiteral segKind = iota
	segOne             // {name} or *
	segRest            // {name...} or **, last only
)

type segment struct {
	kind segKind
	lit  string
}

func compilePattern(p string) ([]segment, error) {
	if !strings.HasPrefix(p, "/") {
		return nil, fmt.Errorf("%q must start with /", p)
	}
	if strings.Contains(p, "?") {
		return nil, fmt.Errorf("%q must not hold a query", p)
	}
	parts := strings.Split(p[1:], "/")
	segs := make([]segment, 0, len(parts))
	for i, s := range parts {
		switch {
		case s == "**" || (strings.HasPrefix(s, "{") && strings.HasSuffix(s, "...}")):
			if i != len(parts)-1 {
				return nil, fmt.Errorf("%q: %s may only be the last segment", p, s)
			}
			segs = append(segs, segment{kind: segRest})
		case s == "*" || (strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") && len(s) > 2):
			segs = append(segs, segment{kind: segOne})
		case strings.ContainsAny(s, "{}*"):
			return nil, fmt.Errorf("%q: segment %q mixes a wildcard with text", p, s)
		default:
			segs = append(segs, segment{lit: s})
		}
	}
	return segs, nil
}

// matchPattern walks path's segments without allocating.
func matchPattern(segs []segment, path string) bool {
	if path == "" || path[0] != '/' {
		return false
	}
	rest := path[1:]
	for i, sg := range segs {
		if sg.kind == segRest {
			return true
		}
		var seg string
		last := i == len(segs)-1
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			seg, rest = rest[:j], rest[j+1:]
			if last {
				return false // more path than pattern
			}
		} else {
			seg, rest = rest, ""
			if !last {
				// The pattern wants more segments, unless all that is left is a rest wildcard.
				if !(i+2 == len(segs) && segs[i+1].kind == segRest) {
					return false
				}
			}
		}
		switch sg.kind {
		case segLiteral:
			if seg != sg.lit {
				return false
			}
		case segOne:
			if seg == "" {
				return false
			}
		}
	}
	return true
}
