package openaiwebhook

import (
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
)

func init() {
	caddy.RegisterModule(StandardWebhooks{})
}

// StandardWebhooks verifies deliveries of any Standard Webhooks sender
// (Anthropic, Gemini, Replicate, Supabase, Clerk, Resend, Svix's
// customers, ...) as Handler verifies OpenAI's, with every option of
// openai_webhook, and more: the svix-* header names, every form of
// secret senders hand out, and asymmetric v1a signatures checked with
// ed25519 public keys. Its placeholders are {http.standard_webhooks.id},
// {http.standard_webhooks.timestamp}, {http.standard_webhooks.event_type},
// {http.standard_webhooks.event_id} and {http.standard_webhooks.error}; its
// metrics are named caddy_standard_webhooks_*.
//
// Secrets may be "whsec_<base64>", "v1,whsec_<base64>" (Supabase's hook
// secrets) or bare base64 (Brex), each decoded to the same key. A header
// with both v1 and v1a entries is checked with the keys it has entries
// for: the other entries are skipped, as a sender moving from one kind of
// key to the other sends both.
type StandardWebhooks struct {
	Handler

	// Headers names the header family that carries the delivery's id,
	// timestamp and signature: "webhook" (webhook-id, webhook-timestamp,
	// webhook-signature), "svix" (svix-id, svix-timestamp, svix-signature,
	// which Svix and its customers send), or "auto", the default: the
	// webhook-* headers if the request has any, else the svix-* ones. A
	// request carrying both families with different values is refused with
	// 400 (outcome bad_framing).
	Headers string `json:"headers,omitempty"`

	// PublicKeys are ed25519 public keys, "whpk_" followed by the base64
	// of 32 bytes, that verify v1a signature entries. A v1a entry signed
	// with the private key of any of them is accepted; v1 entries are
	// checked with the secrets only. Placeholders are expanded when the
	// config loads, as for secrets. A handler may have secrets, public
	// keys or both; at least one key in all.
	PublicKeys []string `json:"public_keys,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (StandardWebhooks) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.standard_webhooks",
		New: func() caddy.Module { return new(StandardWebhooks) },
	}
}

// headerFamilies are the families of the headers option's values.
var headerFamilies = map[string][]headerFamily{
	"auto":    newHeaderFamilies(verifier.FamilyWebhook, verifier.FamilySvix),
	"webhook": newHeaderFamilies(verifier.FamilyWebhook),
	"svix":    newHeaderFamilies(verifier.FamilySvix),
}

// Provision sets the defaults and builds the handler as Handler's does,
// with the public keys and the header families.
func (s *StandardWebhooks) Provision(ctx caddy.Context) error {
	if s.Headers == "" {
		s.Headers = "auto"
	}
	if err := checkHeaders(s.Headers); err != nil {
		return fmt.Errorf("headers: %w", err)
	}
	return s.provision(ctx, standardFace, headerFamilies[s.Headers], s.PublicKeys)
}

// Validate checks the settings' ranges.
func (s *StandardWebhooks) Validate() error {
	if s.Headers != "" {
		if err := checkHeaders(s.Headers); err != nil {
			return fmt.Errorf("headers: %w", err)
		}
	}
	return s.Handler.Validate()
}

// checkHeaders checks a value of the headers option.
func checkHeaders(value string) error {
	if _, ok := headerFamilies[value]; !ok {
		return fmt.Errorf("%q is not one of auto, webhook, svix", value)
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*StandardWebhooks)(nil)
	_ caddy.Validator             = (*StandardWebhooks)(nil)
	_ caddy.CleanerUpper          = (*StandardWebhooks)(nil)
	_ caddyhttp.MiddlewareHandler = (*StandardWebhooks)(nil)
	_ caddyfile.Unmarshaler       = (*StandardWebhooks)(nil)
)
