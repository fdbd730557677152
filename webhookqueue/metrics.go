package webhookqueue

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/queuestore"
)

// outcome is what became of a request to the handler: the value of the
// outcome label, its status and, for a 503, its Retry-After.
type outcome struct {
	name       string
	status     int
	retryAfter string
}

// Outcomes. Every request the handler sees ends in exactly one.
var (
	outcomeQueued           = outcome{"queued", http.StatusOK, ""}                                             // stored
	outcomeDuplicate        = outcome{"duplicate", http.StatusOK, ""}                                          // its delivery id is queued or was delivered: not stored again
	outcomeQueueFull        = outcome{"queue_full", http.StatusServiceUnavailable, fullRetryAfter}             // the queue holds max_pending
	outcomeStoreUnavailable = outcome{"store_unavailable", http.StatusServiceUnavailable, notStoredRetryAfter} // the store could not store it
	outcomeNotRunning       = outcome{"not_running", http.StatusServiceUnavailable, notStoredRetryAfter}       // its config's queue is not started, or stopped
	outcomeTooLarge         = outcome{"too_large", http.StatusRequestEntityTooLarge, ""}                       // body over max_size
	outcomeUnreadableBody   = outcome{"unreadable_body", http.StatusBadRequest, ""}                            // body not read to its end
)

// outcomeOf names a request that could not be stored.
func outcomeOf(err error) outcome {
	switch {
	case errors.Is(err, errTooLarge):
		return outcomeTooLarge
	case errors.Is(err, errNotRunning):
		return outcomeNotRunning
	case errors.Is(err, queuestore.ErrFull):
		return outcomeQueueFull
	case errors.Is(err, errReadingBody):
		return outcomeUnreadableBody
	default:
		return outcomeStoreUnavailable
	}
}

// refuse counts and logs a request that could not be stored, and returns
// it for Caddy's error handling.
func (q *queue) refuse(w http.ResponseWriter, err error) error {
	o := outcomeOf(err)
	if o.retryAfter != "" {
		w.Header().Set("Retry-After", o.retryAfter)
	}
	if o == outcomeStoreUnavailable {
		q.storeFailed("enqueue", err)
	}
	q.count(o)
	q.logger.Debug("request not stored", zap.String("queue", q.store.Name()), zap.Int("status", o.status),
		zap.String("outcome", o.name), zap.Error(err))
	return caddyhttp.Error(o.status, err)
}

// count counts a request by its outcome.
func (q *queue) count(o outcome) {
	requestsTotal.WithLabelValues(q.store.Name(), o.name).Inc()
}

// storeErrorLogEvery is the least time between two log lines about a
// queue's store failures: a store that is down would otherwise log every
// attempt.
const storeErrorLogEvery = 10 * time.Second

// storeFailed counts a failed store operation and logs it, at most once a
// storeErrorLogEvery.
func (q *queue) storeFailed(operation string, err error) {
	storeErrorsTotal.WithLabelValues(q.store.Name(), operation).Inc()
	if suppressed, ok := q.storeErrors.Allow(time.Now()); ok {
		q.logger.Error("queue store failed", zap.String("queue", q.store.Name()), zap.String("operation", operation),
			zap.Error(err), zap.Int64("failures_not_logged", suppressed))
	}
}

// The collectors live for the process, so counts survive config reloads;
// each config's registry gets them registered once. The series carry the
// queue's name: one queue can serve handlers of several servers, and
// outlive them.
var (
	requestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "webhook_queue",
		Name:      "requests_total",
		Help:      "Requests seen by webhook_queue, by queue and outcome.",
	}, []string{"queue", "outcome"})

	// attemptsTotal counts delivery attempts by outcome: delivered (2xx),
	// refused (another status), failed (no answer).
	attemptsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "webhook_queue",
		Name:      "attempts_total",
		Help:      "Attempts to deliver queued messages to the app, by queue and outcome.",
	}, []string{"queue", "outcome"})

	// storeErrorsTotal counts the store's failures by operation.
	storeErrorsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "webhook_queue",
		Name:      "store_errors_total",
		Help:      "Queue store operations that failed, by queue and operation.",
	}, []string{"queue", "operation"})

	messagesDesc = prometheus.NewDesc("caddy_webhook_queue_messages",
		"Messages in the queue by state: pending (due), scheduled (a retry later), in_flight, dead.", []string{"queue", "state"}, nil)
	oldestDesc = prometheus.NewDesc("caddy_webhook_queue_oldest_age_seconds",
		"Age of the oldest message not yet delivered nor dead, 0 with none.", []string{"queue"}, nil)
	appUpDesc = prometheus.NewDesc("caddy_webhook_queue_app_up",
		"1 while the queue deems its app up, 0 while it holds its messages and probes it (after attempts in a row that got no answer, 5xx or 429).", []string{"queue"}, nil)
	lastSuccessDesc = prometheus.NewDesc("caddy_webhook_queue_last_success_timestamp_seconds",
		"When an attempt of this instance last succeeded, in Unix seconds; 0 before the first.", []string{"queue"}, nil)
	deadDroppedDesc = prometheus.NewDesc("caddy_webhook_queue_dead_dropped_total",
		"Dead letters the retention (dead_letters) dropped since the store was opened by this process.", []string{"queue"}, nil)
)

func registerMetrics(registry *prometheus.Registry) error {
	if registry == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{requestsTotal, attemptsTotal, storeErrorsTotal, collector{}} {
		err := registry.Register(c)
		if err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return err
		}
	}
	return nil
}

// collector reports each running queue's counts at scrape time.
type collector struct{}

// Describe implements prometheus.Collector.
func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{messagesDesc, oldestDesc, appUpDesc, lastSuccessDesc, deadDroppedDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (collector) Collect(ch chan<- prometheus.Metric) {
	for _, q := range running.all() {
		name := q.store.Name()
		h := q.health.status(time.Now())
		up, last := 0.0, 0.0
		if h.AppUp {
			up = 1
		}
		if h.LastSuccess != nil {
			last = float64(h.LastSuccess.Unix())
		}
		ch <- prometheus.MustNewConstMetric(appUpDesc, prometheus.GaugeValue, up, name)
		ch <- prometheus.MustNewConstMetric(lastSuccessDesc, prometheus.GaugeValue, last, name)
		ctx, cancel := context.WithTimeout(context.Background(), storeCallTimeout)
		c, err := q.store.Counts(ctx)
		cancel()
		if err != nil {
			q.storeFailed("counts", err)
			continue
		}
		ch <- prometheus.MustNewConstMetric(deadDroppedDesc, prometheus.CounterValue, float64(c.DeadDropped), name)
		for state, n := range map[string]int{"pending": c.Pending, "scheduled": c.Scheduled, "in_flight": c.InFlight, "dead": c.Dead} {
			ch <- prometheus.MustNewConstMetric(messagesDesc, prometheus.GaugeValue, float64(n), name, state)
		}
		age := 0.0
		if !c.Oldest.IsZero() {
			age = time.Since(c.Oldest).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(oldestDesc, prometheus.GaugeValue, age, name)
	}
}
