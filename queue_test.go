package openaiwebhook

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
	"github.com/webhookgate/caddy-openai-webhook/queue"
)

// queueApp is an app behind a queue: it answers each attempt with the
// next status of its script (200 once the script is used up), and records
// what it got.
type queueApp struct {
	mu       sync.Mutex
	script   []int
	got      []*http.Request
	bodies   [][]byte
	hold     chan struct{} // if set, the first request waits for it
	received chan struct{} // a request arrived
}

func newQueueApp(t *testing.T, script ...int) (*queueApp, string) {
	t.Helper()
	a := &queueApp{script: script, received: make(chan struct{}, 100)}
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	return a, srv.URL + "/hooks/openai"
}

func (a *queueApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	a.mu.Lock()
	first := len(a.got) == 0
	a.got, a.bodies = append(a.got, r.Clone(context.Background())), append(a.bodies, body)
	status := http.StatusOK
	if len(a.script) > 0 {
		status, a.script = a.script[0], a.script[1:]
	}
	hold := a.hold
	a.mu.Unlock()
	if first && hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done(): // the worker's timeout, or the test ended
		}
	}
	select {
	case a.received <- struct{}{}:
	default: // waitRequests has wake-ups enough queued
	}
	w.WriteHeader(status)
}

func (a *queueApp) requests() ([]*http.Request, [][]byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*http.Request(nil), a.got...), append([][]byte(nil), a.bodies...)
}

// waitRequests waits until the app has had n requests; it asserts nothing.
func (a *queueApp) waitRequests(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(waitBound)
	for {
		if got, _ := a.requests(); len(got) >= n {
			return
		}
		select {
		case <-a.received:
		case <-deadline:
			t.Fatalf("the app got fewer than %d requests in %s", n, waitBound)
		}
	}
}

// queueHandler provisions a handler in queue mode in front of to, with its
// file store under the test's temporary directory.
func queueHandler(t *testing.T, to string, q Queue) *Handler {
	t.Helper()
	q.To = to
	q.StoreRaw = json.RawMessage(fmt.Sprintf(`{"backend":"file","path":%q}`, filepath.Join(t.TempDir(), "queue")))
	if q.Retry == nil {
		q.Retry = []caddy.Duration{caddy.Duration(20 * time.Millisecond), caddy.Duration(20 * time.Millisecond)}
	}
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}, Queue: &q})
	// As Caddy does once it runs the config.
	if err := h.Queue.app.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Queue.app.Stop() })
	return h
}

// TestQueueAnswersFirst: the sender is answered once the delivery is
// stored, before the app has it; the app then gets the exact bytes with the
// original headers and the attempt's number, retried until it says 2xx.
func TestQueueAnswersFirst(t *testing.T) {
	backend, to := newQueueApp(t, http.StatusServiceUnavailable, http.StatusInternalServerError)
	backend.hold = make(chan struct{})
	h := queueHandler(t, to, Queue{})
	body := []byte(`{"object":"event","id":"evt_q","type":"batch.completed","data":{"id":"batch_q"}}`)
	r := signedRequest(t, "wh_queued", body, time.Now())
	r.Header.Set("Content-Type", "application/json")
	// Headers of the sender's connection are not the app's.
	r.Header.Set("Connection", "keep-alive, X-Hop")
	r.Header.Set("X-Hop", "this connection's")
	r.Header.Set("Proxy-Authorization", "Basic cHJveHk6cHc=")
	sig := r.Header.Get("webhook-signature")
	next := &nextApp{status: 200}
	if status := deliverRequest(t, h, r, next); status != http.StatusOK || next.calls != 0 {
		t.Fatalf("queued: %d with %d calls to the next handler, want 200 and none", status, next.calls)
	}
	close(backend.hold) // the app gets its first request only now
	backend.waitRequests(t, 3)
	got, bodies := backend.requests()
	for i, req := range got {
		if string(bodies[i]) != string(body) || req.Header.Get("Webhook-Signature") != sig || req.Header.Get("Webhook-Id") != "wh_queued" ||
			req.Header.Get("Content-Type") != "application/json" || req.Header.Get(attemptHeader) != fmt.Sprint(i+1) ||
			req.Header.Get("X-Hop") != "" || req.Header.Get("Proxy-Authorization") != "" {
			t.Errorf("attempt %d: %s %q, headers %v", i+1, req.Method, bodies[i], req.Header)
		}
	}
	webhooktest.WaitFor(t, "the delivered message to leave the queue", func() bool {
		c, err := h.Queue.store.Counts(context.Background())
		return err == nil && c == (queue.Counts{})
	})
}

// deliverRequest sends r through h and returns the status the sender sees.
func deliverRequest(t *testing.T, h *Handler, r *http.Request, next *nextApp) int {
	t.Helper()
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, next); err != nil {
		return statusOf(err)
	}
	return w.Code
}

// TestQueueDeadLetters: after the schedule, a message is a dead letter,
// listed through the admin API without its body; retried by hand, it is
// delivered; dropped, it is gone. The listing shows to without the token
// its query holds.
func TestQueueDeadLetters(t *testing.T) {
	backend, to := newQueueApp(t, 500, 500, 500, 500, 500, 500)
	h := queueHandler(t, to+"?token=tok-5e7a", Queue{})
	for _, id := range []string{"wh_dead_1", "wh_dead_2"} {
		if status := deliverRequest(t, h, signedRequest(t, id, []byte(`{"type":"x"}`), time.Now()), &nextApp{}); status != http.StatusOK {
			t.Fatalf("%s: %d", id, status)
		}
	}
	backend.waitRequests(t, 6) // three attempts each
	webhooktest.WaitFor(t, "two dead letters", func() bool {
		c, _ := h.Queue.store.Counts(context.Background())
		return c.Dead == 2
	})
	api := AdminAPI{}
	call := func(method, path string, handle func(http.ResponseWriter, *http.Request) error) (int, string) {
		t.Helper()
		w := httptest.NewRecorder()
		err := handle(w, httptest.NewRequest(method, path, nil))
		if apiErr, ok := err.(caddy.APIError); ok {
			return apiErr.HTTPStatus, apiErr.Err.Error()
		}
		if err != nil {
			t.Fatal(err)
		}
		return w.Code, w.Body.String()
	}
	name := h.Queue.store.Name()
	status, list := call(http.MethodGet, "/openai-webhook/queues", api.list)
	if status != 200 || !strings.Contains(list, `"dead":2`) || !strings.Contains(list, name) ||
		!strings.Contains(list, `/hooks/openai?xxxxx"`) || strings.Contains(list, "tok-5e7a") {
		t.Fatalf("the queues: %d %s", status, list)
	}
	status, dead := call(http.MethodGet, "/openai-webhook/queues/dead?queue="+name, api.dead)
	if status != 200 || !strings.Contains(dead, `"webhook_id":"wh_dead_1"`) || !strings.Contains(dead, `"status":500`) ||
		strings.Contains(dead, "body") || strings.Contains(dead, "Webhook-Signature") {
		t.Fatalf("the dead letters: %d %s", status, dead)
	}
	var listed struct{ Dead []deadLetter }
	if err := json.Unmarshal([]byte(dead), &listed); err != nil || len(listed.Dead) != 2 || len(listed.Dead[0].Attempts) != 3 || strings.Contains(dead, `"due"`) {
		t.Fatalf("the dead letters: %s (%v)", dead, err)
	}
	if d, err := time.ParseDuration(listed.Dead[0].Attempts[0].Duration); err != nil || d <= 0 {
		t.Fatalf("an attempt's duration %q is not a duration: %v", listed.Dead[0].Attempts[0].Duration, err)
	}
	if status, _ := call(http.MethodGet, "/openai-webhook/queues/retry", api.retry); status != http.StatusMethodNotAllowed {
		t.Fatalf("GET retry: %d", status)
	}
	if status, out := call(http.MethodPost, "/openai-webhook/queues/drop?id="+listed.Dead[1].ID, api.drop); status != 200 {
		t.Fatalf("drop: %d %s", status, out)
	}
	if status, _ := call(http.MethodPost, "/openai-webhook/queues/drop?id="+listed.Dead[1].ID, api.drop); status != http.StatusNotFound {
		t.Fatalf("drop again: %d", status)
	}
	if status, out := call(http.MethodPost, "/openai-webhook/queues/retry?id="+listed.Dead[0].ID, api.retry); status != 200 || !strings.Contains(out, `"retried":1`) {
		t.Fatalf("retry: %d %s", status, out)
	}
	backend.waitRequests(t, 7) // the script is used up: 200
	webhooktest.WaitFor(t, "the retried letter to be delivered", func() bool {
		c, _ := h.Queue.store.Counts(context.Background())
		return c == (queue.Counts{})
	})
	if got, _ := backend.requests(); got[6].Header.Get("Webhook-Id") != "wh_dead_1" || got[6].Header.Get(attemptHeader) != "4" {
		t.Fatalf("the retried attempt: %v", got[6].Header)
	}
}

// TestQueueFull: past max_pending, deliveries are refused with 503 and
// Retry-After, and their id is released, so OpenAI's retry is queued once
// there is room.
func TestQueueFull(t *testing.T) {
	_, to := newQueueApp(t)
	// Nothing listens at the app's address: every attempt fails, and the
	// next waits an hour.
	srv := httptest.NewServer(http.NotFoundHandler())
	to = srv.URL
	srv.Close()
	h := queueHandler(t, to, Queue{MaxPending: 1, Retry: []caddy.Duration{caddy.Duration(time.Hour)}})
	if status := deliverRequest(t, h, signedRequest(t, "wh_full_1", []byte(`{}`), time.Now()), &nextApp{}); status != http.StatusOK {
		t.Fatalf("the first: %d", status)
	}
	before := testutil.ToFloat64(requestsTotal.WithLabelValues("UNKNOWN", outcomeQueueFull.name))
	r := signedRequest(t, "wh_full_2", []byte(`{}`), time.Now())
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	w := httptest.NewRecorder()
	err := h.ServeHTTP(w, r, &nextApp{})
	if statusOf(err) != http.StatusServiceUnavailable || w.Header().Get("Retry-After") != queueFullRetryAfter {
		t.Fatalf("past max_pending: %v, Retry-After %q", err, w.Header().Get("Retry-After"))
	}
	if testutil.ToFloat64(requestsTotal.WithLabelValues("UNKNOWN", outcomeQueueFull.name)) != before+1 {
		t.Error("not counted as queue_full")
	}
	if state, _, _ := h.replay.Claim(context.Background(), "wh_full_2"); state != 0 {
		t.Fatalf("the refused delivery's id is still held (%d): its retry would not be queued", state)
	}
}

// TestQueueDuplicates: the replay store still refuses repeats before they
// are queued.
func TestQueueDuplicates(t *testing.T) {
	backend, to := newQueueApp(t)
	h := queueHandler(t, to, Queue{})
	body := []byte(`{"type":"response.completed"}`)
	ts := time.Now()
	for range 3 {
		if status := deliverRequest(t, h, signedRequest(t, "wh_twice", body, ts), &nextApp{}); status != http.StatusOK {
			t.Fatalf("status %d", status)
		}
	}
	backend.waitRequests(t, 1)
	webhooktest.WaitFor(t, "the queue to empty", func() bool {
		c, _ := h.Queue.store.Counts(context.Background())
		return c == (queue.Counts{})
	})
	if got, _ := backend.requests(); len(got) != 1 {
		t.Fatalf("the app got the delivery %d times, want once", len(got))
	}
}

// TestQueueWait: the schedule's wait with its jitter, lengthened by the
// app's Retry-After up to the schedule's longest.
func TestQueueWait(t *testing.T) {
	q := &Queue{Retry: []caddy.Duration{caddy.Duration(10 * time.Second), caddy.Duration(time.Minute)}}
	for _, tc := range []struct {
		tries      int
		retryAfter time.Duration
		min, max   time.Duration
	}{
		{0, 0, 9 * time.Second, 11 * time.Second},
		{1, 0, 54 * time.Second, 66 * time.Second},
		{0, 30 * time.Second, 30 * time.Second, 30 * time.Second},
		{0, 5 * time.Second, 9 * time.Second, 11 * time.Second},
		{0, time.Hour, time.Minute, time.Minute},
	} {
		for range 100 {
			if got := q.wait(tc.tries, tc.retryAfter); got < tc.min || got > tc.max {
				t.Fatalf("after try %d with Retry-After %s: %s, want %s to %s", tc.tries+1, tc.retryAfter, got, tc.min, tc.max)
			}
		}
	}
}

// TestQueueStoreSharedInAConfig: handlers of one config may share a store
// only with the same queue settings; otherwise each would deliver the
// other's messages to its own app, and the config fails to load.
func TestQueueStoreSharedInAConfig(t *testing.T) {
	config, err := caddy.ProvisionContext(new(caddy.Config))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(config)
	defer cancel()
	store := json.RawMessage(fmt.Sprintf(`{"backend":"file","path":%q}`, filepath.Join(t.TempDir(), "queue")))
	// The error names the other handler's to, which may carry a token.
	t.Setenv("APP_URL", "http://tok-5e7a@127.0.0.1:8000/hooks?token=tok-5e7a")
	for _, tc := range []struct {
		to      string
		wantErr bool
	}{
		{"{env.APP_URL}", false},
		{"http://tok-5e7a@127.0.0.1:8000/hooks?token=tok-5e7a", false}, // the same queue, from another site
		{"http://127.0.0.1:9000/other", true},
	} {
		h := &Handler{Secrets: []string{testSecret}, Queue: &Queue{To: tc.to, StoreRaw: store}}
		err := h.Provision(ctx)
		defer h.Cleanup()
		if (err != nil) != tc.wantErr || (err != nil && !strings.Contains(err.Error(), "give each endpoint a store of its own")) {
			t.Fatalf("to %s: %v, want an error: %v", tc.to, err, tc.wantErr)
		}
		if err != nil && strings.Contains(err.Error(), "tok-5e7a") {
			t.Fatalf("the load error shows the token in to: %v", err)
		}
	}
}

// TestQueueStopSettlesFirst: stopping the config's queues (a reload, or
// Caddy stopping) waits for the attempt in flight and settles it before
// the store can close, so a delivery the app took is not made again.
func TestQueueStopSettlesFirst(t *testing.T) {
	backend, to := newQueueApp(t)
	backend.hold = make(chan struct{})
	h := queueHandler(t, to, Queue{})
	if status := deliverRequest(t, h, signedRequest(t, "wh_stop", []byte(`{}`), time.Now()), &nextApp{}); status != http.StatusOK {
		t.Fatalf("queued: %d", status)
	}
	webhooktest.WaitFor(t, "the attempt to reach the app", func() bool {
		got, _ := backend.requests()
		return len(got) == 1
	})
	stopped := make(chan struct{})
	go func() {
		_ = h.Queue.app.Stop()
		close(stopped)
	}()
	close(backend.hold)
	select {
	case <-stopped:
	case <-time.After(waitBound):
		t.Fatalf("Stop did not return within %s", waitBound)
	}
	if c, err := h.Queue.store.Counts(context.Background()); err != nil || c != (queue.Counts{}) {
		t.Fatalf("once stopped: %+v, %v; want the delivery settled", c, err)
	}
}

// TestQueueStopClosesConnections: the connections a stopped config's
// workers kept to the app are closed, not left to each reload.
func TestQueueStopClosesConnections(t *testing.T) {
	var opened, closed atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ConnState = func(_ net.Conn, state http.ConnState) {
		switch state {
		case http.StateNew:
			opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			closed.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	h := queueHandler(t, srv.URL, Queue{})
	if status := deliverRequest(t, h, signedRequest(t, "wh_conn", []byte(`{}`), time.Now()), &nextApp{}); status != http.StatusOK {
		t.Fatalf("queued: %d", status)
	}
	webhooktest.WaitFor(t, "the delivery", func() bool {
		c, err := h.Queue.store.Counts(context.Background())
		return err == nil && c == (queue.Counts{})
	})
	if opened.Load() == 0 || closed.Load() != 0 {
		t.Fatalf("before stopping: %d connections opened, %d closed; want one kept", opened.Load(), closed.Load())
	}
	if err := h.Queue.app.Stop(); err != nil {
		t.Fatal(err)
	}
	webhooktest.WaitFor(t, "the app to see its connections closed", func() bool { return closed.Load() == opened.Load() })
}

// TestQueueStartFails: a store that cannot be opened fails the config when
// Caddy starts it, naming the queue.
func TestQueueStartFails(t *testing.T) {
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}, Queue: &Queue{To: "http://127.0.0.1:8000",
		StoreRaw: json.RawMessage(fmt.Sprintf(`{"backend":"file","path":%q}`, filepath.Join(notADir, "queue")))}})
	err := h.Queue.app.Start()
	defer h.Queue.app.Stop()
	if err == nil || !strings.Contains(err.Error(), "queue file:"+filepath.Join(notADir, "queue")) {
		t.Fatalf("start: %v, want an error naming the queue", err)
	}
}

// TestQueueStoresBeforeStart: Caddy starts its apps in no set order, so a
// delivery can arrive before the queue's workers start: it is stored, and
// delivered once they do.
func TestQueueStoresBeforeStart(t *testing.T) {
	backend, to := newQueueApp(t)
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}, Queue: &Queue{To: to,
		StoreRaw: json.RawMessage(fmt.Sprintf(`{"backend":"file","path":%q}`, filepath.Join(t.TempDir(), "queue")))}})
	if status := deliverRequest(t, h, signedRequest(t, "wh_early", []byte(`{}`), time.Now()), &nextApp{}); status != http.StatusOK {
		t.Fatalf("a delivery before the queue started: %d, want 200", status)
	}
	if err := h.Queue.app.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Queue.app.Stop() })
	backend.waitRequests(t, 1)
}
