package export

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/usage"
)

// Loop options for tests: waits of an hour or more are held by the fake
// clock until the test fires them, so an idle loop waits for Wake and an
// Export is never timed out unless the test says so.
const (
	testPoll          = 3 * time.Hour
	testExportTimeout = 2 * time.Hour
	testDrainTimeout  = 4 * time.Hour
	testStats         = 5 * time.Hour
)

func loopOptions(clock *fakeClock, obs Observer) RunOptions {
	return RunOptions{
		Batch:         10,
		PollInterval:  testPoll,
		ExportTimeout: testExportTimeout,
		StatsInterval: -1,
		Observer:      obs,
		Now:           clock.Now,
		After:         clock.After,
		// The top of the jitter range: waits are exactly the backoff.
		Jitter: func(n int64) int64 { return n - 1 },
	}
}

func secs(s ...int) []time.Duration {
	out := make([]time.Duration, len(s))
	for i, v := range s {
		out[i] = time.Duration(v) * time.Second
	}
	return out
}

// TestRunExactlyOnce drains an outbox into each fake provider while the
// provider fails in the ways real ones do, and checks that every event is
// counted once, with its units, the outbox ends empty, and the loop waited
// as it should between attempts.
func TestRunExactlyOnce(t *testing.T) {
	tests := []struct {
		name       string
		script     func(clock *fakeClock) func(n int) mode
		retryAfter string
		wantSleeps []time.Duration // nil: not checked
		maxSleep   time.Duration   // 0: not checked
	}{
		{
			name:   "every answer fine",
			script: func(*fakeClock) func(int) mode { return nil },
			// Nothing failed: the loop never waited.
			wantSleeps: []time.Duration{},
		},
		{
			name: "lost answers and 500s",
			script: func(*fakeClock) func(int) mode {
				return func(n int) mode { return []mode{answerOK, count500, answer500}[n%3] }
			},
			// Never more than two failures in a row, and a round that
			// delivered some events starts the count again: 1s, 2s at most.
			maxSleep: 2 * time.Second,
		},
		{
			name: "429 storm with Retry-After",
			script: func(*fakeClock) func(int) mode {
				return func(n int) mode {
					if n < 6 {
						return answer429
					}
					return answerOK
				}
			},
			retryAfter: "7",
			// Retry-After is waited exactly, every time, with no backoff.
			wantSleeps: secs(7, 7, 7, 7, 7, 7),
		},
		{
			name: "429 storm without Retry-After",
			script: func(*fakeClock) func(int) mode {
				return func(n int) mode {
					if n < 9 {
						return answer429
					}
					return answerOK
				}
			},
			wantSleeps: secs(1, 2, 4, 8, 16, 32, 60, 60, 60),
		},
		{
			name: "provider down for five minutes",
			script: func(clock *fakeClock) func(int) mode {
				back := t0.Add(5 * time.Minute)
				return func(int) mode {
					if clock.Now().Before(back) {
						return goDown
					}
					return answerOK
				}
			},
			// Doubling from 1s, capped at 1m: the 10th attempt, 303s in, finds it back.
			wantSleeps: secs(1, 2, 4, 8, 16, 32, 60, 60, 60, 60),
		},
	}
	for _, tt := range tests {
		for _, name := range providerNames {
			t.Run(tt.name+"/"+name, func(t *testing.T) {
				clock := newFakeClock()
				p := newProvider(t, name, clock)
				p.setScript(tt.script(clock), tt.retryAfter)
				events := makeEvents("exact", 25)
				box := newMemOutbox(events...)
				obs := newRecorder()

				stop := startRun(t, box, p.exp, loopOptions(clock, obs))
				waitUntil(t, "the outbox is empty", func() bool { return box.Backlog() == 0 })
				stop()

				p.checkExactlyOnce(t, p.key, events)
				if got, want := obs.DeliveredCount(), len(events); got != want {
					t.Errorf("Observer.Delivered total = %d, want %d (each event acknowledged once)", got, want)
				}
				if tt.maxSleep > 0 {
					if got := slices.Max(append(clock.Sleeps(), 0)); got > tt.maxSleep {
						t.Errorf("waits = %v, want none over %v", clock.Sleeps(), tt.maxSleep)
					}
				}
				if tt.wantSleeps != nil {
					if got := clock.Sleeps(); !slices.Equal(got, tt.wantSleeps) {
						t.Errorf("waits = %v, want %v", got, tt.wantSleeps)
					}
				}
			})
		}
	}
}

// TestRunStopAndRestart stops the loop while a request is in flight (the
// provider counted the events and is about to answer) and runs it again on
// the same outbox: nothing is lost, nothing counted twice.
func TestRunStopAndRestart(t *testing.T) {
	// What is left after the stop: only what the hanging request carried
	// and what came after it; the events answered before it, even in the
	// batch cut short (Stripe's), were acknowledged.
	wantBacklog := map[string]int{"stripe": 23, "openmeter": 5, "http": 5}
	for _, name := range providerNames {
		t.Run(name, func(t *testing.T) {
			clock := newFakeClock()
			p := newProvider(t, name, clock)
			// Request 2 re-sends what request 1 delivered (a duplicate);
			// request 3 is new, counted, and never answered.
			p.setScript(func(n int) mode {
				switch {
				case n == 3:
					return countHang
				case n < 2:
					return []mode{answerOK, count500}[n]
				}
				return answerOK
			}, "")
			events := makeEvents("restart", 25)
			box := newMemOutbox(events...)

			stop := startRun(t, box, p.exp, loopOptions(clock, nil))
			waitUntil(t, "a request hangs at the provider", func() bool { return p.Hanging() == 1 })
			stop() // Run returns: the Export in flight was cancelled.
			if got, want := box.Backlog(), wantBacklog[name]; got != want {
				t.Errorf("backlog after a stop mid-request = %d, want %d", got, want)
			}

			// More events arrive while the loop is down.
			more := makeEvents("restart-more", 7)
			if err := box.Append(context.Background(), more); err != nil {
				t.Fatal(err)
			}
			stop = startRun(t, box, p.exp, loopOptions(clock, nil))
			waitUntil(t, "the outbox is empty", func() bool { return box.Backlog() == 0 })
			stop()
			p.checkExactlyOnce(t, p.key, append(events, more...))
		})
	}
}

// TestRunExportTimeout: a provider that takes the events and never
// answers is cut off by ExportTimeout (on the loop's clock); the events
// are sent again and counted once.
func TestRunExportTimeout(t *testing.T) {
	for _, name := range providerNames {
		t.Run(name, func(t *testing.T) {
			clock := newFakeClock()
			p := newProvider(t, name, clock)
			p.setScript(func(n int) mode {
				if n == 0 {
					return countHang
				}
				return answerOK
			}, "")
			events := makeEvents("timeout", 5)
			box := newMemOutbox(events...)
			obs := newRecorder()

			stop := startRun(t, box, p.exp, loopOptions(clock, obs))
			waitUntil(t, "a request hangs at the provider", func() bool { return p.Hanging() == 1 })
			clock.Fire(t, testExportTimeout)
			waitUntil(t, "the outbox is empty", func() bool { return box.Backlog() == 0 })
			stop()

			p.checkExactlyOnce(t, p.key, events)
			if got := obs.Failures()[KindUnavailable]; got == 0 {
				t.Errorf("Failed(unavailable) = 0 after a timeout, want > 0")
			}
			if got, want := clock.Sleeps(), secs(1); !slices.Equal(got, want) {
				t.Errorf("waits = %v, want %v (one backoff after the timeout)", got, want)
			}
		})
	}
}

// TestRunStopsPromptly: with a provider that never answers, ending ctx
// ends Run without any wait firing, and the events stay in the outbox.
func TestRunStopsPromptly(t *testing.T) {
	clock := newFakeClock()
	p := newProvider(t, "stripe", clock)
	p.setScript(func(int) mode { return hang }, "")
	events := makeEvents("prompt", 3)
	box := newMemOutbox(events...)

	stop := startRun(t, box, p.exp, loopOptions(clock, nil))
	waitUntil(t, "a request hangs at the provider", func() bool { return p.Hanging() == 1 })
	stop() // fails the test if Run does not return
	if got, want := box.Backlog(), len(events); got != want {
		t.Errorf("backlog after stop = %d, want %d", got, want)
	}
	if got := clock.Sleeps(); len(got) != 0 {
		t.Errorf("waits = %v, want none", got)
	}
}

// TestRunDrain: when ctx ends with events pending, DrainTimeout sends them
// before Run returns; without it they stay; a drain that hangs is cut at
// DrainTimeout.
func TestRunDrain(t *testing.T) {
	tests := []struct {
		name        string
		drain       time.Duration
		hang        bool
		wantBacklog int
	}{
		{"no drain: events stay", 0, false, 5},
		{"drain sends them", testDrainTimeout, false, 0},
		{"a hanging drain is cut at its timeout", testDrainTimeout, true, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			p := newProvider(t, "openmeter", clock)
			if tt.hang {
				p.setScript(func(int) mode { return hang }, "")
			}
			box := newMemOutbox()
			opts := loopOptions(clock, nil)
			opts.DrainTimeout = tt.drain
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				_ = Run(ctx, box, p.exp, opts)
			}()
			// The loop finds nothing and waits; events come with no Notify.
			clock.WaitFor(t, testPoll)
			_ = box.Append(context.Background(), makeEvents("drain", 5))
			cancel()
			if tt.hang {
				waitUntil(t, "the drain's request hangs", func() bool { return p.Hanging() == 1 })
				clock.Fire(t, testDrainTimeout)
			}
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not return")
			}
			if got := box.Backlog(); got != tt.wantBacklog {
				t.Errorf("backlog after Run = %d, want %d", got, tt.wantBacklog)
			}
			if got, want := p.CountedEvents(), 5-tt.wantBacklog; !tt.hang && got != want {
				t.Errorf("provider counted %d events, want %d", got, want)
			}
		})
	}
}

// TestRunWake: an idle loop exports at once when woken, and otherwise at
// the next poll.
func TestRunWake(t *testing.T) {
	for _, wake := range []bool{true, false} {
		name := map[bool]string{true: "woken by Notify", false: "found by the poll"}[wake]
		t.Run(name, func(t *testing.T) {
			clock := newFakeClock()
			p := newProvider(t, "http", clock)
			box := newMemOutbox()
			nudge := NewNudge()
			opts := loopOptions(clock, nil)
			opts.Wake = nudge.C()
			stop := startRun(t, box, p.exp, opts)
			clock.Fire(t, testPoll)    // one idle round has happened: it waited
			clock.WaitFor(t, testPoll) // a second waits
			events := makeEvents("wake", 4)
			_ = box.Append(context.Background(), events)
			if wake {
				nudge.Notify()
				nudge.Notify() // coalesces, never blocks
			} else {
				clock.Fire(t, testPoll)
			}
			waitUntil(t, "the outbox is empty", func() bool { return box.Backlog() == 0 })
			stop()
			p.checkExactlyOnce(t, p.key, events)
		})
	}
}

// TestRunRefusedForGood: events a provider will never take are
// acknowledged (after DeadLetter) and counted by kind, the rest delivered;
// when DeadLetter fails they stay in the outbox.
func TestRunRefusedForGood(t *testing.T) {
	tests := []struct {
		name         string
		deadLetter   bool
		deadFails    bool
		wantBacklog  int
		wantDeadSeen int
	}{
		{"dropped and counted", false, false, 0, 0},
		{"dead-lettered", true, false, 0, 2},
		{"dead letter fails: they stay", true, true, 2, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			f := newFakeStripe(t, clock.Now)
			exp := f.exporter(clock, StripeOptions{Concurrency: 1})
			events := makeEvents("refused", 6)
			events[1].Meter = "no_such_meter"            // Stripe answers 400
			events[4].End = t0.Add(-40 * 24 * time.Hour) // too old: never sent
			box := newMemOutbox(events...)
			obs := newRecorder()
			var mu sync.Mutex
			var dead []string
			opts := loopOptions(clock, obs)
			opts.Batch = 100
			if tt.deadLetter {
				opts.DeadLetter = func(_ context.Context, refused []Refused) error {
					mu.Lock()
					defer mu.Unlock()
					for _, r := range refused {
						dead = append(dead, r.Event.ID)
					}
					if tt.deadFails {
						return errors.New("dead letter store down")
					}
					return nil
				}
			}
			stop := startRun(t, box, exp, opts)
			waitUntil(t, "the deliverable events are out", func() bool { return box.Backlog() == tt.wantBacklog })
			stop()

			good := slices.Concat(events[:1], events[2:4], events[5:])
			f.checkExactlyOnce(t, func(e usage.Event) string { return e.ID }, good)
			fails := obs.Failures()
			if fails[KindRejected] == 0 || fails[KindTooOld] == 0 {
				t.Errorf("Failed = %v, want rejected and too_old counted", fails)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(dead) < tt.wantDeadSeen {
				t.Errorf("dead letter got %v, want at least %d events", dead, tt.wantDeadSeen)
			}
			if tt.wantDeadSeen > 0 && (!slices.Contains(dead, events[1].ID) || !slices.Contains(dead, events[4].ID)) {
				t.Errorf("dead letter got %v, want %s and %s", dead, events[1].ID, events[4].ID)
			}
			if tt.wantBacklog > 0 && (!box.Has(events[1].ID) || !box.Has(events[4].ID)) {
				t.Errorf("the refused events left the outbox though the dead letter failed")
			}
		})
	}
}

// TestRunOutboxFailures: a failing Pending is retried with backoff; a
// failing Ack leaves delivered events to be sent again, which the provider
// counts once.
func TestRunOutboxFailures(t *testing.T) {
	clock := newFakeClock()
	p := newProvider(t, "stripe", clock)
	events := makeEvents("outbox", 12)
	box := newMemOutbox(events...)
	box.failPend, box.failAck = 2, 1
	obs := newRecorder()

	stop := startRun(t, box, p.exp, loopOptions(clock, obs))
	waitUntil(t, "the outbox is empty", func() bool { return box.Backlog() == 0 })
	stop()

	p.checkExactlyOnce(t, p.key, events)
	if got, want := obs.OutboxErrors(), []string{"pending", "pending", "ack"}; !slices.Equal(got, want) {
		t.Errorf("OutboxError calls = %v, want %v", got, want)
	}
	// Two Pending failures in a row, then the Ack failure (the count
	// starts again after progress... none was made: a third in a row).
	if got, want := clock.Sleeps(), secs(1, 2, 4); !slices.Equal(got, want) {
		t.Errorf("waits = %v, want %v", got, want)
	}
}

// TestRunStats: the backlog is reported at start and every StatsInterval.
func TestRunStats(t *testing.T) {
	clock := newFakeClock()
	p := newProvider(t, "http", clock)
	p.setScript(func(int) mode { return hang }, "")
	box := newMemOutbox(makeEvents("stats", 3)...)
	box.failStats = 1
	obs := newRecorder()
	opts := loopOptions(clock, obs)
	opts.StatsInterval = testStats
	stop := startRun(t, box, p.exp, opts)
	clock.Fire(t, testStats)
	clock.Fire(t, testStats)
	waitUntil(t, "two backlogs reported", func() bool { return len(obs.Backlogs()) == 2 })
	stop()
	if got, want := obs.Backlogs(), []int{3, 3}; !slices.Equal(got, want) {
		t.Errorf("Backlog reports = %v, want %v", got, want)
	}
	if got, want := obs.OutboxErrors(), []string{"stats"}; !slices.Equal(got, want) {
		t.Errorf("OutboxError = %v, want %v", got, want)
	}
}

// TestBackoff: doubling from MinBackoff, capped at MaxBackoff, jittered
// between half and all of it, and a Retry-After taken as it is.
func TestBackoff(t *testing.T) {
	r := &runner{o: RunOptions{MinBackoff: time.Second, MaxBackoff: time.Minute}}
	tests := []struct {
		name    string
		err     error
		attempt int
		jitter  func(int64) int64
		want    time.Duration
	}{
		{"first, top of jitter", errors.New("x"), 0, func(n int64) int64 { return n - 1 }, time.Second},
		{"first, bottom of jitter", errors.New("x"), 0, func(int64) int64 { return 0 }, 500 * time.Millisecond},
		{"fourth", errors.New("x"), 3, func(n int64) int64 { return n - 1 }, 8 * time.Second},
		{"capped", errors.New("x"), 6, func(n int64) int64 { return n - 1 }, time.Minute},
		{"capped, bottom", errors.New("x"), 6, func(int64) int64 { return 0 }, 30 * time.Second},
		{"no overflow", errors.New("x"), 200, func(n int64) int64 { return n - 1 }, time.Minute},
		{"retry-after exactly", &usage.RetryAfterError{After: 42 * time.Second, Err: errors.New("x")}, 5, func(int64) int64 { return 0 }, 42 * time.Second},
		{"retry-after inside a partial error", &PartialError{Retry: []string{"a"}, Err: &usage.RetryAfterError{After: 3 * time.Second, Err: errors.New("x")}}, 0, func(int64) int64 { return 0 }, 3 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r.o.Jitter = tt.jitter
			if got := r.backoff(tt.err, tt.attempt); got != tt.want {
				t.Errorf("backoff = %v, want %v", got, tt.want)
			}
		})
	}
}
