package openaiwebhook

import (
	"fmt"
	"math"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/webhookgate/caddy-openai-webhook/internal/cfparse"
	"github.com/webhookgate/caddy-openai-webhook/internal/guest"
	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("openai_webhook", parseCaddyfile)
	// Verification must run before anything that answers or forwards the
	// request (reverse_proxy, php_fastcgi, respond, file_server), so the
	// directive needs no order option or route block.
	httpcaddyfile.RegisterDirectiveOrder("openai_webhook", httpcaddyfile.Before, "basic_auth")
	httpcaddyfile.RegisterHandlerDirective("standard_webhooks", parseStandardCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("standard_webhooks", httpcaddyfile.Before, "basic_auth")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

func parseStandardCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(StandardWebhooks)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
// that of openai_webhook, and
//
//	standard_webhooks [<matcher>] [<secret>] {
//		headers    auto|webhook|svix
//		public_key <whpk_ key>
//		...
//	}
//
// public_key may be repeated.
func (s *StandardWebhooks) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return s.unmarshal(d, func(name string) (bool, error) {
		var err error
		switch name {
		case "headers":
			if s.Headers != "" {
				return true, d.Err("headers: given twice")
			}
			s.Headers, err = cfparse.With(d, func(v string) (string, error) { return v, checkHeaders(v) })
		case "public_key":
			var key string
			if key, err = cfparse.One(d); err == nil {
				s.PublicKeys = append(s.PublicKeys, key)
			}
		default:
			return false, nil
		}
		if err != nil {
			return true, d.Errf("%s: %v", name, err)
		}
		return true, nil
	})
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	openai_webhook [<matcher>] [<secret>] {
//		secret    <secret>
//		tolerance <duration>
//		max_size  <size>
//		body_timeout   <duration>
//		max_unverified <size>
//		replay_window   <duration>|off
//		replay_store    <module> [{ <module options> }]
//		events <type>|<family>.* ...
//		sign_with <secret>
//	}
//
// secret and events may be repeated; every secret given is accepted, and
// every event type or family given passes.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return h.unmarshal(d, func(string) (bool, error) { return false, nil })
}

// unmarshal reads the directive's tokens; more reads the subdirectives
// of the directive's own, and reports whether name was one.
func (h *Handler) unmarshal(d *caddyfile.Dispenser, more func(name string) (bool, error)) error {
	d.Next() // consume directive name
	directive := d.Val()
	if d.NextArg() {
		h.Secrets = append(h.Secrets, d.Val())
		if d.NextArg() {
			// Not ArgErr: it would quote the second argument, likely a secret.
			return d.Errf("%s takes at most one secret argument; give more with secret lines in its block", directive)
		}
	}
	for d.NextBlock(0) {
		name := d.Val()
		if ok, err := more(name); ok || err != nil {
			if err != nil {
				return err
			}
			continue
		}
		var err error
		switch name {
		case "secret":
			var secret string
			if secret, err = cfparse.One(d); err == nil {
				h.Secrets = append(h.Secrets, secret)
			}
		case "tolerance":
			h.Tolerance, err = cfparse.With(d, cfparse.Duration)
		case "max_size":
			h.MaxSize, err = cfparse.With(d, func(v string) (int64, error) { return cfparse.Size(v, MaxMaxSize) })
		case "body_timeout":
			h.BodyTimeout, err = cfparse.With(d, cfparse.Duration)
		case "max_unverified":
			h.MaxUnverified, err = cfparse.With(d, func(v string) (int64, error) { return cfparse.Size(v, math.MaxInt64) })
		case "replay_window":
			h.ReplayWindow, err = cfparse.With(d, parseReplayWindow)
		case "events":
			patterns := d.RemainingArgs()
			if len(patterns) == 0 {
				return d.Err("events: at least one event type or family (batch.*) is required")
			}
			for _, p := range patterns {
				if err := checkEventPattern(p); err != nil {
					return d.Errf("events: %q: %v", p, err)
				}
			}
			h.Events = append(h.Events, patterns...)
		case "sign_with":
			if h.SignWith != "" {
				return d.Err("sign_with: given twice")
			}
			h.SignWith, err = cfparse.One(d)
		case "replay_store":
			if err := h.unmarshalReplayStore(d); err != nil {
				return err
			}
		default:
			if looksLikeKey(name) {
				return d.Errf("unrecognized %s subdirective that looks like a secret or key: write secret <secret>", directive)
			}
			return d.Errf("unrecognized %s subdirective %q", directive, name)
		}
		if err != nil {
			return d.Errf("%s: %v", name, err)
		}
	}
	return nil
}

// looksLikeKey reports whether a token is, likely, a secret or a key
// written where a subdirective was expected, which an error must not
// quote.
func looksLikeKey(token string) bool {
	for _, prefix := range []string{verifier.SecretPrefix, verifier.SupabaseSecretPrefix, verifier.SigningKeyPrefix, verifier.PublicKeyPrefix} {
		if strings.HasPrefix(token, prefix) {
			return true
		}
	}
	_, err := verifier.ParseHMACSecret(token)
	return err == nil
}

// unmarshalReplayStore reads `replay_store <module> [{...}]` into the
// handler's replay_store, the module parsing its own block.
func (h *Handler) unmarshalReplayStore(d *caddyfile.Dispenser) error {
	if h.ReplayStoreRaw != nil {
		return d.Err("replay_store: given twice")
	}
	raw, err := guest.Parse(d, "http.openai_webhook.replay_stores", "backend")
	if err != nil {
		return d.Errf("replay_store: %v", err)
	}
	h.ReplayStoreRaw = raw
	return nil
}

// parseReplayWindow parses a positive duration or "off" (-1).
func parseReplayWindow(v string) (caddy.Duration, error) {
	if v == "off" {
		return -1, nil
	}
	dur, err := cfparse.Duration(v)
	if err != nil {
		return 0, fmt.Errorf("%q is neither a positive duration nor off", v)
	}
	return dur, nil
}
