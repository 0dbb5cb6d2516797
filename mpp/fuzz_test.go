package mpp

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzParseCredential: no input panics; an accepted credential has every
// required challenge member and a payload that is a JSON object; Check on
// it never panics and never passes (the fuzzer cannot forge our HMAC); and
// no error repeats the token.
func FuzzParseCredential(f *testing.F) {
	c := newTestChallenger(&fakeClock{t0})
	ch, _, err := c.Issue("evm", "charge", vectorRequest, Params{Opaque: map[string]string{"r": "/a"}})
	if err != nil {
		f.Fatal(err)
	}
	echo, _ := json.Marshal(map[string]any{
		"challenge": map[string]string{"id": ch.ID, "realm": ch.Realm, "method": ch.Method, "intent": ch.Intent, "request": ch.Request, "expires": ch.Expires, "opaque": ch.Opaque},
		"payload":   map[string]string{"signature": "0x00"},
	})
	for _, seed := range []string{
		"Payment " + enc(string(echo)),
		"Payment " + enc(validJSON),
		"payment " + enc(`{"challenge":{},"payload":{}}`),
		"Payment " + enc(`{"challenge":{"id":"a","id":"a"},"payload":{}}`),
		"Payment e30",
		"Payment =",
		"Payment ",
		"Bearer x",
		"",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		cred, err := ParseCredential(in)
		if err != nil {
			if tok := strings.TrimLeft(strings.TrimPrefix(in, in[:min(len(in), len(Scheme))]), " "); len(tok) >= 12 && strings.Contains(err.Error(), tok) {
				t.Fatalf("error repeats the input: %v", err)
			}
			return
		}
		ch := cred.Challenge
		if ch.ID == "" || ch.Realm == "" || !isMethodID(ch.Method) || !isIntent(ch.Intent) || !isBase64URL(ch.Request) {
			t.Fatalf("accepted an incomplete challenge: %+v", ch)
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(cred.Payload, &obj); err != nil || obj == nil {
			t.Fatalf("payload is not an object: %v", err)
		}
		if err := c.Check(cred); err == nil && cred.Challenge != ch {
			t.Fatalf("Check passed a challenge we did not issue: %+v", cred.Challenge)
		}
	})
}
