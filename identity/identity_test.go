package identity

import (
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
)

// fakeRequest is a hand-written Request.
type fakeRequest struct {
	headers   map[string]string
	claims    map[string]any // path -> value (string or other)
	principal string
}

func (f fakeRequest) Header(n string) (string, bool) { v, ok := f.headers[n]; return v, ok }
func (f fakeRequest) Principal() string              { return f.principal }
func (f fakeRequest) Claim(_, path string) (string, bool, bool) {
	v, ok := f.claims[path]
	if !ok {
		return "", false, false
	}
	s, isStr := v.(string)
	return s, true, isStr
}

func TestChain(t *testing.T) {
	chain, err := Build([]Spec{
		{Kind: "api_key", Header: "X-API-Key"},
		{Kind: "jwt"},
		{Kind: "bearer"},
		{Kind: "principal"},
	})
	if err != nil {
		t.Fatal(err)
	}
	key := HashKey("k1")
	tests := []struct {
		name string
		req  fakeRequest
		want Credential
	}{
		{"nothing", fakeRequest{}, Credential{}},
		{"api key header", fakeRequest{headers: map[string]string{"x-api-key": "k1"}}, Credential{APIKey, key, "header:x-api-key"}},
		{"api key trimmed", fakeRequest{headers: map[string]string{"x-api-key": "  k1 "}}, Credential{APIKey, key, "header:x-api-key"}},
		{"empty api key falls through", fakeRequest{headers: map[string]string{"x-api-key": " ", "authorization": "Bearer k1"}}, Credential{APIKey, key, "bearer"}},
		{"bearer any case", fakeRequest{headers: map[string]string{"authorization": "bEaReR k1"}}, Credential{APIKey, key, "bearer"}},
		{"basic is not bearer", fakeRequest{headers: map[string]string{"authorization": "Basic azE="}}, Credential{}},
		{"bearer without token", fakeRequest{headers: map[string]string{"authorization": "Bearer "}}, Credential{}},
		{"header and bearer disagree", fakeRequest{headers: map[string]string{"x-api-key": "k1", "authorization": "Bearer other"}}, Credential{Malformed, "", "header:x-api-key+bearer"}},
		{"header and bearer agree", fakeRequest{headers: map[string]string{"x-api-key": "k1", "authorization": "Bearer k1"}}, Credential{APIKey, key, "header:x-api-key"}},
		{"jwt before bearer", fakeRequest{headers: map[string]string{"authorization": "Bearer eyJ..."}, claims: map[string]any{"sub": "acme"}}, Credential{Subject, "acme", "jwt:sub"}},
		{"jwt claim wrong type", fakeRequest{claims: map[string]any{"sub": 42.0}}, Credential{Malformed, "", "jwt:sub"}},
		{"a JWT is not a bearer API key", fakeRequest{headers: map[string]string{"authorization": "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"}}, Credential{}},
		{"x-api-key with a forwarded JWT", fakeRequest{headers: map[string]string{"x-api-key": "k1", "authorization": "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"}}, Credential{APIKey, key, "header:x-api-key"}},
		{"principal", fakeRequest{principal: "spiffe://cluster.local/ns/a/sa/b"}, Credential{Subject, "spiffe://cluster.local/ns/a/sa/b", "principal"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := chain.Extract(tt.req); got != tt.want {
				t.Errorf("Extract = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestTrustedHeader(t *testing.T) {
	chain, err := Build([]Spec{{Kind: "trusted_header", Header: "X-JWT-Sub"}})
	if err != nil {
		t.Fatal(err)
	}
	got := chain.Extract(fakeRequest{headers: map[string]string{"x-jwt-sub": "acme"}})
	if want := (Credential{Subject, "acme", "trusted_header:x-jwt-sub"}); got != want {
		t.Errorf("Extract = %+v, want %+v", got, want)
	}
}

func TestHashKey(t *testing.T) {
	// printf %s demo-free-key | sha256sum
	if got, want := HashKey("demo-free-key"), "9f8cfdb17116bf0e2a44e071454f25594cb9b8737bf331e6a2f0b30550572f29"; got != want {
		t.Errorf("HashKey = %s, want %s", got, want)
	}
	c := Credential{Kind: APIKey, Value: HashKey("demo-free-key")}
	if got, want := c.KeyID(), "9f8cfdb17116"; got != want {
		t.Errorf("KeyID = %s, want %s", got, want)
	}
}

func TestSpecYAML(t *testing.T) {
	tests := []struct {
		doc     string
		want    []Spec
		wantErr string
	}{
		{"- bearer\n- principal\n", []Spec{{Kind: "bearer"}, {Kind: "principal"}}, ""},
		{"- api_key: {header: x-key}\n- jwt: {claim: tenant, payload: jwt_payload}\n", []Spec{{Kind: "api_key", Header: "x-key"}, {Kind: "jwt", Claim: "tenant", Payload: "jwt_payload"}}, ""},
		{"- bearer:\n", []Spec{{Kind: "bearer"}}, ""},
		{"- cookie\n", nil, `unknown identity kind "cookie"`},
		{"- api_key: {heder: x}\n", nil, "field heder not valid for identity api_key"},
		{"- {bearer: {}, principal: {}}\n", nil, "exactly one kind"},
	}
	for _, tt := range tests {
		var got []Spec
		err := yaml.Unmarshal([]byte(tt.doc), &got)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: err = %v, want %q", tt.doc, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tt.doc, err)
			continue
		}
		if len(got) != len(tt.want) {
			t.Fatalf("%q: got %+v, want %+v", tt.doc, got, tt.want)
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("%q: [%d] = %+v, want %+v", tt.doc, i, got[i], tt.want[i])
			}
		}
	}
	if _, err := Build([]Spec{{Kind: "trusted_header"}}); err == nil {
		t.Error("trusted_header without header: want error")
	}
}
