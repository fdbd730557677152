package openaiwebhook

import (
	"errors"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/webhookgate/caddy-openai-webhook/replaystore"
)

// The collectors live for the process, so counts survive config reloads;
// each config's registry gets them registered once. Every series carries
// the server label, as Caddy's own HTTP metrics do.
var (
	requestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "openai_webhook",
		Name:      "requests_total",
		Help:      "Requests seen by openai_webhook, by server and outcome.",
	}, []string{"server", "outcome"})

	// replayStoreErrors counts the store's failures by operation: claim,
	// delivered, release.
	replayStoreErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "openai_webhook",
		Name:      "replay_store_errors_total",
		Help:      "Replay store operations that failed, by server and operation.",
	}, []string{"server", "operation"})

	// verifiedTotal counts verified deliveries by the secret that signed
	// them, so that a rotation can be followed.
	verifiedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "openai_webhook",
		Name:      "verified_total",
		Help:      "Deliveries whose signature verified, by server and the position in secrets (from 0) of the secret that signed them.",
	}, []string{"server", "secret"})

	// eventsTotal counts the verified deliveries passed on (forwarded,
	// queued or unchecked) by event type, on handlers with events (the
	// only ones that read the type): not duplicates, nor refusals.
	eventsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "openai_webhook",
		Name:      "events_total",
		Help:      "Deliveries passed on by handlers with an events allow-list, by server and event type.",
	}, []string{"server", "type"})
)

// serverSeries are a handler's series of requestsTotal (by outcome name)
// and verifiedTotal (by the signing secret's index) for the server it
// serves, looked up once rather than at every request.
type serverSeries struct {
	server   string
	requests map[string]prometheus.Counter
	verified []prometheus.Counter
}

func newServerSeries(server string, secrets int) *serverSeries {
	s := &serverSeries{server: server, requests: make(map[string]prometheus.Counter, len(outcomes))}
	for _, o := range outcomes {
		s.requests[o.name] = requestsTotal.WithLabelValues(server, o.name)
	}
	for i := range secrets {
		s.verified = append(s.verified, verifiedTotal.WithLabelValues(server, strconv.Itoa(i)))
	}
	return s
}

func registerMetrics(registry *prometheus.Registry) error {
	if registry == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{requestsTotal, replayStoreErrors, verifiedTotal, eventsTotal, storeStats} {
		err := registry.Register(c)
		if err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return err
		}
		// Already registered: another openai_webhook handler of this
		// config did it.
	}
	return nil
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

// storeStats reports, per server, the ids held by the handlers' replay
// stores that count them (the memory store) and how many were forgotten
// before their window ended because the store was full.
var storeStats = &storeCollector{handlers: map[*Handler]replaystore.Counter{}}

type storeCollector struct {
	mu       sync.Mutex
	handlers map[*Handler]replaystore.Counter
}

var (
	replayIDsDesc = prometheus.NewDesc("caddy_openai_webhook_replay_ids",
		"Webhook-ids held by the memory replay stores, delivered or being forwarded, by server.", []string{"server"}, nil)
	replayForgottenDesc = prometheus.NewDesc("caddy_openai_webhook_replay_forgotten_early_total",
		"Delivered webhook-ids the memory replay stores forgot before their window ended, to stay within the memory store's capacity, by server.",
		[]string{"server"}, nil)
)

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
	ch <- replayIDsDesc
	ch <- replayForgottenDesc
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
		ch <- prometheus.MustNewConstMetric(replayIDsDesc, prometheus.GaugeValue, held, server)
		ch <- prometheus.MustNewConstMetric(replayForgottenDesc, prometheus.CounterValue, forgotten, server)
	}
}
