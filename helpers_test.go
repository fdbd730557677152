package openaiwebhook

import (
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// configContext returns a context of a config of its own, as Caddy gives a
// module it provisions (the handler loads the config's App from it), and
// its cancel, which cleans up what was loaded in it.
func configContext(t testing.TB) (caddy.Context, func()) {
	t.Helper()
	config, err := caddy.ProvisionContext(new(caddy.Config))
	if err != nil {
		t.Fatal(err)
	}
	return caddy.NewContext(config)
}
