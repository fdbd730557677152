// Package guest handles guest modules: the modules a module holds in a
// field of its own, as reverse_proxy holds its transport and openai_webhook
// its replay store. Parse reads one from a Caddyfile; Load loads one while
// its host is provisioned, or a default when none is configured.
package guest

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Parse reads a guest module given as `<name> [{ <options> }]`: the
// module <namespace>.<name>, which parses its own block. It returns the
// module's JSON with its name under inlineKey, as Caddy's JSON config holds
// it; an unknown name gets the list of names to choose from.
func Parse(d *caddyfile.Dispenser, namespace, inlineKey string) (json.RawMessage, error) {
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

// Load loads the guest module that structPtr holds in its field fieldName,
// whose raw JSON is raw, or the module defaultID, with its defaults, when
// raw is empty, and returns it as a T.
func Load[T any](ctx caddy.Context, structPtr any, fieldName string, raw json.RawMessage, defaultID string) (T, error) {
	var mod any
	var err error
	if raw == nil {
		mod, err = ctx.LoadModuleByID(defaultID, nil)
	} else {
		mod, err = ctx.LoadModule(structPtr, fieldName)
	}
	if err != nil {
		var zero T
		return zero, err
	}
	guest, ok := mod.(T)
	if !ok {
		return guest, fmt.Errorf("module %T is not a %T", mod, &guest)
	}
	return guest, nil
}
