// Command caddy is Caddy with the standard modules and openai_webhook.
//
// With no arguments it runs an embedded demo config: the gateway on
// http://127.0.0.1:8080 in front of a stand-in app on 127.0.0.1:8081. With
// arguments it is the ordinary caddy command (run, adapt, list-modules, ...).
package main

import (
	_ "embed"
	"fmt"
	"os"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/webhookgate/caddy-openai-webhook"
)

//go:embed Caddyfile
var demoCaddyfile []byte

// demoSecret signs the demo's deliveries when OPENAI_WEBHOOK_SECRET is unset.
// It is public: never use it for a real endpoint.
const demoSecret = "whsec_RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj40c="

func main() {
	if len(os.Args) > 1 {
		caddycmd.Main()
		return
	}
	caddy.TrapSignals()
	if err := startDemo(); err != nil {
		fmt.Fprintln(os.Stderr, "caddy:", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "openai_webhook gateway on http://127.0.0.1:8080, demo app on http://127.0.0.1:8081; Ctrl-C stops")
	select {}
}

// startDemo loads the embedded demo config into Caddy.
func startDemo() error {
	if os.Getenv("OPENAI_WEBHOOK_SECRET") == "" {
		fmt.Fprintf(os.Stderr, "OPENAI_WEBHOOK_SECRET is unset: using the public demo secret %s\n", demoSecret)
		if err := os.Setenv("OPENAI_WEBHOOK_SECRET", demoSecret); err != nil {
			return err
		}
	}
	config, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(demoCaddyfile, map[string]any{"filename": "embedded demo Caddyfile"})
	if err != nil {
		return err
	}
	for _, w := range warnings {
		fmt.Fprintln(os.Stderr, "caddyfile:", w.String())
	}
	return caddy.Load(config, true)
}
