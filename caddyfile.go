package openaiwebhook

import (
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
		switch d.Val() {
		case "secret":
			var secret string
			if !d.AllArgs(&secret) {
				return d.ArgErr()
			}
			h.Secrets = append(h.Secrets, secret)
		case "tolerance":
			var value string
			if !d.AllArgs(&value) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(value)
			if err != nil {
				return d.Errf("tolerance: %v", err)
			}
			h.Tolerance = caddy.Duration(dur)
		case "max_size":
			var value string
			if !d.AllArgs(&value) {
				return d.ArgErr()
			}
			size, err := humanize.ParseBytes(value)
			if err != nil {
				return d.Errf("max_size: %v", err)
			}
			if size == 0 || size > MaxMaxSize {
				return d.Errf("max_size: %s is not between 1 byte and 1GiB", value)
			}
			h.MaxSize = int64(size)
		case "replay_window":
			var value string
			if !d.AllArgs(&value) {
				return d.ArgErr()
			}
			if value == "off" {
				h.ReplayWindow = -1
				break
			}
			dur, err := caddy.ParseDuration(value)
			if err != nil || dur <= 0 {
				return d.Errf("replay_window: %q is neither a positive duration nor off", value)
			}
			h.ReplayWindow = caddy.Duration(dur)
		case "replay_capacity":
			var value string
			if !d.AllArgs(&value) {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(value)
			if err != nil || n <= 0 {
				return d.Errf("replay_capacity: %q is not a positive whole number", value)
			}
			h.ReplayCapacity = n
		default:
			return d.Errf("unrecognized openai_webhook subdirective %q", d.Val())
		}
	}
	return nil
}
