package webhookqueue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
	"github.com/webhookgate/caddy-openai-webhook/queuestore"
)

const (
	// idlePoll bounds an idle worker's wait on its store, which wakes it
	// when a message may be due.
	idlePoll = 5 * time.Second
	// leaseMargin is added to the timeout for a message's lease: a worker
	// that lives settles its attempt within it, and extends it meanwhile.
	// When a lease ends unsettled (the worker's process died), the
	// message is due again: at once when a file is reopened, after the
	// lease for another instance on Redis.
	leaseMargin = storeCallTimeout
	// storeCallTimeout bounds a worker's calls to the store.
	storeCallTimeout = 10 * time.Second
	// gatherFor bounds a worker's wait for others to free up while a
	// backlog drains (see work).
	gatherFor = 2 * time.Millisecond
	// attemptHeader carries the attempt's number, from 1.
	attemptHeader = "Webhook-Attempt"
)

// work delivers messages until ctx ends: it takes as many due messages as
// workers are free, in one call to the store, and attempts each in a
// goroutine of its own, at most workers at once. It returns once the
// attempts it started have ended: cutting one short would deliver its
// message twice.
func (q *queue) work(ctx context.Context) {
	lease := time.Duration(q.timeout) + leaseMargin
	free := make(chan struct{}, q.workers) // holds a token per attempt running
	var attempts sync.WaitGroup
	defer attempts.Wait()
	backlog := false // the last take found as many messages as it asked for
	for ctx.Err() == nil {
		// A free worker first: the app may go down while all are busy.
		select {
		case free <- struct{}{}:
		case <-ctx.Done():
			return
		}
		resumed := q.health.resumed()
		wait, probe := q.health.hold(time.Now())
		if wait > 0 {
			<-free
			sleep(ctx, wait, resumed)
			continue
		}
		n := 1
		if !probe { // a probe is one attempt
			n += claimFree(free, q.workers-1)
			if backlog && n < q.workers/2 {
				// While a backlog drains, workers free up one by one: a
				// moment's wait takes several messages in one call to
				// the store (one fsync on Redis) instead of one each.
				n += gatherFree(ctx, free, q.workers/2-n, gatherFor)
			}
		}
		if q.limiter != nil {
			n = min(n, q.limiter.Burst())
		}
		due := q.store.Wait() // before the Take, so that nothing stored after it is missed
		storeCtx, cancel := context.WithTimeout(context.Background(), storeCallTimeout)
		taken, err := q.store.Take(storeCtx, n, lease)
		cancel()
		if err != nil {
			q.storeFailed("take", err)
		}
		backlog = len(taken) == n
		for range n - len(taken) {
			<-free
		}
		if len(taken) == 0 {
			if probe {
				q.health.endProbe()
			}
			select {
			case <-ctx.Done():
			case <-due:
			case <-time.After(idlePoll):
			}
			continue
		}
		if q.limiter != nil && q.limiter.WaitN(ctx, len(taken)) != nil {
			// Stopping: the messages are due again when their lease ends.
			for range taken {
				<-free
			}
			return
		}
		for i, m := range taken {
			attempts.Go(func() {
				defer func() { <-free }()
				q.attempt(m, lease, probe && i == 0)
			})
		}
	}
}

// gatherFree takes up to n more tokens of free, waiting for them at most
// d, and says how many it took.
func gatherFree(ctx context.Context, free chan<- struct{}, n int, d time.Duration) int {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for claimed := 0; claimed < n; claimed++ {
		select {
		case free <- struct{}{}:
		case <-timer.C:
			return claimed
		case <-ctx.Done():
			return claimed
		}
	}
	return n
}

// claimFree takes up to n more tokens of free without waiting, and says
// how many it took.
func claimFree(free chan<- struct{}, n int) int {
	for claimed := 0; claimed < n; claimed++ {
		select {
		case free <- struct{}{}:
		default:
			return claimed
		}
	}
	return n
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration, resumed <-chan struct{}) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-resumed:
	}
}

// attempt sends m to the app once, holding its lease meanwhile, and
// settles it: delivered, scheduled again (postponed, for the probe of an
// outage), or a dead letter; and tells the queue's view of its app.
func (q *queue) attempt(m *queuestore.Message, lease time.Duration, probe bool) {
	number := len(m.Attempts) + 1
	start := time.Now()
	a := queuestore.Attempt{At: start}
	stopHolding := q.holdLease(m, lease)
	retryAfter, err := q.send(m, number)
	stopHolding()
	a.Duration = time.Since(start)
	var status *httpStatus
	if errors.As(err, &status) {
		a.Status = status.code
	}
	if err != nil {
		a.Error = err.Error()
	}
	change := q.health.record(a, probe, min(retryAfter, q.longest), time.Now())
	ctx, cancel := context.WithTimeout(context.Background(), storeCallTimeout)
	defer cancel()
	name := q.store.Name()
	switch {
	case err == nil:
		attemptsTotal.WithLabelValues(name, "delivered").Inc()
		if err := q.store.Complete(ctx, m, a); err != nil {
			q.storeFailed("complete", err)
		}
		q.logger.Info("delivered", zap.String("queue", name), zap.String("queue_id", m.ID), zap.String("delivery_id", m.DeliveryID),
			zap.Int("attempts", number), zap.Duration("queued_for", time.Since(m.Received)))
	case a.Status != 0:
		attemptsTotal.WithLabelValues(name, "refused").Inc()
	default:
		attemptsTotal.WithLabelValues(name, "failed").Inc()
	}
	switch change {
	case wentDown:
		q.logOutage(ctx, true)
	case cameBack:
		q.recovered()
	default:
		if probe && err != nil && q.health.shouldLog(time.Now()) {
			q.logOutage(ctx, false)
		}
	}
	if err == nil {
		return
	}
	outlived := time.Since(m.Received) > q.span
	switch {
	case probe && appDown(a) && !outlived:
		// The queue knew the app to be down: the probe costs its
		// message no place in its schedule.
		if err := q.store.Postpone(ctx, m, a, q.health.nextProbe()); err != nil {
			q.storeFailed("postpone", err)
		}
	case m.Tries+1 > len(q.retry), probe && appDown(a):
		// Out of attempts; or the app has been down for longer than the
		// whole schedule lasts, which bounds a message's life as the
		// schedule would without the breaker.
		reason := "dead letter: out of attempts"
		if m.Tries+1 <= len(q.retry) { // before Bury, which counts this attempt
			reason = "dead letter: the app was down for longer than the retry schedule lasts"
		}
		if err := q.store.Bury(ctx, m, a); err != nil {
			q.storeFailed("bury", err)
		}
		q.logger.Warn(reason, zap.String("queue", name), zap.String("queue_id", m.ID),
			zap.String("delivery_id", m.DeliveryID), zap.Int("attempts", number), zap.String("last_error", a.Error))
	default:
		if err := q.store.Reschedule(ctx, m, a, time.Now().Add(q.wait(m.Tries, retryAfter))); err != nil {
			q.storeFailed("reschedule", err)
		}
	}
}

// logOutage says that the app is down, and how many messages wait; first
// says it went down just now.
func (q *queue) logOutage(ctx context.Context, first bool) {
	s := q.health.status(time.Now())
	fields := []zap.Field{zap.String("queue", q.store.Name()), zap.String("last_error", s.LastError)}
	if s.FailingSince != nil {
		fields = append(fields, zap.Time("since", *s.FailingSince))
	}
	if c, err := q.store.Counts(ctx); err == nil {
		fields = append(fields, zap.Int("waiting", c.Pending+c.Scheduled+c.InFlight))
	}
	msg := "app unreachable: the queue holds its messages and probes it"
	if !first {
		msg = "app still unreachable: the queue holds its messages and probes it"
	}
	q.logger.Warn(msg, fields...)
}

// recovered brings forward the messages that waited out the outage, and
// says so once.
func (q *queue) recovered() {
	ctx, cancel := context.WithTimeout(context.Background(), storeCallTimeout)
	defer cancel()
	n, err := q.store.BringForward(ctx, appDown)
	if err != nil {
		q.storeFailed("bring_forward", err)
	}
	q.logger.Info("app reachable again: the messages that waited out the outage are due now",
		zap.String("queue", q.store.Name()), zap.Int("brought_forward", n))
}

// holdLease extends m's lease every third of it until the returned
// function is called: an attempt that runs longer than planned (a slow
// store, a pause) keeps its message from being taken over.
func (q *queue) holdLease(m *queuestore.Message, lease time.Duration) (stop func()) {
	done := make(chan struct{})
	held := make(chan struct{})
	go func() {
		defer close(held)
		tick := time.NewTicker(lease / 3)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				ctx, cancel := context.WithTimeout(context.Background(), storeCallTimeout)
				err := q.store.Extend(ctx, m, lease)
				cancel()
				if errors.Is(err, queuestore.ErrLeaseLost) {
					return
				}
				if err != nil {
					q.storeFailed("extend", err)
				}
			}
		}
	}()
	return func() {
		close(done)
		<-held
	}
}

// wait is how long to wait after the failed attempt number tries+1: the
// schedule's entry with 10% jitter either way, lengthened to the app's
// Retry-After up to the schedule's longest.
func (q *queue) wait(tries int, retryAfter time.Duration) time.Duration {
	base := time.Duration(q.retry[tries])
	wait := base + time.Duration((rand.Float64()*0.2-0.1)*float64(base))
	return max(wait, min(retryAfter, q.longest))
}

// httpStatus is an attempt the app answered with a status other than 2xx.
type httpStatus struct {
	code   int
	status string
}

func (s *httpStatus) Error() string { return "the app answered " + s.status }

// send makes one attempt; nil means the app answered 2xx. It returns the
// app's Retry-After, if any.
func (q *queue) send(m *queuestore.Message, number int) (time.Duration, error) {
	req, err := q.request(m, number)
	if err != nil {
		return 0, err
	}
	resp, err := q.client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // without the URL, which may hold credentials
		}
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return 0, nil
	}
	var retryAfter time.Duration
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		retryAfter = time.Duration(s) * time.Second
	}
	return retryAfter, &httpStatus{code: resp.StatusCode, status: resp.Status}
}

// signatureHeaders are the Standard Webhooks headers (in both families) that
// an attempt signed with sign_with replaces: the sender's signature would be
// stale, and its timestamp is not the attempt's.
var signatureHeaders = []string{"Webhook-Id", "Webhook-Timestamp", "Webhook-Signature", "Svix-Id", "Svix-Timestamp", "Svix-Signature"}

// request is attempt number of m: the exact body, the headers as received,
// the attempt's number and, with sign_with, a signature of this attempt.
func (q *queue) request(m *queuestore.Message, number int) (*http.Request, error) {
	// The transport reads the replacer and the variables of Caddy's
	// requests it proxies; an attempt has its own.
	ctx := context.WithValue(context.Background(), caddy.ReplacerCtxKey, caddy.NewReplacer())
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, q.target.String(), bytes.NewReader(m.Body))
	if err != nil {
		return nil, err
	}
	req.Header = m.HTTPHeader()
	req.Header.Set(attemptHeader, strconv.Itoa(number))
	if q.signKey != nil {
		id := signedID(req.Header, m)
		for _, name := range signatureHeaders {
			req.Header.Del(name)
		}
		ts := strconv.FormatInt(time.Now().Unix(), 10)
		sig, err := verifier.Sign(q.signKey, id, ts, m.Body)
		if err != nil {
			return nil, fmt.Errorf("signing the attempt: %w", err)
		}
		req.Header.Set("Webhook-Id", id)
		req.Header.Set("Webhook-Timestamp", ts)
		req.Header.Set("Webhook-Signature", sig)
	}
	return req, nil
}

// signedID is the webhook-id a signed attempt carries: the delivery's, as
// the sender gave it, or, when it has none a verifier would take, one made
// of the queue's id of the message, the same at every attempt.
func signedID(hdr http.Header, m *queuestore.Message) string {
	for _, id := range []string{hdr.Get("Webhook-Id"), hdr.Get("Svix-Id"), m.DeliveryID} {
		if id != "" && verifier.CheckID(id) == nil {
			return id
		}
	}
	return "msg_" + m.ID
}
