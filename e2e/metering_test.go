//go:build e2e

package e2e

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-authz/tollgate/internal/redistest"
)

// The metering tests run tollgate with metered routes behind a real Envoy
// (ext_authz, ext_proc on the body route, the gRPC access log service),
// an upstream whose actual units are random per request, and a fake Stripe
// meter-events endpoint that de-duplicates by identifier. Every test
// asserts the same outcome: each request answered 2xx is billed at Stripe
// exactly once, with the units the upstream reported; nothing else is.
// The units are distinct within a test, so the events at Stripe are
// matched to the requests by their units.

// sendMany sends n metered requests, cycling through allKinds, from
// workers goroutines at once, and records them in l.
func sendMany(t *testing.T, e *envoy, l *ledger, n, workers int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	next := make(chan meterKind, n)
	for i := range n {
		next <- allKinds[i%len(allKinds)]
	}
	close(next)
	for range workers {
		wg.Go(func() {
			for k := range next {
				s, err := trySend(e, k, 0)
				if err != nil {
					errs <- err
					return
				}
				l.add(s)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// want2xx fails the test unless every request in l got a 2xx: the runs
// that must not lose a request start with all of them answered.
func want2xx(t *testing.T, l *ledger) {
	t.Helper()
	for _, s := range l.all() {
		if s.status/100 != 2 {
			t.Fatalf("request %s (%s): status %d, want 2xx", s.id, s.kind, s.status)
		}
	}
}

// TestMeteringBillsActualUnits: each 2xx response of a metered route is
// billed once at Stripe with the units it really used, read from a JSON
// body and from an event stream (ext_proc), from a header and from a
// trailer over HTTP/2 and HTTP/1.1 (the access log entry); a 5xx from the
// upstream is not billed and its reservation is released; the quota
// counter then holds the sum of the actual units, not of the estimates.
func TestMeteringBillsActualUnits(t *testing.T) {
	t.Parallel()
	envoyPath(t)
	dir := meterDir(t, "bills")
	api := startMeterAPI(t, newUnitPool())
	stripe := startFakeStripe(t)
	tg := startMeteredTollgate(t, dir, meterTollgateOpts{stripe: stripe.url})
	e := startMeterEnvoy(t, dir, "envoy", meterEnvoyOpts{authz: tg.grpcAddr, api: api.addr})

	var l ledger
	sendMany(t, e, &l, 4*len(allKinds), 2)
	want2xx(t, &l)
	failed := 0
	for i, k := range allKinds {
		status := []int{500, 502, 503, 504, 500}[i]
		s := send(t, e, k, status)
		if s.status != status {
			t.Fatalf("%s asking for %d: got %d", k, status, s.status)
		}
		l.add(s)
		failed++
	}
	x := waitBilled(t, &l, api, stripe, tg)

	for _, c := range []struct {
		what      string
		got, want float64
	}{
		{"settlements with actual units", tg.metric(t, "tollgate_settlements_total", `outcome="settled"`), float64(len(x.events))},
		{"settlements at the estimate", tg.metric(t, "tollgate_settlements_total", `outcome="at_estimate"`), 0},
		{"settlements not billable (5xx)", tg.metric(t, "tollgate_settlements_total", `outcome="not_billable"`), float64(failed)},
		{"units billed", tg.metric(t, "tollgate_settled_units_total", `kind="billed"`), float64(x.sum)},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	if _, posts, dups, _, _ := stripe.snapshot(); posts != len(x.events) || dups != 0 {
		t.Errorf("Stripe got %d posts (%d duplicates) for %d events: without a fault each is sent once", posts, dups, len(x.events))
	}

	// The tokens quota: a later request's RateLimit header shows what is
	// left after the settlements (the sum of actual units) and its own
	// reservation.
	probe := send(t, e, kindHeader, 0)
	l.add(probe)
	if got, want := remaining(t, probe), int64(tokensLimit)-x.sum-meteredEstimate; got != want {
		t.Errorf("tokens remaining after settlement: %d, want %d (limit %d − actual %d − this request's estimate %d)",
			got, want, tokensLimit, x.sum, meteredEstimate)
	}
	waitBilled(t, &l, api, stripe, tg)
}

// TestMeteringSurvivesSIGKILL: tollgate is killed with SIGKILL while usage
// events wait in its file outbox, some of them already taken by Stripe
// whose answers were lost; started again with the same config, it exports
// the rest, and Stripe holds every event once with its exact units.
func TestMeteringSurvivesSIGKILL(t *testing.T) {
	t.Parallel()
	envoyPath(t)
	dir := meterDir(t, "sigkill")
	api := startMeterAPI(t, newUnitPool())
	stripe := startFakeStripe(t)
	tg := startMeteredTollgate(t, dir, meterTollgateOpts{stripe: stripe.url})
	e := startMeterEnvoy(t, dir, "envoy", meterEnvoyOpts{authz: tg.grpcAddr, api: api.addr})

	var l ledger
	sendMany(t, e, &l, 2*len(allKinds), 2)
	want2xx(t, &l)
	waitBilled(t, &l, api, stripe, tg)

	// Stripe takes each event and never answers: the exporter cannot know
	// it was taken, so the events stay in the outbox.
	stripe.setMode(stripeHang)
	sendMany(t, e, &l, 3*len(allKinds), 2)
	want2xx(t, &l)
	x := l.expect(t, api)
	if !eventually(60*time.Second, func() bool { return tg.settledTotal(t) >= x.admitted }) {
		t.Fatalf("settled %d of %d requests before the kill", tg.settledTotal(t), x.admitted)
	}
	if !eventually(60*time.Second, func() bool { _, _, _, _, held := stripe.snapshot(); return held > 0 }) {
		t.Fatal("no export reached the hanging Stripe")
	}

	tg.kill(t)
	stripe.setMode(stripeUp)
	tg.start(t) // the same config: the same port, key and outbox file

	// Envoy reconnects to the new process; every request it answers 2xx
	// is billed too.
	sendMany(t, e, &l, 2*len(allKinds), 2)
	x = waitBilled(t, &l, api, stripe, tg)
	_, posts, dups, _, held := stripe.snapshot()
	t.Logf("%d events billed; Stripe got %d posts, %d of them again after the kill (%d had hung)", len(x.events), posts, dups, held)
	if dups == 0 {
		t.Errorf("no event was sent again after the restart, yet %d hung unanswered: the kill did not test re-delivery", held)
	}
}

// TestMeteringSurvivesStripeOutage: Stripe answers 503 to everything for
// 30 seconds while requests go on; the exporter backs off and keeps the
// events, and once Stripe is back every event arrives, once.
func TestMeteringSurvivesStripeOutage(t *testing.T) {
	t.Parallel()
	envoyPath(t)
	const outage = 30 * time.Second // the number; only outcomes are asserted
	dir := meterDir(t, "outage")
	api := startMeterAPI(t, newUnitPool())
	stripe := startFakeStripe(t)
	tg := startMeteredTollgate(t, dir, meterTollgateOpts{stripe: stripe.url})
	e := startMeterEnvoy(t, dir, "envoy", meterEnvoyOpts{authz: tg.grpcAddr, api: api.addr})

	var l ledger
	sendMany(t, e, &l, len(allKinds), 1)
	want2xx(t, &l)
	waitBilled(t, &l, api, stripe, tg)
	before := stripe.count()

	stripe.setMode(stripeDown)
	end := time.Now().Add(outage)
	for i := 0; time.Now().Before(end); i++ {
		l.add(send(t, e, allKinds[i%len(allKinds)], 0))
		time.Sleep(200 * time.Millisecond)
	}
	want2xx(t, &l)
	if got := stripe.count(); got != before {
		t.Fatalf("the fake took %d events while down", got-before)
	}
	stripe.setMode(stripeUp)
	sendMany(t, e, &l, len(allKinds), 1)

	x := waitBilled(t, &l, api, stripe, tg)
	_, posts, dups, refused, _ := stripe.snapshot()
	t.Logf("%d events billed; Stripe refused %d posts during the outage and took %d in all (%d duplicates)",
		len(x.events), refused, posts, dups)
	if refused == 0 {
		t.Error("the exporter never tried Stripe during the outage")
	}
	if got := tg.metric(t, "tollgate_usage_export_failures_total", `kind="unavailable"`); got == 0 {
		t.Error("tollgate_usage_export_failures_total{kind=\"unavailable\"} is 0 after the outage")
	}
}

// TestMeteringTwoReplicasShareRedis: two tollgate replicas share Redis for
// the quota counters and the outbox (a stream read by a consumer group).
// Each has its own Envoy whose access log goes to the other replica, so
// every request is reserved on one replica and settled on the other. Each
// event is exported once in all, and the shared counter holds the sum of
// the actual units on both replicas.
func TestMeteringTwoReplicasShareRedis(t *testing.T) {
	t.Parallel()
	envoyPath(t)
	rd := redistest.Start(t)
	api := startMeterAPI(t, newUnitPool())
	stripe := startFakeStripe(t)
	var tgs [2]*meteredTollgate
	var dirs [2]string
	for i := range tgs {
		dirs[i] = meterDir(t, fmt.Sprintf("replica%d", i))
		tgs[i] = startMeteredTollgate(t, dirs[i], meterTollgateOpts{stripe: stripe.url, redis: rd.Addr()})
	}
	var envoys [2]*envoy
	for i := range envoys {
		envoys[i] = startMeterEnvoy(t, dirs[i], "envoy", meterEnvoyOpts{authz: tgs[i].grpcAddr, als: tgs[1-i].grpcAddr, api: api.addr})
	}

	var l ledger
	var per [2]ledger
	var wg sync.WaitGroup
	for i := range envoys {
		wg.Go(func() { sendMany(t, envoys[i], &per[i], 3*len(allKinds), 2) })
	}
	wg.Wait()
	for i := range per {
		for _, s := range per[i].all() {
			l.add(s)
		}
	}
	want2xx(t, &l)
	x := waitBilled(t, &l, api, stripe, tgs[0], tgs[1])

	// Replica i settled exactly the requests of the other replica's Envoy.
	for i := range tgs {
		if got, want := tgs[i].settlements(t), len(per[1-i].all()); got != want {
			t.Errorf("replica %d settled %d requests, want the %d checked by replica %d", i, got, want, 1-i)
		}
	}
	if _, posts, dups, _, _ := stripe.snapshot(); posts != len(x.events) || dups != 0 {
		t.Errorf("Stripe got %d posts (%d duplicates) for %d events: each must be exported once by one replica", posts, dups, len(x.events))
	}

	// The shared counter, read through each replica in turn.
	sum := x.sum
	for i := range envoys {
		probe := send(t, envoys[i], kindHeader, 0)
		l.add(probe)
		if got, want := remaining(t, probe), int64(tokensLimit)-sum-meteredEstimate; got != want {
			t.Errorf("replica %d: tokens remaining %d, want %d (limit − actual %d − estimate)", i, got, want, sum)
		}
		sum = waitBilled(t, &l, api, stripe, tgs[0], tgs[1]).sum
	}
}

// TestMeteringInFlightAcrossSIGKILL: requests admitted before tollgate is
// killed and answered around its restart. A streamed LLM answer whose
// ext_proc stream died with the process goes on (failure_mode_allow) and
// is billed once at its reservation (max_tokens); a request answered while
// no tollgate runs is billed its exact units once tollgate is back (Envoy
// holds the access log entry while it retries the stream:
// grpc_stream_retry_policy); one answered after the restart, too.
func TestMeteringInFlightAcrossSIGKILL(t *testing.T) {
	t.Parallel()
	envoyPath(t)
	dir := meterDir(t, "inflight")
	api := startMeterAPI(t, newUnitPool())
	stripe := startFakeStripe(t)
	tg := startMeteredTollgate(t, dir, meterTollgateOpts{stripe: stripe.url})
	e := startMeterEnvoy(t, dir, "envoy", meterEnvoyOpts{authz: tg.grpcAddr, api: api.addr})

	type answer struct {
		s   *sent
		err error
	}
	// start sends a request the upstream holds in the middle of its
	// answer, and returns once it is held (admitted, reservation made).
	start := func(kind meterKind) (*sent, chan answer) {
		s := &sent{id: newRequestID(), kind: kind, bodyUnit: -1}
		done := make(chan answer, 1)
		go func() { done <- answer{s, tryRequest(e, s, 0, "x-test-hold: 1")} }()
		if !eventually(30*time.Second, func() bool { return api.holding(s.id) }) {
			t.Fatalf("%s request never reached the upstream", kind)
		}
		return s, done
	}
	finish := func(s *sent, done chan answer) {
		t.Helper()
		api.release(s.id)
		if a := <-done; a.err != nil || a.s.status != 200 {
			t.Fatalf("%s request: status %d, %v; want 200", s.kind, a.s.status, a.err)
		}
	}
	stream, streamDone := start(kindStream) // held after its first chunk
	after, afterDone := start(kindHeader)   // held before its headers
	during, duringDone := start(kindHeader)

	tg.kill(t)
	finish(during, duringDone) // answered while no tollgate runs
	tg.start(t)
	finish(stream, streamDone)
	finish(after, afterDone)
	fresh := send(t, e, kindHeader, 0)
	if fresh.status != 200 {
		t.Fatalf("a request after the restart: status %d", fresh.status)
	}

	units := func(s *sent) int64 {
		sv, _ := api.served(s.id)
		return sv.units
	}
	want := []billed{
		{meterLLM, meteredEstimate}, // its ext_proc stream died: billed at the reservation
		{meterUnits, units(during)},
		{meterUnits, units(after)},
		{meterUnits, units(&fresh)},
	}
	sortBilled(want)
	if !eventually(60*time.Second, func() bool { return stripe.count() >= len(want) }) {
		t.Fatalf("the fake Stripe holds %d events, want %d: %v", stripe.count(), len(want), stripeBilled(t, stripe))
	}
	if got := stripeBilled(t, stripe); !slices.Equal(got, want) {
		t.Errorf("billed at Stripe (meter, units):\n got %v\nwant %v (the stream's actual units were %d)", got, want, units(stream))
	}
	if !eventually(30*time.Second, func() bool { return tg.settledTotal(t) >= 4 }) {
		t.Fatalf("the restarted tollgate settled %d requests, want 4", tg.settledTotal(t))
	}
	if got := tg.metric(t, "tollgate_settlements_total", `outcome="at_estimate"`); got != 1 {
		t.Errorf("settlements at the estimate: %v, want 1 (the stream)", got)
	}
}
