package e2e_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// command runs `caddy openai-webhook args...` of the built binary, with
// the secret in its environment, and returns its output and exit code.
func (e *e2e) command(t *testing.T, stdin string, args ...string) (string, int) {
	t.Helper()
	return e.run(t, stdin, append([]string{"openai-webhook"}, args...)...)
}

// run runs `caddy args...` of the built binary, as command does.
func (e *e2e) run(t *testing.T, stdin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.CommandContext(e.ctx, e.bin, args...)
	cmd.Env = append(os.Environ(), "OPENAI_WEBHOOK_SECRET="+webhooktest.Secret)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if exit := new(exec.ExitError); errors.As(err, &exit) {
		return string(out), exit.ExitCode()
	}
	if err != nil {
		t.Fatalf("running %v: %v", args, err)
	}
	return string(out), 0
}

// TestOperate is what the README walks a newcomer through, with the
// binary built by xcaddy: events routed by type to two apps with a plain
// Caddyfile, a type off the allow-list filtered, test events sent with
// `caddy openai-webhook send`, a refused capture judged with `verify`, and
// the metrics scraped from the admin endpoint before and after a reload.
func TestOperate(t *testing.T) {
	e := setup(t)
	apps, batches := startUpstream(t, e), startUpstream(t, e)
	cfg := caddyConfig{
		Global:  "metrics",
		Handler: "secret {env.OPENAI_WEBHOOK_SECRET}\n\t\tevents response.* batch.*",
		Routes: fmt.Sprintf(`@batch expression {http.openai_webhook.event_type}.startsWith("batch.")
	handle @batch {
		reverse_proxy 127.0.0.1:%d {
			header_up X-Event-Type {http.openai_webhook.event_type}
		}
	}
	handle {
		reverse_proxy 127.0.0.1:%d {
			header_up X-Event-Id {http.openai_webhook.event_id}
		}
	}`, batches.port, apps.port),
	}
	gw := startCaddy(t, e, cfg)

	sendEvent := func(typ string) string {
		t.Helper()
		out, code := e.command(t, "", "send", "--url", gw.hook(), "--type", typ)
		if code != 0 || !strings.HasPrefix(out, "HTTP/1.1 200 OK\n") {
			t.Fatalf("send --type %s: exit %d, %q", typ, code, out)
		}
		return out
	}
	sendEvent("batch.completed")
	sendEvent("response.completed")
	if out := sendEvent("fine_tuning.job.succeeded"); out != "HTTP/1.1 200 OK\n" {
		t.Errorf("a filtered event was answered %q, want 200 and no body", out)
	}
	gotBatch, gotApp := batches.received(t), apps.received(t)
	if len(gotBatch) != 1 || len(gotApp) != 1 {
		t.Fatalf("batch app got %d, the other app %d; want 1 each (the fine-tuning event filtered)", len(gotBatch), len(gotApp))
	}
	if typ := gotBatch[0].header("X-Event-Type"); len(typ) != 1 || typ[0] != "batch.completed" {
		t.Errorf("the batch app got X-Event-Type %q", typ)
	}
	if id := gotApp[0].header("X-Event-Id"); len(id) != 1 || !strings.HasPrefix(id[0], "evt_") {
		t.Errorf("the app got X-Event-Id %q", id)
	}

	// A refused capture, judged offline.
	body := []byte(`{"object":"event","type":"batch.failed"}`)
	hdr := webhooktest.Headers(t, webhooktest.Secret, "msg_operate_stale", time.Now().Add(-time.Hour), body)
	headers := filepath.Join(t.TempDir(), "headers")
	capture := fmt.Sprintf("webhook-id: %s\nwebhook-timestamp: %s\nwebhook-signature: %s\n", hdr.Get("webhook-id"), hdr.Get("webhook-timestamp"), hdr.Get("webhook-signature"))
	if err := os.WriteFile(headers, []byte(capture), 0o600); err != nil {
		t.Fatal(err)
	}
	req := gw.delivery(t, "msg_operate_stale", time.Now().Add(-time.Hour), body)
	if resp, _ := send(t, req); resp.StatusCode != 401 {
		t.Fatalf("the stale delivery: %d, want 401", resp.StatusCode)
	}
	out, code := e.command(t, string(body), "verify", "--headers", headers)
	if code == 0 || !strings.Contains(out, "refused: 401 stale") || !strings.Contains(out, "seconds in the past") {
		t.Fatalf("verify of the stale capture: exit %d, %q", code, out)
	}

	checkMetrics := func(when string) {
		t.Helper()
		want := map[string]bool{
			`caddy_openai_webhook_requests_total{outcome="forwarded",server="srv0"}`:     false,
			`caddy_openai_webhook_requests_total{outcome="filtered",server="srv0"}`:      false,
			`caddy_openai_webhook_requests_total{outcome="stale",server="srv0"}`:         false,
			`caddy_openai_webhook_events_total{server="srv0",type="batch.completed"}`:    false,
			`caddy_openai_webhook_events_total{server="srv0",type="response.completed"}`: false,
			`caddy_openai_webhook_replay_ids{server="srv0"}`:                             false,
			`caddy_openai_webhook_replay_forgotten_early_total{server="srv0"}`:           false,
		}
		for _, s := range gw.metrics(t, "caddy_openai_webhook_") {
			key := s.name + "{"
			var labels []string
			for _, k := range []string{"operation", "outcome", "server", "type"} {
				if v, ok := s.labels[k]; ok {
					labels = append(labels, fmt.Sprintf("%s=%q", k, v))
				}
			}
			key += strings.Join(labels, ",") + "}"
			if _, ok := want[key]; ok {
				want[key] = s.value >= 1 || strings.Contains(key, "forgotten")
			}
		}
		for key, seen := range want {
			if !seen {
				t.Errorf("%s: no sample %s (or it is 0)", when, key)
			}
		}
	}
	checkMetrics("before the reload")
	gw.reload(t, e.ctx, cfg)
	sendEvent("batch.expired")
	checkMetrics("after the reload")
	if strings.Contains(gw.output.String(), "duplicate metrics collector registration") {
		t.Error("a reload registered a collector twice")
	}
}
