package openaiwebhook

import (
	"errors"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
)

// outcome is what became of a request: the value of the outcome label and,
// for a refusal, its status.
type outcome struct {
	name   string
	status int
}

// Outcomes. Every request the handler sees ends in exactly one.
var (
	outcomeForwarded        = outcome{"forwarded", 0}                                     // verified and passed to the next handler
	outcomeDuplicate        = outcome{"duplicate", http.StatusOK}                         // verified, id already delivered: not forwarded
	outcomeInFlight         = outcome{"in_flight", http.StatusConflict}                   // verified, id being forwarded
	outcomeStoreUnavailable = outcome{"store_unavailable", http.StatusServiceUnavailable} // verified, the replay store could not answer
	outcomeUnchecked        = outcome{"unchecked", 0}                                     // verified, forwarded without the replay check: the store could not answer
	outcomeMalformed        = outcome{"malformed", http.StatusUnauthorized}               // missing, repeated or malformed headers
	outcomeStale            = outcome{"stale", http.StatusUnauthorized}                   // timestamp outside the tolerance
	outcomeBadSignature     = outcome{"bad_signature", http.StatusUnauthorized}           // no entry matches
	outcomeTooLarge         = outcome{"too_large", http.StatusRequestEntityTooLarge}      // body over max_size
	outcomeBodyTimeout      = outcome{"body_timeout", http.StatusRequestTimeout}          // body slower than body_timeout
	outcomeOverloaded       = outcome{"overloaded", http.StatusServiceUnavailable}        // max_unverified reached
	outcomeUnreadableBody   = outcome{"unreadable_body", http.StatusBadRequest}           // body not read to its end
	outcomeBadFraming       = outcome{"bad_framing", http.StatusBadRequest}               // upgrade, Connection, Content-Length
	outcomeMethodNotAllowed = outcome{"method_not_allowed", http.StatusMethodNotAllowed}  // not a POST
)

// requestsTotal lives for the process, so counts survive config reloads;
// each config's registry gets it registered once.
var requestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy",
	Subsystem: "openai_webhook",
	Name:      "requests_total",
	Help:      "Requests seen by openai_webhook, by outcome.",
}, []string{"outcome"})

// replayStoreErrors counts the store's failures by operation: claim,
// delivered, release.
var replayStoreErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy",
	Subsystem: "openai_webhook",
	Name:      "replay_store_errors_total",
	Help:      "Replay store operations that failed, by operation.",
}, []string{"operation"})

func registerMetrics(registry *prometheus.Registry) error {
	if registry == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{requestsTotal, replayStoreErrors} {
		err := registry.Register(c)
		if err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return err
		}
		// Already registered: another openai_webhook handler of this
		// config did it.
	}
	return nil
}
