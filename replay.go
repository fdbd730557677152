package openaiwebhook

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/internal/guest"
	"github.com/webhookgate/caddy-openai-webhook/replaystore"
)

// provisionReplay loads the handler's replay store, unless replay refusal
// is off, and binds it to the handler's secrets.
func (h *Handler) provisionReplay(ctx caddy.Context, keys [][]byte) error {
	window := time.Duration(h.ReplayWindow)
	if window < 0 {
		return nil
	}
	if minimum := 2*time.Duration(h.Tolerance) + time.Second; window < minimum {
		h.logger.Warn("replay_window is shorter than twice the tolerance plus one second: a captured delivery can be replayed once its id is forgotten",
			zap.Duration("replay_window", window), zap.Duration("tolerance", time.Duration(h.Tolerance)))
	}
	store, err := guest.Load[replaystore.Store](ctx, h, "ReplayStoreRaw", h.ReplayStoreRaw, "http.openai_webhook.replay_stores.memory")
	if err != nil {
		return fmt.Errorf("replay_store: %w", err)
	}
	e := replaystore.Endpoint{Window: window}
	for _, k := range keys {
		e.Fingerprints = append(e.Fingerprints, replaystore.Fingerprint(k))
	}
	if err := store.Open(e); err != nil {
		return fmt.Errorf("replay_store: %w", err)
	}
	h.replay = store
	if c, ok := store.(interface{ Counter() replaystore.Counter }); ok {
		h.face.metrics.stores.join(h, c.Counter())
	}
	return nil
}

// claim is a replay store's claim on a delivery's id.
type claim struct {
	ticket replaystore.Ticket
	// checked is false when the store could not answer and lets the
	// delivery through unchecked (on_error forward): nothing to settle.
	checked bool
	// settled: recorded as delivered, or released.
	settled bool
}

// claimID claims a verified delivery's id, or answers the sender when the
// delivery goes no further: 200 and empty for an id already delivered, 409
// for one being forwarded, 503 when the store cannot answer (OpenAI
// retries it), 401 when the delivery went stale meanwhile.
func (h *Handler) claimID(w http.ResponseWriter, r *http.Request, d *delivery) (answered bool, err error) {
	state, ticket, err := h.replay.Claim(r.Context(), d.hdr.ID)
	if err != nil {
		h.countStoreError(d.series.server, "claim", err)
		if state != replaystore.Unchecked {
			w.Header().Set("Retry-After", storeRetryAfter)
			return true, h.refuse(w, r, outcomeStoreUnavailable, errStoreUnavailable, d.hdr.ID)
		}
		return false, nil
	}
	switch state {
	case replaystore.Delivered:
		d.series.requests[outcomeDuplicate.name].Inc()
		h.logger.Debug("duplicate delivery answered without forwarding", zap.String("webhook_id", d.hdr.ID))
		answerEmpty(w)
		return true, nil
	case replaystore.InFlight:
		return true, h.refuse(w, r, outcomeInFlight, errInFlight, d.hdr.ID)
	}
	d.claim = claim{ticket: ticket, checked: true}
	// Freshness once more, now that the id is claimed: a replay accepted
	// at this moment was fresh when the store looked for its id, and the
	// store keeps every delivered id until a replay of it cannot be.
	if err := h.verifier.CheckTimestamp(d.hdr.Timestamp); err != nil {
		h.settle(d, false)
		return true, h.refuse(w, r, verdictOutcome(err), err, d.hdr.ID)
	}
	return false, nil
}

// settle records the claim's delivery as delivered, or releases it, once.
// It runs apart from the sender's request, who may hang up once the app's
// status is out; the store bounds each of its calls.
func (h *Handler) settle(d *delivery, delivered bool) {
	if d.claim.settled {
		return
	}
	d.claim.settled = true
	if delivered {
		h.countStoreError(d.series.server, "delivered", h.replay.Delivered(context.Background(), d.hdr.ID, d.claim.ticket))
	} else {
		h.countStoreError(d.series.server, "release", h.replay.Release(context.Background(), d.hdr.ID, d.claim.ticket))
	}
}

// forwardOnce passes a verified delivery to next unless claimID answered it.
// The id counts as delivered once next answers 2xx, whatever happens to the
// rest of the answer; it is released when next answers otherwise, so the
// sender's retry goes through, and left in flight until its lease ends when
// the sender hung up first.
func (h *Handler) forwardOnce(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, d *delivery) (err error) {
	if answered, err := h.claimID(w, r, d); answered {
		return err
	}
	if !d.claim.checked {
		d.passedOn(outcomeUnchecked)
		return next.ServeHTTP(w, r)
	}
	d.passedOn(outcomeForwarded)
	rec := caddyhttp.NewResponseRecorder(w, nil, d.beforeStatus)
	returned := false
	// Deferred, so that it also runs when next panics, as reverse_proxy
	// does (http.ErrAbortHandler) when the app breaks off its answer.
	defer func() {
		switch {
		case d.claim.settled:
		case rec.Status() == 0 && returned && err == nil: // nothing written: Go's server answers 200 once this returns
			h.settle(d, true)
		case r.Context().Err() != nil:
			h.logger.Debug("sender went away before the app answered: the id stays in flight until its lease ends",
				zap.String("webhook_id", d.hdr.ID))
		default:
			h.settle(d, false)
		}
	}()
	err = next.ServeHTTP(rec, r)
	returned = true
	return err
}

// beforeStatus is called just before the app's status goes out: a 2xx is
// recorded first, so that a sender who sees it and sends again gets a
// duplicate, never a second forward or a 409. It never buffers: the
// answer streams through.
func (d *delivery) beforeStatus(status int, _ http.Header) bool {
	if status >= 200 && status < 300 {
		d.h.settle(d, true)
	}
	return false
}

// storeRetryAfter is the Retry-After of a 503 for a store that could not
// answer, in seconds.
const storeRetryAfter = "5"

var (
	errInFlight         = errors.New("a delivery with this webhook-id is being forwarded")
	errStoreUnavailable = errors.New("the replay store could not tell whether this webhook-id was delivered")
)

// countStoreError counts a failed store operation and logs it, at most
// once a storeErrorLogEvery; it does nothing for a nil err. A claim whose
// settling failed ends with its lease.
func (h *Handler) countStoreError(server, operation string, err error) {
	if err == nil {
		return
	}
	h.face.metrics.replayStoreErrors.WithLabelValues(server, operation).Inc()
	if suppressed, ok := h.storeErrors.Allow(time.Now()); ok {
		h.logger.Error("replay store failed", zap.String("operation", operation), zap.Error(err),
			zap.Int64("failures_not_logged", suppressed))
	}
}

// storeErrorLogEvery is the least time between two log lines about store
// failures: a store that is down would otherwise log every request.
const storeErrorLogEvery = 10 * time.Second
