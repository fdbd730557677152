package webhookqueue

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/queuestore"
)

// TestHealth: the queue's view of its app, attempt by attempt: down after
// breakerAfter failures in a row that say so, one probe at a time at
// growing intervals up to maxProbeAfter, back on the first success; an
// answer that refuses one delivery (4xx) says the app is up; a Retry-After
// with 429 or 503 pauses the whole queue.
func TestHealth(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	down := queuestore.Attempt{Error: "dial: connection refused"}
	unavailable := queuestore.Attempt{Status: 503, Error: "the app answered 503"}
	refused := queuestore.Attempt{Status: 400, Error: "the app answered 400"}
	ok := queuestore.Attempt{}
	var h health
	now := t0
	step := func(what string, a queuestore.Attempt, probe bool, retryAfter time.Duration, want change) {
		t.Helper()
		a.At = now
		if got := h.record(a, probe, retryAfter, now); got != want {
			t.Fatalf("%s: %v, want %v", what, got, want)
		}
	}
	holds := func(what string, wantWait time.Duration, wantProbe bool) {
		t.Helper()
		wait, probe := h.hold(now)
		if wait != wantWait || probe != wantProbe {
			t.Fatalf("%s: hold %v, probe %v; want %v, %v", what, wait, probe, wantWait, wantProbe)
		}
	}
	step("a first failure", down, false, 0, unchanged)
	step("a refusal: the app answers", refused, false, 0, unchanged)
	step("a failure", down, false, 0, unchanged)
	step("another", unavailable, false, 0, unchanged)
	holds("two in a row", 0, false)
	step("the third in a row", down, false, 0, wentDown)
	holds("down, before the first probe", firstProbeAfter, false)
	now = now.Add(firstProbeAfter)
	holds("the probe's time", 0, true)
	holds("while the probe is out", 50*time.Millisecond, false)
	for backoff := 2 * firstProbeAfter; ; backoff = min(2*backoff, maxProbeAfter) {
		step("a probe that fails", down, true, 0, unchanged)
		holds("after it", backoff, false)
		now = now.Add(backoff)
		holds("the next probe's time", 0, true)
		if backoff == maxProbeAfter {
			break
		}
	}
	if s := h.status(now); s.AppUp || s.FailingSince == nil || s.NextProbe == nil || s.LastError == "" {
		t.Fatalf("status while down: %+v", s)
	}
	step("the probe succeeds", ok, true, 0, cameBack)
	holds("back", 0, false)
	if s := h.status(now); !s.AppUp || s.FailingSince != nil || s.LastSuccess == nil {
		t.Fatalf("status once back: %+v", s)
	}
	step("a 503 with Retry-After", unavailable, false, 2*time.Second, unchanged)
	holds("paused", 2*time.Second, false)
	now = now.Add(2 * time.Second)
	holds("the pause over", 0, false)

	// Down again: the first probe's failure is not logged as the outage
	// going on (its start was, just now); a minute later it is.
	for range breakerAfter - 2 { // the 503 above was the first
		step("a failure", down, false, 0, unchanged)
	}
	step("down again", down, false, 0, wentDown)
	now = now.Add(firstProbeAfter)
	holds("the probe's time", 0, true)
	step("a probe that fails", down, true, 0, unchanged)
	if h.shouldLog(now) {
		t.Fatal("the outage is logged again at its first probe")
	}
	if !h.shouldLog(now.Add(outageLogEvery)) {
		t.Fatal("the outage is not logged again a minute on")
	}
	now = now.Add(2 * firstProbeAfter)
	holds("the next probe's time", 0, true)
	step("a probe the app refuses (4xx): the app answers", refused, true, 0, cameBack)
	holds("back", 0, false)

	// An operator's retry of the scheduled messages lifts a pause, and
	// wakes a worker waiting it out.
	step("a 429 with Retry-After", queuestore.Attempt{Status: 429, Error: "the app answered 429"}, false, time.Hour, unchanged)
	resumed := h.resumed()
	holds("paused", time.Hour, false)
	h.resume()
	select {
	case <-resumed:
	default:
		t.Fatal("resume did not wake the worker")
	}
	holds("resumed", 0, false)
}

// TestHealthAcrossReloads: the next config's queue of the same name and
// store continues the view of its app (a reload during an outage neither
// forgets it nor resets the last success that alerts watch); a queue of
// another store has a view of its own; and once no config has the queue,
// the view is gone with it.
func TestHealthAcrossReloads(t *testing.T) {
	const to = "http://127.0.0.1:9/hooks/openai"
	store := json.RawMessage(fmt.Sprintf(`{"backend":"file","path":%q}`, filepath.Join(t.TempDir(), "queue")))
	old, _, stopOld := queueHandler(t, to, Handler{StoreRaw: store}, false)
	now := time.Now()
	old.queue.health.record(queuestore.Attempt{At: now}, false, 0, now)
	next, _, stopNext := queueHandler(t, to, Handler{StoreRaw: store}, false)
	stopOld()
	if s := next.queue.health.status(now); s.LastSuccess == nil || !s.LastSuccess.Equal(now) {
		t.Fatalf("after the reload: %+v, want the last success at %v", s, now)
	}
	other, _, _ := queueHandler(t, to, Handler{}, false)
	if other.queue.health == next.queue.health {
		t.Fatal("a queue of another store shares the view")
	}
	stopNext()
	again, _, _ := queueHandler(t, to, Handler{StoreRaw: store}, false)
	if s := again.queue.health.status(now); s.LastSuccess != nil {
		t.Fatalf("once no config had the queue, its view was kept: %+v", s)
	}
}
