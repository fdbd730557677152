package openaiwebhook

import (
	"errors"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
)

// Outcomes, the values of the outcome label.
const (
	outcomeForwarded        = "forwarded"          // verified and passed to the next handler
	outcomeDuplicate        = "duplicate"          // verified, id already delivered: 200, not forwarded
	outcomeInFlight         = "in_flight"          // verified, id being forwarded: 409
	outcomeMalformed        = "malformed"          // missing, repeated or malformed headers: 401
	outcomeStale            = "stale"              // timestamp outside the tolerance: 401
	outcomeBadSignature     = "bad_signature"      // no entry matches: 401
	outcomeTooLarge         = "too_large"          // body over max_size: 413
	outcomeUnreadableBody   = "unreadable_body"    // body not read to its end: 400
	outcomeMethodNotAllowed = "method_not_allowed" // not a POST: 405
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

// refusalOutcome names why a request was refused, for the metric.
func refusalOutcome(status int, reason error) string {
	switch {
	case status == http.StatusMethodNotAllowed:
		return outcomeMethodNotAllowed
	case status == http.StatusConflict:
		return outcomeInFlight
	case status == http.StatusRequestEntityTooLarge:
		return outcomeTooLarge
	case status == http.StatusBadRequest:
		return outcomeUnreadableBody
	case errors.Is(reason, verifier.ErrTimestampTooOld), errors.Is(reason, verifier.ErrTimestampTooNew):
		return outcomeStale
	case errors.Is(reason, verifier.ErrNoMatchingSignature):
		return outcomeBadSignature
	default:
		return outcomeMalformed
	}
}
