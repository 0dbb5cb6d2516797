package redissource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Backoff between attempts to reach Redis while the subscription is down.
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = time.Second
)

// silentLimit is how many HealthCheck intervals without a word from Redis
// (not even the answer to a PING) make Subscribe drop the connection.
const silentLimit = 3

// message is an invalidation as published on the channel.
type message struct {
	Subject      string   `json:"subject"`
	APIKeySHA256 []string `json:"api_key_sha256"`
}

// Subscribe listens on the invalidation channel until ctx ends, then returns
// nil. It calls onInvalidate for each message: the subject changed or was
// deleted, and digests lists the API-key digests whose answer may have
// changed (to drop cached "unknown key" answers too). It never returns
// because Redis is down: it reconnects by itself, with backoff.
//
// Delivery is at most once: what is published while the subscription is
// down is lost. So onResync (which may be nil) is called each time the
// subscription is established, the first time included: the caller should
// mark its whole cache for revalidation there (cache.Revalidate), not drop
// it, since Redis may have come back still loading or empty. The first call also says the subscription is
// live, which tests use to know when a publish will be seen.
//
// A message that is not a JSON object is taken as a plain subject id, so a
// writer can `PUBLISH tollgate:invalidate acme`. A JSON object that cannot
// be read calls onResync too, since its subject cannot be known.
//
// Callbacks run one at a time on the calling goroutine; a slow callback
// delays the next message.
func (s *Source) Subscribe(ctx context.Context, onInvalidate func(subject string, digests []string), onResync func()) error {
	if onInvalidate == nil {
		return errors.New("redissource: Subscribe needs an onInvalidate callback")
	}
	if onResync == nil {
		onResync = func() {}
	}
	sub := &subscriber{src: s, onInvalidate: onInvalidate, onResync: onResync, backoff: minBackoff}
	for ctx.Err() == nil {
		sub.session(ctx)
	}
	return nil
}

// subscriber is Subscribe's state across sessions.
type subscriber struct {
	src          *Source
	onInvalidate func(string, []string)
	onResync     func()
	backoff      time.Duration
	up           bool // the subscription is live
	everUp       bool
	downLogged   bool // the current outage was logged
}

// session runs one PubSub until ctx ends or the connection is judged dead
// while silent. go-redis reconnects (and resubscribes) a PubSub by itself
// after an I/O error, but not a connection that merely goes quiet (a
// partition, a stalled server): that one is replaced here.
func (sub *subscriber) session(ctx context.Context) {
	s := sub.src
	ps := s.client.Subscribe(ctx, s.channel)
	// Closing the PubSub is what interrupts a blocked read when ctx ends.
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer func() {
		stop()
		_ = ps.Close()
	}()
	silent := 0
	for {
		msg, err := ps.ReceiveTimeout(ctx, s.healthCheck)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			var rerr redis.Error
			if sub.up && errors.As(err, &rerr) {
				// Redis answered our PING with an error, such as LOADING
				// while it reads its data after a restart: the connection
				// and the subscription are alive.
				silent = 0
				continue
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				silent++
				if silent >= silentLimit {
					sub.down(fmt.Errorf("no word from redis in %v", silentLimit*s.healthCheck))
					return
				}
				if sub.up {
					// The answer, or the write error (which makes go-redis
					// reconnect), arrives on the next receive.
					_ = ps.Ping(ctx)
				}
				continue
			}
			// A dropped or refused connection: go-redis dials again and
			// resubscribes on the next receive.
			sub.down(err)
			if !sleep(ctx, sub.backoff) {
				return
			}
			sub.backoff = min(2*sub.backoff, maxBackoff)
			continue
		}
		silent = 0
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" && m.Channel == s.channel {
				sub.established()
			}
		case *redis.Message:
			sub.deliver(m.Payload)
		}
	}
}

// established is called on every SUBSCRIBE confirmation: the first, and
// each one after go-redis or session reconnected.
func (sub *subscriber) established() {
	log := sub.src.log
	switch {
	case !sub.everUp:
		log.Info("subscribed to entitlement invalidations", "source", "redis", "channel", sub.src.channel)
	case !sub.up:
		log.Info("resubscribed to entitlement invalidations; cached entitlements will be revalidated, since changes published meanwhile were missed",
			"source", "redis", "channel", sub.src.channel)
	default:
		// A confirmation while up: go-redis reconnected between two
		// receives. Messages may have been missed all the same.
		log.Info("resubscribed to entitlement invalidations after a reconnect; cached entitlements will be revalidated",
			"source", "redis", "channel", sub.src.channel)
	}
	sub.up, sub.everUp, sub.downLogged = true, true, false
	sub.backoff = minBackoff
	sub.onResync()
}

// down records a lost or failed subscription, logging once per outage.
func (sub *subscriber) down(err error) {
	if sub.up || !sub.downLogged {
		msg := "cannot subscribe to entitlement invalidations; retrying"
		if sub.everUp {
			msg = "lost the entitlement invalidation subscription; retrying, and cached entitlements will be revalidated on reconnect"
		}
		sub.src.log.Warn(msg, "source", "redis", "channel", sub.src.channel, "err", err)
		sub.downLogged = true
	}
	sub.up = false
}

// deliver parses one message and calls back.
func (sub *subscriber) deliver(payload string) {
	subject, digests, ok := parseMessage(payload)
	if !ok {
		sub.src.log.Warn("unreadable entitlement invalidation; cached entitlements will be revalidated",
			"source", "redis", "channel", sub.src.channel, "bytes", len(payload))
		sub.onResync()
		return
	}
	sub.onInvalidate(subject, digests)
}

// parseMessage reads a JSON message or a plain subject id. Digests are
// returned lower-case; entries that are not digests are dropped.
func parseMessage(payload string) (subject string, digests []string, ok bool) {
	if !strings.HasPrefix(strings.TrimSpace(payload), "{") {
		if CheckSubject(payload) != nil {
			return "", nil, false
		}
		return payload, nil, true
	}
	var m message
	if err := json.Unmarshal([]byte(payload), &m); err != nil || CheckSubject(m.Subject) != nil {
		return "", nil, false
	}
	for _, d := range m.APIKeySHA256 {
		if validDigest(d) {
			digests = append(digests, strings.ToLower(d))
		}
	}
	return m.Subject, digests, true
}

// sleep waits d, or until ctx ends (false).
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
