package app

import (
	"encoding/json"
	"path/filepath"
	"testing"
)

// TestDecisionIDFindsTheLogLine: each answer of a served app carries its
// own decision id, and that one value finds the answer's line in the
// decision log: "why was I refused" from what the client saw.
func TestDecisionIDFindsTheLogLine(t *testing.T) {
	s := startServe(t, filepath.Join(demoDir(t, "127.0.0.1:0"), "tollgate.yaml"))
	tests := []struct {
		name, method, path, key, code string
	}{
		{"allow", "GET", "/v1/search", "demo-free-key", "ok"},
		{"feature not in plan", "POST", "/v1/chat", "demo-free-key", "feature_not_in_plan"},
		{"the same refusal again", "POST", "/v1/chat", "demo-free-key", "feature_not_in_plan"},
		{"unknown key", "GET", "/v1/search", "no-such-key", "invalid_credentials"},
	}
	seen := map[string]string{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Every Check here sends the same x-request-id: the decision id
			// must tell them apart all the same.
			resp := s.check(t, tt.method, tt.path, map[string]string{"x-api-key": tt.key})
			id := decisionID(resp)
			if len(id) != 32 {
				t.Fatalf("decision id %q, want 32 hex digits", id)
			}
			if other, ok := seen[id]; ok {
				t.Fatalf("decision id %s repeats that of %q", id, other)
			}
			seen[id] = tt.name
			if den := resp.GetDeniedResponse(); den != nil {
				var body struct {
					DecisionID string `json:"decision_id"`
				}
				if err := json.Unmarshal([]byte(den.GetBody()), &body); err != nil || body.DecisionID != id {
					t.Errorf("body decision_id = %q (%v), header %q", body.DecisionID, err, id)
				}
			}
			if got := resp.GetDynamicMetadata().GetFields()["decision_id"].GetStringValue(); got != id {
				t.Errorf("dynamic metadata decision_id = %q, want %q", got, id)
			}
			line := logLine(t, s.logs, id)
			if line["code"] != tt.code || line["request_id"] != "e2e-1" {
				t.Errorf("log line %v, want code %s", line, tt.code)
			}
		})
	}
}
