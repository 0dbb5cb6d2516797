package authz

import (
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// The decision log line is the one log line written per refused Check (and
// per sampled allow). Through slog's JSON handler it cost about a tenth of
// a refused Check's CPU and an allocation (the attribute slice past five
// attributes), so when Deps.DecisionLog names the writer under Log's JSON
// handler the line is encoded here instead, into a pooled buffer, and
// handed to that writer in one Write: the same members in the same order
// with the same escaping as the handler (TestDecisionLineMatchesSlog holds
// the two to the byte). Every other line still goes through slog.

// decisionAttrs appends the decision line's attributes, in the order they
// are written, to attrs: what Log gets when there is no DecisionLog, and
// the reference appendDecisionLine is tested against.
func decisionAttrs(attrs []slog.Attr, res *Result, method, path string) []slog.Attr {
	attrs = append(attrs,
		slog.String("request_id", res.RequestID),
		slog.String("decision_id", res.DecisionID),
		slog.String("decision", decisionWord(res)),
		slog.String("code", res.Code.String()),
		slog.Int("status", res.Status),
		slog.String("method", method),
		slog.String("path", path),
		slog.String("route", res.Route),
		slog.String("subject", res.Subject),
		slog.String("plan", res.Plan),
		slog.Int64("latency_us", res.Duration.Microseconds()),
	)
	if res.TraceID != "" {
		attrs = append(attrs, slog.String("trace_id", res.TraceID))
	}
	if res.CredFrom != "" {
		attrs = append(attrs, slog.String("credential", res.CredFrom))
	}
	if res.KeyID != "" {
		attrs = append(attrs, slog.String("key_id", res.KeyID))
	}
	if res.Looked {
		attrs = append(attrs, slog.String("cache", res.Cache.String()))
	}
	if res.Shadow {
		attrs = append(attrs, slog.Bool("shadow", true))
	}
	if res.Payment != "" {
		attrs = append(attrs, slog.String("payment", res.Payment), slog.String("payer", res.Payer))
	}
	return attrs
}

// decisionWord is the line's "decision": a shadow-mode refusal is a deny
// even though Envoy was told to allow.
func decisionWord(res *Result) string {
	if res.Allowed && !res.Shadow {
		return "allow"
	}
	return "deny"
}

// appendDecisionLine appends the line slog's JSON handler writes for
// LogAttrs(ctx, slog.LevelInfo, "decision", decisionAttrs(…)...) at time t,
// newline included. t's year must be within [0, 9999] (the handler writes
// an error in place of a time outside it; writeDecision leaves those to
// slog).
func appendDecisionLine(b []byte, t time.Time, res *Result, method, path string) []byte {
	b = append(b, `{"time":"`...)
	b = t.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","level":"INFO","msg":"decision","request_id":`...)
	b = appendLogString(b, res.RequestID)
	b = append(b, `,"decision_id":`...)
	b = appendLogString(b, res.DecisionID)
	b = append(b, `,"decision":"`...)
	b = append(b, decisionWord(res)...)
	b = append(b, `","code":`...)
	b = appendLogString(b, res.Code.String())
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(res.Status), 10)
	b = append(b, `,"method":`...)
	b = appendLogString(b, method)
	b = append(b, `,"path":`...)
	b = appendLogString(b, path)
	b = append(b, `,"route":`...)
	b = appendLogString(b, res.Route)
	b = append(b, `,"subject":`...)
	b = appendLogString(b, res.Subject)
	b = append(b, `,"plan":`...)
	b = appendLogString(b, res.Plan)
	b = append(b, `,"latency_us":`...)
	b = strconv.AppendInt(b, res.Duration.Microseconds(), 10)
	if res.TraceID != "" {
		b = append(b, `,"trace_id":`...)
		b = appendLogString(b, res.TraceID)
	}
	if res.CredFrom != "" {
		b = append(b, `,"credential":`...)
		b = appendLogString(b, res.CredFrom)
	}
	if res.KeyID != "" {
		b = append(b, `,"key_id":`...)
		b = appendLogString(b, res.KeyID)
	}
	if res.Looked {
		b = append(b, `,"cache":`...)
		b = appendLogString(b, res.Cache.String())
	}
	if res.Shadow {
		b = append(b, `,"shadow":true`...)
	}
	if res.Payment != "" {
		b = append(b, `,"payment":`...)
		b = appendLogString(b, res.Payment)
		b = append(b, `,"payer":`...)
		b = appendLogString(b, res.Payer)
	}
	return append(b, "}\n"...)
}

// appendLogString appends s quoted as slog's JSON handler quotes a string
// (unlike appendJSONString, which also escapes <, > and & for bodies):
// `"` and `\` escaped, control characters as \n, \r, \t or \u00XX, each
// byte of invalid UTF-8 as \ufffd, U+2028 and U+2029 escaped (they end a
// line in JavaScript); everything else, '<', '>' and '&' included, as is.
func appendLogString(b []byte, s string) []byte {
	b = append(b, '"')
	done := 0 // s[:done] is in b
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[done:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, `\n`...)
			case '\r':
				b = append(b, `\r`...)
			case '\t':
				b = append(b, `\t`...)
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			done = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[done:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[done:i]...)
			b = append(b, `\u202`...)
			b = append(b, hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		done = i
	}
	b = append(b, s[done:]...)
	return append(b, '"')
}

// lineBufs are the buffers decision lines are encoded into. The writer
// copies a line before Write returns (asynclog does), so a buffer goes back
// at once.
var lineBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// maxPooledLine keeps a buffer grown by an unusually long line (a long
// request id or path) out of the pool.
const maxPooledLine = 16 << 10

// writeDecision writes res's decision line to s.decisionLog and reports
// whether it did: false leaves the line to slog (a clock reading outside
// the years slog's JSON handler writes as a time).
func (s *Server) writeDecision(res *Result, method, path string) bool {
	now := time.Now()
	if y := now.Year(); y < 0 || y > 9999 {
		return false
	}
	bp := lineBufs.Get().(*[]byte)
	b := appendDecisionLine((*bp)[:0], now, res, method, path)
	_, _ = s.decisionLog.Write(b) // a log line never fails a Check; asynclog counts its drops
	if cap(b) <= maxPooledLine {
		*bp = b
		lineBufs.Put(bp)
	}
	return true
}
