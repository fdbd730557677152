// Package demo holds the embedded demo config that `caddy openai-webhook
// demo` runs: the gateway on http://127.0.0.1:8080 in front of a stand-in
// app on 127.0.0.1:8081 that answers with what it received.
package demo

import _ "embed"

// Caddyfile is the demo config.
//
//go:embed Caddyfile
var Caddyfile []byte

// Secret signs the demo's deliveries when OPENAI_WEBHOOK_SECRET is unset.
// It is public: never use it for a real endpoint.
const Secret = "whsec_RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj40c="

// Gateway is the URL deliveries are sent to.
const Gateway = "http://127.0.0.1:8080/"

// Addresses are where the demo listens: the gateway, the stand-in app and
// the admin endpoint, as Caddyfile sets them.
var Addresses = []string{"127.0.0.1:8080", "127.0.0.1:8081", "localhost:2019"}
