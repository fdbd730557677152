// Package webhookqueue is the Caddy handler webhook_queue: durable delivery
// of webhooks to an app. It stores each request that reaches it and answers
// 200 once the request is stored, then delivers it to the app in the
// background, retrying on a schedule until the app answers 2xx; a delivery
// out of attempts is kept as a dead letter. Each attempt can carry a fresh
// Standard Webhooks signature made with a secret of the app's (sign_with),
// so the app can verify it at every attempt.
//
// It trusts whatever reaches it: put it behind a handler that authenticates
// the sender (openai_webhook, basic_auth, forward_auth). Its workers run in
// the webhook_queue app, which Caddy starts only for a config it runs; the
// stores are guest modules (http.webhook_queue.stores.*, package
// queuestore); its admin API is admin.api.webhook_queue and its command
// `caddy webhook-queue`.
package webhookqueue

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/internal/cfparse"
	"github.com/webhookgate/caddy-openai-webhook/internal/guest"
	"github.com/webhookgate/caddy-openai-webhook/internal/redact"
	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
	"github.com/webhookgate/caddy-openai-webhook/queuestore"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler stores each request that reaches it in a durable queue and
// answers 200 once it is stored; when it cannot be (the store fails, or
// holds max_pending, or the config's queue is not running), 503 with
// Retry-After, so the sender keeps it and retries. A request whose
// delivery id (webhook-id) is queued already, or was delivered within the
// retention, is answered 200 and not stored again. Workers deliver each
// stored request to the app (to), the exact body with the headers as
// received (hop-by-hop and framing ones aside), until it answers 2xx.
// Delivery is at least once, in no particular order.
type Handler struct {
	// To is the app's URL, http:// or https://. Placeholders, such as
	// {env.APP_URL}, are expanded when the config loads. Required.
	To string `json:"to,omitempty"`

	// Name names the queue in the admin API, the metrics, the logs, and
	// the store's default place (the file's name, the Redis key prefix).
	// Handlers with one name share a queue, and must agree on its
	// settings. Default: to's host and path, as in
	// "127.0.0.1:8000/hooks/openai". The name shows in metrics, logs and
	// the admin API: give one when to's path holds a credential.
	Name string `json:"name,omitempty"`

	// StoreRaw is where messages are kept: a module of the namespace
	// http.webhook_queue.stores, chosen by its "backend" field: "file"
	// (the default: a bbolt file in Caddy's data directory) or "redis"
	// (Redis Streams, for a fleet).
	StoreRaw json.RawMessage `json:"store,omitempty" caddy:"namespace=http.webhook_queue.stores inline_key=backend"`

	// SignWith is a Standard Webhooks secret ("whsec_" and base64) shared
	// with the app only. With it, each attempt carries the delivery's
	// webhook-id, a webhook-timestamp of the attempt and a
	// webhook-signature made with it over the exact stored body, and no
	// other signature header: the app verifies every attempt with a
	// standard library, whenever it comes. Without it the app gets the
	// sender's own signature headers, which go stale (OpenAI's after five
	// minutes): an app must then not verify them. Placeholders, such as
	// {env.APP_WEBHOOK_SECRET}, are expanded when the config loads.
	SignWith string `json:"sign_with,omitempty"`

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

	// Workers is how many attempts run at once, per Caddy instance: the
	// queue's concurrency towards the app. Default: 32, at which a
	// backlog drains at half the rate forwarding reaches or better with
	// either store (bench/drain.sh); forwarding itself puts no bound on
	// the app at all. Lower it, or set rate, for an app that cannot take
	// as many requests at once.
	Workers int `json:"workers,omitempty"`

	// MaxPending is the most messages the queue holds that are not dead
	// letters; past it, requests are refused with 503. Default: 100000.
	MaxPending int `json:"max_pending,omitempty"`

	// MaxSize is the largest body stored, in bytes; a longer one is refused
	// with 413. Default: 1 MiB.
	MaxSize int64 `json:"max_size,omitempty"`

	// Retention is how long the delivery id of a delivered message is
	// remembered, so that the sender's repeat of it is not delivered
	// again. Default: 72h, the time OpenAI retries a delivery for.
	Retention caddy.Duration `json:"retention,omitempty"`

	// IDHeader names the header that carries a delivery's id. Default:
	// webhook-id, or svix-id when the request has no webhook-id. A request
	// without it is stored with no check for repeats.
	IDHeader string `json:"id_header,omitempty"`

	// Rate bounds the attempts per second this instance makes to the app,
	// so that a backlog drained at once does not flatten it (Caddyfile:
	// rate 50/s). Zero: no bound but workers.
	Rate float64 `json:"rate,omitempty"`

	// DeadLetters bounds the dead letters kept.
	DeadLetters *DeadLetters `json:"dead_letters,omitempty"`

	// TransportRaw is how the workers reach the app: a module of the
	// namespace http.reverse_proxy.transport, as reverse_proxy's transport
	// (Caddyfile: transport http { ... }), so its TLS trust, client
	// certificates, timeouts and HTTP versions apply. Default: http, with
	// TLS when to is https://.
	TransportRaw json.RawMessage `json:"transport,omitempty" caddy:"namespace=http.reverse_proxy.transport inline_key=protocol"`

	queue  *queue // the config's queue of this name
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.webhook_queue",
		New: func() caddy.Module { return new(Handler) },
	}
}

// DeadLetters bounds the dead letters a queue keeps: past either bound the
// oldest are dropped, and counted.
type DeadLetters struct {
	// MaxAge is how long a dead letter is kept. Default: 4320h (180
	// days, as Sidekiq keeps its dead set).
	MaxAge caddy.Duration `json:"max_age,omitempty"`
	// MaxCount is the most dead letters kept. Default: 10000 (Sidekiq's),
	// a few tens of MiB of bodies at most.
	MaxCount int `json:"max_count,omitempty"`
}

// Defaults of the handler.
var defaultRetry = []time.Duration{5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 5 * time.Hour, 10 * time.Hour, 10 * time.Hour}

const (
	defaultTimeout    = 30 * time.Second
	defaultWorkers    = 32
	defaultMaxPending = 100_000
	defaultMaxSize    = 1 << 20
	maxMaxSize        = 1 << 30
	defaultRetention  = 72 * time.Hour
	defaultDeadMaxAge = 180 * 24 * time.Hour
	defaultDeadMax    = 10_000
	// Retry-After of a 503: the queue is full; or it cannot store, or is
	// not running (a config starting or stopping).
	fullRetryAfter      = "30"
	notStoredRetryAfter = "5"
)

// Provision sets the defaults, expands to and sign_with, loads the store
// and the transport, and gives the queue to the config's App, which starts
// its store and workers once Caddy runs the config. Its errors name the
// field and never quote a secret or a credential.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	if len(h.Retry) == 0 {
		for _, d := range defaultRetry {
			h.Retry = append(h.Retry, caddy.Duration(d))
		}
	}
	if h.Timeout == 0 {
		h.Timeout = caddy.Duration(defaultTimeout)
	}
	if h.Workers == 0 {
		h.Workers = defaultWorkers
	}
	if h.MaxPending == 0 {
		h.MaxPending = defaultMaxPending
	}
	if h.MaxSize == 0 {
		h.MaxSize = defaultMaxSize
	}
	if h.Retention == 0 {
		h.Retention = caddy.Duration(defaultRetention)
	}
	if h.DeadLetters == nil {
		h.DeadLetters = new(DeadLetters)
	}
	if h.DeadLetters.MaxAge == 0 {
		h.DeadLetters.MaxAge = caddy.Duration(defaultDeadMaxAge)
	}
	if h.DeadLetters.MaxCount == 0 {
		h.DeadLetters.MaxCount = defaultDeadMax
	}
	if err := h.Validate(); err != nil {
		return err
	}
	repl := caddy.NewReplacer()
	// Expanded once: {env.APP_URL} keeps credentials in the URL out of
	// the config. Neither error quotes the URL.
	to, err := repl.ReplaceOrErr(h.To, true, true)
	if err != nil {
		return fmt.Errorf("to: %w", err)
	}
	target, err := cfparse.HTTPURL(to)
	if err != nil {
		return fmt.Errorf("to: %w", err)
	}
	if h.Name == "" {
		h.Name = target.Host + target.EscapedPath()
	}
	var signKey []byte
	cfparse.WarnIfWritten(h.logger, "sign_with", h.SignWith)
	if h.SignWith != "" {
		secret, err := repl.ReplaceOrErr(h.SignWith, true, true)
		if err != nil {
			return fmt.Errorf("sign_with: %w", err)
		}
		if signKey, err = verifier.ParseSecret(secret); err != nil {
			return fmt.Errorf("sign_with: %w", err)
		}
	}
	transport, err := h.loadTransport(ctx, target)
	if err != nil {
		return fmt.Errorf("transport: %w", err)
	}
	store, err := guest.Load[queuestore.Store](ctx, h, "StoreRaw", h.StoreRaw, "http.webhook_queue.stores.file")
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := store.Open(queuestore.Options{Name: h.Name, MaxPending: h.MaxPending, Retention: time.Duration(h.Retention),
		DeadMaxAge: time.Duration(h.DeadLetters.MaxAge), DeadMaxCount: h.DeadLetters.MaxCount}); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	app, err := ctx.App(appName)
	if err != nil {
		return err
	}
	h.queue, err = app.(*App).queueFor(h, &queue{
		store:   store,
		target:  target,
		signKey: signKey,
		client: &http.Client{Transport: transport, Timeout: time.Duration(h.Timeout),
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		logger: h.logger,
	})
	return err
}

// loadTransport loads the transport module, or reverse_proxy's http
// transport (with TLS for an https:// app) when none is configured.
func (h *Handler) loadTransport(ctx caddy.Context, target *url.URL) (http.RoundTripper, error) {
	if h.TransportRaw == nil {
		h.TransportRaw = json.RawMessage(`{"protocol":"http"}`)
		if target.Scheme == "https" {
			h.TransportRaw = json.RawMessage(`{"protocol":"http","tls":{}}`)
		}
	}
	mod, err := ctx.LoadModule(h, "TransportRaw")
	if err != nil {
		return nil, err
	}
	rt, ok := mod.(http.RoundTripper)
	if !ok {
		return nil, fmt.Errorf("module %T is not an http.RoundTripper", mod)
	}
	return rt, nil
}

// Validate checks that every setting is within its range.
func (h *Handler) Validate() error {
	for i, d := range h.Retry {
		if d <= 0 {
			return fmt.Errorf("retry[%d]: %v is not a positive duration", i, time.Duration(d))
		}
	}
	switch {
	case h.To == "":
		return errors.New("to: the app's URL is required")
	case h.Timeout <= 0:
		return fmt.Errorf("timeout: %v is not a positive duration", time.Duration(h.Timeout))
	case h.Workers < 1 || h.Workers > 1000:
		return fmt.Errorf("workers: %d is not between 1 and 1000", h.Workers)
	case h.MaxPending < 1:
		return fmt.Errorf("max_pending: %d is not a positive number", h.MaxPending)
	case h.MaxSize < 1 || h.MaxSize > maxMaxSize:
		return fmt.Errorf("max_size: %d is not between 1 and %d bytes", h.MaxSize, maxMaxSize)
	case h.Retention < 0:
		return fmt.Errorf("retention: %v is negative", time.Duration(h.Retention))
	case h.Rate < 0:
		return fmt.Errorf("rate: %v is negative", h.Rate)
	case h.DeadLetters != nil && (h.DeadLetters.MaxAge < 0 || h.DeadLetters.MaxCount < 0):
		return errors.New("dead_letters: max_age and max_count must not be negative")
	}
	return nil
}

// ServeHTTP stores the request and answers it: 200 once it is stored (or
// was already), 503 when it cannot be, 413 for a body over max_size.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	q := h.queue
	body, err := readBody(r, h.MaxSize)
	if err != nil {
		return q.refuse(w, err)
	}
	m := &queuestore.Message{DeliveryID: deliveryID(r.Header, h.IDHeader), Header: queuestore.Fields(storedHeader(r.Header)), Body: body}
	q.gate.RLock()
	defer q.gate.RUnlock()
	if !q.running {
		return q.refuse(w, errNotRunning)
	}
	switch err := q.store.Enqueue(r.Context(), m); {
	case errors.Is(err, queuestore.ErrDuplicate):
		q.count(outcomeDuplicate)
		h.logger.Debug("delivery already queued or delivered: answered without storing it again",
			zap.String("queue", h.Name), zap.String("delivery_id", m.DeliveryID))
	case err != nil:
		return q.refuse(w, err)
	default:
		q.count(outcomeQueued)
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusOK)
	return nil
}

// Errors of ServeHTTP.
var (
	errNotRunning  = errors.New("the queue is not running: its config is starting, stopping or failed to start")
	errTooLarge    = errors.New("body exceeds max_size")
	errReadingBody = errors.New("reading the body")
)

// readBody reads the request's body, at most limit bytes.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return []byte{}, nil
	}
	if r.ContentLength > limit {
		return nil, errTooLarge
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errReadingBody, err)
	}
	if int64(len(body)) > limit {
		return nil, errTooLarge
	}
	return body, nil
}

// deliveryID is the delivery's id, from the header named, or else
// webhook-id, then svix-id; "" when the request has none.
func deliveryID(hdr http.Header, name string) string {
	if name != "" {
		return hdr.Get(name)
	}
	if id := hdr.Get("Webhook-Id"); id != "" {
		return id
	}
	return hdr.Get("Svix-Id")
}

// hopHeaders are not the app's: they describe the connection the delivery
// came on, or its framing, which the worker makes anew; so do the headers
// that Connection names (RFC 9110, 7.6.1). reverse_proxy drops the same.
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length", "Expect", "Host"}

// storedHeader returns the request's headers as they are stored: without
// hop-by-hop and framing fields.
func storedHeader(hdr http.Header) http.Header {
	stored := hdr.Clone()
	for _, v := range stored["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			stored.Del(textproto.TrimString(name))
		}
	}
	for _, name := range hopHeaders {
		stored.Del(name)
	}
	return stored
}

// shownTo is to as the admin API and errors show it: without the
// credentials of its user info or query (see redact.URL). Its path shows
// as it is.
func (q *queue) shownTo() string { return redact.URL(q.target) }

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
