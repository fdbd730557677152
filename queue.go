package openaiwebhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/internal/cfparse"
	"github.com/webhookgate/caddy-openai-webhook/internal/guest"
	"github.com/webhookgate/caddy-openai-webhook/internal/lograte"
	"github.com/webhookgate/caddy-openai-webhook/queue"
)

// Queue turns the handler terminal: a verified, fresh, non-duplicate
// delivery (that passes events, if set) is written to a durable queue, and
// the sender is answered 200 only once it is stored; when it cannot be (the
// store fails, or holds max_pending), the sender gets 503 with Retry-After,
// so OpenAI keeps it. Workers deliver each message to the app in the
// background, with the exact verified bytes and the original headers, until
// it answers 2xx, retrying on the schedule; after the last attempt a message
// is a dead letter, kept until retried or dropped through the admin API.
// Delivery is at least once, in no particular order.
type Queue struct {
	// To is the app's URL, http:// or https://. Placeholders, such as
	// {env.APP_URL}, are expanded when the config loads. Required.
	To string `json:"to,omitempty"`

	// StoreRaw is where messages are kept: a module of the namespace
	// http.handlers.openai_webhook.queue_stores, chosen by its "backend"
	// field: "file" (the default: a bbolt file in Caddy's data directory)
	// or "redis" (Redis Streams, for a fleet).
	StoreRaw json.RawMessage `json:"store,omitempty" caddy:"namespace=http.handlers.openai_webhook.queue_stores inline_key=backend"`

	// Retry is the schedule: the wait after each failed attempt, with 10%
	// of jitter either way; once it is used up, a message is a dead letter.
	// A Retry-After from the app lengthens a wait, up to the schedule's
	// longest. Default: 5s 5m 30m 2h 5h 10h 10h (about 28 hours, 8
	// attempts).
	Retry []caddy.Duration `json:"retry,omitempty"`

	// Timeout bounds each attempt, from connecting until the answer's
	// head and the first 64 KiB of its body (the rest is not read) have
	// arrived. Default: 30s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Workers is how many attempts run at once, per Caddy instance.
	// Default: 4.
	Workers int `json:"workers,omitempty"`

	// MaxPending is the most messages the queue holds that are not dead
	// letters; past it, deliveries are refused with 503. Default: 100000.
	MaxPending int `json:"max_pending,omitempty"`

	// TLS configures connections to an https:// app, as reverse_proxy's
	// transport does: trust pools, server name, client certificates.
	TLS *reverseproxy.TLSConfig `json:"tls,omitempty"`

	store  queue.Store
	app    *App // the config's, which runs the workers
	target *url.URL
	client *http.Client
	wake   chan struct{} // a message was enqueued: an idle worker looks
	errors *lograte.Limiter
	logger *zap.Logger
}

// Defaults of the queue.
var defaultRetry = []time.Duration{5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 5 * time.Hour, 10 * time.Hour, 10 * time.Hour}

const (
	defaultQueueTimeout = 30 * time.Second
	defaultWorkers      = 4
	defaultMaxPending   = 100_000
	// idlePoll is how often an idle worker looks for messages that became
	// due (retries) or that other instances stored.
	idlePoll = 500 * time.Millisecond
	// leaseMargin is added to the timeout for a message's lease: a worker
	// that lives settles its attempt within it. When a lease ends
	// unsettled (the worker's process died), the message is due again:
	// at once when a file is reopened, after the lease for another
	// instance on Redis.
	leaseMargin = storeCallTimeout
	// attemptHeader carries the attempt's number, from 1.
	attemptHeader = "Webhook-Attempt"
	// Retry-After of a 503 when the queue is full, or cannot store.
	queueFullRetryAfter  = "30"
	queueErrorRetryAfter = "5"
)

// provision sets the defaults, loads the store and gives the queue to the
// config's App, which starts its workers once Caddy runs the config.
func (q *Queue) provision(ctx caddy.Context, h *Handler) error {
	q.logger = h.logger.Named("queue")
	q.errors = &lograte.Limiter{Every: storeErrorLogEvery}
	if len(q.Retry) == 0 {
		for _, d := range defaultRetry {
			q.Retry = append(q.Retry, caddy.Duration(d))
		}
	}
	if q.Timeout == 0 {
		q.Timeout = caddy.Duration(defaultQueueTimeout)
	}
	if q.Workers == 0 {
		q.Workers = defaultWorkers
	}
	if q.MaxPending == 0 {
		q.MaxPending = defaultMaxPending
	}
	if err := q.validate(); err != nil {
		return err
	}
	// Expanded once: {env.APP_URL} keeps credentials in the URL out of
	// the config. Neither error quotes the URL.
	to, err := caddy.NewReplacer().ReplaceOrErr(q.To, true, true)
	if err != nil {
		return fmt.Errorf("queue: to: %w", err)
	}
	target, err := cfparse.HTTPURL(to)
	if err != nil {
		return fmt.Errorf("queue: to: %w", err)
	}
	q.target = target
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = q.Workers
	if q.TLS != nil {
		if transport.TLSClientConfig, err = q.TLS.MakeTLSClientConfig(ctx); err != nil {
			return fmt.Errorf("queue: tls: %w", err)
		}
	}
	q.client = &http.Client{Transport: transport, Timeout: time.Duration(q.Timeout),
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	store, err := guest.Load[queue.Store](ctx, q, "StoreRaw", q.StoreRaw, "http.handlers.openai_webhook.queue_stores.file")
	if err != nil {
		return fmt.Errorf("queue: store: %w", err)
	}
	if err := store.Open(q.MaxPending); err != nil {
		return fmt.Errorf("queue: store: %w", err)
	}
	q.store = store
	q.wake = make(chan struct{}, q.Workers)
	q.app = h.app
	if err := q.app.add(q); err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	queues.join(q)
	return nil
}

// validate checks the queue's settings.
func (q *Queue) validate() error {
	for i, d := range q.Retry {
		if d <= 0 {
			return fmt.Errorf("queue: retry[%d]: %v is not a positive duration", i, time.Duration(d))
		}
	}
	switch {
	case q.Timeout <= 0:
		return fmt.Errorf("queue: timeout: %v is not a positive duration", time.Duration(q.Timeout))
	case q.Workers < 1 || q.Workers > 1000:
		return fmt.Errorf("queue: workers: %d is not between 1 and 1000", q.Workers)
	case q.MaxPending < 1:
		return fmt.Errorf("queue: max_pending: %d is not a positive number", q.MaxPending)
	}
	return nil
}

// cleanup takes the queue out of the admin API and the metrics; the App
// stopped its workers before.
func (q *Queue) cleanup() {
	if q.store != nil {
		queues.leave(q)
	}
}

// hopHeaders are not the app's: they describe the connection the delivery
// came on, or its framing, which the worker makes anew; so do the headers
// that Connection names (RFC 9110, 7.6.1). reverse_proxy drops the same.
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length", "Expect", "Host"}

// enqueue stores a verified delivery and answers its sender: 200 once it is
// stored, 503 when it cannot be. It reports whether it stored it.
func (q *Queue) enqueue(w http.ResponseWriter, r *http.Request, h *Handler, d *delivery) (bool, error) {
	m := &queue.Message{WebhookID: d.hdr.ID, Header: r.Header.Clone()}
	for _, v := range m.Header["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			m.Header.Del(textproto.TrimString(name))
		}
	}
	for _, name := range hopHeaders {
		m.Header.Del(name)
	}
	m.Body = make([]byte, 0, d.body.size)
	d.body.view(func(raw []byte) bool {
		m.Body = append(m.Body, raw...)
		return true
	})
	if err := q.store.Enqueue(r.Context(), m); err != nil {
		retryAfter, o := queueErrorRetryAfter, outcomeStoreUnavailable
		if errors.Is(err, queue.ErrFull) {
			retryAfter, o = queueFullRetryAfter, outcomeQueueFull
		} else {
			q.failed("enqueue", err)
		}
		w.Header().Set("Retry-After", retryAfter)
		return false, h.refuse(w, r, o, fmt.Errorf("queueing: %w", err), d.hdr.ID)
	}
	d.passedOn(outcomeQueued)
	select {
	case q.wake <- struct{}{}:
	default: // every worker is busy or already woken
	}
	answerEmpty(w)
	return true, nil
}

// work delivers messages until ctx ends. An attempt it started runs to its
// end regardless: cutting it short would deliver the message twice.
func (q *Queue) work(ctx context.Context) {
	lease := time.Duration(q.Timeout) + leaseMargin
	for ctx.Err() == nil {
		storeCtx, cancel := context.WithTimeout(context.Background(), storeCallTimeout)
		m, err := q.store.Take(storeCtx, lease)
		cancel()
		if err != nil {
			q.failed("take", err)
		}
		if m == nil {
			select {
			case <-ctx.Done():
			case <-q.wake:
			case <-time.After(idlePoll):
			}
			continue
		}
		q.attempt(m)
	}
}

// storeCallTimeout bounds a worker's calls to the store.
const storeCallTimeout = 10 * time.Second

// attempt sends m to the app once, and settles it: delivered, scheduled
// again, or a dead letter.
func (q *Queue) attempt(m *queue.Message) {
	number := len(m.Attempts) + 1
	start := time.Now()
	a := queue.Attempt{At: start}
	retryAfter, err := q.send(m, number)
	a.Duration = time.Since(start)
	var status *httpStatus
	if errors.As(err, &status) {
		a.Status = status.code
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeCallTimeout)
	defer cancel()
	if err == nil {
		queueAttempts.WithLabelValues(q.store.Name(), "delivered").Inc()
		if err := q.store.Complete(ctx, m, a); err != nil {
			q.failed("complete", err)
		}
		q.logger.Info("delivered", zap.String("queue_id", m.ID), zap.String("webhook_id", m.WebhookID),
			zap.Int("attempts", number), zap.Duration("queued_for", time.Since(m.Received)))
		return
	}
	a.Error = err.Error()
	if a.Status != 0 {
		queueAttempts.WithLabelValues(q.store.Name(), "refused").Inc()
	} else {
		queueAttempts.WithLabelValues(q.store.Name(), "failed").Inc()
	}
	if m.Tries+1 > len(q.Retry) {
		if err := q.store.Bury(ctx, m, a); err != nil {
			q.failed("bury", err)
		}
		q.logger.Warn("dead letter: out of attempts", zap.String("queue_id", m.ID), zap.String("webhook_id", m.WebhookID),
			zap.Int("attempts", number), zap.String("last_error", a.Error))
		return
	}
	wait := q.wait(m.Tries, retryAfter)
	if err := q.store.Reschedule(ctx, m, a, time.Now().Add(wait)); err != nil {
		q.failed("reschedule", err)
	}
}

// wait is how long to wait after the failed attempt number tries+1: the
// schedule's entry with 10% jitter either way, lengthened to the app's
// Retry-After up to the schedule's longest.
func (q *Queue) wait(tries int, retryAfter time.Duration) time.Duration {
	base := time.Duration(q.Retry[tries])
	wait := base + time.Duration((rand.Float64()*0.2-0.1)*float64(base))
	longest := time.Duration(0)
	for _, d := range q.Retry {
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
func (q *Queue) send(m *queue.Message, number int) (time.Duration, error) {
	req, err := http.NewRequest(http.MethodPost, q.target.String(), bytes.NewReader(m.Body))
	if err != nil {
		return 0, err
	}
	req.Header = m.Header.Clone()
	req.Header.Set(attemptHeader, strconv.Itoa(number))
	req.ContentLength = int64(len(m.Body))
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

// failed logs a store failure, at most once a storeErrorLogEvery.
func (q *Queue) failed(operation string, err error) {
	queueStoreErrors.WithLabelValues(q.store.Name(), operation).Inc()
	if suppressed, ok := q.errors.Allow(time.Now()); ok {
		q.logger.Error("queue store failed", zap.String("operation", operation), zap.Error(err),
			zap.Int64("failures_not_logged", suppressed))
	}
}

// queues are the queues of the running configs, by store name, for the
// admin API and the metrics. Several handlers (or the handlers of an old
// and a new config, during a reload) may share one.
var queues = &queueRegistry{byName: map[string][]*Queue{}}

type queueRegistry struct {
	mu     sync.Mutex
	byName map[string][]*Queue
}

func (r *queueRegistry) join(q *Queue) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.byName[q.store.Name()] = append(r.byName[q.store.Name()], q)
}

func (r *queueRegistry) leave(q *Queue) {
	r.mu.Lock()
	defer r.mu.Unlock()
	name := q.store.Name()
	list := r.byName[name]
	for i, other := range list {
		if other == q {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(r.byName, name)
	} else {
		r.byName[name] = list
	}
}

// all returns one queue per name (the newest config's), sorted by name.
func (r *queueRegistry) all() []*Queue {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*Queue
	for _, list := range r.byName {
		out = append(out, list[len(list)-1])
	}
	slices.SortFunc(out, func(a, b *Queue) int { return strings.Compare(a.store.Name(), b.store.Name()) })
	return out
}

// find returns the queue named name, or the only one for "".
func (r *queueRegistry) find(name string) (*Queue, error) {
	all := r.all()
	if name == "" {
		switch len(all) {
		case 0:
			return nil, errors.New("no queue is running")
		case 1:
			return all[0], nil
		}
		return nil, fmt.Errorf("%d queues are running: name one with queue=", len(all))
	}
	for _, q := range all {
		if q.store.Name() == name {
			return q, nil
		}
	}
	return nil, fmt.Errorf("no queue %q is running", name)
}
