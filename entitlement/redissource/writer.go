package redissource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-authz/tollgate/entitlement"
)

// Record is one subject as stored: its entitlement and the API-key digests
// that identify it.
type Record struct {
	Entitlement entitlement.Entitlement
	// APIKeyDigests are lower-case hex SHA-256 digests of the subject's API
	// keys (identity.HashKey). Never raw keys.
	APIKeyDigests []string
}

// recordJSON is Record's JSON: the stored record plus its digests.
type recordJSON struct {
	entitlement.JSON
	APIKeySHA256 []string `json:"api_key_sha256,omitempty"`
}

// MarshalJSON writes the stored JSON contract plus "api_key_sha256".
func (r Record) MarshalJSON() ([]byte, error) {
	return json.Marshal(recordJSON{JSON: entitlement.ToJSON(&r.Entitlement), APIKeySHA256: r.APIKeyDigests})
}

// UnmarshalJSON reads what MarshalJSON writes. It does not validate: Put does.
func (r *Record) UnmarshalJSON(b []byte) error {
	var w recordJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*r = Record{Entitlement: *w.Entitlement(), APIKeyDigests: w.APIKeySHA256}
	return nil
}

// CheckSubject reports why s cannot be a subject id, or nil.
func CheckSubject(s string) error {
	if s == "" {
		return errors.New("subject is empty")
	}
	if !utf8.ValidString(s) {
		return errors.New("subject is not valid UTF-8")
	}
	if strings.ContainsFunc(s, unicode.IsControl) {
		return errors.New("subject has a control character")
	}
	return nil
}

// normalizeDigests checks digests and returns them lower-case, sorted and
// without duplicates.
func normalizeDigests(ds []string) ([]string, error) {
	out := make([]string, 0, len(ds))
	for i, d := range ds {
		if !validDigest(d) {
			return nil, fmt.Errorf(`"api_key_sha256[%d]" is not 64 hex digits (a SHA-256 digest; tollgate hash-key makes one)`, i)
		}
		out = append(out, strings.ToLower(d))
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Put stores rec, replacing the subject's record and its whole list of API
// keys: index entries of digests no longer listed are removed, and a digest
// that belonged to another subject moves to this one. The write and the
// PUBLISH of its invalidation are one script: both happen or neither. A Put
// that revokes a key sets the dataset marker (MarkerSuffix).
func (s *Source) Put(ctx context.Context, rec Record) error {
	e := rec.Entitlement
	if err := CheckSubject(e.Subject); err != nil {
		return fmt.Errorf("redissource: put: %w", err)
	}
	if err := e.Validate(); err != nil {
		return fmt.Errorf("redissource: put %q: %w", e.Subject, err)
	}
	digests, err := normalizeDigests(rec.APIKeyDigests)
	if err != nil {
		return fmt.Errorf("redissource: put %q: %w", e.Subject, err)
	}
	body, err := json.Marshal(entitlement.ToJSON(&e))
	if err != nil {
		return fmt.Errorf("redissource: put %q: %w", e.Subject, err)
	}
	args := make([]any, 0, 6+len(digests))
	args = append(args, body, s.keyPfx, s.keySetPfx, e.Subject, s.channel, markerValue())
	for _, d := range digests {
		args = append(args, d)
	}
	keys := []string{s.recordKey(e.Subject), s.keySetKey(e.Subject), s.markerKey}
	if err := putScript.Run(ctx, s.client, keys, args...).Err(); err != nil {
		return fmt.Errorf("redissource: put %q: %w", e.Subject, err)
	}
	return nil
}

// markerValue is what a write stores in the dataset marker: the time of the
// write, for operators. Only the marker's presence matters to lookups.
func markerValue() string { return time.Now().UTC().Format(time.RFC3339) }

// Delete removes subject's record and its API-key index, and publishes the
// invalidation, and sets the dataset marker (MarkerSuffix) so that lookups
// believe the deletion even on a replica that missed the message. It returns
// entitlement.ErrNotFound when there was no record;
// the invalidation is published even then, for replicas still caching one.
func (s *Source) Delete(ctx context.Context, subject string) error {
	if err := CheckSubject(subject); err != nil {
		return fmt.Errorf("redissource: delete: %w", err)
	}
	keys := []string{s.recordKey(subject), s.keySetKey(subject), s.markerKey}
	n, err := deleteScript.Run(ctx, s.client, keys, s.keyPfx, subject, s.channel, markerValue()).Int64()
	if err != nil {
		return fmt.Errorf("redissource: delete %q: %w", subject, err)
	}
	if n == 0 {
		return entitlement.ErrNotFound
	}
	return nil
}

// Get reads subject's record and its API-key digests (sorted) from one
// snapshot. It returns entitlement.ErrNotFound when there is no record, and
// an error matching ErrInvalidRecord when the stored value is not valid.
func (s *Source) Get(ctx context.Context, subject string) (Record, error) {
	if err := CheckSubject(subject); err != nil {
		return Record{}, fmt.Errorf("redissource: get: %w", err)
	}
	var (
		body *redis.StringCmd
		keys *redis.StringSliceCmd
	)
	_, err := s.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		body = p.Get(ctx, s.recordKey(subject))
		keys = p.SMembers(ctx, s.keySetKey(subject))
		return nil
	})
	if errors.Is(err, redis.Nil) || err == nil && errors.Is(body.Err(), redis.Nil) {
		return Record{}, entitlement.ErrNotFound
	}
	if err != nil {
		return Record{}, fmt.Errorf("redissource: get %q: %w", subject, err)
	}
	e, err := decode(body.Val(), subject)
	if err != nil {
		return Record{}, fmt.Errorf("redissource: get %q: %w: %w", subject, ErrInvalidRecord, err)
	}
	digests := keys.Val()
	slices.Sort(digests)
	return Record{Entitlement: *e, APIKeyDigests: digests}, nil
}

// putScript writes a record and its key index, then publishes.
//
// KEYS[1]: the record; KEYS[2]: the subject's digest set; KEYS[3]: the
// dataset marker. ARGV[1]: the record JSON; ARGV[2]: index prefix; ARGV[3]:
// digest-set prefix; ARGV[4]: the subject; ARGV[5]: the channel; ARGV[6]: the
// marker's value; ARGV[7..]: the digests (unique, lower-case). Every read
// comes before the first write, so a key of the wrong type fails the script
// with nothing written.
var putScript = redis.NewScript(`
local subject = ARGV[4]
local old = redis.call('SMEMBERS', KEYS[2])
local keep, owners, stale = {}, {}, {}
for i = 7, #ARGV do
  keep[ARGV[i]] = true
  owners[i] = redis.call('GET', ARGV[2] .. ARGV[i])
end
for _, d in ipairs(old) do
  if not keep[d] and redis.call('GET', ARGV[2] .. d) == subject then
    stale[#stale + 1] = d
  end
end

if #stale > 0 then
  -- A key revoked: from now on a lookup that finds nothing is believed.
  redis.call('SET', KEYS[3], ARGV[6])
else
  -- Only added or replaced: refresh the marker, never create it, so that
  -- replaying records into a Redis that lost its data does not make the
  -- subjects not yet replayed believed unknown.
  redis.call('SET', KEYS[3], ARGV[6], 'XX')
end
redis.call('SET', KEYS[1], ARGV[1])
for _, d in ipairs(stale) do redis.call('DEL', ARGV[2] .. d) end
redis.call('DEL', KEYS[2])
for i = 7, #ARGV do
  local d = ARGV[i]
  redis.call('SET', ARGV[2] .. d, subject)
  redis.call('SADD', KEYS[2], d)
  local prev = owners[i]
  if prev and prev ~= subject then
    -- The key moved from another subject: drop it from that one's list.
    redis.pcall('SREM', ARGV[3] .. prev, d)
  end
end

local parts, seen = {}, {}
local function add(d)
  if not seen[d] then seen[d] = true; parts[#parts + 1] = cjson.encode(d) end
end
for _, d in ipairs(old) do add(d) end
for i = 7, #ARGV do add(ARGV[i]) end
redis.call('PUBLISH', ARGV[5], '{"subject":' .. cjson.encode(subject) .. ',"api_key_sha256":[' .. table.concat(parts, ',') .. ']}')
return 1
`)

// deleteScript removes a record and its key index, then publishes.
//
// KEYS[1]: the record; KEYS[2]: the subject's digest set; KEYS[3]: the
// dataset marker. ARGV[1]: index prefix; ARGV[2]: the subject; ARGV[3]: the
// channel; ARGV[4]: the marker's value. Returns how many records were
// deleted (0 or 1). With the marker set, a lookup that finds nothing is
// believed: the deletion is not mistaken for lost data.
var deleteScript = redis.NewScript(`
local subject = ARGV[2]
local old = redis.call('SMEMBERS', KEYS[2])
local mine, parts = {}, {}
for _, d in ipairs(old) do
  if redis.call('GET', ARGV[1] .. d) == subject then mine[#mine + 1] = d end
  parts[#parts + 1] = cjson.encode(d)
end
redis.call('SET', KEYS[3], ARGV[4])
local n = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
for _, d in ipairs(mine) do redis.call('DEL', ARGV[1] .. d) end
redis.call('PUBLISH', ARGV[3], '{"subject":' .. cjson.encode(subject) .. ',"api_key_sha256":[' .. table.concat(parts, ',') .. ']}')
return n
`)

// APIKeys returns the API-key digests listed for subject, sorted; none when
// the subject has no record.
func (s *Source) APIKeys(ctx context.Context, subject string) ([]string, error) {
	ds, err := s.client.SMembers(ctx, s.keySetKey(subject)).Result()
	if err != nil {
		return nil, fmt.Errorf("redissource: api keys of %q: %w", subject, err)
	}
	slices.Sort(ds)
	return ds, nil
}
