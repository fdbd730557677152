package e2e_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/internal/freeport"
	"github.com/webhookgate/caddy-openai-webhook/internal/redistest"
	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// Queue mode: the gateway answers once a delivery is stored, and delivers
// it to the app in the background, with retries, until it says 2xx.

// queueHandler is the openai_webhook block of a gateway in queue mode in
// front of the app on port, with a short retry schedule.
func queueHandler(port int, options string) string {
	return fmt.Sprintf(`secret {env.OPENAI_WEBHOOK_SECRET}
		queue {
			to http://127.0.0.1:%d%s
			retry 200ms 200ms 200ms 200ms 200ms
			timeout 5s
			workers 4
			%s
		}`, port, hookPath, options)
}

// queueConfig is a gateway in queue mode; Routes is set so that nothing
// follows the handler.
func queueConfig(port int, options string) caddyConfig {
	return caddyConfig{Handler: queueHandler(port, options), Routes: "respond 599"}
}

// sendQueued sends n deliveries, each of which must be answered 200 with no
// body, and returns their ids and bodies.
func sendQueued(t *testing.T, gw *caddyServer, prefix string, n int) map[string][]byte {
	t.Helper()
	sent := map[string][]byte{}
	for i := range n {
		id := fmt.Sprintf("%s_%d", prefix, i)
		body := append(event(id), binaryBody()[:i]...)
		resp, answer := send(t, gw.delivery(t, id, time.Now(), body))
		if resp.StatusCode != http.StatusOK || len(answer) != 0 {
			t.Fatalf("%s: %d %q, want 200 and no body", id, resp.StatusCode, answer)
		}
		sent[id] = body
	}
	return sent
}

// waitDelivered waits until the upstream has a 2xx-answered record of
// every id of sent, and checks each body; it returns how many times each
// reached the upstream.
func waitDelivered(t *testing.T, up *upstream, sent map[string][]byte) map[string]int {
	t.Helper()
	var got map[string]int
	webhooktest.WaitFor(t, fmt.Sprintf("%d deliveries to reach the app", len(sent)), func() bool {
		got = map[string]int{}
		for _, r := range up.received(t) {
			if ids := r.header("webhook-id"); len(ids) == 1 {
				if body, ok := sent[ids[0]]; ok {
					r.checkBody(t, body)
					got[ids[0]]++
				}
			}
		}
		return len(got) == len(sent)
	})
	return got
}

// TestQueueAppDownThenUp: while the app is down, the sender is answered at
// once; once it is up, each delivery reaches it exactly once, the bytes
// and the original headers intact, with the attempt's number.
func TestQueueAppDownThenUp(t *testing.T) {
	e := setup(t)
	port := freeport.Get(t) // the app starts later
	gw := startCaddy(t, e, queueConfig(port, ""))
	sent := sendQueued(t, gw, "msg_queue_down", 20)
	webhooktest.WaitFor(t, "attempts to fail while the app is down", func() bool {
		for _, s := range gw.metrics(t, "caddy_openai_webhook_queue_attempts_total") {
			if s.labels["outcome"] == "failed" && s.value > 0 {
				return true
			}
		}
		return false
	})
	up := startUpstreamOn(t, e, port)
	for id, n := range waitDelivered(t, up, sent) {
		if n != 1 {
			t.Errorf("%s reached the app %d times, want once", id, n)
		}
	}
	for _, r := range up.received(t) {
		if attempt := r.header("Webhook-Attempt"); len(attempt) != 1 || attempt[0] == "1" {
			t.Errorf("a delivery made while the app was down arrived as attempt %q", attempt)
		}
		if sig := r.header("webhook-signature"); len(sig) != 1 || !strings.HasPrefix(sig[0], "v1,") {
			t.Errorf("webhook-signature %q", sig)
		}
	}
	if o := gw.outcomes(t); o["queued"] != 20 {
		t.Errorf("outcomes %v, want queued 20", o)
	}
}

// TestQueueSurvivesSIGKILL: Caddy killed with deliveries pending and one in
// flight loses none of them: after a restart every one reaches the app (the
// one in flight possibly twice: at least once).
func TestQueueSurvivesSIGKILL(t *testing.T) {
	e := setup(t)
	up := startUpstream(t, e)
	gw := startCaddy(t, e, queueConfig(up.port, "workers 1"))
	// The app holds the first delivery, so the single worker is in flight
	// with it while the others wait.
	held := "msg_queue_kill_held"
	req := gw.delivery(t, held, time.Now(), event(held))
	req.Header.Set("X-Upstream-Hold", held)
	resp, _ := send(t, req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the held delivery: %d", resp.StatusCode)
	}
	up.waitRecorded(t, held)
	sent := sendQueued(t, gw, "msg_queue_kill", 10)
	sent[held] = event(held)

	gw.kill(t)
	up.release(t, held) // the app finishes, but the gateway that asked is gone
	gw.run(t, e, gw.addr)
	got := waitDelivered(t, up, sent)
	for id, n := range got {
		if n != 1 && id != held {
			t.Errorf("%s, pending at the kill, reached the app %d times", id, n)
		}
	}
	// The app's answer to the one in flight never reached a gateway: the
	// restarted one delivers it again.
	webhooktest.WaitFor(t, "the delivery in flight at the kill to be delivered again", func() bool {
		return waitDelivered(t, up, map[string][]byte{held: event(held)})[held] == 2
	})
}

// TestQueueReloadUnderLoad: `caddy reload` while deliveries stream in and
// out: none is lost, and the queue delivers none twice.
func TestQueueReloadUnderLoad(t *testing.T) {
	e := setup(t)
	up := startUpstream(t, e)
	configs := []caddyConfig{queueConfig(up.port, "workers 2"), queueConfig(up.port, "workers 3")}
	gw := startCaddy(t, e, configs[0])
	var (
		mu      sync.Mutex
		sent    = map[string][]byte{}
		stop    atomic.Bool
		senders sync.WaitGroup
	)
	for w := range 3 {
		senders.Go(func() {
			for i := 0; !stop.Load() && i < 2000; i++ {
				id := fmt.Sprintf("msg_queue_reload_%d_%d", w, i)
				body := event(id)
				resp, err := client.Do(gw.request(t.Context(), id, unix(time.Now()), good(id, unix(time.Now()), body), body))
				if err != nil {
					continue // a connection reset as listeners swap: not accepted
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					mu.Lock()
					sent[id] = body
					mu.Unlock()
				}
			}
		})
	}
	for i := range 4 {
		time.Sleep(300 * time.Millisecond)
		gw.reload(t, e.ctx, configs[(i+1)%2])
	}
	stop.Store(true)
	senders.Wait()
	for id, n := range waitDelivered(t, up, sent) {
		if n != 1 {
			t.Errorf("%s reached the app %d times, want once", id, n)
		}
	}
	t.Logf("%d deliveries queued across 4 reloads", len(sent))
}

// TestQueueDeadLettersByCLI: a delivery the app never takes becomes a dead
// letter; `caddy openai-webhook queue` lists it without its body, retries it
// once the app is back, and drops another. A full queue refuses with 503.
func TestQueueDeadLettersByCLI(t *testing.T) {
	e := setup(t)
	port := freeport.Get(t)
	gw := startCaddy(t, e, queueConfig(port, "max_pending 3"))
	sent := sendQueued(t, gw, "msg_queue_dead", 2)
	admin := []string{"--address", gw.admin}
	var dead struct {
		Queue string
		Dead  []struct {
			ID        string `json:"id"`
			WebhookID string `json:"webhook_id"`
			Attempts  []struct{ Error string }
		}
	}
	webhooktest.WaitFor(t, "two dead letters", func() bool {
		out, code := e.command(t, "", append([]string{"queue", "dead"}, admin...)...)
		if code != 0 {
			t.Fatalf("queue dead: %s", out)
		}
		if err := json.Unmarshal([]byte(out), &dead); err != nil {
			t.Fatalf("queue dead: %q: %v", out, err)
		}
		return len(dead.Dead) == 2
	})
	if len(dead.Dead[0].Attempts) != 6 || !strings.Contains(dead.Dead[0].Attempts[5].Error, "connection refused") {
		t.Errorf("the dead letter's attempts: %+v", dead.Dead[0].Attempts)
	}
	out, _ := e.command(t, "", append([]string{"queue", "dead"}, admin...)...)
	if strings.Contains(out, "body") || strings.Contains(out, "v1,") {
		t.Errorf("the dead letters show a body or a signature: %s", out)
	}

	// Dead letters do not count against max_pending 3.
	more := sendQueued(t, gw, "msg_queue_dead_more", 3)
	resp, _ := send(t, gw.delivery(t, "msg_queue_over", time.Now(), event("msg_queue_over")))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("past max_pending: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}

	up := startUpstreamOn(t, e, port)
	waitDelivered(t, up, more)
	if out, code := e.command(t, "", append([]string{"queue", "drop", "--id", dead.Dead[1].ID}, admin...)...); code != 0 {
		t.Fatalf("queue drop: %s", out)
	}
	if out, code := e.command(t, "", append([]string{"queue", "retry", "--id", dead.Dead[0].ID}, admin...)...); code != 0 || !strings.Contains(out, `"retried": 1`) {
		t.Fatalf("queue retry: %s", out)
	}
	retried := map[string][]byte{dead.Dead[0].WebhookID: sent[dead.Dead[0].WebhookID]}
	waitDelivered(t, up, retried)
	// The admin address read from the config, as caddy reload reads it.
	out, code := e.command(t, "", "queue", "status", "--config", gw.config, "--adapter", "caddyfile")
	if code != 0 || !strings.Contains(out, `"dead": 0`) {
		t.Fatalf("queue status: %s", out)
	}
	for _, r := range up.received(t) {
		if slices.Equal(r.header("webhook-id"), []string{dead.Dead[1].WebhookID}) {
			t.Errorf("the dropped letter reached the app")
		}
	}
}

// TestQueueFleet: two instances share one queue on Redis. The first is
// killed with SIGKILL mid-attempt, with deliveries it stored still
// pending; the second delivers them all, and, once the killed one's lease
// has ended, the one it had in flight (again: at least once).
func TestQueueFleet(t *testing.T) {
	e := setup(t)
	srv := redistest.Start(t, redistest.Options{Durable: true})
	up := startUpstream(t, e)
	fleet := func(workers int) caddyConfig {
		// timeout 8s (a lease of 18s): the attempt in flight at the kill
		// is not over by then.
		cfg := queueConfig(up.port, fmt.Sprintf("workers %d\ntimeout 8s\nstore redis {\naddress %s\n}", workers, srv.Addr))
		cfg.Handler += fmt.Sprintf("\nreplay_store redis {\naddress %s\n}", srv.Addr)
		return cfg
	}
	a := startCaddy(t, e, fleet(1))
	held := "msg_queue_fleet_held"
	req := a.delivery(t, held, time.Now(), event(held))
	req.Header.Set("X-Upstream-Hold", held)
	if resp, _ := send(t, req); resp.StatusCode != http.StatusOK {
		t.Fatalf("the held delivery: %d", resp.StatusCode)
	}
	up.waitRecorded(t, held) // a's only worker is in flight with it
	sent := sendQueued(t, a, "msg_queue_fleet_a", 10)
	b := startCaddy(t, e, fleet(2))
	for id, body := range sendQueued(t, b, "msg_queue_fleet_b", 10) {
		sent[id] = body
	}
	a.kill(t)
	up.release(t, held) // the app answers a gateway that is gone
	sent[held] = event(held)
	webhooktest.WaitFor(t, "every delivery, and the one in flight at the kill again", func() bool {
		return waitDelivered(t, up, sent)[held] == 2
	})
	for id, n := range waitDelivered(t, up, sent) {
		if n != 1 && id != held {
			t.Errorf("%s reached the app %d times, want once", id, n)
		}
	}
	// Taken over unsettled, not retried: the killed instance never
	// recorded its attempt.
	for _, r := range deliveriesOf(t, up, held) {
		if got := r.header("Webhook-Attempt"); !slices.Equal(got, []string{"1"}) {
			t.Errorf("the held delivery came as attempt %q, want 1 both times", got)
		}
	}
	webhooktest.WaitFor(t, "the queue to be empty", func() bool {
		for _, s := range b.metrics(t, "caddy_openai_webhook_queue_messages") {
			if s.value != 0 {
				return false
			}
		}
		return true
	})
}

// TestQueueValidate: `caddy validate` of the running config, whose queue
// file the running Caddy holds, succeeds: validating neither opens the
// store nor starts workers.
func TestQueueValidate(t *testing.T) {
	e := setup(t)
	gw := startCaddy(t, e, queueConfig(freeport.Get(t), ""))
	sendQueued(t, gw, "msg_queue_validate", 2)
	cmd := exec.CommandContext(e.ctx, e.bin, "validate", "--config", gw.config, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "OPENAI_WEBHOOK_SECRET="+webhooktest.Secret,
		"XDG_CONFIG_HOME="+filepath.Join(gw.dir, "config"), "XDG_DATA_HOME="+filepath.Join(gw.dir, "data"))
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("caddy validate: %v\n%s", err, out)
	}
}
