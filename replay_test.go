package openaiwebhook

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// deliver sends a freshly signed delivery with id through h to next and
// returns the status the client sees (from the response or the error).
func deliver(t *testing.T, h *Handler, id string, next caddyhttp.Handler) int {
	t.Helper()
	return deliverWithin(t, context.Background(), h, id, next)
}

// deliverWithin is deliver with the request's context: its cancellation is
// the sender hanging up.
func deliverWithin(t *testing.T, ctx context.Context, h *Handler, id string, next caddyhttp.Handler) int {
	t.Helper()
	return deliverSigned(t, ctx, h, webhooktest.Secret, id, next)
}

// deliverSigned is deliverWithin with the delivery signed with secret.
func deliverSigned(t *testing.T, ctx context.Context, h *Handler, secret, id string, next caddyhttp.Handler) int {
	t.Helper()
	body := []byte(`{"type":"response.completed"}`)
	r := httptest.NewRequest(http.MethodPost, "/webhook", bytes.NewReader(body))
	r.Header = webhooktest.Headers(t, secret, id, time.Now(), body)
	r = r.WithContext(context.WithValue(ctx, caddy.ReplacerCtxKey, caddy.NewReplacer()))
	w := httptest.NewRecorder()
	w.Code = 0 // so a status written before an error shows
	err := h.ServeHTTP(w, r, next)
	switch {
	case w.Code != 0: // the status went out, whatever came after
		return w.Code
	case err == nil:
		return http.StatusOK
	case statusOf(err) != 0:
		return statusOf(err)
	default:
		return http.StatusBadGateway // a proxy error Caddy turns into 502
	}
}

func TestReplayRefusal(t *testing.T) {
	for _, tc := range []struct {
		name      string
		first     nextApp // what the app does with the first delivery
		wantFirst int
		second    int // status of a second delivery with the same id
		reaches   int // deliveries that reached the app in all
	}{
		{name: "delivered, then duplicate", first: nextApp{status: 200}, wantFirst: 200, second: 200, reaches: 1},
		{name: "204 counts as delivered", first: nextApp{status: 204}, wantFirst: 204, second: 200, reaches: 1},
		{name: "app 500, retry forwarded", first: nextApp{status: 500}, wantFirst: 500, second: 200, reaches: 2},
		{name: "app 404, retry forwarded", first: nextApp{status: 404}, wantFirst: 404, second: 200, reaches: 2},
		{name: "proxy error, retry forwarded", first: nextApp{err: caddyhttp.Error(502, errors.New("dial refused"))}, wantFirst: 502, second: 200, reaches: 2},
		// reverse_proxy reports an answer the app cut short as an error,
		// after the status went out: the app said 2xx, so it has the event.
		{name: "2xx cut short", first: nextApp{status: 200, err: errors.New("reading from upstream: unexpected EOF")}, wantFirst: 200, second: 200, reaches: 1},
		{name: "204 cut short", first: nextApp{status: 204, err: errors.New("reading from upstream: unexpected EOF")}, wantFirst: 204, second: 200, reaches: 1},
		{name: "500 cut short", first: nextApp{status: 500, err: errors.New("reading from upstream: unexpected EOF")}, wantFirst: 500, second: 200, reaches: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}})
			id := "wh_replay_" + t.Name()
			first := tc.first
			if got := deliver(t, h, id, &first); got != tc.wantFirst {
				t.Fatalf("first delivery: %d, want %d", got, tc.wantFirst)
			}
			retry := &nextApp{status: 200}
			if got := deliver(t, h, id, retry); got != tc.second {
				t.Fatalf("second delivery: %d, want %d", got, tc.second)
			}
			if first.calls+retry.calls != tc.reaches {
				t.Fatalf("app reached %d times, want %d", first.calls+retry.calls, tc.reaches)
			}
		})
	}
}

func TestReplayInFlightGets409(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}})
	entered, release := make(chan struct{}), make(chan struct{})
	slow := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		close(entered)
		<-release
		w.WriteHeader(200)
		return nil
	})
	done := make(chan int, 1)
	go func() { done <- deliver(t, h, "wh_inflight", slow) }()
	select {
	case <-entered:
	case <-time.After(waitBound):
		t.Fatal("the first delivery never reached the app")
	}
	never := &nextApp{status: 200}
	if got := deliver(t, h, "wh_inflight", never); got != http.StatusConflict || never.calls != 0 {
		t.Fatalf("concurrent duplicate: %d with %d calls, want 409 and none", got, never.calls)
	}
	close(release)
	select {
	case got := <-done:
		if got != 200 {
			t.Fatalf("first delivery: %d", got)
		}
	case <-time.After(waitBound):
		t.Fatal("the first delivery never finished")
	}
	if got := deliver(t, h, "wh_inflight", never); got != 200 || never.calls != 0 {
		t.Fatalf("after delivery: %d with %d calls, want 200 and none", got, never.calls)
	}
}

// TestReplayDeliveredBeforeTheSenderSeesIt: the id is recorded before the
// app's 2xx goes out, so a sender that sees it and sends again at once gets
// a duplicate, not a 409 for a claim still being settled.
func TestReplayDeliveredBeforeTheSenderSeesIt(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}})
	never := &nextApp{status: 200}
	var again int
	first := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		w.WriteHeader(http.StatusAccepted) // the sender has its answer now
		again = deliver(t, h, "wh_seen", never)
		return nil
	})
	if got := deliver(t, h, "wh_seen", first); got != http.StatusAccepted {
		t.Fatalf("the delivery: %d", got)
	}
	if again != http.StatusOK || never.calls != 0 {
		t.Fatalf("a repeat sent once the 2xx was out: %d with %d forwards, want a duplicate (200, none)", again, never.calls)
	}
}

// TestReplaySenderGoneKeepsLease: when the sender hangs up before the app
// answered, the app may still be working on the delivery, so the id stays
// in flight (the sender's retry gets 409) until its lease ends.
func TestReplaySenderGoneKeepsLease(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}})
	ctx, hangUp := context.WithCancel(context.Background())
	abandoned := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		hangUp()
		<-r.Context().Done()
		return caddyhttp.Error(499, r.Context().Err()) // as reverse_proxy reports it
	})
	deliverWithin(t, ctx, h, "wh_gone", abandoned)
	retry := &nextApp{status: 200}
	if got := deliver(t, h, "wh_gone", retry); got != http.StatusConflict || retry.calls != 0 {
		t.Fatalf("a retry right after the sender hung up: %d with %d calls, want 409 and none", got, retry.calls)
	}
}

func TestReplayOnlyVerifiedIDsAreRecorded(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}})
	forged := signedRequest(t, "wh_victim", []byte("{}"), time.Now())
	forged.Header.Set("webhook-signature", "v1,"+"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
	if _, err := serve(h, forged); statusOf(err) != 401 {
		t.Fatalf("forged: %v", err)
	}
	genuine := &nextApp{status: 200}
	if got := deliver(t, h, "wh_victim", genuine); got != 200 || genuine.calls != 1 {
		t.Fatalf("genuine delivery after a forged one with its id: %d, %d calls", got, genuine.calls)
	}
}

func TestReplayWindowOff(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}, ReplayWindow: -1})
	a := &nextApp{status: 200}
	for range 2 {
		deliver(t, h, "wh_off", a)
	}
	if a.calls != 2 {
		t.Fatalf("with replay_window off, %d of 2 deliveries reached the app", a.calls)
	}
}

// reload provisions h as a config reload does, with a context of its own,
// and returns what stops it: the handler's and then the context's cleanup
// (which cleans up the store module), as Caddy does for the config it
// replaced.
func reload(t *testing.T, h *Handler) (stop func()) {
	t.Helper()
	ctx, cancel := configContext(t)
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("provision: %v", err)
	}
	h.logger = zap.NewNop()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			_ = h.Cleanup()
			cancel()
		}
	}
	t.Cleanup(stop)
	return stop
}

// TestReplayMemoryAcrossReloads: the memory store keeps its ids across
// every reload that keeps one of the handler's secrets, whatever else
// changes; a smaller capacity forgets the oldest first; a handler that
// keeps no secret starts empty.
func TestReplayMemoryAcrossReloads(t *testing.T) {
	s1, s2, s3 := secretOf(1), secretOf(2), secretOf(3)
	isDuplicate := func(h *Handler, secret, id string) bool {
		t.Helper()
		a := &nextApp{status: 200}
		if got := deliverSigned(t, context.Background(), h, secret, id, a); got != 200 {
			t.Fatalf("%s: status %d", id, got)
		}
		return a.calls == 0
	}
	steps := []struct {
		name      string
		handler   Handler
		signWith  string
		deliver   []string // delivered under this config
		duplicate []string // ids that must be duplicates here
		forwarded []string // ids that must be forwarded again here
	}{
		{name: "first config", handler: Handler{Secrets: []string{s1}}, signWith: s1, deliver: []string{"wh_a", "wh_b"}},
		{name: "a secret added", handler: Handler{Secrets: []string{s1, s2}}, signWith: s2, duplicate: []string{"wh_a"}},
		{name: "the old secret removed, tolerance changed", handler: Handler{Secrets: []string{s2}, Tolerance: caddy.Duration(time.Minute)},
			signWith: s2, duplicate: []string{"wh_b"}, deliver: []string{"wh_c"}},
		{name: "replay_window changed", handler: Handler{Secrets: []string{s2}, ReplayWindow: caddy.Duration(time.Hour)},
			signWith: s2, duplicate: []string{"wh_a"}},
		{name: "capacity shrunk to the newest 2", handler: Handler{Secrets: []string{s2}, ReplayStoreRaw: json.RawMessage(`{"backend":"memory","capacity":2}`)},
			signWith: s2, duplicate: []string{"wh_b", "wh_c"}, forwarded: []string{"wh_a"}},
		{name: "no secret kept", handler: Handler{Secrets: []string{s3}}, signWith: s3, forwarded: []string{"wh_b", "wh_c"}},
	}
	var stopOld func()
	for _, step := range steps {
		h := step.handler
		stop := reload(t, &h)
		if stopOld != nil {
			stopOld() // the old config goes once the new one runs
		}
		stopOld = stop
		for _, id := range step.duplicate {
			if !isDuplicate(&h, step.signWith, id) {
				t.Errorf("%s: %s was forwarded again, want a duplicate", step.name, id)
			}
		}
		for _, id := range step.forwarded {
			if isDuplicate(&h, step.signWith, id) {
				t.Errorf("%s: %s was a duplicate, want it forwarded", step.name, id)
			}
		}
		for _, id := range step.deliver {
			if isDuplicate(&h, step.signWith, id) {
				t.Fatalf("%s: delivering %s: a duplicate", step.name, id)
			}
		}
	}
}

// TestReplayMemoryPerEndpoint: endpoints with no secret in common keep
// apart ids, even the same one.
func TestReplayMemoryPerEndpoint(t *testing.T) {
	a, b := Handler{Secrets: []string{secretOf(4)}}, Handler{Secrets: []string{secretOf(5)}}
	reload(t, &a)
	reload(t, &b)
	first, second := &nextApp{status: 200}, &nextApp{status: 200}
	deliverSigned(t, context.Background(), &a, secretOf(4), "wh_same", first)
	deliverSigned(t, context.Background(), &b, secretOf(5), "wh_same", second)
	if first.calls != 1 || second.calls != 1 {
		t.Fatalf("the same id on two endpoints reached their apps %d and %d times, want once each", first.calls, second.calls)
	}
}

// secretOf returns a test secret of its own for each n.
func secretOf(n byte) string {
	return "whsec_" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{n, 0x5e}, 16))
}
