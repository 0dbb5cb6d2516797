package paystore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a Store shared by replicas through Redis. Each record is a hash
// that expires at its Expires (PEXPIREAT); a payment id is a string key
// naming its record, expiring with it; the Unknown records are indexed in
// a sorted set by a counter bumped at each Finish(Unknown); LastAttempt is
// the Redis server's TIME, one clock for all replicas. Claim, Finish,
// Release and Unknowns are one Lua script each, so they are atomic across
// replicas. All keys of a store carry the same hash tag, so they live in
// one slot of a Redis Cluster; that is what lets a script read a key it
// learns inside (the record a payment id names, the records of the index).
type Redis struct {
	client redis.UniversalClient
	base   string // prefix + hash tag; every key starts with it
}

var _ Store = (*Redis)(nil)

// NewRedis returns a store keeping its keys under prefix (e.g. "tollgate:").
func NewRedis(client redis.UniversalClient, prefix string) *Redis {
	return &Redis{client: client, base: prefix + "{paystore}"}
}

func (r *Redis) recordKey(key string) string { return r.base + ":r:" + key }

// idKey hashes the payment id: it is the client's string, of any content
// and up to a header's length.
func (r *Redis) idKey(id string) string { return r.base + ":id:" + DigestOf(id) }

func (r *Redis) unknownKey() string { return r.base + ":unknown" }
func (r *Redis) seqKey() string     { return r.base + ":seq" }

// Hash fields of a record.
const (
	fKey, fID, fIDKey, fDigest, fState = "k", "id", "ik", "dg", "st"
	fRoute, fSubject, fPayload         = "rt", "sb", "pl"
	fReceipt, fReason, fExpires        = "rc", "rs", "ex"
	fAttempts, fLastAttempt            = "at", "la"
)

// claimScript: KEYS[1] the record, KEYS[2] (optional) the payment id.
// ARGV[1] expiry (Unix ms), ARGV[2] the record key prefix, ARGV[3] the
// record's key, ARGV[4...] the hash's fields and values. Returns the
// existing record's fields, or an empty array when it stored rec.
var claimScript = redis.NewScript(`
local cur = redis.call('HGETALL', KEYS[1])
if #cur > 0 then return cur end
if KEYS[2] then
  local other = redis.call('GET', KEYS[2])
  if other then
    cur = redis.call('HGETALL', ARGV[2] .. other)
    if #cur > 0 then return cur end
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
if KEYS[2] then
  redis.call('SET', KEYS[2], ARGV[3])
  redis.call('PEXPIREAT', KEYS[2], ARGV[1])
end
return {}
`)

// finishScript: KEYS[1] the record, KEYS[2] the Unknown index, KEYS[3] its
// counter; ARGV state, receipt, reason, key. Returns the record's fields as
// they were before (an empty array when it is gone). Settled is final; a
// mark (reason 'settling') applies to a Pending or Unknown record only and
// counts the attempt, which the outcome after it does not count again
// (Store.Finish). LastAttempt is the server's TIME, in ms. HSET keeps the
// hash's expiry.
var finishScript = redis.NewScript(`
local f = redis.call('HMGET', KEYS[1], 'st', 'rs')
if not f[1] then return {} end
local before = redis.call('HGETALL', KEYS[1])
if f[1] == 'settled' then return before end
local mark = ARGV[3] == 'settling'
if mark and f[1] ~= 'pending' and f[1] ~= 'unknown' then return before end
local t = redis.call('TIME')
local ms = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
redis.call('HSET', KEYS[1], 'st', ARGV[1], 'rc', ARGV[2], 'rs', ARGV[3], 'la', ms)
if mark or f[2] ~= 'settling' then redis.call('HINCRBY', KEYS[1], 'at', 1) end
if ARGV[1] == 'unknown' then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[4])
else
  redis.call('ZREM', KEYS[2], ARGV[4])
end
return before
`)

// releaseScript: KEYS[1] the record; ARGV[1] its key. Returns 1 when it
// forgot a Pending record, 0 when there was none, 2 when it is not Pending.
var releaseScript = redis.NewScript(`
local st = redis.call('HGET', KEYS[1], 'st')
if not st then return 0 end
if st ~= 'pending' then return 2 end
local ik = redis.call('HGET', KEYS[1], 'ik')
if ik and ik ~= '' and redis.call('GET', ik) == ARGV[1] then redis.call('DEL', ik) end
redis.call('DEL', KEYS[1])
return 1
`)

// unknownsScript: KEYS[1] the Unknown index; ARGV[1] n, ARGV[2] the record
// key prefix. Returns up to n records (their fields) in index order, and
// drops index members whose record expired or is no longer Unknown.
var unknownsScript = redis.NewScript(`
local want = tonumber(ARGV[1])
local out = {}
local start = 0
while #out < want do
  local members = redis.call('ZRANGE', KEYS[1], start, start + want - 1)
  if #members == 0 then break end
  local kept = 0
  for _, m in ipairs(members) do
    local k = ARGV[2] .. m
    if redis.call('HGET', k, 'st') == 'unknown' then
      kept = kept + 1
      if #out < want then out[#out + 1] = redis.call('HGETALL', k) end
    else
      redis.call('ZREM', KEYS[1], m)
    end
  end
  start = start + kept
end
return out
`)

// Claim implements Store.
func (r *Redis) Claim(ctx context.Context, rec Record) (Record, bool, error) {
	if err := checkClaim(rec); err != nil {
		return Record{}, false, err
	}
	keys := []string{r.recordKey(rec.Key)}
	idKey := ""
	if rec.PaymentID != "" {
		idKey = r.idKey(rec.PaymentID)
		keys = append(keys, idKey)
	}
	args := []any{
		rec.Expires.UnixMilli(), r.recordKey(""), rec.Key,
		fKey, rec.Key, fID, rec.PaymentID, fIDKey, idKey, fDigest, rec.Digest, fState, Pending.String(),
		fRoute, rec.Route, fSubject, rec.Subject, fPayload, rec.Payload,
		fReceipt, "", fReason, "", fExpires, rec.Expires.UnixMilli(), fAttempts, 0,
	}
	fields, err := claimScript.Run(ctx, r.client, keys, args...).StringSlice()
	if err != nil {
		return Record{}, false, fmt.Errorf("paystore: claim: %w", err)
	}
	if len(fields) == 0 {
		return Record{}, true, nil
	}
	existing, err := decodeFields(pairs(fields))
	return existing, false, err
}

// Get implements Store.
func (r *Redis) Get(ctx context.Context, key string) (Record, bool, error) {
	m, err := r.client.HGetAll(ctx, r.recordKey(key)).Result()
	if err != nil {
		return Record{}, false, fmt.Errorf("paystore: get: %w", err)
	}
	if len(m) == 0 {
		return Record{}, false, nil
	}
	rec, err := decodeFields(m)
	return rec, err == nil, err
}

// Finish implements Store.
func (r *Redis) Finish(ctx context.Context, key string, state State, receipt, reason string) (Record, error) {
	if err := checkFinish(state, reason); err != nil {
		return Record{}, err
	}
	fields, err := finishScript.Run(ctx, r.client, []string{r.recordKey(key), r.unknownKey(), r.seqKey()},
		state.String(), receipt, reason, key).StringSlice()
	if err != nil {
		return Record{}, fmt.Errorf("paystore: finish: %w", err)
	}
	if len(fields) == 0 {
		return Record{}, ErrNotFound
	}
	return decodeFields(pairs(fields))
}

// Release implements Store.
func (r *Redis) Release(ctx context.Context, key string) error {
	n, err := releaseScript.Run(ctx, r.client, []string{r.recordKey(key)}, key).Int64()
	if err != nil {
		return fmt.Errorf("paystore: release: %w", err)
	}
	if n == 2 {
		return ErrNotPending
	}
	return nil
}

// Unknowns implements Store.
func (r *Redis) Unknowns(ctx context.Context, n int) ([]Record, error) {
	n = clampN(n)
	if n == 0 {
		return nil, nil
	}
	res, err := unknownsScript.Run(ctx, r.client, []string{r.unknownKey()}, n, r.recordKey("")).Slice()
	if err != nil {
		return nil, fmt.Errorf("paystore: unknowns: %w", err)
	}
	out := make([]Record, 0, len(res))
	for _, item := range res {
		raw, ok := item.([]any)
		if !ok {
			return out, errors.New("paystore: unknowns: unexpected reply")
		}
		fields := make([]string, 0, len(raw))
		for _, f := range raw {
			s, ok := f.(string)
			if !ok {
				return out, errors.New("paystore: unknowns: unexpected reply")
			}
			fields = append(fields, s)
		}
		rec, err := decodeFields(pairs(fields))
		if err != nil {
			return out, err
		}
		out = append(out, rec)
	}
	return out, nil
}

// pairs turns HGETALL's flat reply into a map.
func pairs(flat []string) map[string]string {
	m := make(map[string]string, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		m[flat[i]] = flat[i+1]
	}
	return m
}

func decodeFields(m map[string]string) (Record, error) {
	st, ok := parseState(m[fState])
	if !ok {
		return Record{}, fmt.Errorf("paystore: record %q has state %q", m[fKey], m[fState])
	}
	ex, err := strconv.ParseInt(m[fExpires], 10, 64)
	if err != nil {
		return Record{}, fmt.Errorf("paystore: record %q has expiry %q", m[fKey], m[fExpires])
	}
	at, err := strconv.Atoi(m[fAttempts])
	if err != nil {
		return Record{}, fmt.Errorf("paystore: record %q has attempts %q", m[fKey], m[fAttempts])
	}
	var last time.Time
	if la := m[fLastAttempt]; la != "" { // absent before the first Finish
		ms, err := strconv.ParseInt(la, 10, 64)
		if err != nil {
			return Record{}, fmt.Errorf("paystore: record %q has last attempt %q", m[fKey], la)
		}
		last = time.UnixMilli(ms)
	}
	return Record{
		Key: m[fKey], PaymentID: m[fID], Digest: m[fDigest], State: st,
		Route: m[fRoute], Subject: m[fSubject], Payload: m[fPayload],
		Receipt: m[fReceipt], Reason: m[fReason], Expires: time.UnixMilli(ex), Attempts: at,
		LastAttempt: last,
	}, nil
}
