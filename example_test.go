package openaiwebhook

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestCaddyfileExampleAdapts keeps the documented example loadable and
// keeps its secret a placeholder.
func TestCaddyfileExampleAdapts(t *testing.T) {
	raw, err := os.ReadFile("Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(raw, map[string]any{"filename": "Caddyfile.example"})
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) > 0 {
		t.Fatalf("warnings: %v", warnings)
	}
	if !json.Valid(out) || !strings.Contains(string(out), `"handler":"openai_webhook","secrets":["{env.OPENAI_WEBHOOK_SECRET}"]`) {
		t.Fatalf("adapted config lacks the handler: %s", out)
	}
}
