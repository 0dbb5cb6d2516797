package app

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/quota"
)

// UsageReport is what GET /v1/usage/{subject} (and `tollgate usage`)
// shows of one subject.
type UsageReport struct {
	Subject string         `json:"subject"`
	Plan    string         `json:"plan"`
	Status  string         `json:"status"`
	Quotas  []CounterState `json:"quotas"`
	// Export is the outbox's backlog (all subjects), when routes are
	// metered.
	Export *ExportState `json:"export,omitempty"`
	// Note says what the counters include.
	Note string `json:"note"`
}

// CounterState is one counter: a quota of the plan, or the credits.
type CounterState struct {
	Name      string    `json:"name"`
	Period    string    `json:"period,omitempty"`
	Limit     int64     `json:"limit"`
	Used      int64     `json:"used"`
	Remaining int64     `json:"remaining"`
	ResetsAt  time.Time `json:"resets_at"`
}

// ExportState is the usage outbox's backlog.
type ExportState struct {
	Backlog int       `json:"events_not_exported"`
	Oldest  time.Time `json:"oldest,omitzero"`
	To      string    `json:"to"`
}

const usageNote = "used includes the reservations of requests still in flight: each is settled to its actual use when its response ends"

// Usage reports a subject's counters now.
func (a *App) Usage(ctx context.Context, subject string) (*UsageReport, error) {
	e, _, err := a.cache.Get(ctx, entitlement.Key{Kind: entitlement.BySubject, ID: subject})
	if err != nil {
		return nil, err
	}
	rep := &UsageReport{Subject: e.Subject, Plan: e.Plan, Status: string(e.Status), Quotas: []CounterState{}, Note: usageNote}
	pk, _ := a.quotas.Quotas.(quota.Peeker)
	now := time.Now()
	for _, sp := range a.policy().Counters(e, now) {
		c := CounterState{Name: sp.Quota, Limit: sp.Limit, ResetsAt: sp.Reset.UTC()}
		if !sp.Credits {
			c.Period = sp.Period.String()
		}
		if pk != nil {
			if c.Used, err = pk.Peek(ctx, e.Subject, quota.Item{Key: quota.Key(e.Subject, sp.Counter, sp.Start), Limit: sp.Limit, Reset: sp.Reset}); err != nil {
				return nil, err
			}
		}
		c.Remaining = max(c.Limit-c.Used, 0)
		rep.Quotas = append(rep.Quotas, c)
	}
	if m := a.metering; m != nil {
		st, err := m.box.Stats(ctx)
		if err != nil {
			return nil, err
		}
		rep.Export = &ExportState{Backlog: st.Backlog, Oldest: st.Oldest, To: a.cfg.Metering.Export.To}
	}
	return rep, nil
}

// usageHandler serves GET /v1/usage/{subject}.
func (a *App) usageHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		subject := r.PathValue("subject")
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		rep, err := a.Usage(ctx, subject)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		switch {
		case errors.Is(err, entitlement.ErrNotFound):
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "no such subject"})
			return
		case err != nil:
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "entitlements or quota store unavailable"})
			a.log.Warn("GET /v1/usage failed", "error", err.Error())
			return
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	})
}
