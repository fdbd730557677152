package webhookqueue

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/webhookgate/caddy-openai-webhook/internal/cfparse"
	"github.com/webhookgate/caddy-openai-webhook/internal/guest"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("webhook_queue", parseCaddyfile)
	// It answers every request it sees, so it comes after the handlers
	// that authenticate the sender (openai_webhook, basic_auth,
	// forward_auth) and with the others that answer, before
	// reverse_proxy: a site with an openai_webhook and a webhook_queue
	// needs no order option or route block.
	httpcaddyfile.RegisterDirectiveOrder("webhook_queue", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	webhook_queue [<matcher>] {
//		to          <url>
//		name        <name>
//		store       file [<path>] | redis { <options> }
//		sign_with   <secret>
//		retry       <duration>...
//		timeout     <duration>
//		workers     <count>
//		max_pending <count>
//		max_size    <size>
//		retention   <duration>
//		id_header   <header>
//		rate        <count>/s
//		dead_letters {
//			max_age   <duration>
//			max_count <count>
//		}
//		transport   http { <reverse_proxy's http transport options> }
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume the directive's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		name := d.Val()
		var err error
		switch name {
		case "to":
			h.To, err = cfparse.One(d)
		case "name":
			h.Name, err = cfparse.One(d)
		case "store":
			if h.StoreRaw != nil {
				return d.Err("store: given twice")
			}
			h.StoreRaw, err = guest.Parse(d, "http.webhook_queue.stores", "backend")
		case "sign_with":
			if h.SignWith != "" {
				return d.Err("sign_with: given twice")
			}
			h.SignWith, err = cfparse.One(d)
		case "retry":
			delays := d.RemainingArgs()
			if len(delays) == 0 {
				return d.Err("retry: at least one duration is required")
			}
			for _, v := range delays {
				dur, err := cfparse.Duration(v)
				if err != nil {
					return d.Errf("retry: %v", err)
				}
				h.Retry = append(h.Retry, dur)
			}
		case "timeout":
			h.Timeout, err = cfparse.With(d, cfparse.Duration)
		case "workers":
			h.Workers, err = cfparse.With(d, cfparse.Count)
		case "max_pending":
			h.MaxPending, err = cfparse.With(d, cfparse.Count)
		case "max_size":
			h.MaxSize, err = cfparse.With(d, func(v string) (int64, error) { return cfparse.Size(v, maxMaxSize) })
		case "retention":
			h.Retention, err = cfparse.With(d, cfparse.Duration)
		case "rate":
			h.Rate, err = cfparse.With(d, parseRate)
		case "dead_letters":
			if err := h.unmarshalDeadLetters(d); err != nil {
				return err
			}
		case "id_header":
			h.IDHeader, err = cfparse.One(d)
		case "transport":
			if h.TransportRaw != nil {
				return d.Err("transport: given twice")
			}
			h.TransportRaw, err = guest.Parse(d, "http.reverse_proxy.transport", "protocol")
		default:
			return d.Errf("unrecognized webhook_queue option %q", name)
		}
		if err != nil {
			return d.Errf("%s: %v", name, err)
		}
	}
	return nil
}

// unmarshalDeadLetters reads the dead_letters block.
func (h *Handler) unmarshalDeadLetters(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	if h.DeadLetters == nil {
		h.DeadLetters = new(DeadLetters)
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		var err error
		switch name {
		case "max_age":
			h.DeadLetters.MaxAge, err = cfparse.With(d, cfparse.Duration)
		case "max_count":
			h.DeadLetters.MaxCount, err = cfparse.With(d, cfparse.Count)
		default:
			return d.Errf("unrecognized dead_letters option %q", name)
		}
		if err != nil {
			return d.Errf("dead_letters: %s: %v", name, err)
		}
	}
	return nil
}

// parseRate parses a rate, as "50/s" (or "3000/m").
func parseRate(v string) (float64, error) {
	count, per, ok := strings.Cut(v, "/")
	n, err := strconv.ParseFloat(count, 64)
	if !ok || err != nil || !(n > 0) || math.IsInf(n, 1) {
		return 0, fmt.Errorf("%q is not a rate such as 50/s", v)
	}
	switch per {
	case "s":
		return n, nil
	case "m":
		return n / 60, nil
	}
	return 0, fmt.Errorf("%q is not a rate such as 50/s (per s or m)", v)
}
