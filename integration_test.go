package openaiwebhook

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// TestCaddyReverseProxy runs the directive in an in-process Caddy in front
// of reverse_proxy and a real upstream.
func TestCaddyReverseProxy(t *testing.T) {
	t.Setenv("OPENAI_WEBHOOK_SECRET", webhooktest.Secret)
	app := new(upstreamRecorder)
	upstream := httptest.NewServer(app)
	defer upstream.Close()

	tester := caddytest.NewTester(t)
	tester.InitServer(fmt.Sprintf(`
	{
		skip_install_trust
		admin localhost:2999
		http_port 9080
		https_port 9443
		default_bind 127.0.0.1
		grace_period 1ns
	}
	http://localhost:9080 {
		openai_webhook {env.OPENAI_WEBHOOK_SECRET} {
			max_size 64KiB
		}
		reverse_proxy %s {
			header_up X-Verified-Webhook-Id {http.openai_webhook.id}
		}
		handle_errors {
			respond "refused: {err.status_code}"
		}
	}`, upstream.Listener.Addr()), "caddyfile")

	post := func(body io.Reader, header http.Header) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, "http://localhost:9080/webhook", body)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := tester.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got, _ := io.ReadAll(resp.Body)
		return resp, string(got)
	}

	for _, tc := range []struct {
		name    string
		body    []byte
		chunked bool
	}{
		{name: "event", body: []byte(`{"id": "evt_1", "object": "event", "type": "batch.completed", "data": {"id": "batch_1"}}` + "\n")},
		{name: "empty", body: []byte{}},
		{name: "chunked", body: bytes.Repeat([]byte("chunk "), 5000), chunked: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "wh_" + strings.ReplaceAll(tc.name, " ", "_")
			header := webhooktest.Headers(t, webhooktest.Secret, id, time.Now(), tc.body)
			var body io.Reader = bytes.NewReader(tc.body)
			if tc.chunked {
				body = io.MultiReader(body) // hides the length: the client sends it chunked
			}
			resp, got := post(body, header)
			if resp.StatusCode != http.StatusOK || got != "app got it" {
				t.Fatalf("status %d body %q", resp.StatusCode, got)
			}
			rec := app.last()
			if !bytes.Equal(rec.body, tc.body) {
				t.Fatalf("upstream got %d bytes, want %d", len(rec.body), len(tc.body))
			}
			if cl := rec.header.Get("Content-Length"); cl != fmt.Sprint(len(tc.body)) || len(rec.transferEncoding) != 0 {
				t.Fatalf("upstream framing: Content-Length %q, Transfer-Encoding %v", cl, rec.transferEncoding)
			}
			if rec.header.Get("X-Verified-Webhook-Id") != id || rec.header.Get("Webhook-Signature") != header.Get("Webhook-Signature") {
				t.Fatalf("upstream headers: %v", rec.header)
			}
		})
	}

	before := app.count()
	body := []byte(`{"type":"response.completed"}`)
	for _, tc := range []struct {
		name   string
		body   []byte
		header http.Header
		status int
	}{
		{"unsigned", body, http.Header{}, 401},
		{"tampered", []byte(`{"type":"response.cancelled"}`), webhooktest.Headers(t, webhooktest.Secret, "wh_t", time.Now(), body), 401},
		{"stale", body, webhooktest.Headers(t, webhooktest.Secret, "wh_s", time.Now().Add(-10*time.Minute), body), 401},
		{"too large", make([]byte, 64<<10+1), webhooktest.Headers(t, webhooktest.Secret, "wh_l", time.Now(), make([]byte, 64<<10+1)), 413},
	} {
		resp, got := post(bytes.NewReader(tc.body), tc.header)
		if resp.StatusCode != tc.status || got != fmt.Sprintf("refused: %d", tc.status) {
			t.Errorf("%s: status %d body %q, want %d through handle_errors", tc.name, resp.StatusCode, got, tc.status)
		}
	}
	if app.count() != before {
		t.Fatalf("%d refused requests reached the upstream", app.count()-before)
	}

	// A refusal on the headers is answered at once, without waiting for a
	// body the client announced but never sends, and closes the connection.
	conn, err := net.Dial("tcp", "127.0.0.1:9080")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "POST /webhook HTTP/1.1\r\nHost: localhost:9080\r\nContent-Length: 1048576\r\n\r\n")
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second)) // only so a regression fails instead of hanging
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer before the body: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !resp.Close {
		t.Fatalf("unsigned request with an unsent body: %d, close=%v; want 401 and close", resp.StatusCode, resp.Close)
	}

	// The handler's metrics are on the admin endpoint without the metrics
	// global option (which only adds Caddy's own HTTP metrics).
	metrics, err := tester.Client.Get("http://localhost:2999/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer metrics.Body.Close()
	scraped, _ := io.ReadAll(metrics.Body)
	for _, series := range []string{
		`caddy_openai_webhook_requests_total{outcome="forwarded",server="srv0"}`,
		`caddy_openai_webhook_requests_total{outcome="too_large",server="srv0"}`,
	} {
		if !bytes.Contains(scraped, []byte(series)) {
			t.Errorf("admin /metrics has no %s", series)
		}
	}
}

// newUpstream serves app on a free port of 127.0.0.1 for the test and
// returns its address.
func newUpstream(t *testing.T, app http.Handler) string {
	t.Helper()
	s := httptest.NewServer(app)
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}
