package openaiwebhook

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/internal/replay"
	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
)

// DefaultReplayCapacity bounds the delivered ids one store keeps: about 64
// bytes each whatever the id's length (see BenchmarkMemoryBytesPerEntry), so
// about 6.4 MB when full.
const DefaultReplayCapacity = 100_000

// InFlightLease is how long a claimed id stays in flight when nobody
// settles it: when the sender hung up before the app answered, the app may
// still be working on the delivery, so the sender's retries get 409 until
// the lease ends. It also ends a claim whose forward outlives it.
const InFlightLease = time.Minute

// replayStores keeps in-memory stores across config reloads, so a reload
// does not forget which deliveries already reached the app. Handlers with
// the same secrets, window and capacity share one store.
var replayStores = caddy.NewUsagePool()

type pooledStore struct{ *replay.Memory }

func (pooledStore) Destruct() error { return nil }

// replayStoreKey identifies a store by a hash of the keys (never the keys
// themselves), the window and the capacity.
func replayStoreKey(keys [][]byte, window time.Duration, capacity int) string {
	h := sha256.New()
	for _, k := range keys {
		sum := sha256.Sum256(k)
		h.Write(sum[:])
	}
	return fmt.Sprintf("%s/%s/%d", hex.EncodeToString(h.Sum(nil)), window, capacity)
}

// provisionReplay attaches the handler to its shared store, unless replay
// refusal is off.
func (h *Handler) provisionReplay(keys [][]byte) error {
	window := time.Duration(h.ReplayWindow)
	if window < 0 {
		return nil
	}
	if minimum := 2*time.Duration(h.Tolerance) + time.Second; window < minimum {
		h.logger.Warn("replay_window is shorter than twice the tolerance plus one second: a captured delivery can be replayed once its id is forgotten",
			zap.Duration("replay_window", window), zap.Duration("tolerance", time.Duration(h.Tolerance)))
	}
	h.replayKey = replayStoreKey(keys, window, h.ReplayCapacity)
	store, _, err := replayStores.LoadOrNew(h.replayKey, func() (caddy.Destructor, error) {
		return pooledStore{replay.NewMemory(window, h.ReplayCapacity, InFlightLease, nil)}, nil
	})
	if err != nil {
		return err
	}
	h.replay = store.(pooledStore)
	return nil
}

// forwardOnce passes a verified delivery to next unless its id was already
// delivered (200, empty, not forwarded) or is being forwarded (409). The id
// counts as delivered once next answers 2xx, whatever happens to the rest
// of the answer; it is released when next answers otherwise, so the
// sender's retry goes through, and left in flight until its lease ends when
// the sender hung up first.
func (h *Handler) forwardOnce(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, hdr verifier.Headers) error {
	state, ticket := h.replay.Claim(hdr.ID)
	switch state {
	case replay.Delivered:
		requestsTotal.WithLabelValues(outcomeDuplicate.name).Inc()
		r.Header.Del("Webhook-Signature") // not forwarded: kept out of Caddy's logs
		h.logger.Debug("duplicate delivery answered without forwarding", zap.String("webhook_id", hdr.ID))
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
		return nil
	case replay.InFlight:
		return h.refuse(w, r, outcomeInFlight, errInFlight, hdr.ID)
	}
	// Freshness once more, now that the id is claimed: a replay accepted
	// at this moment was fresh when the store looked for its id, and the
	// store keeps every delivered id until a replay of it cannot be.
	if err := h.verifier.CheckTimestamp(hdr.Timestamp); err != nil {
		h.replay.Release(hdr.ID, ticket)
		return h.refuse(w, r, verdictOutcome(err), err, hdr.ID)
	}
	requestsTotal.WithLabelValues(outcomeForwarded.name).Inc()
	rec := caddyhttp.NewResponseRecorder(w, nil, nil)
	var err error
	returned := false
	// Deferred, so that it also runs when next panics, as reverse_proxy
	// does (http.ErrAbortHandler) when the app breaks off its answer.
	defer func() {
		status := rec.Status()
		switch {
		case status >= 200 && status < 300, status == 0 && returned && err == nil: // nothing written: Go's server answers 200
			h.replay.Delivered(hdr.ID, ticket)
		case r.Context().Err() != nil:
			h.logger.Debug("sender went away before the app answered: the id stays in flight until its lease ends",
				zap.String("webhook_id", hdr.ID), zap.Duration("lease", InFlightLease))
		default:
			h.replay.Release(hdr.ID, ticket)
		}
	}()
	err = next.ServeHTTP(rec, r)
	returned = true
	return err
}

var errInFlight = errors.New("a delivery with this webhook-id is being forwarded")
