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
	outcomeForwarded        = outcome{"forwarded", 0}                                    // verified and passed to the next handler
	outcomeDuplicate        = outcome{"duplicate", http.StatusOK}                        // verified, id already delivered: not forwarded
	outcomeInFlight         = outcome{"in_flight", http.StatusConflict}                  // verified, id being forwarded
	outcomeMalformed        = outcome{"malformed", http.StatusUnauthorized}              // missing, repeated or malformed headers
	outcomeStale            = outcome{"stale", http.StatusUnauthorized}                  // timestamp outside the tolerance
	outcomeBadSignature     = outcome{"bad_signature", http.StatusUnauthorized}          // no entry matches
	outcomeTooLarge         = outcome{"too_large", http.StatusRequestEntityTooLarge}     // body over max_size
	outcomeBodyTimeout      = outcome{"body_timeout", http.StatusRequestTimeout}         // body slower than body_timeout
	outcomeOverloaded       = outcome{"overloaded", http.StatusServiceUnavailable}       // max_unverified reached
	outcomeUnreadableBody   = outcome{"unreadable_body", http.StatusBadRequest}          // body not read to its end
	outcomeBadFraming       = outcome{"bad_framing", http.StatusBadRequest}              // upgrade, Connection, Content-Length
	outcomeMethodNotAllowed = outcome{"method_not_allowed", http.StatusMethodNotAllowed} // not a POST
)

// requestsTotal lives for the process, so counts survive config reloads;
// each config's registry gets it registered once.
var requestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy",
	Subsystem: "openai_webhook",
	Name:      "requests_total",
	Help:      "Requests seen by openai_webhook, by outcome.",
}, []string{"outcome"})

func registerMetrics(registry *prometheus.Registry) error {
	if registry == nil {
		return nil
	}
	err := registry.Register(requestsTotal)
	if errors.As(err, new(prometheus.AlreadyRegisteredError)) {
		return nil // another openai_webhook handler of this config did it
	}
	return err
}
