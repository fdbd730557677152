package e2e_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
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

// queueConfig is a gateway that verifies and then queues, in front of the
// app on port, with a short retry schedule.
func queueConfig(port int, options string) caddyConfig {
	return caddyConfig{Routes: fmt.Sprintf(`webhook_queue {
		to http://127.0.0.1:%d%s
		retry 200ms 200ms 200ms 200ms 200ms
		timeout 5s
		workers 4
		%s
	}`, port, hookPath, options)}
}

// startQueued starts Caddy with cfg, which has a webhook_queue, and waits
// until its queue takes requests: Caddy opens it once the whole config has
// started, a moment after the servers listen (503 meanwhile).
func startQueued(t *testing.T, e *e2e, cfg caddyConfig) *caddyServer {
	t.Helper()
	gw := startCaddy(t, e, cfg)
	gw.waitQueueOpen(t)
	return gw
}

// waitQueueOpen waits until the admin API lists a running queue.
func (c *caddyServer) waitQueueOpen(t *testing.T) {
	t.Helper()
	webhooktest.WaitFor(t, "the queue to open", func() bool {
		var queues []json.RawMessage
		getJSON(t, "http://"+c.admin+"/webhook-queue/queues", &queues)
		return len(queues) > 0
	})
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
	gw := startQueued(t, e, queueConfig(port, ""))
	sent := sendQueued(t, gw, "msg_queue_down", 20)
	webhooktest.WaitFor(t, "attempts to fail while the app is down", func() bool {
		for _, s := range gw.metrics(t, "caddy_webhook_queue_attempts_total") {
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
	// The queue tried while the app was down, then held the others and
	// probed: some arrive as a later attempt, the held ones as their first.
	retried := 0
	for _, r := range up.received(t) {
		attempt := r.header("Webhook-Attempt")
		n := 0
		if len(attempt) == 1 {
			n, _ = strconv.Atoi(attempt[0])
		}
		if n < 1 {
			t.Errorf("Webhook-Attempt %q, want one number from 1", attempt)
		}
		if n > 1 {
			retried++
		}
		if sig := r.header("webhook-signature"); len(sig) != 1 || !strings.HasPrefix(sig[0], "v1,") {
			t.Errorf("webhook-signature %q", sig)
		}
	}
	if retried == 0 {
		t.Error("no delivery arrived as a later attempt, though attempts failed while the app was down")
	}
	if o := gw.outcomes(t); o["forwarded"] != 20 {
		t.Errorf("the verifier's outcomes %v, want forwarded 20", o)
	}
	queued := 0.0
	for _, s := range gw.metrics(t, "caddy_webhook_queue_requests_total") {
		if s.labels["outcome"] == "queued" {
			queued += s.value
		}
	}
	if queued != 20 {
		t.Errorf("the queue counted %v queued, want 20", queued)
	}
}

// TestQueueSurvivesSIGKILL: Caddy killed with deliveries pending and one in
// flight loses none of them: after a restart every one reaches the app (the
// one in flight possibly twice: at least once).
func TestQueueSurvivesSIGKILL(t *testing.T) {
	e := setup(t)
	up := startUpstream(t, e)
	gw := startQueued(t, e, queueConfig(up.port, "workers 1"))
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
	sent := sendQueued(t, gw, "msg_queue_kill", 30)
	sent[held] = event(held)

	gw.kill(t)
	up.release(t, held) // the app finishes, but the gateway that asked is gone
	gw.run(t, e, gw.addr)
	gw.waitQueueOpen(t)
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
	gw := startQueued(t, e, configs[0])
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
// letter; `caddy webhook-queue` lists it without its body, retries it
// once the app is back, and drops another. A full queue refuses with 503.
func TestQueueDeadLettersByCLI(t *testing.T) {
	e := setup(t)
	port := freeport.Get(t)
	gw := startQueued(t, e, queueConfig(port, "max_pending 3"))
	sent := sendQueued(t, gw, "msg_queue_dead", 2)
	admin := []string{"--address", gw.admin}
	var dead struct {
		Queue    string
		Messages []struct {
			ID          string                 `json:"id"`
			DeliveryID  string                 `json:"delivery_id"`
			Attempts    int                    `json:"attempts"`
			LastAttempt struct{ Error string } `json:"last_attempt"`
		}
	}
	listDead := append([]string{"webhook-queue", "list", "--state", "dead"}, admin...)
	webhooktest.WaitFor(t, "two dead letters", func() bool {
		out, code := e.run(t, "", listDead...)
		if code != 0 {
			t.Fatalf("queue list: %s", out)
		}
		if err := json.Unmarshal([]byte(out), &dead); err != nil {
			t.Fatalf("queue list: %q: %v", out, err)
		}
		return len(dead.Messages) == 2
	})
	// Attempts until the queue deemed the app down, then its probes until
	// the schedule's second was over.
	if m := dead.Messages[0]; m.Attempts < 1 || !strings.Contains(m.LastAttempt.Error, "connection refused") {
		t.Errorf("the dead letter: %+v", m)
	}
	out, _ := e.run(t, "", listDead...)
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
	if out, code := e.run(t, "", append([]string{"webhook-queue", "drop", "--id", dead.Messages[1].ID}, admin...)...); code != 0 {
		t.Fatalf("queue drop: %s", out)
	}
	if out, code := e.run(t, "", append([]string{"webhook-queue", "retry", "--id", dead.Messages[0].ID}, admin...)...); code != 0 || !strings.Contains(out, `"retried": 1`) {
		t.Fatalf("queue retry: %s", out)
	}
	retried := map[string][]byte{dead.Messages[0].DeliveryID: sent[dead.Messages[0].DeliveryID]}
	waitDelivered(t, up, retried)
	// The admin address read from the config, as caddy reload reads it.
	out, code := e.run(t, "", "webhook-queue", "status", "--config", gw.config, "--adapter", "caddyfile")
	if code != 0 || !strings.Contains(out, `"dead": 0`) {
		t.Fatalf("queue status: %s", out)
	}
	for _, r := range up.received(t) {
		if slices.Equal(r.header("webhook-id"), []string{dead.Messages[1].DeliveryID}) {
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
		cfg.Handler = fmt.Sprintf("secret {env.OPENAI_WEBHOOK_SECRET}\n\t\treplay_store redis {\n\t\t\taddress %s\n\t\t}", srv.Addr)
		return cfg
	}
	a := startQueued(t, e, fleet(1))
	held := "msg_queue_fleet_held"
	req := a.delivery(t, held, time.Now(), event(held))
	req.Header.Set("X-Upstream-Hold", held)
	if resp, _ := send(t, req); resp.StatusCode != http.StatusOK {
		t.Fatalf("the held delivery: %d", resp.StatusCode)
	}
	up.waitRecorded(t, held) // a's only worker is in flight with it
	sent := sendQueued(t, a, "msg_queue_fleet_a", 10)
	b := startQueued(t, e, fleet(2))
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
		for _, s := range b.metrics(t, "caddy_webhook_queue_messages") {
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
	gw := startQueued(t, e, queueConfig(freeport.Get(t), ""))
	sendQueued(t, gw, "msg_queue_validate", 2)
	cmd := exec.CommandContext(e.ctx, e.bin, "validate", "--config", gw.config, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "OPENAI_WEBHOOK_SECRET="+webhooktest.Secret,
		"XDG_CONFIG_HOME="+filepath.Join(gw.dir, "config"), "XDG_DATA_HOME="+filepath.Join(gw.dir, "data"))
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("caddy validate: %v\n%s", err, out)
	}
}

// appSecret is the secret webhook_queue signs attempts with, the app's
// only; webhooktest.Secret stands for OpenAI's.
const appSecret = "whsec_QXBwU2VjcmV0LW9ubHktdGhlLWFwcC1ob2xkcy1pdA=="

// TestQueueSignWith: the Caddyfile of the docs (openai_webhook, then
// webhook_queue with sign_with). An app in Node that verifies every attempt
// with the standardwebhooks package refuses the first and accepts the
// second: the second verifies under the app's secret with a timestamp of
// its own time, and no attempt verifies under OpenAI's.
func TestQueueSignWith(t *testing.T) {
	e := setup(t)
	port := freeport.Get(t)
	cmd := exec.CommandContext(e.ctx, "node", "queue-app.mjs", strconv.Itoa(port), appSecret, webhooktest.Secret)
	cmd.Dir = nodeDir(t, e)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close() })
	start(t, cmd, "node queue app", fmt.Sprintf("127.0.0.1:%d", port))
	dir := t.TempDir()
	gw := startQueued(t, e, caddyConfig{
		Handler: "secret {env.OPENAI_WEBHOOK_SECRET}",
		Routes: fmt.Sprintf(`webhook_queue {
		to http://127.0.0.1:%d/hooks/openai
		store file %s
		retry 2s 2s
		sign_with {env.APP_WEBHOOK_SECRET}
	}`, port, filepath.Join(dir, "openai-webhook.queue")),
		Env: []string{"APP_WEBHOOK_SECRET=" + appSecret},
	})
	id := "msg_queue_signed"
	signedAt := time.Now().Add(-2 * time.Minute) // OpenAI signed it a while ago: still fresh for the gateway
	if resp, _ := send(t, gw.delivery(t, id, signedAt, event(id))); resp.StatusCode != http.StatusOK {
		t.Fatalf("the delivery: %d", resp.StatusCode)
	}
	type attempt struct {
		WebhookID           string `json:"webhook_id"`
		Attempt             string
		Timestamp           string
		ReceivedAt          int64 `json:"received_at"`
		Verified            bool
		Error               string
		VerifiesUnderSender bool `json:"verifies_under_sender"`
	}
	var got []attempt
	webhooktest.WaitFor(t, "two attempts at the app", func() bool {
		getJSON(t, fmt.Sprintf("http://127.0.0.1:%d/__received", port), &got)
		return len(got) >= 2
	})
	for i, a := range got {
		ts, _ := strconv.ParseInt(a.Timestamp, 10, 64)
		switch {
		case a.WebhookID != id || a.Attempt != strconv.Itoa(i+1):
			t.Errorf("attempt %d: %+v", i+1, a)
		case !a.Verified:
			t.Errorf("attempt %d does not verify under the app's secret: %s", i+1, a.Error)
		case a.VerifiesUnderSender:
			t.Errorf("attempt %d verifies under OpenAI's secret: its signature was passed on", i+1)
		case ts <= signedAt.Unix() || a.ReceivedAt-ts > 2 || ts-a.ReceivedAt > 2:
			t.Errorf("attempt %d signed at %d, received at %d: want the attempt's own time", i+1, ts, a.ReceivedAt)
		}
	}
}

// TestQueueOnce: with replay refusal off in the verifier, the queue itself
// stores a delivery id once: the same delivery sent twice reaches the app
// once. A header byte that is not UTF-8 reaches it as it was sent.
func TestQueueOnce(t *testing.T) {
	e := setup(t)
	up := startUpstream(t, e)
	cfg := queueConfig(up.port, "")
	cfg.Handler = "secret {env.OPENAI_WEBHOOK_SECRET}\n\t\treplay_window off"
	gw := startQueued(t, e, cfg)
	id := "msg_queue_once"
	now := time.Now()
	for range 2 {
		req := gw.delivery(t, id, now, event(id))
		req.Header.Set("X-Label", "caf\xe9")
		if resp, _ := send(t, req); resp.StatusCode != http.StatusOK {
			t.Fatalf("the delivery: %d", resp.StatusCode)
		}
	}
	waitDelivered(t, up, map[string][]byte{id: event(id)})
	webhooktest.WaitFor(t, "the queue to be empty", func() bool {
		for _, s := range gw.metrics(t, "caddy_webhook_queue_messages") {
			if s.value != 0 {
				return false
			}
		}
		return true
	})
	got := deliveriesOf(t, up, id)
	if len(got) != 1 {
		t.Fatalf("the app got the delivery %d times, want once", len(got))
	}
	// The Python app reads header bytes as Latin-1: é is the byte 0xE9,
	// where U+FFFD would be three other bytes.
	if label := got[0].header("X-Label"); !slices.Equal(label, []string{"caf\u00e9"}) {
		t.Errorf("X-Label arrived as %q, want the bytes sent", label)
	}
}

// TestQueueFailedReload: a reload whose config moves the queue to another
// store fails to start (another process listens on one of its addresses),
// with deliveries streaming in before, during and after it: Caddy keeps
// the running config, and every delivery answered 200 reaches the app.
// (Whether the new config's servers take a request before it fails
// depends on the order Caddy starts its apps in; TestOpensOnceTheConfigStarted
// in webhookqueue holds the store closed until the whole config started.)
func TestQueueFailedReload(t *testing.T) {
	e := setup(t)
	up := startUpstream(t, e)
	dir := t.TempDir()
	withStore := func(name string) caddyConfig {
		return queueConfig(up.port, "store file "+filepath.Join(dir, name))
	}
	gw := startQueued(t, e, withStore("a.queue"))
	// Another process on a port the new config also serves, with
	// SO_REUSEPORT as Caddy binds: the new config's servers start, and
	// openai_webhook's check at start fails it.
	taken := freeport.Get(t)
	holder := exec.CommandContext(e.ctx, "python3", "-c", fmt.Sprintf(
		"import socket,sys\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEPORT,1)\ns.bind(('127.0.0.1',%d))\ns.listen()\nsys.stdin.read()", taken))
	holderIn, err := holder.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holderIn.Close() })
	start(t, holder, "port holder", fmt.Sprintf("127.0.0.1:%d", taken))

	var (
		mu       sync.Mutex
		answered = map[string][]byte{}
		stop     atomic.Bool
		senders  sync.WaitGroup
	)
	for w := range 3 {
		senders.Go(func() {
			for i := 0; !stop.Load(); i++ {
				id := fmt.Sprintf("msg_queue_failed_reload_%d_%d", w, i)
				resp, err := http.DefaultClient.Do(gw.delivery(t, id, time.Now(), event(id)))
				if err != nil {
					continue
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					mu.Lock()
					answered[id] = event(id)
					mu.Unlock()
				}
			}
		})
	}
	time.Sleep(300 * time.Millisecond) // deliveries stream in before the reload
	failing := withStore("b.queue")
	failing.Sites = fmt.Sprintf("http://127.0.0.1:%d {\n\trespond \"taken\"\n}", taken)
	gw.writeConfig(t, failing)
	cmd := exec.CommandContext(e.ctx, e.bin, "reload", "--config", gw.config, "--adapter", "caddyfile", "--address", gw.admin)
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "is also listened on") {
		t.Fatalf("the reload: %v, want it refused at start\n%s", err, out)
	}
	time.Sleep(300 * time.Millisecond) // and after it
	stop.Store(true)
	senders.Wait()
	if len(answered) == 0 {
		t.Fatal("no delivery was answered 200")
	}
	for id, n := range waitDelivered(t, up, answered) {
		if n != 1 {
			t.Errorf("%s reached the app %d times", id, n)
		}
	}
}

// TestQueueWarnsWithoutAuthentication: a webhook_queue with no
// authenticating handler before it in its route stores whatever anyone
// sends: Caddy warns of it when it starts the config; the gateway's, after
// openai_webhook, is not warned of.
func TestQueueWarnsWithoutAuthentication(t *testing.T) {
	e := setup(t)
	cfg := queueConfig(freeport.Get(t), "")
	cfg.Sites = fmt.Sprintf("http://127.0.0.1:%d {\n\twebhook_queue {\n\t\tto http://127.0.0.1:%d/open\n\t\tname open\n\t}\n}", freeport.Get(t), freeport.Get(t))
	gw := startCaddy(t, e, cfg)
	const warning = "webhook_queue stores whatever reaches it, and no authenticating handler"
	webhooktest.WaitFor(t, "the warning", func() bool { return strings.Contains(gw.output.String(), warning) })
	out := gw.output.String()
	if n := strings.Count(out, warning); n != 1 || !strings.Contains(out, `"queue":"open"`) {
		t.Errorf("%d warnings, want one, of the queue named open:\n%s", n, out)
	}
}

// TestQueueRedisDurabilityWarning: a Redis that skips its fsyncs during
// every rewrite (no-appendfsync-on-rewrite yes) can lose deliveries the
// queue acknowledged: Caddy warns of it when it starts the queue.
func TestQueueRedisDurabilityWarning(t *testing.T) {
	e := setup(t)
	srv := redistest.Start(t, redistest.Options{Durable: true, Args: []string{"--no-appendfsync-on-rewrite", "yes"}})
	gw := startQueued(t, e, queueConfig(freeport.Get(t), fmt.Sprintf("store redis {\naddress %s\n}", srv.Addr)))
	webhooktest.WaitFor(t, "the warning", func() bool {
		out := gw.output.String()
		return strings.Contains(out, "Redis can lose queued deliveries it acknowledged") && strings.Contains(out, "no-appendfsync-on-rewrite")
	})
}
