package openaiwebhook

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/internal/replay"
)

// DefaultReplayCapacity bounds the delivered ids one store keeps: about 64
// bytes each whatever the id's length (see BenchmarkMemoryBytesPerEntry), so
// about 6.4 MB when full.
const DefaultReplayCapacity = 100_000

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
	if window == 0 {
		window = 2 * time.Duration(h.Tolerance)
	}
	if window < 2*time.Duration(h.Tolerance) {
		h.logger.Warn("replay_window is shorter than twice the tolerance: a captured delivery can be replayed once its id is forgotten",
			zap.Duration("replay_window", window), zap.Duration("tolerance", time.Duration(h.Tolerance)))
	}
	if h.ReplayCapacity == 0 {
		h.ReplayCapacity = DefaultReplayCapacity
	}
	if h.ReplayCapacity < 0 {
		return fmt.Errorf("replay_capacity: %d is negative", h.ReplayCapacity)
	}
	h.replayKey = replayStoreKey(keys, window, h.ReplayCapacity)
	store, _, err := replayStores.LoadOrNew(h.replayKey, func() (caddy.Destructor, error) {
		return pooledStore{replay.NewMemory(window, h.ReplayCapacity, nil)}, nil
	})
	if err != nil {
		return err
	}
	h.replay = store.(pooledStore)
	return nil
}

// Cleanup releases the handler's share of its replay store.
func (h *Handler) Cleanup() error {
	if h.replayKey == "" {
		return nil
	}
	_, err := replayStores.Delete(h.replayKey)
	return err
}

// forwardOnce passes a verified delivery to next unless its id was already
// delivered (200, empty, not forwarded) or is being forwarded (409). The id
// counts as delivered once next answers 2xx; otherwise it is released so the
// sender's retry goes through.
func (h *Handler) forwardOnce(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, id string) error {
	switch h.replay.Claim(id) {
	case replay.Delivered:
		requestsTotal.WithLabelValues(outcomeDuplicate).Inc()
		h.logger.Debug("duplicate delivery answered without forwarding", zap.String("webhook_id", id))
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
		return nil
	case replay.InFlight:
		return h.refuse(http.StatusConflict, errInFlight, id)
	}
	requestsTotal.WithLabelValues(outcomeForwarded).Inc()
	rec := &statusRecorder{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
	delivered := false
	defer func() {
		if delivered {
			h.replay.Delivered(id)
		} else {
			h.replay.Release(id)
		}
	}()
	err := next.ServeHTTP(rec, r)
	// Nothing written means Go's server answers 200.
	delivered = err == nil && (rec.status == 0 || rec.status >= 200 && rec.status < 300)
	return err
}

var errInFlight = errors.New("a delivery with this webhook-id is being forwarded")

// statusRecorder notes the final status the next handler wrote.
type statusRecorder struct {
	*caddyhttp.ResponseWriterWrapper
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 && code >= 200 {
		s.status = code
	}
	s.ResponseWriterWrapper.WriteHeader(code)
}

func (s *statusRecorder) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriterWrapper.Write(p)
}

// ReadFrom keeps io.Copy's fast path (reverse_proxy uses it) while noting
// the implicit 200.
func (s *statusRecorder) ReadFrom(r io.Reader) (int64, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriterWrapper.ReadFrom(r)
}
