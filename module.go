// Package openaiwebhook is a Caddy HTTP handler that verifies OpenAI webhook
// deliveries (Standard Webhooks signatures) at the edge, refuses anything not
// signed with a configured secret or not fresh, and passes the exact verified
// bytes on to the next handler, usually reverse_proxy.
package openaiwebhook

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/internal/replay"
	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults and limits of the configuration.
const (
	DefaultMaxSize = 1 << 20
	MaxMaxSize     = 1 << 30
)

// Handler verifies OpenAI webhook deliveries. A request passes to the next
// handler only if its webhook-timestamp is within the tolerance and its
// webhook-signature carries an HMAC-SHA256 of "id.timestamp.body" made with
// one of the configured secrets. Other POSTs are refused with 401 (413 for
// a body over max_size, 400 for a body that could not be read) and other
// methods with 405, through Caddy's error handling, so handle_errors can
// shape the response. The next handler gets the verified bytes with an exact
// Content-Length and the placeholders {openai_webhook.id} and
// {openai_webhook.timestamp}.
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
	// either direction. At least 1s. Default: 5m.
	Tolerance caddy.Duration `json:"tolerance,omitempty"`

	// MaxSize is the largest body accepted, in bytes; a longer one is refused
	// with 413 and never forwarded. Every accepted body is held in memory
	// until the next handler finishes, so this bounds memory per request.
	// At most 1 GiB. Default: 1 MiB.
	MaxSize int64 `json:"max_size,omitempty"`

	// ReplayWindow is how long the webhook-id of a delivered request is
	// remembered. While it is, a request with the same id is answered 200
	// with an empty body and not forwarded; one whose id is being forwarded
	// at that moment gets 409. An id is remembered only once the next
	// handler answered 2xx, so the sender's retries of a failed delivery go
	// through. Default: twice the tolerance, which outlasts every replay of
	// a captured request. Negative (Caddyfile: off) turns replay refusal off.
	ReplayWindow caddy.Duration `json:"replay_window,omitempty"`

	// ReplayCapacity is the most delivered ids kept in memory; past it the
	// oldest is forgotten early. Each costs about 64 bytes. Default: 100000.
	ReplayCapacity int `json:"replay_capacity,omitempty"`

	verifier  *verifier.Verifier
	replay    replay.Store // nil when replay refusal is off
	replayKey string       // the handler's share of replayStores
	logger    *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.openai_webhook",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision expands and decodes the secrets and builds the verifier. Its
// errors name the field at fault and never contain a secret.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	if h.Tolerance == 0 {
		h.Tolerance = caddy.Duration(verifier.DefaultTolerance)
	}
	if h.MaxSize == 0 {
		h.MaxSize = DefaultMaxSize
	}
	if h.Tolerance < caddy.Duration(time.Second) {
		return fmt.Errorf("tolerance: %v is shorter than 1s", time.Duration(h.Tolerance))
	}
	if h.MaxSize < 0 || h.MaxSize > MaxMaxSize {
		return fmt.Errorf("max_size: %d is not between 1 and %d bytes", h.MaxSize, MaxMaxSize)
	}
	keys, err := expandSecrets(h.Secrets)
	if err != nil {
		return err
	}
	h.verifier, err = verifier.New(verifier.Config{Keys: keys, Tolerance: time.Duration(h.Tolerance)})
	if err != nil {
		return err
	}
	return h.provisionReplay(keys)
}

// expandSecrets resolves placeholders in each secret and decodes it.
func expandSecrets(secrets []string) ([][]byte, error) {
	if len(secrets) == 0 {
		return nil, errors.New("secrets: at least one secret is required")
	}
	repl := caddy.NewReplacer()
	keys := make([][]byte, 0, len(secrets))
	for i, s := range secrets {
		// The errors say which placeholder failed, never what it held.
		expanded, err := repl.ReplaceOrErr(s, true, true)
		if err != nil {
			return nil, fmt.Errorf("secrets[%d]: %w", i, err)
		}
		key, err := verifier.ParseSecret(expanded)
		if err != nil {
			return nil, fmt.Errorf("secrets[%d]: %w", i, err)
		}
		keys = append(keys, key)
	}
	return keys, nil
}

// ServeHTTP verifies the request and, if it is genuine, passes it on.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return h.refuseUnread(w, r, http.StatusMethodNotAllowed, errMethodNotAllowed, "")
	}
	headers, err := signatureHeaders(r.Header)
	if err != nil {
		return h.refuseUnread(w, r, http.StatusUnauthorized, err, "")
	}
	// Headers and freshness first: a stale or unsigned request costs no body read.
	msg, err := h.verifier.Begin(headers)
	if err != nil {
		return h.refuseUnread(w, r, http.StatusUnauthorized, err, "")
	}
	if r.ContentLength > h.MaxSize {
		msg.Discard()
		// A body Go's server would drain anyway is left to it, so a sender
		// whose body is a little too large reliably reads its 413.
		if r.ContentLength <= maxDrainedBody {
			return h.refuse(http.StatusRequestEntityTooLarge, errBodyTooLarge, headers.ID)
		}
		return h.refuseUnread(w, r, http.StatusRequestEntityTooLarge, errBodyTooLarge, headers.ID)
	}
	src := r.Body
	if src == nil {
		src = http.NoBody
	}
	body, err := readBody(src, h.MaxSize, r.ContentLength, msg)
	if err != nil {
		msg.Discard()
		// Caddy's request_body max_size, if smaller, stops the read first.
		if errors.Is(err, errBodyTooLarge) || errors.As(err, new(*http.MaxBytesError)) {
			return h.refuse(http.StatusRequestEntityTooLarge, err, headers.ID)
		}
		return h.refuse(http.StatusBadRequest, fmt.Errorf("reading body: %w", err), headers.ID)
	}
	defer body.release()
	if err := msg.Finish(); err != nil {
		return h.refuse(http.StatusUnauthorized, err, headers.ID)
	}

	r.Body = body.newReader()
	r.GetBody = func() (io.ReadCloser, error) { return body.newReader(), nil }
	r.ContentLength = body.size
	r.Header.Set("Content-Length", strconv.FormatInt(body.size, 10))
	r.TransferEncoding = nil
	// Trailers are not signed: nothing unverified goes upstream.
	r.Trailer = nil
	// The body is already here: the app must not answer 100 Continue again.
	r.Header.Del("Expect")

	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	repl.Set("openai_webhook.id", headers.ID)
	repl.Set("openai_webhook.timestamp", headers.Timestamp)
	if h.replay == nil {
		requestsTotal.WithLabelValues(outcomeForwarded).Inc()
		return next.ServeHTTP(w, r)
	}
	return h.forwardOnce(w, r, next, headers.ID)
}

var errMethodNotAllowed = errors.New("method not allowed: webhooks are POSTed")

// refuse logs why a request was refused and returns the error for Caddy's
// error handling. Only the reason and the (already validated) id are
// logged: never a secret, a signature or any of the body.
func (h *Handler) refuse(status int, reason error, id string) error {
	requestsTotal.WithLabelValues(refusalOutcome(status, reason)).Inc()
	if ce := h.logger.Check(zap.DebugLevel, "webhook refused"); ce != nil {
		fields := []zap.Field{zap.Int("status", status), zap.String("reason", reason.Error())}
		if id != "" {
			fields = append(fields, zap.String("webhook_id", id))
		}
		ce.Write(fields...)
	}
	return caddyhttp.Error(status, reason)
}

// maxDrainedBody is how much of an unread body Go's HTTP/1 server reads and
// discards to keep the connection (net/http's maxPostHandlerReadBytes).
const maxDrainedBody = 256 << 10

// refuseUnread refuses a request whose body was not read. On HTTP/1 it also
// closes the connection after the answer: to keep it open, Go's server would
// first read and discard up to 256 KiB of the body, waiting for a client
// that may never send it.
func (h *Handler) refuseUnread(w http.ResponseWriter, r *http.Request, status int, reason error, id string) error {
	if r.ProtoMajor == 1 && r.ContentLength != 0 {
		w.Header().Set("Connection", "close")
	}
	return h.refuse(status, reason, id)
}

// errRepeatedHeader refuses a header sent more than once: which copy a
// verifier or the upstream reads would otherwise be ambiguous.
var errRepeatedHeader = errors.New("signature header sent more than once")

// signatureHeaders extracts the three signature headers.
func signatureHeaders(hdr http.Header) (verifier.Headers, error) {
	var h verifier.Headers
	var err error
	if h.ID, err = singleHeader(hdr, "Webhook-Id"); err != nil {
		return h, err
	}
	if h.Timestamp, err = singleHeader(hdr, "Webhook-Timestamp"); err != nil {
		return h, err
	}
	h.Signature, err = singleHeader(hdr, "Webhook-Signature")
	return h, err
}

// singleHeader returns the value of a header that may appear at most once;
// an absent header is "", which the verifier refuses.
func singleHeader(hdr http.Header, canonicalName string) (string, error) {
	values := hdr[canonicalName]
	if len(values) > 1 {
		return "", fmt.Errorf("%w: %s", errRepeatedHeader, canonicalName)
	}
	if len(values) == 0 {
		return "", nil
	}
	return values[0], nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
