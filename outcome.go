package openaiwebhook

import (
	"errors"
	"net/http"

	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
)

// outcome is what became of a request: the value of the outcome label and
// of {http.openai_webhook.error}, and, for a refusal, its status.
type outcome struct {
	name   string
	status int
}

// Outcomes. Every request the handler sees ends in exactly one.
var (
	outcomeForwarded        = outcome{"forwarded", 0}                                     // verified and passed to the next handler
	outcomeDuplicate        = outcome{"duplicate", http.StatusOK}                         // verified, id already delivered: not forwarded
	outcomeFiltered         = outcome{"filtered", http.StatusOK}                          // verified, type not in events: not forwarded
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

// outcomes lists every outcome, for the series a handler resolves once.
var outcomes = []outcome{outcomeForwarded, outcomeDuplicate, outcomeFiltered, outcomeInFlight, outcomeStoreUnavailable,
	outcomeUnchecked, outcomeMalformed, outcomeStale, outcomeBadSignature, outcomeTooLarge,
	outcomeBodyTimeout, outcomeOverloaded, outcomeUnreadableBody, outcomeBadFraming, outcomeMethodNotAllowed}

// verdictOutcome names a refusal by the verifier.
func verdictOutcome(err error) outcome {
	switch {
	case errors.Is(err, verifier.ErrTimestampTooOld), errors.Is(err, verifier.ErrTimestampTooNew):
		return outcomeStale
	case errors.Is(err, verifier.ErrNoMatchingSignature):
		return outcomeBadSignature
	default:
		return outcomeMalformed
	}
}

// readOutcome names a body that could not be buffered.
func readOutcome(err error) outcome {
	switch {
	case errors.Is(err, errBodyTooLarge):
		return outcomeTooLarge
	case errors.Is(err, errOverloaded):
		return outcomeOverloaded
	case errors.Is(err, errBodyTimeout):
		return outcomeBodyTimeout
	default:
		return outcomeUnreadableBody
	}
}
