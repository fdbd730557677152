// Package openaiwebhook is a Caddy HTTP handler that verifies OpenAI webhook
// deliveries (Standard Webhooks signatures) at the edge, refuses anything not
// signed with a configured secret or not fresh, and passes the exact verified
// bytes on to the next handler, usually reverse_proxy.
package openaiwebhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/internal/cfparse"
	"github.com/webhookgate/caddy-openai-webhook/internal/lograte"
	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
	"github.com/webhookgate/caddy-openai-webhook/replaystore"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults and limits of the configuration.
const (
	MaxTolerance         = 24 * time.Hour
	DefaultMaxSize       = 1 << 20
	MaxMaxSize           = 1 << 30
	DefaultBodyTimeout   = 10 * time.Second
	DefaultMaxUnverified = 64 << 20
)

// Handler verifies OpenAI webhook deliveries. A request passes to the next
// handler only if its webhook-timestamp is within the tolerance, both when
// its headers arrive and when its body has been read, and its
// webhook-signature carries an HMAC-SHA256 of "id.timestamp.body" made with
// one of the configured secrets. Other requests are refused through Caddy's
// error handling, so handle_errors can shape the response: 405 for methods
// other than POST, 400 for requests that ask to upgrade the connection or
// could lose their signature headers on the way, 401 for missing, malformed,
// stale or unmatched signatures, 413 for a body over max_size, 408 for one
// not received within body_timeout, 400 for one that could not be read, and
// 503 (with Retry-After) while max_unverified bytes are already held for
// unverified bodies. With events set, a verified delivery of another type is
// answered 200 and not forwarded. The next handler gets the verified bytes
// with an exact Content-Length, without the svix-* signature headers (which
// nothing verified), and the placeholders
// {http.openai_webhook.id}, {http.openai_webhook.timestamp},
// {http.openai_webhook.event_type} and {http.openai_webhook.event_id} (the
// last two read from the body only when used); a refusal sets
// {http.openai_webhook.error} to its outcome code for handle_errors.
type Handler struct {
	// Secrets are the endpoint's signing secrets, "whsec_" followed by
	// base64, as OpenAI shows them. A delivery signed with any of them is
	// accepted, so a new secret can be added before the old one is removed.
	// Placeholders such as {env.OPENAI_WEBHOOK_SECRET} or
	// {file./run/secrets/openai_webhook} are expanded once when the config
	// loads, which keeps the secret itself out of the config. At least one
	// is required.
	Secrets []string `json:"secrets,omitempty"`

	// Tolerance is how far webhook-timestamp may be from the current time in
	// either direction, judged when the headers arrive and again when the
	// body has been read. Between 1s and 24h. Default: 5m.
	Tolerance caddy.Duration `json:"tolerance,omitempty"`

	// MaxSize is the largest body accepted, in bytes; a longer one is refused
	// with 413 and never forwarded. Every accepted body is held in memory
	// until the next handler finishes, so this bounds memory per request.
	// At most 1 GiB. Default: 1 MiB.
	MaxSize int64 `json:"max_size,omitempty"`

	// BodyTimeout is the longest a request's body may take to arrive, from
	// when the handler starts reading it; a slower one is refused with 408.
	// It ends bodies trickled to hold memory or to stretch the freshness
	// window. Default: 10s, well under the 20s OpenAI waits for an answer.
	BodyTimeout caddy.Duration `json:"body_timeout,omitempty"`

	// MaxUnverified bounds the bytes buffered, across all requests being
	// read at once, for bodies whose signature is not verified yet: anyone
	// can send those. Past it, deliveries are refused with 503 and
	// Retry-After before more of their body is read, and senders such as
	// OpenAI retry later. Handlers with the same max_unverified share one
	// budget, across reloads too. At least what one body of max_size
	// occupies (max_size rounded up to 32 KiB). Default: 64 MiB.
	MaxUnverified int64 `json:"max_unverified,omitempty"`

	// ReplayWindow is how long the webhook-id of a delivered request is
	// remembered. While it is, a request with the same id is answered 200
	// with an empty body and not forwarded; one whose id is being forwarded
	// at that moment gets 409. An id is remembered only once the next
	// handler answered 2xx, so the sender's retries of a failed delivery go
	// through. Default: twice the tolerance plus one second, which outlasts
	// every replay of a captured request. Negative (Caddyfile: off) turns
	// replay refusal off.
	ReplayWindow caddy.Duration `json:"replay_window,omitempty"`

	// Events is an allow-list of event types: exact types
	// ("response.completed") and families ending in ".*" ("batch.*",
	// "fine_tuning.job.*"). A verified delivery whose body is not a JSON
	// object with a "type" that matches is answered 200 with an empty body,
	// so the sender does not retry it, and not forwarded. Empty: every
	// type is forwarded, and bodies are never parsed for it.
	Events []string `json:"events,omitempty"`

	// SignWith is a Standard Webhooks secret ("whsec_" and base64) shared
	// with the app only. With it, the request passed on carries a
	// webhook-signature made with it over the exact verified body, in
	// place of the sender's, with the delivery's webhook-id and
	// webhook-timestamp: the app can verify that the request came through
	// the gateway, with a standard library, without holding the sender's
	// secret. Placeholders, such as {env.APP_WEBHOOK_SECRET}, are
	// expanded when the config loads.
	SignWith string `json:"sign_with,omitempty"`

	// ReplayStoreRaw is where delivered ids are remembered: a module of
	// the namespace http.openai_webhook.replay_stores, chosen by its
	// "backend" field: "memory" (the default; one Caddy process, kept
	// across reloads that keep a secret) or "redis" (a fleet; kept across
	// restarts).
	ReplayStoreRaw json.RawMessage `json:"replay_store,omitempty" caddy:"namespace=http.openai_webhook.replay_stores inline_key=backend"`

	face        *face
	families    []headerFamily // the signature headers looked for, in order
	unread      []string       // the other families' header names, never passed on
	verifier    *verifier.Verifier
	keyCount    int          // secrets and public keys: the verified series
	signKey     []byte       // sign_with's; nil without
	events      *eventFilter // nil without events
	budget      *budget
	budgetKey   string            // the handler's share of budgets
	retryAfter  string            // Retry-After of a 503, in seconds
	replay      replaystore.Store // nil when replay refusal is off
	storeErrors *lograte.Limiter
	series      *atomic.Pointer[serverSeries] // once it served: the server it serves and the series to count in
	app         *App                          // the config's
	logger      *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.openai_webhook",
		New: func() caddy.Module { return new(Handler) },
	}
}

// budgets keeps the budgets for unverified bodies across config reloads, so
// that a reload does not hand senders a second budget while the old
// config's requests still hold the first.
var budgets = caddy.NewUsagePool()

type pooledBudget struct{ *budget }

func (pooledBudget) Destruct() error { return nil }

// Provision sets the defaults, expands and decodes the secrets, builds the
// verifier and the events filter, takes the handler's share of the budget
// for unverified bodies, and loads the replay store and the config's App.
// Its errors name the field at fault and never contain a secret.
func (h *Handler) Provision(ctx caddy.Context) error {
	return h.provision(ctx, openAIFace, newHeaderFamilies(verifier.FamilyWebhook), nil)
}

// provision is Provision for a face, reading the signature headers of
// families; publicKeys are standard_webhooks' (openai_webhook has none).
func (h *Handler) provision(ctx caddy.Context, f *face, families []headerFamily, publicKeys []string) error {
	h.face, h.families, h.unread = f, families, unreadHeaders(families)
	h.logger = ctx.Logger()
	h.storeErrors = &lograte.Limiter{Every: storeErrorLogEvery}
	h.series = new(atomic.Pointer[serverSeries])
	if err := f.metrics.register(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	app, err := ctx.App(appName)
	if err != nil {
		return err
	}
	h.app = app.(*App)
	if h.Tolerance == 0 {
		h.Tolerance = caddy.Duration(verifier.DefaultTolerance)
	}
	if h.MaxSize == 0 {
		h.MaxSize = DefaultMaxSize
	}
	if h.BodyTimeout == 0 {
		h.BodyTimeout = caddy.Duration(DefaultBodyTimeout)
	}
	if h.MaxUnverified == 0 {
		h.MaxUnverified = max(DefaultMaxUnverified, chunksOf(h.MaxSize))
	}
	if h.ReplayWindow == 0 {
		h.ReplayWindow = caddy.Duration(2*time.Duration(h.Tolerance) + time.Second)
	}
	// The values are checked before anything is built from them; Caddy
	// calls Validate again afterwards.
	if err := h.Validate(); err != nil {
		return err
	}
	if len(h.Secrets)+len(publicKeys) == 0 {
		return f.noKey
	}
	keys, err := expandKeys("secrets", h.Secrets, f.parseSecret)
	if err != nil {
		return err
	}
	pubs, err := expandKeys("public_keys", publicKeys, verifier.ParsePublicKey)
	if err != nil {
		return err
	}
	h.keyCount = len(keys) + len(pubs)
	h.warnWrittenSecrets()
	if h.SignWith != "" {
		if h.signKey, err = expandKey("sign_with", h.SignWith, verifier.ParseSecret); err != nil {
			return err
		}
	}
	h.verifier, err = verifier.New(verifier.Config{
		Keys:       keys,
		PublicKeys: pubs,
		// A header with v1 and v1a entries is what a sender moving from
		// one kind of key to the other sends; openai_webhook, whose
		// sender signs v1 only, stays strict.
		SkipUnkeyed: f == standardFace,
		Tolerance:   time.Duration(h.Tolerance),
	})
	if err != nil {
		return err
	}
	if h.events, err = newEventFilter(h.Events); err != nil {
		return err
	}
	h.retryAfter = strconv.Itoa(int(math.Ceil(time.Duration(h.BodyTimeout).Seconds())))
	h.budgetKey = strconv.FormatInt(h.MaxUnverified, 10)
	shared, _, err := budgets.LoadOrNew(h.budgetKey, func() (caddy.Destructor, error) {
		return pooledBudget{&budget{limit: h.MaxUnverified}}, nil
	})
	if err != nil {
		return err
	}
	h.budget = shared.(pooledBudget).budget
	return h.provisionReplay(ctx, append(keys, pubs...))
}

// Validate checks that every setting is within its range.
func (h *Handler) Validate() error {
	switch {
	case h.Tolerance < caddy.Duration(time.Second) || h.Tolerance > caddy.Duration(MaxTolerance):
		return fmt.Errorf("tolerance: %v is not between 1s and %v", time.Duration(h.Tolerance), MaxTolerance)
	case h.MaxSize < 1 || h.MaxSize > MaxMaxSize:
		return fmt.Errorf("max_size: %d is not between 1 and %d bytes", h.MaxSize, MaxMaxSize)
	case h.BodyTimeout <= 0:
		return fmt.Errorf("body_timeout: %v is not a positive duration", time.Duration(h.BodyTimeout))
	case h.MaxUnverified < chunksOf(h.MaxSize):
		return fmt.Errorf("max_unverified: %d bytes is less than the %d bytes that one body of max_size occupies (max_size rounded up to 32 KiB)", h.MaxUnverified, chunksOf(h.MaxSize))
	case h.ReplayWindow < 0 && h.ReplayStoreRaw != nil:
		return errors.New("replay_store: set while replay_window is off, which would leave it unused")
	}
	_, err := newEventFilter(h.Events)
	return err
}

// chunksOf returns the bytes of the chunks a body of size bytes occupies.
func chunksOf(size int64) int64 {
	return (size + chunkSize - 1) / chunkSize * chunkSize
}

// expandKeys resolves placeholders in each of the keys of field and
// decodes it with parse.
func expandKeys[K ~[]byte](field string, keys []string, parse func(string) (K, error)) ([][]byte, error) {
	decoded := make([][]byte, 0, len(keys))
	for i, k := range keys {
		key, err := expandKey(fmt.Sprintf("%s[%d]", field, i), k, parse)
		if err != nil {
			return nil, err
		}
		decoded = append(decoded, key)
	}
	return decoded, nil
}

// expandKey resolves the placeholders in the key of field, and decodes it
// with parse. Its errors say which placeholder failed, never what it held.
func expandKey[K ~[]byte](field, key string, parse func(string) (K, error)) ([]byte, error) {
	expanded, err := caddy.NewReplacer().ReplaceOrErr(key, true, true)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	decoded, err := parse(expanded)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return decoded, nil
}

// warnWrittenSecrets warns of each secret written into the config itself
// (see cfparse.WarnIfWritten).
func (h *Handler) warnWrittenSecrets() {
	for i, s := range h.Secrets {
		cfparse.WarnIfWritten(h.logger, fmt.Sprintf("secrets[%d]", i), s)
	}
	cfparse.WarnIfWritten(h.logger, "sign_with", h.SignWith)
}

// Cleanup releases the handler's share of its budget and leaves the store
// statistics. (Caddy cleans up the replay store, a module it loaded for the
// handler.)
func (h *Handler) Cleanup() error {
	if h.face != nil {
		h.face.metrics.stores.leave(h)
	}
	if h.budgetKey == "" {
		return nil
	}
	_, err := budgets.Delete(h.budgetKey)
	return err
}

// ServeHTTP verifies the request and, if it is genuine, passes it on.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return h.refuse(w, r, outcomeMethodNotAllowed, errMethodNotAllowed, "")
	}
	if err := checkFraming(r.Header, h.families); err != nil {
		return h.refuse(w, r, outcomeBadFraming, err, "")
	}
	headers, family, err := signatureHeaders(r.Header, h.families)
	switch {
	case errors.Is(err, errBadFraming):
		return h.refuse(w, r, outcomeBadFraming, err, "")
	case err != nil:
		return h.refuse(w, r, outcomeMalformed, err, "")
	}
	// Headers and freshness first: a stale or unsigned request costs no
	// buffering.
	msg, err := h.verifier.Begin(headers)
	if err != nil {
		return h.refuse(w, r, verdictOutcome(err), err, "")
	}
	if r.ContentLength > h.MaxSize {
		msg.Discard()
		return h.refuse(w, r, outcomeTooLarge, errBodyTooLarge, headers.ID)
	}
	d := &delivery{h: h}
	if err := h.readBody(w, r, &d.body, msg); err != nil {
		msg.Discard()
		return h.refuse(w, r, readOutcome(err), err, headers.ID)
	}
	result, err := finish(msg, &d.body)
	if result.Ed25519Verifications > 0 {
		h.seriesOf(r).ed25519.Add(float64(result.Ed25519Verifications))
	}
	if err != nil {
		d.body.release()
		return h.refuse(w, r, verdictOutcome(err), err, headers.ID)
	}
	d.body.verified()
	d.hdr, d.family, d.series = headers, family, h.seriesOf(r)
	d.series.verified[result.Key].Inc()
	// Held until Caddy is done with the request, so that placeholders read
	// after the forward (log_append, the access log) still find the event:
	// on the heap, or in its chunks until the request's context ends.
	if !d.body.moveToHeap() {
		context.AfterFunc(r.Context(), d.body.release)
	}
	d.event.body = &d.body
	r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer).Map(d.placeholder)
	if h.events != nil {
		typ, _ := d.event.fields()
		if !h.events.matches(typ) {
			return h.answerFiltered(w, d, typ)
		}
		d.eventLabel = eventTypeLabel(typ)
	}
	if h.replay == nil {
		d.passedOn(outcomeForwarded)
		return next.ServeHTTP(w, d.passOn(r))
	}
	return h.forwardOnce(w, d.passOn(r), next, d)
}

// finish gives the verifier's verdict on a body read in full into b,
// handing the verifier the body again only for v1a entries it must check.
func finish(msg *verifier.Message, b *bufferedBody) (verifier.Result, error) {
	if !msg.NeedsBody() {
		key, err := msg.Finish()
		return verifier.Result{Key: key}, err
	}
	return msg.FinishBody(b.all)
}

// answerFiltered answers a verified delivery of a type the allow-list
// leaves out: 200, so the sender does not retry it, and nothing forwarded.
func (h *Handler) answerFiltered(w http.ResponseWriter, d *delivery, typ string) error {
	d.series.requests[outcomeFiltered.name].Inc()
	h.logger.Debug("delivery of an event type not in events answered without forwarding",
		zap.String("webhook_id", d.hdr.ID), zap.String("event_type", typ))
	answerEmpty(w)
	return nil
}

// answerEmpty answers 200 with an empty body: the sender has what it needs
// to stop retrying, and nothing else.
func answerEmpty(w http.ResponseWriter) {
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusOK)
}

// seriesOf returns the handler's series for the Caddy server the request
// came to (labelled as Caddy's own metrics label it), resolved on the first
// request: a handler serves the routes of one server.
func (h *Handler) seriesOf(r *http.Request) *serverSeries {
	if s := h.series.Load(); s != nil {
		return s
	}
	name := "UNKNOWN"
	if srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv != nil && srv.Name() != "" {
		name = srv.Name()
	}
	s := h.face.metrics.forServer(name, h.keyCount)
	h.series.Store(s)
	return s
}

var (
	errMethodNotAllowed = errors.New("method not allowed: webhooks are POSTed")
	errBodyTimeout      = errors.New("body not received within body_timeout")
)

// readBody reads the request's body into b under max_size, the budget and
// body_timeout, hashing it into hash as it arrives.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request, b *bufferedBody, hash io.Writer) error {
	src := r.Body
	if src == nil {
		src = http.NoBody
	}
	timeout := time.Duration(h.BodyTimeout)
	rc := http.NewResponseController(w)
	var err error
	if rc.SetReadDeadline(time.Now().Add(timeout)) == nil {
		err = bufferBody(b, src, h.MaxSize, hash, h.budget)
		// The forward must not inherit the deadline: on HTTP/1 it would
		// cancel the request when it passed.
		_ = rc.SetReadDeadline(time.Time{})
	} else {
		err = bufferBodyClosing(b, src, h.MaxSize, hash, h.budget, timeout)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errBodyTimeout
	case errors.Is(err, errBodyTooLarge), errors.Is(err, errOverloaded):
		return err
	case errors.As(err, new(*http.MaxBytesError)):
		// Caddy's request_body max_size, if smaller, stops the read first.
		return fmt.Errorf("%w: %w", errBodyTooLarge, err)
	default:
		return fmt.Errorf("reading body: %w", err)
	}
}

// bufferBodyClosing is bufferBody where the connection takes no read
// deadline (HTTP/3): a timer closes src when timeout passes, which ends a
// read, and the error is then os.ErrDeadlineExceeded.
func bufferBodyClosing(b *bufferedBody, src io.ReadCloser, limit int64, hash io.Writer, budget *budget, timeout time.Duration) error {
	var expired atomic.Bool
	timer := time.AfterFunc(timeout, func() {
		expired.Store(true)
		_ = src.Close()
	})
	defer timer.Stop()
	err := bufferBody(b, src, limit, hash, budget)
	if err != nil && expired.Load() {
		return os.ErrDeadlineExceeded
	}
	return err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
