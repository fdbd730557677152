package replaystore

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCaddyfile sets up the memory store from Caddyfile tokens,
// within openai_webhook's block. Syntax:
//
//	replay_store memory {
//		in_flight_ttl <duration>
//	}
func (m *Memory) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume the store's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "in_flight_ttl":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			m.InFlightTTL = dur
		default:
			return d.Errf("unrecognized memory replay store option %q", d.Val())
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
	d.Next() // consume the store's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		if ok, err := r.Config.UnmarshalOption(d); ok {
			if err != nil {
				return err
			}
			continue
		}
		name := d.Val()
		var err error
		switch name {
		case "key_prefix":
			r.KeyPrefix, err = stringArg(d)
		case "on_error":
			if r.OnError, err = stringArg(d); err == nil && r.OnError != "refuse" && r.OnError != "forward" {
				return d.Errf("on_error: %q is neither refuse nor forward", r.OnError)
			}
		case "in_flight_ttl":
			r.InFlightTTL, err = durationArg(d)
		default:
			return d.Errf("unrecognized redis replay store option %q", name)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// stringArg returns the option's one value.
func stringArg(d *caddyfile.Dispenser) (string, error) {
	var v string
	if !d.AllArgs(&v) {
		return "", d.ArgErr()
	}
	return v, nil
}

// durationArg returns the option's one value, a positive duration.
func durationArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
	name := d.Val()
	v, err := stringArg(d)
	if err != nil {
		return 0, err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil || dur <= 0 {
		return 0, d.Errf("%s: %q is not a positive duration", name, v)
	}
	return caddy.Duration(dur), nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Memory)(nil)
	_ caddyfile.Unmarshaler = (*Redis)(nil)
)
