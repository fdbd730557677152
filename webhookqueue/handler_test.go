package webhookqueue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
	"github.com/webhookgate/caddy-openai-webhook/queuestore"
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

// waitBound bounds a test's wait for another goroutine; it asserts nothing.
const waitBound = time.Minute

// appSecret is the secret a queue signs attempts with, shared with the app
// only; senderSecret stands for the sender's (OpenAI's).
const (
	appSecret    = "whsec_" + "QXBwU2VjcmV0LW9ubHktdGhlLWFwcC1ob2xkcy1pdA=="
	senderSecret = webhooktest.Secret
)

// queueHandler provisions a webhook_queue in front of to as Caddy does, in
// a config of its own, with its file store under the test's temporary
// directory, and starts the config's App, as Caddy does once it runs the
// config (start false: the test starts it). It returns what ends the
// config as Caddy does after stopping its apps (its modules' cleanup).
func queueHandler(t *testing.T, to string, h Handler, start bool) (*Handler, *App, func()) {
	t.Helper()
	h.To = to
	if h.StoreRaw == nil {
		h.StoreRaw = json.RawMessage(fmt.Sprintf(`{"backend":"file","path":%q}`, filepath.Join(t.TempDir(), "queue")))
	}
	if h.Retry == nil {
		h.Retry = []caddy.Duration{caddy.Duration(20 * time.Millisecond), caddy.Duration(20 * time.Millisecond)}
	}
	config, err := caddy.ProvisionContext(new(caddy.Config))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(config)
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("provision: %v", err)
	}
	app, err := ctx.App(appName)
	if err != nil {
		t.Fatal(err)
	}
	a := app.(*App)
	if start {
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = a.Stop() })
	}
	return &h, a, cancel
}

// signedRequest is a delivery as OpenAI sends it, signed with the sender's
// secret.
func signedRequest(t *testing.T, id string, body []byte) *http.Request {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/hooks/openai", bytes.NewReader(body))
	for k, v := range webhooktest.Headers(t, senderSecret, id, time.Now(), body) {
		r.Header[k] = v
	}
	return r
}

// statusOf is the status Caddy answers for a handler's error.
func statusOf(err error) int {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) {
		return he.StatusCode
	}
	return 0
}

// deliverRequest sends r through h and returns the status the sender sees
// and the answer's headers.
func deliverRequest(t *testing.T, h *Handler, r *http.Request) (int, http.Header) {
	t.Helper()
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, nil); err != nil {
		return statusOf(err), w.Header()
	}
	return w.Code, w.Header()
}

// emptied waits until the queue holds nothing.
func emptied(t *testing.T, h *Handler) {
	t.Helper()
	webhooktest.WaitFor(t, "the queue to empty", func() bool {
		c, err := h.queue.store.Counts(context.Background())
		return err == nil && c == (queuestore.Counts{})
	})
}

// TestAnswersFirst: the sender is answered once the request is stored,
// before the app has it; the app then gets the exact bytes with the headers
// as received and the attempt's number, retried until it says 2xx.
func TestAnswersFirst(t *testing.T) {
	backend, to := newQueueApp(t, http.StatusServiceUnavailable, http.StatusInternalServerError)
	backend.hold = make(chan struct{})
	h, _, _ := queueHandler(t, to, Handler{}, true)
	body := []byte(`{"object":"event","id":"evt_q","type":"batch.completed","data":{"id":"batch_q"}}`)
	r := signedRequest(t, "wh_queued", body)
	r.Header.Set("Content-Type", "application/json")
	// Headers of the sender's connection are not the app's.
	r.Header.Set("Connection", "keep-alive, X-Hop")
	r.Header.Set("X-Hop", "this connection's")
	r.Header.Set("Proxy-Authorization", "Basic cHJveHk6cHc=")
	// A byte that is not UTF-8 arrives as it came.
	r.Header.Set("X-Label", "caf\xe9")
	sig := r.Header.Get("webhook-signature")
	if status, _ := deliverRequest(t, h, r); status != http.StatusOK {
		t.Fatalf("queued: %d, want 200", status)
	}
	close(backend.hold) // the app gets its first request only now
	backend.waitRequests(t, 3)
	got, bodies := backend.requests()
	for i, req := range got {
		if string(bodies[i]) != string(body) || req.Header.Get("Webhook-Signature") != sig || req.Header.Get("Webhook-Id") != "wh_queued" ||
			req.Header.Get("Content-Type") != "application/json" || req.Header.Get(attemptHeader) != fmt.Sprint(i+1) ||
			req.Header.Get("X-Hop") != "" || req.Header.Get("Proxy-Authorization") != "" || req.Header.Get("X-Label") != "caf\xe9" {
			t.Errorf("attempt %d: %s %q, headers %q", i+1, req.Method, bodies[i], req.Header)
		}
	}
	emptied(t, h)
}

// TestSignWith: with sign_with, every attempt carries the delivery's id, a
// timestamp of the attempt and a signature made with the app's secret over
// the exact stored body, which the reference library accepts, and no
// signature of the sender's.
func TestSignWith(t *testing.T) {
	backend, to := newQueueApp(t, http.StatusServiceUnavailable)
	h, _, _ := queueHandler(t, to, Handler{SignWith: appSecret, Retry: []caddy.Duration{caddy.Duration(1100 * time.Millisecond)}}, true)
	body := []byte("{\"type\":\"response.completed\",\"bytes\":\"\x00\xff\"}")
	if status, _ := deliverRequest(t, h, signedRequest(t, "wh_signed", body)); status != http.StatusOK {
		t.Fatalf("queued: %d", status)
	}
	backend.waitRequests(t, 2)
	app, err := standardwebhooks.NewWebhook(appSecret)
	if err != nil {
		t.Fatal(err)
	}
	sender, err := standardwebhooks.NewWebhook(senderSecret)
	if err != nil {
		t.Fatal(err)
	}
	got, bodies := backend.requests()
	for i, req := range got {
		if err := app.Verify(bodies[i], req.Header); err != nil {
			t.Errorf("attempt %d does not verify under the app's secret: %v (headers %q)", i+1, err, req.Header)
		}
		if err := sender.Verify(bodies[i], req.Header); err == nil {
			t.Errorf("attempt %d verifies under the sender's secret: its signature was passed on", i+1)
		}
		if req.Header.Get("Webhook-Id") != "wh_signed" || len(req.Header["Webhook-Signature"]) != 1 || string(bodies[i]) != string(body) {
			t.Errorf("attempt %d: %q, %q", i+1, req.Header, bodies[i])
		}
	}
	// The second attempt, a second or more later, has its own time.
	if got[0].Header.Get("Webhook-Timestamp") == got[1].Header.Get("Webhook-Timestamp") {
		t.Errorf("both attempts signed at %s", got[0].Header.Get("Webhook-Timestamp"))
	}
}

// TestDuplicates: a delivery id already queued, or delivered within the
// retention, is answered 200 and not stored again.
func TestDuplicates(t *testing.T) {
	backend, to := newQueueApp(t)
	h, _, _ := queueHandler(t, to, Handler{}, true)
	body := []byte(`{"type":"response.completed"}`)
	before := testutil.ToFloat64(requestsTotal.WithLabelValues(h.Name, outcomeDuplicate.name))
	for range 3 {
		if status, _ := deliverRequest(t, h, signedRequest(t, "wh_twice", body)); status != http.StatusOK {
			t.Fatalf("status %d", status)
		}
	}
	backend.waitRequests(t, 1)
	emptied(t, h)
	if status, _ := deliverRequest(t, h, signedRequest(t, "wh_twice", body)); status != http.StatusOK {
		t.Fatalf("a repeat after delivery: %d", status)
	}
	if got, _ := backend.requests(); len(got) != 1 {
		t.Fatalf("the app got the delivery %d times, want once", len(got))
	}
	if n := testutil.ToFloat64(requestsTotal.WithLabelValues(h.Name, outcomeDuplicate.name)) - before; n != 3 {
		t.Errorf("%v counted as duplicates, want 3", n)
	}
}

// TestRefusals: what cannot be stored is refused, with Retry-After for what
// the sender should send again: past max_pending, before the config's
// queue runs and after it stopped; a body over max_size gets 413.
func TestRefusals(t *testing.T) {
	// Nothing listens at the app's address: every attempt fails, and the
	// next waits an hour.
	srv := httptest.NewServer(http.NotFoundHandler())
	to := srv.URL
	srv.Close()
	h, app, _ := queueHandler(t, to, Handler{MaxPending: 1, MaxSize: 16, Retry: []caddy.Duration{caddy.Duration(time.Hour)}}, false)
	check := func(what string, id string, body []byte, wantStatus int, wantRetryAfter string, o outcome) {
		t.Helper()
		before := testutil.ToFloat64(requestsTotal.WithLabelValues(h.Name, o.name))
		status, hdr := deliverRequest(t, h, signedRequest(t, id, body))
		if status != wantStatus || hdr.Get("Retry-After") != wantRetryAfter {
			t.Errorf("%s: %d, Retry-After %q; want %d, %q", what, status, hdr.Get("Retry-After"), wantStatus, wantRetryAfter)
		}
		if testutil.ToFloat64(requestsTotal.WithLabelValues(h.Name, o.name)) != before+1 {
			t.Errorf("%s: not counted as %s", what, o.name)
		}
	}
	check("before the config's queue runs", "wh_early", []byte(`{}`), http.StatusServiceUnavailable, notStoredRetryAfter, outcomeNotRunning)
	if err := app.Start(); err != nil {
		t.Fatal(err)
	}
	check("the first", "wh_first", []byte(`{}`), http.StatusOK, "", outcomeQueued)
	check("past max_pending", "wh_second", []byte(`{}`), http.StatusServiceUnavailable, fullRetryAfter, outcomeQueueFull)
	check("over max_size", "wh_large", []byte(`{"seventeen bytes"}`), http.StatusRequestEntityTooLarge, "", outcomeTooLarge)
	if err := app.Stop(); err != nil {
		t.Fatal(err)
	}
	check("after the config's queue stopped", "wh_late", []byte(`{}`), http.StatusServiceUnavailable, notStoredRetryAfter, outcomeNotRunning)
}

// TestWait: the schedule's wait with its jitter, lengthened by the app's
// Retry-After up to the schedule's longest.
func TestWait(t *testing.T) {
	q := &queue{retry: []caddy.Duration{caddy.Duration(10 * time.Second), caddy.Duration(time.Minute)}, longest: time.Minute}
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

// TestDeadLetters: after the schedule, a message is a dead letter, listed
// through the admin API without its body; retried by hand, it is
// delivered; dropped, it is gone. A retry names one letter or all of them.
// The listing shows to without the token its query holds.
func TestDeadLetters(t *testing.T) {
	backend, to := newQueueApp(t, slices.Repeat([]int{500}, 100)...)
	h, _, _ := queueHandler(t, to+"?token=tok-5e7a", Handler{}, true)
	for _, id := range []string{"wh_dead_1", "wh_dead_2"} {
		if status, _ := deliverRequest(t, h, signedRequest(t, id, []byte(`{"type":"x"}`))); status != http.StatusOK {
			t.Fatalf("%s: %d", id, status)
		}
	}
	// Three attempts each, or fewer once the queue deems the app down and
	// the schedule's 40 ms are over.
	webhooktest.WaitFor(t, "two dead letters", func() bool {
		c, _ := h.queue.store.Counts(context.Background())
		return c.Dead == 2
	})
	backend.mu.Lock()
	backend.script = nil // the app answers 200 from now on
	sent := len(backend.got)
	backend.mu.Unlock()
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
	name := url.QueryEscape(h.Name)
	status, list := call(http.MethodGet, "/webhook-queue/queues", api.status)
	if status != 200 || !strings.Contains(list, `"dead":2`) || !strings.Contains(list, `"name":"`+h.Name+`"`) ||
		!strings.Contains(list, `/hooks/openai?xxxxx"`) || strings.Contains(list, "tok-5e7a") || !strings.Contains(list, `"app_up":false`) ||
		!strings.Contains(list, `"last_error":"the app answered 500 Internal Server Error"`) {
		t.Fatalf("the queues: %d %s", status, list)
	}
	status, dead := call(http.MethodGet, "/webhook-queue/queues/list?state=dead&queue="+name, api.list)
	if status != 200 || !strings.Contains(dead, `"delivery_id":"wh_dead_1"`) || !strings.Contains(dead, `"status":500`) ||
		strings.Contains(dead, "body") || strings.Contains(dead, "Webhook-Signature") {
		t.Fatalf("the dead letters: %d %s", status, dead)
	}
	var listed struct{ Messages []message }
	if err := json.Unmarshal([]byte(dead), &listed); err != nil || len(listed.Messages) != 2 || listed.Messages[0].Attempts < 1 || listed.Messages[0].Last == nil {
		t.Fatalf("the dead letters: %s (%v)", dead, err)
	}
	if d, err := time.ParseDuration(listed.Messages[0].Last.Duration); err != nil || d <= 0 {
		t.Fatalf("an attempt's duration %q is not a duration: %v", listed.Messages[0].Last.Duration, err)
	}
	if status, _ := call(http.MethodGet, "/webhook-queue/queues/list?state=gone", api.list); status != http.StatusBadRequest {
		t.Fatalf("a state that is none: %d, want 400", status)
	}
	if status, _ := call(http.MethodGet, "/webhook-queue/queues/retry", api.retry); status != http.StatusMethodNotAllowed {
		t.Fatalf("GET retry: %d", status)
	}
	for _, query := range []string{"", "?id=x&all=true", "?all=true&scheduled=true"} {
		if status, _ := call(http.MethodPost, "/webhook-queue/queues/retry"+query, api.retry); status != http.StatusBadRequest {
			t.Fatalf("a retry of %q: %d, want 400 (exactly one of id, all, scheduled)", query, status)
		}
	}
	if status, out := call(http.MethodPost, "/webhook-queue/queues/drop?id="+listed.Messages[1].ID, api.drop); status != 200 {
		t.Fatalf("drop: %d %s", status, out)
	}
	if status, _ := call(http.MethodPost, "/webhook-queue/queues/drop?id="+listed.Messages[1].ID, api.drop); status != http.StatusNotFound {
		t.Fatalf("drop again: %d", status)
	}
	if status, out := call(http.MethodPost, "/webhook-queue/queues/retry?all=true", api.retry); status != 200 || !strings.Contains(out, `"retried":1`) {
		t.Fatalf("retry all: %d %s", status, out)
	}
	backend.waitRequests(t, sent+1)
	emptied(t, h)
	want := strconv.Itoa(listed.Messages[0].Attempts + 1)
	if got, _ := backend.requests(); len(got) != sent+1 || got[sent].Header.Get("Webhook-Id") != listed.Messages[0].DeliveryID || got[sent].Header.Get(attemptHeader) != want {
		t.Fatalf("the retried attempt: %d requests, the last %v; want %d, attempt %s", len(got), got[len(got)-1].Header, sent+1, want)
	}
}

// TestSharedName: handlers of one config share a queue by name only with
// the same settings; otherwise each would deliver the other's messages to
// its own app, and the config fails to load, without showing a token.
func TestSharedName(t *testing.T) {
	config, err := caddy.ProvisionContext(new(caddy.Config))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(config)
	defer cancel()
	store := json.RawMessage(fmt.Sprintf(`{"backend":"file","path":%q}`, filepath.Join(t.TempDir(), "queue")))
	t.Setenv("APP_URL", "http://tok-5e7a@127.0.0.1:8000/hooks?token=tok-5e7a")
	for _, tc := range []struct {
		to      string
		wantErr bool
	}{
		{"{env.APP_URL}", false},
		{"{env.APP_URL}", false}, // the same queue, from another site
		{"http://127.0.0.1:9000/other", true},
	} {
		h := &Handler{Name: "hooks", To: tc.to, StoreRaw: store}
		err := h.Provision(ctx)
		if (err != nil) != tc.wantErr || (err != nil && !strings.Contains(err.Error(), "give each a name of its own")) {
			t.Fatalf("to %s: %v, want an error: %v", tc.to, err, tc.wantErr)
		}
		if err != nil && strings.Contains(err.Error(), "tok-5e7a") {
			t.Fatalf("the load error shows the token in to: %v", err)
		}
	}
}

// TestStopSettlesFirst: stopping the config's queues (a reload, or Caddy
// stopping) waits for the attempt in flight and settles it before the
// store can close, so a delivery the app took is not made again.
func TestStopSettlesFirst(t *testing.T) {
	backend, to := newQueueApp(t)
	backend.hold = make(chan struct{})
	h, app, _ := queueHandler(t, to, Handler{}, true)
	if status, _ := deliverRequest(t, h, signedRequest(t, "wh_stop", []byte(`{}`))); status != http.StatusOK {
		t.Fatalf("queued: %d", status)
	}
	webhooktest.WaitFor(t, "the attempt to reach the app", func() bool {
		got, _ := backend.requests()
		return len(got) == 1
	})
	stopped := make(chan struct{})
	go func() {
		_ = app.Stop()
		close(stopped)
	}()
	close(backend.hold)
	select {
	case <-stopped:
	case <-time.After(waitBound):
		t.Fatalf("Stop did not return within %s", waitBound)
	}
	if c, err := h.queue.store.Counts(context.Background()); err != nil || c != (queuestore.Counts{}) {
		t.Fatalf("once stopped: %+v, %v; want the delivery settled", c, err)
	}
}

// TestStopClosesConnections: the connections a stopped config's workers
// kept to the app are closed, not left to each reload.
func TestStopClosesConnections(t *testing.T) {
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
	h, app, end := queueHandler(t, srv.URL, Handler{}, true)
	if status, _ := deliverRequest(t, h, signedRequest(t, "wh_conn", []byte(`{}`))); status != http.StatusOK {
		t.Fatalf("queued: %d", status)
	}
	emptied(t, h)
	if opened.Load() == 0 || closed.Load() != 0 {
		t.Fatalf("before stopping: %d connections opened, %d closed; want one kept", opened.Load(), closed.Load())
	}
	if err := app.Stop(); err != nil {
		t.Fatal(err)
	}
	end() // the transport's cleanup closes what it kept
	webhooktest.WaitFor(t, "the app to see its connections closed", func() bool { return closed.Load() == opened.Load() })
}

// TestStartFails: a store that cannot be opened fails the config when Caddy
// starts it, naming the queue; its handlers never stored anything.
func TestStartFails(t *testing.T) {
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	h, app, _ := queueHandler(t, "http://127.0.0.1:8000/hooks", Handler{
		StoreRaw: json.RawMessage(fmt.Sprintf(`{"backend":"file","path":%q}`, filepath.Join(notADir, "queue")))}, false)
	err := app.Start()
	defer app.Stop()
	if err == nil || !strings.Contains(err.Error(), "queue 127.0.0.1:8000/hooks") {
		t.Fatalf("start: %v, want an error naming the queue", err)
	}
	if status, _ := deliverRequest(t, h, signedRequest(t, "wh_after_failed_start", []byte(`{}`))); status != http.StatusServiceUnavailable {
		t.Fatalf("a request to a queue whose config failed to start: %d, want 503", status)
	}
}

// TestOpensOnceTheConfigStarted: a config's queue takes requests only once
// Caddy has started the whole config (its "started" event), not when its
// own app starts: a config that fails to start after its servers and this
// app started answered nothing 200 into a store that no running config
// delivers from.
func TestOpensOnceTheConfigStarted(t *testing.T) {
	backend, to := newQueueApp(t)
	config, err := caddy.ProvisionContext(&caddy.Config{AppsRaw: caddy.ModuleMap{"events": json.RawMessage(`{}`)}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(config)
	t.Cleanup(cancel)
	h := &Handler{To: to, StoreRaw: json.RawMessage(fmt.Sprintf(`{"backend":"file","path":%q}`, filepath.Join(t.TempDir(), "queue")))}
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	app, _ := ctx.App(appName)
	events, _ := ctx.App("events")
	if err := app.(*App).Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = app.(*App).Stop() })
	if status, hdr := deliverRequest(t, h, signedRequest(t, "wh_before_started", []byte(`{}`))); status != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
		t.Fatalf("before the config started: %d, Retry-After %q; want 503 with one", status, hdr.Get("Retry-After"))
	}
	events.(*caddyevents.App).Emit(ctx, "started", nil) // as Caddy does once every app started
	if status, _ := deliverRequest(t, h, signedRequest(t, "wh_after_started", []byte(`{}`))); status != http.StatusOK {
		t.Fatalf("once the config started: %d, want 200", status)
	}
	backend.waitRequests(t, 1)
}

// outageApp answers 503 while down, else 200, and counts the attempts each
// delivery id got and when each arrived.
type outageApp struct {
	down     atomic.Bool
	mu       sync.Mutex
	attempts map[string]int
	ok       map[string]time.Time
	arrivals []time.Time
}

func (a *outageApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	id := r.Header.Get("Webhook-Id")
	a.mu.Lock()
	defer a.mu.Unlock()
	a.attempts[id]++
	a.arrivals = append(a.arrivals, time.Now())
	if a.down.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	if _, done := a.ok[id]; !done {
		a.ok[id] = time.Now()
	}
}

func newOutageApp(t *testing.T) (*outageApp, string) {
	a := &outageApp{attempts: map[string]int{}, ok: map[string]time.Time{}}
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	return a, srv.URL + "/hooks/openai"
}

// TestOutage: an app down for 60 s with 1,000 messages waiting gets all of
// them within 5 s of coming back, and none spent more than a few attempts:
// the queue holds its messages while the app is down, probes it, and
// brings the waiting ones forward once it answers again, instead of each
// waiting out its next step of the default schedule (5s, then 5m).
func TestOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("a 60 s outage: not in -short mode")
	}
	app, to := newOutageApp(t)
	app.down.Store(true)
	h, _, _ := queueHandler(t, to, Handler{Retry: []caddy.Duration{caddy.Duration(5 * time.Second), caddy.Duration(5 * time.Minute), caddy.Duration(30 * time.Minute)}}, true)
	for i := range 1000 {
		if status, _ := deliverRequest(t, h, signedRequest(t, fmt.Sprintf("wh_outage_%d", i), []byte(`{"type":"x"}`))); status != http.StatusOK {
			t.Fatalf("delivery %d: %d", i, status)
		}
	}
	time.Sleep(60 * time.Second) // the outage: the queue, not the test, decides what to do meanwhile
	if s := h.queue.health.status(time.Now()); s.AppUp || s.FailingSince == nil {
		t.Errorf("after 60 s of 503s, the queue deems the app up: %+v", s)
	}
	back := time.Now()
	app.down.Store(false)
	webhooktest.WaitFor(t, "every message to reach the app", func() bool {
		app.mu.Lock()
		defer app.mu.Unlock()
		return len(app.ok) == 1000
	})
	app.mu.Lock()
	defer app.mu.Unlock()
	var last time.Time
	for id, at := range app.ok {
		if at.After(last) {
			last = at
		}
		if n := app.attempts[id]; n > 4 {
			t.Errorf("%s took %d attempts", id, n)
		}
	}
	if took := last.Sub(back); took > 5*time.Second {
		t.Errorf("the last message reached the app %s after it came back, want within 5s", took)
	}
	t.Logf("%d attempts in all for 1,000 messages; the last delivered %s after the app came back", len(app.arrivals), last.Sub(back))
}

// TestOutageOutlivesSchedule: while the app stays down, a message stored
// longer ago than its whole schedule lasts dies at the next probe, and is
// logged as having outlived the schedule, not as out of attempts: it had
// places left in it.
func TestOutageOutlivesSchedule(t *testing.T) {
	app, to := newOutageApp(t)
	app.down.Store(true)
	step := caddy.Duration(50 * time.Millisecond)
	h, a, _ := queueHandler(t, to, Handler{Retry: []caddy.Duration{step, step}}, false)
	core, logs := observer.New(zap.WarnLevel)
	h.queue.logger = zap.New(core)
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Stop() })
	for i := range 3 {
		if status, _ := deliverRequest(t, h, signedRequest(t, fmt.Sprintf("wh_outlived_%d", i), []byte(`{}`))); status != http.StatusOK {
			t.Fatalf("delivery %d: %d", i, status)
		}
	}
	dead := func() []observer.LoggedEntry { return logs.FilterMessageSnippet("dead letter").All() }
	webhooktest.WaitFor(t, "the three messages to die", func() bool { return len(dead()) == 3 })
	for _, e := range dead() {
		if want := "dead letter: the app was down for longer than the retry schedule lasts"; e.Message != want {
			t.Errorf("%s: %q, want %q", e.ContextMap()["delivery_id"], e.Message, want)
		}
	}
}

// TestRate: rate bounds the attempts a second, also while a backlog drains.
func TestRate(t *testing.T) {
	app, to := newOutageApp(t)
	h, _, _ := queueHandler(t, to, Handler{Rate: 20, Workers: 8}, true)
	for i := range 60 {
		if status, _ := deliverRequest(t, h, signedRequest(t, fmt.Sprintf("wh_rate_%d", i), []byte(`{}`))); status != http.StatusOK {
			t.Fatalf("delivery %d: %d", i, status)
		}
	}
	webhooktest.WaitFor(t, "the backlog to drain", func() bool {
		app.mu.Lock()
		defer app.mu.Unlock()
		return len(app.ok) == 60
	})
	app.mu.Lock()
	defer app.mu.Unlock()
	// In any second, at most the rate and its burst (20 + 20): a slower
	// machine only sends fewer.
	for i, start := range app.arrivals {
		n := 0
		for _, at := range app.arrivals[i:] {
			if at.Sub(start) < time.Second {
				n++
			}
		}
		if n > 40 {
			t.Fatalf("%d attempts within a second from %s, want at most 40", n, start.Format(time.StampMicro))
		}
	}
}

// TestWorkersBoundConcurrency: however many messages are due, the app
// never has more than workers attempts at once, and a backlog keeps all of
// them busy.
func TestWorkersBoundConcurrency(t *testing.T) {
	const workers = 3
	var (
		mu             sync.Mutex
		inFlight, most int
		delivered      int
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inFlight++
		most = max(most, inFlight)
		mu.Unlock()
		time.Sleep(100 * time.Millisecond)
		mu.Lock()
		inFlight--
		delivered++
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	h, _, _ := queueHandler(t, srv.URL, Handler{Workers: workers}, true)
	const n = 30
	for i := range n {
		if status, _ := deliverRequest(t, h, signedRequest(t, fmt.Sprintf("wh_workers_%d", i), []byte(`{}`))); status != http.StatusOK {
			t.Fatalf("delivery %d: %d", i, status)
		}
	}
	webhooktest.WaitFor(t, "the backlog to drain", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return delivered == n
	})
	mu.Lock()
	defer mu.Unlock()
	if most != workers {
		t.Fatalf("at most %d attempts at once, want %d (workers)", most, workers)
	}
}

// TestRetryAfterPausesTheQueue: an app that answers 503 with Retry-After
// pauses the whole queue, not only that message: no attempt comes before
// the time it asked for; but no longer than the schedule's longest wait,
// as a message's own wait.
func TestRetryAfterPausesTheQueue(t *testing.T) {
	for _, tc := range []struct {
		name       string
		retryAfter string
		retry      []caddy.Duration
		pause      time.Duration
	}{
		{"as asked", "2", []caddy.Duration{caddy.Duration(20 * time.Millisecond), caddy.Duration(5 * time.Second)}, 2 * time.Second},
		{"at most the longest wait", "3600", []caddy.Duration{caddy.Duration(20 * time.Millisecond), caddy.Duration(time.Second)}, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				mu       sync.Mutex
				answered time.Time
				after    []time.Time
			)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				if answered.IsZero() {
					answered = time.Now()
					w.Header().Set("Retry-After", tc.retryAfter)
					w.WriteHeader(http.StatusServiceUnavailable)
					return
				}
				after = append(after, time.Now())
			}))
			t.Cleanup(srv.Close)
			h, _, _ := queueHandler(t, srv.URL, Handler{Workers: 1, Retry: tc.retry}, true)
			if status, _ := deliverRequest(t, h, signedRequest(t, "wh_pause_1", []byte(`{}`))); status != http.StatusOK {
				t.Fatal(status)
			}
			webhooktest.WaitFor(t, "the first attempt", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return !answered.IsZero()
			})
			for i := 2; i <= 4; i++ {
				if status, _ := deliverRequest(t, h, signedRequest(t, fmt.Sprintf("wh_pause_%d", i), []byte(`{}`))); status != http.StatusOK {
					t.Fatal(status)
				}
			}
			webhooktest.WaitFor(t, "the other deliveries", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(after) >= 3
			})
			mu.Lock()
			defer mu.Unlock()
			for _, at := range after {
				// The pause runs from when the worker had the answer, a
				// moment after the app sent it.
				if at.Before(answered.Add(tc.pause)) {
					t.Errorf("an attempt came %s after the answer, want after a pause of %s", at.Sub(answered), tc.pause)
				}
			}
		})
	}
}

// TestSharedStore: two queues of a config cannot share a store: each
// would take the other's messages to its own app. The config fails to
// load, naming the store and the other queue.
func TestSharedStore(t *testing.T) {
	config, err := caddy.ProvisionContext(new(caddy.Config))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(config)
	defer cancel()
	dir := t.TempDir()
	file := func(name string) json.RawMessage {
		return json.RawMessage(fmt.Sprintf(`{"backend":"file","path":%q}`, filepath.Join(dir, name)))
	}
	for _, tc := range []struct {
		name    string
		store   json.RawMessage
		wantErr string
	}{
		{"a", file("shared"), ""},
		{"b", file("own"), ""},
		{"c", file("shared"), `is also the store of the queue "a": give each queue a store of its own`},
	} {
		h := &Handler{Name: tc.name, To: "http://127.0.0.1:8000/" + tc.name, StoreRaw: tc.store}
		err := h.Provision(ctx)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Fatalf("queue %s: %v, want an error containing %q", tc.name, err, tc.wantErr)
		}
	}
}
