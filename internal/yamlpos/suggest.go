package yamlpos

import "strings"

// nearest returns the names closest to name, at most two, or none when
// nothing is close enough to be what the user meant. A name that differs
// only in case, "_" or "-" (pollInterval, poll-interval) is closest; then
// the fewest edits, where swapping two neighbouring letters is one edit.
// The edits allowed grow with the length: one for names of up to five
// letters, two up to eight, three beyond.
func nearest(name string, names []string) []string {
	want := normalize(name)
	if want == "" {
		return nil
	}
	limit := min(max(len(want)/3, 1), 3)
	best, found := limit, []string(nil)
	for _, n := range names {
		d := distance(want, normalize(n))
		if d > limit || d >= len(n) {
			continue // "ab" is not a typo of "id"
		}
		switch {
		case d < best:
			best, found = d, []string{n}
		case d == best && len(found) < 2:
			found = append(found, n)
		}
	}
	return found
}

// normalize is how two spellings of a field name are compared: lower case,
// no "_" or "-".
func normalize(s string) string {
	s = strings.ToLower(s)
	return strings.NewReplacer("_", "", "-", "").Replace(s)
}

// distance is the optimal string alignment distance between a and b: the
// insertions, deletions, substitutions and swaps of neighbouring bytes that
// turn one into the other. Names longer than 64 bytes are never close.
func distance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return max(len(a), len(b))
	}
	// Three rows of the table: two back, one back, this one.
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}
