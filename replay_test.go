package openaiwebhook

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

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
	r := signedRequest(t, id, []byte(`{"type":"response.completed"}`), time.Now())
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

// app answers every request with status and counts calls.
type app struct {
	status int
	calls  int
	err    error
}

func (a *app) ServeHTTP(w http.ResponseWriter, _ *http.Request) error {
	a.calls++
	if a.status != 0 {
		w.WriteHeader(a.status)
	}
	return a.err
}

func TestReplayRefusal(t *testing.T) {
	for _, tc := range []struct {
		name      string
		first     app // what the app does with the first delivery
		wantFirst int
		second    int // status of a second delivery with the same id
		reaches   int // deliveries that reached the app in all
	}{
		{name: "delivered, then duplicate", first: app{status: 200}, wantFirst: 200, second: 200, reaches: 1},
		{name: "204 counts as delivered", first: app{status: 204}, wantFirst: 204, second: 200, reaches: 1},
		{name: "app 500, retry forwarded", first: app{status: 500}, wantFirst: 500, second: 200, reaches: 2},
		{name: "app 404, retry forwarded", first: app{status: 404}, wantFirst: 404, second: 200, reaches: 2},
		{name: "proxy error, retry forwarded", first: app{err: caddyhttp.Error(502, errors.New("dial refused"))}, wantFirst: 502, second: 200, reaches: 2},
		// reverse_proxy reports an answer the app cut short as an error,
		// after the status went out: the app said 2xx, so it has the event.
		{name: "2xx cut short", first: app{status: 200, err: errors.New("reading from upstream: unexpected EOF")}, wantFirst: 200, second: 200, reaches: 1},
		{name: "204 cut short", first: app{status: 204, err: errors.New("reading from upstream: unexpected EOF")}, wantFirst: 204, second: 200, reaches: 1},
		{name: "500 cut short", first: app{status: 500, err: errors.New("reading from upstream: unexpected EOF")}, wantFirst: 500, second: 200, reaches: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := provisioned(t, &Handler{Secrets: []string{webhooktest.Secret}})
			id := "wh_replay_" + t.Name()
			first := tc.first
			if got := deliver(t, h, id, &first); got != tc.wantFirst {
				t.Fatalf("first delivery: %d, want %d", got, tc.wantFirst)
			}
			retry := &app{status: 200}
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
	h, _ := provisioned(t, &Handler{Secrets: []string{webhooktest.Secret}})
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
	never := &app{status: 200}
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

// waitBound bounds a test's wait for another goroutine; it asserts nothing.
const waitBound = time.Minute

// TestReplaySenderGoneKeepsLease: when the sender hangs up before the app
// answered, the app may still be working on the delivery, so the id stays
// in flight (the sender's retry gets 409) until its lease ends.
func TestReplaySenderGoneKeepsLease(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{webhooktest.Secret}})
	ctx, hangUp := context.WithCancel(context.Background())
	abandoned := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		hangUp()
		<-r.Context().Done()
		return caddyhttp.Error(499, r.Context().Err()) // as reverse_proxy reports it
	})
	deliverWithin(t, ctx, h, "wh_gone", abandoned)
	retry := &app{status: 200}
	if got := deliver(t, h, "wh_gone", retry); got != http.StatusConflict || retry.calls != 0 {
		t.Fatalf("a retry right after the sender hung up: %d with %d calls, want 409 and none", got, retry.calls)
	}
}

func TestReplayOnlyVerifiedIDsAreRecorded(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{webhooktest.Secret}})
	forged := signedRequest(t, "wh_victim", []byte("{}"), time.Now())
	forged.Header.Set("webhook-signature", "v1,"+"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
	if _, err := serve(h, forged); statusOf(err) != 401 {
		t.Fatalf("forged: %v", err)
	}
	genuine := &app{status: 200}
	if got := deliver(t, h, "wh_victim", genuine); got != 200 || genuine.calls != 1 {
		t.Fatalf("genuine delivery after a forged one with its id: %d, %d calls", got, genuine.calls)
	}
}

func TestReplayWindowOff(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{webhooktest.Secret}, ReplayWindow: -1})
	a := &app{status: 200}
	for range 2 {
		deliver(t, h, "wh_off", a)
	}
	if a.calls != 2 {
		t.Fatalf("with replay_window off, %d of 2 deliveries reached the app", a.calls)
	}
}

// TestReplayStoreSurvivesReload: a reload provisions a new handler before
// the old one is cleaned up; the new one must still know delivered ids.
func TestReplayStoreSurvivesReload(t *testing.T) {
	cfg := Handler{Secrets: []string{webhooktest.Secret}, ReplayWindow: caddy.Duration(time.Hour)}
	oldCfg, newCfg := cfg, cfg
	old, _ := provisioned(t, &oldCfg)
	deliver(t, old, "wh_reload", &app{status: 200})
	reloaded, _ := provisioned(t, &newCfg)
	_ = old.Cleanup()
	a := &app{status: 200}
	if got := deliver(t, reloaded, "wh_reload", a); got != 200 || a.calls != 0 {
		t.Fatalf("after reload: %d with %d calls, want a duplicate", got, a.calls)
	}
}
