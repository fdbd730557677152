package webhookqueue

import (
	"sync"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/queuestore"
)

// The queue's view of its app, as a circuit breaker: after breakerAfter
// failed attempts in a row that say the app is down (no answer, 5xx, 429),
// the queue holds its messages and sends one attempt, a probe, at growing
// intervals, up to maxProbeAfter (one request every 3 s costs a down app
// nothing, and the queue learns within 3 s that it is back); a probe that
// fails costs its message no place in its schedule. When an attempt
// succeeds again, the messages that were waiting because of the outage are
// brought forward.
const (
	breakerAfter    = 3
	firstProbeAfter = 500 * time.Millisecond
	maxProbeAfter   = 3 * time.Second
	// outageLogEvery is the least time between two log lines about an
	// app that stays down.
	outageLogEvery = time.Minute
)

// health is what the queue knows of its app, shared by its workers.
type health struct {
	mu sync.Mutex
	// down: breakerAfter attempts in a row said the app is down.
	down bool
	// streak counts the failures in a row that say it, from since.
	streak int
	since  time.Time
	// While down: when the next probe may go, the wait after it, and
	// whether one is in flight.
	probeAt  time.Time
	backoff  time.Duration
	probing  bool
	lastErr  string
	lastOK   time.Time
	pausedTo time.Time // the app's Retry-After, for the whole queue
	logged   time.Time // the last outage log line
	// wake is closed when an operator lifts the hold (see resume).
	wake chan struct{}
}

// Destruct implements caddy.Destructor, for healths: a view holds nothing
// to release.
func (*health) Destruct() error { return nil }

// appDown reports whether an attempt's outcome says the app cannot take
// deliveries now, rather than refusing this one.
func appDown(a queuestore.Attempt) bool {
	return a.Status == 0 || a.Status == 429 || a.Status >= 500
}

// hold says how long a worker must wait before it takes a message, and,
// when it may take one now, whether that attempt is the outage's probe.
func (h *health) hold(now time.Time) (wait time.Duration, probe bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if now.Before(h.pausedTo) {
		return h.pausedTo.Sub(now), false
	}
	if !h.down {
		return 0, false
	}
	if h.probing || now.Before(h.probeAt) {
		return max(h.probeAt.Sub(now), 50*time.Millisecond), false
	}
	h.probing = true
	return 0, true
}

// change is what changed in the queue's view after an attempt.
type change int

const (
	unchanged change = iota
	wentDown         // the attempt made the queue deem the app down
	cameBack         // the attempt succeeded after an outage
)

// record takes an attempt's result (probe: it was the outage's probe; the
// app's Retry-After), and says what changed.
func (h *health) record(a queuestore.Attempt, probe bool, retryAfter time.Duration, now time.Time) change {
	h.mu.Lock()
	defer h.mu.Unlock()
	if probe {
		h.probing = false
	}
	if a.Error == "" {
		h.lastOK = now
		h.streak = 0
		if h.down {
			h.down = false
			return cameBack
		}
		return unchanged
	}
	h.lastErr = a.Error
	if retryAfter > 0 && (a.Status == 429 || a.Status == 503) {
		h.pausedTo = now.Add(retryAfter)
	}
	if !appDown(a) {
		// The app answers: this delivery is the trouble, not the app.
		h.streak = 0
		if h.down {
			h.down = false
			return cameBack
		}
		return unchanged
	}
	if h.streak == 0 {
		h.since = a.At
	}
	h.streak++
	switch {
	case h.down:
		h.backoff = min(2*h.backoff, maxProbeAfter)
		h.probeAt = now.Add(h.backoff)
	case h.streak >= breakerAfter:
		h.down, h.backoff = true, firstProbeAfter
		h.probeAt = now.Add(h.backoff)
		h.logged = now // the caller logs it
		return wentDown
	}
	return unchanged
}

// shouldLog reports whether an outage may be logged now, at most once an
// outageLogEvery.
func (h *health) shouldLog(now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if now.Sub(h.logged) < outageLogEvery {
		return false
	}
	h.logged = now
	return true
}

// status is the health as the admin API shows it.
type status struct {
	AppUp        bool       `json:"app_up"`
	FailingSince *time.Time `json:"failing_since,omitempty"`
	LastError    string     `json:"last_error,omitempty"`
	LastSuccess  *time.Time `json:"last_success,omitempty"`
	PausedUntil  *time.Time `json:"paused_until,omitempty"`
	NextProbe    *time.Time `json:"next_probe,omitempty"`
}

func (h *health) status(now time.Time) status {
	h.mu.Lock()
	defer h.mu.Unlock()
	at := func(t time.Time) *time.Time { return &t }
	s := status{AppUp: !h.down, LastError: h.lastErr}
	if h.streak > 0 {
		s.FailingSince = at(h.since)
	}
	if !h.lastOK.IsZero() {
		s.LastSuccess = at(h.lastOK)
	}
	if now.Before(h.pausedTo) {
		s.PausedUntil = at(h.pausedTo)
	}
	if h.down {
		s.NextProbe = at(h.probeAt)
	}
	return s
}

// resume lifts the app's pause and lets the next probe go now: an
// operator's retry of the scheduled messages means now. It wakes the
// workers that wait out the hold.
func (h *health) resume() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pausedTo = time.Time{}
	h.probeAt = time.Time{}
	if h.wake != nil {
		close(h.wake)
		h.wake = nil
	}
}

// resumed returns a channel closed by the next resume.
func (h *health) resumed() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.wake == nil {
		h.wake = make(chan struct{})
	}
	return h.wake
}

// endProbe gives up a probe that found no message to send.
func (h *health) endProbe() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.probing = false
}

// nextProbe is when the next probe may go.
func (h *health) nextProbe() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.probeAt
}
