package openaiwebhook

import (
	"errors"

	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
)

// face is what tells openai_webhook and standard_webhooks apart: the name
// their placeholders (http.<name>.*) and metrics (caddy_<name>_*) go by,
// the secret forms they take and the words of their errors. Everything
// else is the one Handler.
type face struct {
	name string
	// The placeholders' keys.
	id, timestamp, eventType, eventID, errorKey string
	// parseSecret decodes one of the handler's secrets.
	parseSecret func(string) ([]byte, error)
	// noKey is the error of a config without a key.
	noKey   error
	metrics *metrics
}

func newFace(name string, parseSecret func(string) ([]byte, error), noKey error, asymmetric bool) *face {
	prefix := "http." + name + "."
	return &face{
		name:        name,
		id:          prefix + "id",
		timestamp:   prefix + "timestamp",
		eventType:   prefix + "event_type",
		eventID:     prefix + "event_id",
		errorKey:    prefix + "error",
		parseSecret: parseSecret,
		noKey:       noKey,
		metrics:     newMetrics(name, asymmetric),
	}
}

var (
	// openAIFace takes the secrets OpenAI shows, "whsec_<base64>", only:
	// another form in an OpenAI config is a paste from somewhere else.
	openAIFace = newFace("openai_webhook", verifier.ParseSecret,
		errors.New("secrets: at least one secret is required"), false)
	// standardFace takes every form Standard Webhooks senders hand out.
	standardFace = newFace("standard_webhooks", verifier.ParseHMACSecret,
		errors.New("secrets, public_keys: at least one secret or public key is required"), true)
)
