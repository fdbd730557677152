package main

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// TestDemo starts the embedded demo config, as `go run ./cmd/caddy` does,
// and sends it one signed and one unsigned delivery.
func TestDemo(t *testing.T) {
	// The README has newcomers start the demo, then run the tests.
	for _, addr := range []string{"127.0.0.1:8080", "127.0.0.1:8081", "localhost:2019"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Skipf("%s is in use, probably by the running demo: stop it to run this test", addr)
		}
		ln.Close()
	}
	t.Setenv("OPENAI_WEBHOOK_SECRET", "")
	if err := startDemo(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })

	body := `{"type":"response.completed"}`
	post := func(header http.Header) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1:8080/", strings.NewReader(body))
		req.Header = header
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(got)
	}
	status, got := post(webhooktest.Headers(t, demoSecret, "wh_demo", time.Now(), []byte(body)))
	if status != http.StatusOK || got != "delivered wh_demo: "+body {
		t.Fatalf("signed delivery: %d %q", status, got)
	}
	if status, _ := post(http.Header{}); status != http.StatusUnauthorized {
		t.Fatalf("unsigned delivery: %d, want 401", status)
	}
}
