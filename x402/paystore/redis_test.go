package paystore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// TestRedisExpiresAt: the record and its payment id expire at Expires, to
// the millisecond, and a Finish keeps that expiry.
func TestRedisExpiresAt(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := srv.Client()
	s := NewRedis(c, "x:")
	expires := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	rec := Record{Key: "a/b/c", PaymentID: "pay-1", Digest: "d", Payload: "p", Expires: expires}
	mustClaim(t, s, rec)
	mustFinish(t, s, rec.Key, Unknown, "", "timeout")
	for _, key := range []string{s.recordKey(rec.Key), s.idKey(rec.PaymentID)} {
		got, err := c.Do(ctx, "PEXPIRETIME", key).Int64()
		if err != nil {
			t.Fatal(err)
		}
		if want := expires.UnixMilli(); got != want {
			t.Errorf("PEXPIRETIME %s = %d, want %d", key, got, want)
		}
	}
}

// TestRedisUnknownsDropsExpired: an Unknown record that expired leaves the
// index on the next Unknowns, and does not hide the ones behind it.
func TestRedisUnknownsDropsExpired(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := srv.Client()
	s := NewRedis(c, "x:")
	expires := time.Now().Add(time.Hour)
	var keys []string
	for _, k := range []string{"a/b/1", "a/b/2", "a/b/3"} {
		keys = append(keys, k)
		mustClaim(t, s, Record{Key: k, Payload: "p", Expires: expires})
		mustFinish(t, s, k, Unknown, "", "timeout")
	}
	// As if the first two expired.
	if err := c.Del(ctx, s.recordKey(keys[0]), s.recordKey(keys[1])).Err(); err != nil {
		t.Fatal(err)
	}
	if got, want := unknownKeys(t, s, 1), keys[2:]; !equalKeys(got, want) {
		t.Errorf("Unknowns(1) = %v, want %v", got, want)
	}
	if got, err := c.ZCard(ctx, s.unknownKey()).Result(); err != nil || got != 1 {
		t.Errorf("index holds %d members (%v), want 1", got, err)
	}
}

// TestRedisRestartEmpty: after Redis restarts with nothing, the store works
// again and says what it lost: the records are gone (a replay is claimed
// again, the Unknown is no longer listed) and Finish of a payment in flight
// is ErrNotFound.
func TestRedisRestartEmpty(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	s := NewRedis(srv.Client(), "x:")
	expires := time.Now().Add(time.Hour)
	settled := Record{Key: "a/b/1", PaymentID: "pay-1", Payload: "p1", Expires: expires}
	unknown := Record{Key: "a/b/2", Payload: "p2", Expires: expires}
	inFlight := Record{Key: "a/b/3", Payload: "p3", Expires: expires}
	for _, rec := range []Record{settled, unknown, inFlight} {
		mustClaim(t, s, rec)
	}
	mustFinish(t, s, settled.Key, Settled, "receipt", "")
	mustFinish(t, s, unknown.Key, Unknown, "", "timeout")

	srv.Restart()
	// The pool's old connections fail once each; wait until a call goes through.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, err := s.Get(ctx, settled.Key)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store unusable after restart: %v", err)
		}
	}

	if _, found, err := s.Get(ctx, settled.Key); err != nil || found {
		t.Errorf("settled record after restart: found=%v err=%v; want lost", found, err)
	}
	if got := unknownKeys(t, s, 10); len(got) != 0 {
		t.Errorf("Unknowns after restart = %v, want none", got)
	}
	if _, err := s.Finish(ctx, inFlight.Key, Settled, "r", ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("Finish after restart = %v, want ErrNotFound", err)
	}
	mustClaim(t, s, settled) // a replay is claimed again: the facilitator is the backstop
	if _, claimed, err := s.Claim(ctx, Record{Key: "a/b/9", PaymentID: "pay-1", Expires: expires}); err != nil || claimed {
		t.Errorf("payment id after the replay's claim: claimed=%v err=%v; want held", claimed, err)
	}
}
