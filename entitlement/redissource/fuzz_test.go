package redissource

import (
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"testing"
)

// FuzzMessage drives one pub/sub invalidation message through what the
// subscriber does with it. Whatever the bytes, exactly one callback runs:
// an invalidation of a valid subject with valid lower-case digests, or a
// resync; and an invalidation survives being written out and read again.
func FuzzMessage(f *testing.F) {
	for _, seed := range []string{
		`{"subject":"acme","api_key_sha256":["` + digestA + `","` + strings.ToUpper(digestB) + `"]}`,
		`{"subject":"acme"}`,
		`acme`,
		`  {"subject": 12}`,
		`{"subject":"a\u0000b"}`,
		`{"subject":"acme","api_key_sha256":"not a list"}`,
		`{"subject":"acme","api_key_sha256":["nope", null, 5]}`,
		"\xff\xfe",
		"",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, payload string) {
		var (
			invalidations, resyncs int
			subject                string
			digests                []string
		)
		sub := &subscriber{
			src: &Source{channel: DefaultChannel, log: slog.New(slog.DiscardHandler)},
			onInvalidate: func(s string, ds []string) {
				invalidations++
				subject, digests = s, ds
			},
			onResync: func() { resyncs++ },
		}
		sub.deliver(payload)
		if invalidations+resyncs != 1 {
			t.Fatalf("%d invalidations and %d resyncs for one message", invalidations, resyncs)
		}
		if resyncs == 1 {
			return
		}
		if err := CheckSubject(subject); err != nil {
			t.Fatalf("invalidated subject %q: %v", subject, err)
		}
		if !strings.HasPrefix(strings.TrimSpace(payload), "{") && subject != payload {
			t.Fatalf("plain message %q read as subject %q", payload, subject)
		}
		for _, d := range digests {
			if !validDigest(d) || d != strings.ToLower(d) {
				t.Fatalf("digest %q is not lower-case hex SHA-256", d)
			}
		}
		// What a writer would publish for this invalidation reads back the same.
		b, err := json.Marshal(message{Subject: subject, APIKeySHA256: digests})
		if err != nil {
			t.Fatal(err)
		}
		s2, d2, ok := parseMessage(string(b))
		if !ok || s2 != subject || !slices.Equal(d2, digests) {
			t.Fatalf("%s read back as %q %v %v", b, s2, d2, ok)
		}
	})
}
