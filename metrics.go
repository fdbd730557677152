package openaiwebhook

import (
	"errors"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/webhookgate/caddy-openai-webhook/replaystore"
)

// metrics are a face's collectors (see face): each handler counts in series
// named for it, caddy_openai_webhook_* and caddy_standard_webhooks_*. They
// live for the process, so counts survive config reloads; each config's
// registry gets them registered once. Every series carries the server
// label, as Caddy's own HTTP metrics do.
type metrics struct {
	// requests counts requests by outcome.
	requests *prometheus.CounterVec
	// replayStoreErrors counts the replay store's failures by operation:
	// claim, delivered, release.
	replayStoreErrors *prometheus.CounterVec
	// verified counts verified deliveries by the key that signed them, so
	// that a rotation can be followed.
	verified *prometheus.CounterVec
	// events counts the verified deliveries passed on by event type, on
	// handlers with events (the only ones that read the type): not
	// duplicates, nor refusals.
	events *prometheus.CounterVec
	// ed25519 counts the ed25519 verifications that v1a signatures cost.
	ed25519 *prometheus.CounterVec
	// stores reports the memory replay stores' ids.
	stores *storeCollector
}

// newMetrics returns the collectors of subsystem; with asymmetric, that
// of ed25519 verifications too (openai_webhook has no public keys).
func newMetrics(subsystem string, asymmetric bool) *metrics {
	vec := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "caddy", Subsystem: subsystem, Name: name, Help: help}, labels)
	}
	m := &metrics{
		requests:          vec("requests_total", "Requests seen by "+subsystem+", by server and outcome.", "server", "outcome"),
		replayStoreErrors: vec("replay_store_errors_total", "Replay store operations that failed, by server and operation.", "server", "operation"),
		verified: vec("verified_total", "Deliveries whose signature verified, by server and the position (from 0) of the key that signed them: "+
			"in secrets, then in public_keys.", "server", "secret"),
		events: vec("events_total", "Deliveries passed on by handlers with an events allow-list, by server and event type.", "server", "type"),
		stores: &storeCollector{handlers: map[*Handler]replaystore.Counter{},
			ids: prometheus.NewDesc("caddy_"+subsystem+"_replay_ids",
				"Webhook-ids held by the memory replay stores, delivered or being forwarded, by server.", []string{"server"}, nil),
			forgotten: prometheus.NewDesc("caddy_"+subsystem+"_replay_forgotten_early_total",
				"Delivered webhook-ids the memory replay stores forgot before their window ended, to stay within the memory store's capacity, by server.",
				[]string{"server"}, nil),
		},
	}
	if asymmetric {
		m.ed25519 = vec("ed25519_verifications_total", "ed25519 verifications run for v1a signatures, verified or not, by server.", "server")
	}
	return m
}

// register registers the collectors in registry, unless another handler
// of the config did.
func (m *metrics) register(registry *prometheus.Registry) error {
	if registry == nil {
		return nil
	}
	collectors := []prometheus.Collector{m.requests, m.replayStoreErrors, m.verified, m.events, m.stores}
	if m.ed25519 != nil {
		collectors = append(collectors, m.ed25519)
	}
	for _, c := range collectors {
		err := registry.Register(c)
		if err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return err
		}
	}
	return nil
}

// serverSeries are a handler's series of requests (by outcome name) and
// verified (by the signing key's index) for the server it serves, looked
// up once rather than at every request.
type serverSeries struct {
	server   string
	requests map[string]prometheus.Counter
	verified []prometheus.Counter
	ed25519  prometheus.Counter
}

func (m *metrics) forServer(server string, keys int) *serverSeries {
	s := &serverSeries{server: server, requests: make(map[string]prometheus.Counter, len(outcomes))}
	if m.ed25519 != nil {
		s.ed25519 = m.ed25519.WithLabelValues(server)
	}
	for _, o := range outcomes {
		s.requests[o.name] = m.requests.WithLabelValues(server, o.name)
	}
	for i := range keys {
		s.verified = append(s.verified, m.verified.WithLabelValues(server, strconv.Itoa(i)))
	}
	return s
}

// maxEventTypes bounds the type label's values; past it, and for a type
// longer than maxEventTypeLen, the type counts as "other".
const (
	maxEventTypes   = 64
	maxEventTypeLen = 64
)

var eventTypes = struct {
	sync.Mutex
	seen map[string]bool
}{seen: map[string]bool{}}

// eventTypeLabel returns the label value for an event type.
func eventTypeLabel(typ string) string {
	eventTypes.Lock()
	defer eventTypes.Unlock()
	if eventTypes.seen[typ] {
		return typ
	}
	if len(eventTypes.seen) >= maxEventTypes || len(typ) > maxEventTypeLen {
		return "other"
	}
	eventTypes.seen[typ] = true
	return typ
}

// storeCollector reports, per server, the ids held by the handlers'
// replay stores that count them (the memory store) and how many were
// forgotten before their window ended because the store was full.
type storeCollector struct {
	mu             sync.Mutex
	handlers       map[*Handler]replaystore.Counter
	ids, forgotten *prometheus.Desc
}

// join adds a handler whose store counts its ids.
func (c *storeCollector) join(h *Handler, s replaystore.Counter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.handlers[h] = s
}

// leave removes a handler.
func (c *storeCollector) leave(h *Handler) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.handlers, h)
}

// Describe implements prometheus.Collector.
func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.ids
	ch <- c.forgotten
}

// Collect implements prometheus.Collector: each store once per server,
// however many handlers share it.
func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	perServer := map[string]map[replaystore.Counter]bool{}
	for h, s := range c.handlers {
		series := h.series.Load()
		if series == nil {
			continue // not served yet: its server is not known
		}
		if perServer[series.server] == nil {
			perServer[series.server] = map[replaystore.Counter]bool{}
		}
		perServer[series.server][s] = true
	}
	c.mu.Unlock()
	for server, stores := range perServer {
		var held, forgotten float64
		for s := range stores {
			n, evicted := s.Stats()
			held += float64(n)
			forgotten += float64(evicted)
		}
		ch <- prometheus.MustNewConstMetric(c.ids, prometheus.GaugeValue, held, server)
		ch <- prometheus.MustNewConstMetric(c.forgotten, prometheus.CounterValue, forgotten, server)
	}
}
