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
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
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
	d.Next() // consume directive name
	if d.NextArg() {
		h.Secrets = append(h.Secrets, d.Val())
		if d.NextArg() {
			// Not ArgErr: it would quote the second argument, likely a secret.
			return d.Err("openai_webhook takes at most one secret argument; give more with secret lines in its block")
		}
	}
	for d.NextBlock(0) {
		name := d.Val()
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
			if strings.HasPrefix(name, verifier.SecretPrefix) {
				return d.Err("unrecognized openai_webhook subdirective that looks like a secret: write secret <secret>")
			}
			return d.Errf("unrecognized openai_webhook subdirective %q", name)
		}
		if err != nil {
			return d.Errf("%s: %v", name, err)
		}
	}
	return nil
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
