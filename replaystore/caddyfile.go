package replaystore

import (
	"fmt"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/webhookgate/caddy-openai-webhook/internal/cfparse"
)

// UnmarshalCaddyfile sets up the memory store from Caddyfile tokens,
// within openai_webhook's block. Syntax:
//
//	replay_store memory {
//		capacity      <count>
//		in_flight_ttl <duration>
//	}
func (m *Memory) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume the store's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		name := d.Val()
		var err error
		switch name {
		case "capacity":
			m.Capacity, err = cfparse.With(d, cfparse.Count)
		case "in_flight_ttl":
			m.InFlightTTL, err = cfparse.With(d, cfparse.Duration)
		default:
			return d.Errf("unrecognized memory replay store option %q", name)
		}
		if err != nil {
			return d.Errf("%s: %v", name, err)
		}
	}
	return nil
}

// UnmarshalCaddyfile sets up the Redis store from Caddyfile tokens, within
// openai_webhook's block. Syntax:
//
//	replay_store redis {
//		address    <host:port>|<redis:// or rediss:// URL>
//		username   <username>
//		password   <password>
//		db         <number>
//		key_prefix <prefix>
//		tls
//		tls_ca     <PEM file>
//		tls_server_name <name>
//		timeout    <duration>
//		on_error   refuse|forward
//		in_flight_ttl <duration>
//	}
func (r *Redis) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return r.Config.UnmarshalBlock(d, "redis replay store", func(name string) (known bool, err error) {
		switch name {
		case "on_error":
			r.OnError, err = cfparse.With(d, func(v string) (string, error) {
				if v != "refuse" && v != "forward" {
					return "", fmt.Errorf("%q is neither refuse nor forward", v)
				}
				return v, nil
			})
		case "in_flight_ttl":
			r.InFlightTTL, err = cfparse.With(d, cfparse.Duration)
		default:
			return false, nil
		}
		return true, err
	})
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Memory)(nil)
	_ caddyfile.Unmarshaler = (*Redis)(nil)
)
