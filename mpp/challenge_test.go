package mpp

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"
)

const testKey = "test-key-0123456789abcdef0123456789abcdef"

// t0 is the fake clock's start: with a five-minute TTL, challenges expire
// at 2026-01-15T12:05:00Z, the expiry of the vectors below.
var t0 = time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC)

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func newTestChallenger(clock *fakeClock) *Challenger {
	return NewChallenger([]byte(testKey), "api.example.com", 5*time.Minute, clock.now)
}

// vectorRequest is the request of the cross-implementation vector: what
// mppx 0.11.0's Challenge.from was given, including a description with a
// quote and characters outside ASCII to exercise JCS string handling.
var vectorRequest = map[string]any{
	"amount":      "1000",
	"currency":    "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
	"recipient":   "0x742d35Cc6634C0532925a3b844Bc9e7595f8fE00",
	"description": "a \"quoted\" café €",
	"methodDetails": map[string]any{
		"chainId": 84532, "credentialTypes": []string{"authorization"}, "decimals": 6,
	},
}

// TestChallengeMatchesMppx compares our header with the one mppx 0.11.0
// (the Payment scheme's TypeScript SDK) computed for the same key, realm,
// method, intent, request and expires: Challenge.from({..., secretKey})
// then Challenge.serialize. Equal ids mean equal JCS bytes and equal HMAC
// input.
func TestChallengeMatchesMppx(t *testing.T) {
	clock := &fakeClock{t0}
	c := newTestChallenger(clock)
	tests := []struct {
		name    string
		request any
		params  Params
		want    string
	}{
		{
			name:    "request with non-ASCII description",
			request: vectorRequest,
			want: `Payment id="i276DKNOXFXHngCYxldGw2T7h_tRrqydGEmsLRJKHaU", realm="api.example.com", method="evm", intent="charge", ` +
				`request="eyJhbW91bnQiOiIxMDAwIiwiY3VycmVuY3kiOiIweDAzNkNiRDUzODQyYzU0MjY2MzRlNzkyOTU0MWVDMjMxOGYzZENGN2UiLCJkZXNjcmlwdGlvbiI6ImEgXCJxdW90ZWRcIiBjYWbDqSDigqwiLCJtZXRob2REZXRhaWxzIjp7ImNoYWluSWQiOjg0NTMyLCJjcmVkZW50aWFsVHlwZXMiOlsiYXV0aG9yaXphdGlvbiJdLCJkZWNpbWFscyI6Nn0sInJlY2lwaWVudCI6IjB4NzQyZDM1Q2M2NjM0QzA1MzI5MjVhM2I4NDRCYzllNzU5NWY4ZkUwMCJ9", ` +
				`expires="2026-01-15T12:05:00Z"`,
		},
		{
			name:    "digest and opaque fill slots 5 and 6",
			request: map[string]string{"amount": "1000"},
			params:  Params{Digest: "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:", Opaque: map[string]string{"route": "/v1/x", "b": "y"}},
			want: `Payment id="iq4l5wDc2daKuimDwUvLua9YUGyNLU_brk5fvZk-yYo", realm="api.example.com", method="evm", intent="charge", request="eyJhbW91bnQiOiIxMDAwIn0", ` +
				`digest="sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:", expires="2026-01-15T12:05:00Z", opaque="eyJiIjoieSIsInJvdXRlIjoiL3YxL3gifQ"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch, got, err := c.Issue("evm", "charge", tt.request, tt.params)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("header\n got %s\nwant %s", got, tt.want)
			}
			if !strings.Contains(got, `id="`+ch.ID+`"`) || !strings.Contains(got, `expires="`+ch.Expires+`"`) {
				t.Errorf("returned challenge %+v does not match its header", ch)
			}
		})
	}
}

// TestChallengeIDIsDraftHMAC recomputes the id from the draft's pseudo-code
// here, slot by slot, independently of the package's code.
func TestChallengeIDIsDraftHMAC(t *testing.T) {
	c := newTestChallenger(&fakeClock{t0})
	req, err := EncodeRequest(map[string]string{"amount": "5", "currency": "usd"})
	if err != nil {
		t.Fatal(err)
	}
	h, id, err := c.Challenge("stripe", "charge", req)
	if err != nil {
		t.Fatal(err)
	}
	mac := hmac.New(sha256.New, []byte(testKey))
	mac.Write([]byte(strings.Join([]string{"api.example.com", "stripe", "charge", string(req), "2026-01-15T12:05:00Z", "", ""}, "|")))
	want := base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
	if id != want {
		t.Errorf("id = %s, want %s", id, want)
	}
	wantHeader := `Payment id="` + want + `", realm="api.example.com", method="stripe", intent="charge", request="` + string(req) + `", expires="2026-01-15T12:05:00Z"`
	if h != wantHeader {
		t.Errorf("header\n got %s\nwant %s", h, wantHeader)
	}
}

// TestSeveralChallenges: one value per method, each with its own id, and a
// request given as a value encodes as EncodeRequest does.
func TestSeveralChallenges(t *testing.T) {
	c := newTestChallenger(&fakeClock{t0})
	var ids []string
	for _, m := range []string{"evm", "lightning", "stripe"} {
		h, id, err := c.Challenge(m, "charge", map[string]string{"amount": "1"})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(h, `Payment id="`+id+`", realm="api.example.com", method="`+m+`", intent="charge", request="eyJhbW91bnQiOiIxIn0"`) {
			t.Errorf("%s: header %s", m, h)
		}
		ids = append(ids, id)
	}
	if ids[0] == ids[1] || ids[1] == ids[2] || ids[0] == ids[2] {
		t.Errorf("ids repeat across methods: %v", ids)
	}
}

func TestChallengeRefusesBadInput(t *testing.T) {
	clock := &fakeClock{t0}
	good := newTestChallenger(clock)
	tests := []struct {
		name string
		c    *Challenger
		m, i string
		req  any
		p    Params
	}{
		{"short key", NewChallenger([]byte("short"), "r", time.Minute, clock.now), "evm", "charge", map[string]string{}, Params{}},
		{"realm with a line break", NewChallenger([]byte(testKey), "a\r\nb", time.Minute, clock.now), "evm", "charge", map[string]string{}, Params{}},
		{"zero ttl", NewChallenger([]byte(testKey), "r", 0, clock.now), "evm", "charge", map[string]string{}, Params{}},
		{"upper-case method", good, "EVM", "charge", map[string]string{}, Params{}},
		{"method with a digit", good, "evm2", "charge", map[string]string{}, Params{}},
		{"intent with a space", good, "evm", "one time", map[string]string{}, Params{}},
		{"request not an object", good, "evm", "charge", []string{"a"}, Params{}},
		{"encoded request with padding", good, "evm", "charge", EncodedRequest("e30="), Params{}},
		{"request that does not marshal", good, "evm", "charge", map[string]any{"f": func() {}}, Params{}},
		{"description with a line break", good, "evm", "charge", map[string]string{}, Params{Description: "a\nb"}},
		{"digest with a quote", good, "evm", "charge", map[string]string{}, Params{Digest: `sha-256=:"x:`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := tt.c.Issue(tt.m, tt.i, tt.req, tt.p); err == nil {
				t.Error("got no error")
			}
		})
	}
}

// credentialFor is what a client echoes for a challenge.
func credentialFor(ch Challenge) Credential {
	return Credential{Challenge: ch, Payload: []byte(`{"proof":"x"}`)}
}

func TestCheck(t *testing.T) {
	clock := &fakeClock{t0}
	c := newTestChallenger(clock)
	ch, _, err := c.Issue("evm", "charge", map[string]string{"amount": "1000"}, Params{Opaque: map[string]string{"route": "/a"}})
	if err != nil {
		t.Fatal(err)
	}
	other, _, _ := c.Issue("evm", "charge", map[string]string{"amount": "1"}, Params{})
	otherKey := NewChallenger([]byte(strings.Repeat("k", 32)), "api.example.com", 5*time.Minute, clock.now)
	foreign, _, _ := otherKey.Issue("evm", "charge", map[string]string{"amount": "1000"}, Params{Opaque: map[string]string{"route": "/a"}})
	cheap, _ := EncodeRequest(map[string]string{"amount": "1"})

	tests := []struct {
		name   string
		edit   func(*Challenge)
		at     time.Duration // clock offset from t0
		c      *Challenger
		want   *Error
		wantOK bool
	}{
		{name: "as issued", wantOK: true},
		{name: "one second before expiry", at: 5*time.Minute - time.Second, wantOK: true},
		{name: "description changed (not bound)", edit: func(ch *Challenge) { ch.Description = "free" }, wantOK: true},
		{name: "amount changed", edit: func(ch *Challenge) { ch.Request = string(cheap) }, want: ErrInvalidChallenge},
		{name: "request of another challenge", edit: func(ch *Challenge) { ch.Request = other.Request }, want: ErrInvalidChallenge},
		{name: "realm changed", edit: func(ch *Challenge) { ch.Realm = "evil.example.com" }, want: &Error{Code: CodeInvalidChallenge, Field: "challenge.realm"}},
		{name: "method changed", edit: func(ch *Challenge) { ch.Method = "lightning" }, want: &Error{Code: CodeInvalidChallenge, Field: "challenge.id"}},
		{name: "intent changed", edit: func(ch *Challenge) { ch.Intent = "session" }, want: &Error{Code: CodeInvalidChallenge, Field: "challenge.id"}},
		{name: "expires extended", edit: func(ch *Challenge) { ch.Expires = "2026-01-15T13:05:00Z" }, want: &Error{Code: CodeInvalidChallenge, Field: "challenge.id"}},
		{name: "expires removed", edit: func(ch *Challenge) { ch.Expires = "" }, want: &Error{Code: CodeInvalidChallenge, Field: "challenge.id"}},
		{name: "opaque removed", edit: func(ch *Challenge) { ch.Opaque = "" }, want: &Error{Code: CodeInvalidChallenge, Field: "challenge.id"}},
		{name: "digest added", edit: func(ch *Challenge) { ch.Digest = "sha-256=:AAAA:" }, want: &Error{Code: CodeInvalidChallenge, Field: "challenge.id"}},
		{name: "id of another challenge", edit: func(ch *Challenge) { ch.ID = other.ID }, want: &Error{Code: CodeInvalidChallenge, Field: "challenge.id"}},
		{name: "id one character off", edit: func(ch *Challenge) { ch.ID = flipLast(ch.ID) }, want: &Error{Code: CodeInvalidChallenge, Field: "challenge.id"}},
		{name: "id truncated", edit: func(ch *Challenge) { ch.ID = ch.ID[:42] }, want: &Error{Code: CodeInvalidChallenge, Field: "challenge.id"}},
		{name: "id not base64url", edit: func(ch *Challenge) { ch.ID = strings.Repeat("!", 43) }, want: &Error{Code: CodeInvalidChallenge, Field: "challenge.id"}},
		{name: "bound by another key", edit: func(ch *Challenge) { *ch = foreign }, want: &Error{Code: CodeInvalidChallenge, Field: "challenge.id"}},
		{name: "at expiry", at: 5 * time.Minute, want: &Error{Code: CodePaymentExpired, Field: "challenge.expires"}},
		{name: "after expiry", at: time.Hour, want: ErrPaymentExpired},
		{name: "previous key accepted after rotation", edit: func(ch *Challenge) { *ch = foreign },
			c: NewChallenger([]byte(testKey), "api.example.com", 5*time.Minute, clock.now).WithPreviousKeys([]byte(strings.Repeat("k", 32))), wantOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock.t = t0.Add(tt.at)
			defer func() { clock.t = t0 }()
			got := ch
			if tt.edit != nil {
				tt.edit(&got)
			}
			checker := c
			if tt.c != nil {
				checker = tt.c
			}
			err := checker.Check(credentialFor(got))
			if tt.wantOK {
				if err != nil {
					t.Fatalf("got %v, want no error", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func flipLast(s string) string {
	b := []byte(s)
	if b[len(b)-1] == 'A' {
		b[len(b)-1] = 'E'
	} else {
		b[len(b)-1] = 'A'
	}
	return string(b)
}

func TestCheckOffer(t *testing.T) {
	c := newTestChallenger(&fakeClock{t0})
	cheap, _ := EncodeRequest(map[string]string{"amount": "1"})
	dear, _ := EncodeRequest(map[string]string{"amount": "1000"})
	ch, _, err := c.Issue("evm", "charge", cheap, Params{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		method  string
		intent  string
		request any
		want    error
	}{
		{"the offer it was issued for", "evm", "charge", cheap, nil},
		{"the same offer given as a value", "evm", "charge", map[string]string{"amount": "1"}, nil},
		{"a dearer offer", "evm", "charge", dear, &Error{Code: CodeInvalidChallenge, Field: "challenge.request"}},
		{"another method", "lightning", "charge", cheap, &Error{Code: CodeInvalidChallenge, Field: "challenge.method"}},
		{"another intent", "evm", "session", cheap, &Error{Code: CodeInvalidChallenge, Field: "challenge.intent"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := c.CheckOffer(credentialFor(ch), tt.method, tt.intent, tt.request)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestCodeStatus(t *testing.T) {
	tests := []struct {
		code Code
		want int
	}{
		{CodeInvalidChallenge, 402}, {CodeMalformedCredential, 402}, {CodeMethodUnsupported, 400}, {Code("other"), 402},
	}
	for _, tt := range tests {
		if got := tt.code.Status(); got != tt.want {
			t.Errorf("%s.Status() = %d, want %d", tt.code, got, tt.want)
		}
	}
	if got, want := CodeVerificationFailed.ProblemType(), "https://paymentauth.org/problems/verification-failed"; got != want {
		t.Errorf("ProblemType = %s, want %s", got, want)
	}
}
