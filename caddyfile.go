package openaiwebhook

import (
	"fmt"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
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
//		replay_window   <duration>|off
//		replay_capacity <count>
//	}
//
// secret may be repeated; every secret given is accepted.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		h.Secrets = append(h.Secrets, d.Val())
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		parse, ok := h.subdirectives()[d.Val()]
		if !ok {
			return d.Errf("unrecognized openai_webhook subdirective %q", d.Val())
		}
		name := d.Val()
		var value string
		if !d.AllArgs(&value) {
			return d.ArgErr()
		}
		if err := parse(value); err != nil {
			return d.Errf("%s: %v", name, err)
		}
	}
	return nil
}

// subdirectives maps each subdirective to the parser of its one value.
func (h *Handler) subdirectives() map[string]func(value string) error {
	return map[string]func(string) error{
		"secret": func(v string) error {
			h.Secrets = append(h.Secrets, v)
			return nil
		},
		"tolerance": func(v string) error {
			dur, err := caddy.ParseDuration(v)
			h.Tolerance = caddy.Duration(dur)
			return err
		},
		"max_size": func(v string) error {
			size, err := humanize.ParseBytes(v)
			if err != nil {
				return err
			}
			if size == 0 || size > MaxMaxSize {
				return fmt.Errorf("%s is not between 1 byte and 1GiB", v)
			}
			h.MaxSize = int64(size)
			return nil
		},
		"replay_window": func(v string) error {
			if v == "off" {
				h.ReplayWindow = -1
				return nil
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return fmt.Errorf("%q is neither a positive duration nor off", v)
			}
			h.ReplayWindow = caddy.Duration(dur)
			return nil
		},
		"replay_capacity": func(v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return fmt.Errorf("%q is not a positive whole number", v)
			}
			h.ReplayCapacity = n
			return nil
		},
	}
}
