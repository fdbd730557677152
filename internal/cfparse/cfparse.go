// Package cfparse reads the values of Caddyfile options for the handler and
// its stores. Its errors say what is wrong with a value without naming the
// option, which the caller adds; they never quote a value that is not the
// one parsed (an extra value can be a secret, or a URL holding one).
package cfparse

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// ErrOneValue is the error of an option given no value, or more than one.
var ErrOneValue = errors.New("takes exactly one value")

// One returns the option's one value.
func One(d *caddyfile.Dispenser) (string, error) {
	var v string
	if !d.AllArgs(&v) {
		return "", ErrOneValue
	}
	return v, nil
}

// With parses the option's one value with parse.
func With[T any](d *caddyfile.Dispenser, parse func(string) (T, error)) (T, error) {
	v, err := One(d)
	if err != nil {
		var zero T
		return zero, err
	}
	return parse(v)
}

// Duration parses a positive duration in Caddy's syntax (which adds days,
// "1d").
func Duration(v string) (caddy.Duration, error) {
	dur, err := caddy.ParseDuration(v)
	if err != nil || dur <= 0 {
		if _, isNumber := strconv.ParseFloat(v, 64); isNumber == nil {
			return 0, fmt.Errorf("%q has no unit: write it as 5s, 500ms, 5m or 1h", v)
		}
		return 0, fmt.Errorf("%q is not a positive duration (such as 5s, 500ms, 5m or 1h)", v)
	}
	return caddy.Duration(dur), nil
}

// Guest reads a guest module given as `<name> [{ <options> }]`: the
// module <namespace>.<name>, which parses its own block. It returns the
// module's JSON with its name under inlineKey, as Caddy's JSON config holds
// it; an unknown name gets the list of names to choose from.
func Guest(d *caddyfile.Dispenser, namespace, inlineKey string) (json.RawMessage, error) {
	if !d.NextArg() {
		return nil, fmt.Errorf("the name is missing; one of %s", names(namespace))
	}
	name := d.Val()
	if _, err := caddy.GetModule(namespace + "." + name); err != nil {
		return nil, fmt.Errorf("%q is none of %s", name, names(namespace))
	}
	mod, err := caddyfile.UnmarshalModule(d, namespace+"."+name)
	if err != nil {
		return nil, err
	}
	var warnings []caddyconfig.Warning
	raw := caddyconfig.JSONModuleObject(mod, inlineKey, name, &warnings)
	if len(warnings) > 0 {
		return nil, errors.New(warnings[0].Message)
	}
	return raw, nil
}

// names lists the names of the modules registered in namespace.
func names(namespace string) string {
	var list []string
	for _, m := range caddy.GetModules(namespace) {
		list = append(list, m.ID.Name())
	}
	return strings.Join(list, ", ")
}

// Count parses a positive whole number.
func Count(v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive whole number", v)
	}
	return n, nil
}

// Flag checks that a flag option was given no value.
func Flag(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return errors.New("takes no value")
	}
	return nil
}
