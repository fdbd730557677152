// Command caddy is Caddy with the standard modules and openai_webhook, for
// `go run ./cmd/caddy ...`: the ordinary caddy command (run, adapt,
// list-modules, ...), plus `caddy openai-webhook` (demo, secret, sign,
// send, verify).
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/webhookgate/caddy-openai-webhook"
)

func main() {
	caddycmd.Main()
}
