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
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
	"github.com/webhookgate/caddy-openai-webhook/queuestore"
)

const (
	// idlePoll is how often an idle worker looks for messages that became
	// due (retries) or that other instances stored.
	idlePoll = 500 * time.Millisecond
	// leaseMargin is added to the timeout for a message's lease: a worker
	// that lives settles its attempt within it, and extends it meanwhile.
	// When a lease ends unsettled (the worker's process died), the
	// message is due again: at once when a file is reopened, after the
	// lease for another instance on Redis.
	leaseMargin = storeCallTimeout
	// storeCallTimeout bounds a worker's calls to the store.
	storeCallTimeout = 10 * time.Second
	// attemptHeader carries the attempt's number, from 1.
	attemptHeader = "Webhook-Attempt"
)

// work delivers messages until ctx ends. An attempt it started runs to its
// end regardless: cutting it short would deliver the message twice.
func (q *queue) work(ctx context.Context) {
	lease := time.Duration(q.timeout) + leaseMargin
	for ctx.Err() == nil {
		storeCtx, cancel := context.WithTimeout(context.Background(), storeCallTimeout)
		m, err := q.store.Take(storeCtx, lease)
		cancel()
		if err != nil {
			q.storeFailed("take", err)
		}
		if m == nil {
			select {
			case <-ctx.Done():
			case <-q.wake:
			case <-time.After(idlePoll):
			}
			continue
		}
		q.attempt(m, lease)
	}
}

// wakeWorker tells an idle worker that a message was stored.
func (q *queue) wakeWorker() {
	select {
	case q.wake <- struct{}{}:
	default: // every worker is busy or already woken
	}
}

// attempt sends m to the app once, holding its lease meanwhile, and
// settles it: delivered, scheduled again, or a dead letter.
func (q *queue) attempt(m *queuestore.Message, lease time.Duration) {
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
	ctx, cancel := context.WithTimeout(context.Background(), storeCallTimeout)
	defer cancel()
	name := q.store.Name()
	if err == nil {
		attemptsTotal.WithLabelValues(name, "delivered").Inc()
		if err := q.store.Complete(ctx, m, a); err != nil {
			q.storeFailed("complete", err)
		}
		q.logger.Info("delivered", zap.String("queue", name), zap.String("queue_id", m.ID), zap.String("delivery_id", m.DeliveryID),
			zap.Int("attempts", number), zap.Duration("queued_for", time.Since(m.Received)))
		return
	}
	a.Error = err.Error()
	if a.Status != 0 {
		attemptsTotal.WithLabelValues(name, "refused").Inc()
	} else {
		attemptsTotal.WithLabelValues(name, "failed").Inc()
	}
	if m.Tries+1 > len(q.retry) {
		if err := q.store.Bury(ctx, m, a); err != nil {
			q.storeFailed("bury", err)
		}
		q.logger.Warn("dead letter: out of attempts", zap.String("queue", name), zap.String("queue_id", m.ID),
			zap.String("delivery_id", m.DeliveryID), zap.Int("attempts", number), zap.String("last_error", a.Error))
		return
	}
	if err := q.store.Reschedule(ctx, m, a, time.Now().Add(q.wait(m.Tries, retryAfter))); err != nil {
		q.storeFailed("reschedule", err)
	}
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
	longest := time.Duration(0)
	for _, d := range q.retry {
		longest = max(longest, time.Duration(d))
	}
	return max(wait, min(retryAfter, longest))
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
