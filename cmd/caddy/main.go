// Command caddy is Caddy with the standard modules and this plugin, for
// `go run ./cmd/caddy ...`: the ordinary caddy command (run, adapt,
// list-modules, ...), plus the plugin's `caddy openai-webhook` (its
// subcommands: `caddy openai-webhook --help`).
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/webhookgate/caddy-openai-webhook"
)

func main() {
	caddycmd.Main()
}
