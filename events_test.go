package openaiwebhook

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

func TestCheckEventPattern(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		ok      bool
	}{
		{"response.completed", true},
		{"batch.*", true},
		{"fine_tuning.job.*", true},
		{"realtime.call.incoming", true},
		{"eval.run.canceled", true},
		{"*", false},
		{".*", false},
		{"batch.", false},
		{".batch", false},
		{"batch..completed", false},
		{"batch.*.completed", false},
		{"batch*", false},
		{"batch.com*", false},
		{"batch.**", false},
		{"batch completed", false},
		{"batch.completed ", false},
		{"batch.\tcompleted", false},
		{"réponse.completed", false},
		{"", false},
	} {
		if err := checkEventPattern(tc.pattern); (err == nil) != tc.ok {
			t.Errorf("%q: %v, want ok=%v", tc.pattern, err, tc.ok)
		}
	}
	if _, err := newEventFilter([]string{"batch.*", "batch.*.x"}); err == nil || !strings.Contains(err.Error(), `events[1]: "batch.*.x"`) {
		t.Errorf("the error names neither the field nor the pattern: %v", err)
	}
}

// deliverBody sends body, freshly signed, through h to next, and returns
// the status the sender sees.
func deliverBody(t *testing.T, h *Handler, id string, body []byte, next caddyhttp.Handler) int {
	t.Helper()
	r := signedRequest(t, id, body, time.Now())
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, next); err != nil {
		return statusOf(err)
	}
	return w.Code
}

// TestEventsAllowList: only verified deliveries whose type passes reach the
// app; the others get 200 with an empty body and are counted as filtered.
func TestEventsAllowList(t *testing.T) {
	h, logs := provisioned(t, &Handler{Secrets: []string{testSecret}, Events: []string{"response.completed", "batch.*"}})
	for i, tc := range []struct {
		body      string
		forwarded bool
	}{
		{`{"object":"event","id":"evt_1","type":"response.completed","data":{"id":"resp_1"}}`, true},
		{`{"object":"event","id":"evt_2","type":"batch.completed","data":{"id":"batch_1"}}`, true},
		{`{"type":"batch.failed"}`, true},
		{`{"type":"response.failed"}`, false},
		{`{"type":"batch"}`, false}, // the family is batch.*, not batch itself
		{`{"type":"fine_tuning.job.succeeded"}`, false},
		{`{"type":5}`, false},
		{`{"type":null}`, false},
		{`{"kind":"response.completed"}`, false},
		{`["response.completed"]`, false},
		{`not json`, false},
		{``, false},
		{`{"type":"response.completed"} trailing`, false},
	} {
		id := "wh_events_" + string(rune('a'+i))
		next := &nextApp{status: http.StatusNoContent, read: eventPlaceholders}
		before := testutil.ToFloat64(openAIFace.metrics.requests.WithLabelValues("UNKNOWN", outcomeFiltered.name))
		status := deliverBody(t, h, id, []byte(tc.body), next)
		filtered := testutil.ToFloat64(openAIFace.metrics.requests.WithLabelValues("UNKNOWN", outcomeFiltered.name)) - before
		switch {
		case tc.forwarded && (status != http.StatusNoContent || next.calls != 1):
			t.Errorf("%s: %d with %d forwards, want it forwarded", tc.body, status, next.calls)
		case !tc.forwarded && (status != http.StatusOK || next.calls != 0 || filtered != 1):
			t.Errorf("%s: %d with %d forwards, %v counted filtered; want 200, none, 1", tc.body, status, next.calls, filtered)
		}
	}
	if !strings.Contains(logs.String(), `"event_type":"response.failed"`) {
		t.Errorf("a filtered delivery was not logged with its type:\n%s", logs)
	}
}

// TestEventsCountedWhenPassedOn: events_total counts a type once per
// delivery passed on; a duplicate the replay store answers, or a filtered
// type, adds nothing.
func TestEventsCountedWhenPassedOn(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}, Events: []string{"response.*"}})
	completed := openAIFace.metrics.events.WithLabelValues("UNKNOWN", "response.completed")
	before := testutil.ToFloat64(completed)
	for i, tc := range []struct {
		id, body string
		added    float64
	}{
		{"wh_counted_1", `{"type":"response.completed"}`, 1},
		{"wh_counted_1", `{"type":"response.completed"}`, 0}, // duplicate
		{"wh_counted_2", `{"type":"response.completed"}`, 1},
		{"wh_counted_3", `{"type":"batch.completed"}`, 0}, // filtered
	} {
		deliverBody(t, h, tc.id, []byte(tc.body), &nextApp{status: http.StatusNoContent, read: eventPlaceholders})
		after := testutil.ToFloat64(completed)
		if after-before != tc.added {
			t.Errorf("delivery %d (%s): events_total rose by %v, want %v", i, tc.id, after-before, tc.added)
		}
		before = after
	}
}

// TestEventPlaceholders: the event's type and id, for header_up, matchers
// and logs; empty for a body without them.
func TestEventPlaceholders(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}})
	for _, tc := range []struct {
		body, typ, id string
	}{
		{`{"object":"event","id":"evt_685343a1","type":"realtime.call.incoming","created_at":1750287018,"data":{"call_id":"rtc_1"}}`, "realtime.call.incoming", "evt_685343a1"},
		{`{"type":"batch.completed"}`, "batch.completed", ""},
		{`{"id":"evt_no_type"}`, "", ""},
		{`{"type":"x","id":7}`, "x", ""},
		{`binary \x00\xff`, "", ""},
		// Bigger than a chunk: read across chunks.
		{`{"type":"response.completed","pad":"` + strings.Repeat("p", 3*chunkSize) + `","id":"evt_big"}`, "response.completed", "evt_big"},
	} {
		next := &nextApp{status: http.StatusNoContent, read: eventPlaceholders}
		if status := deliverBody(t, h, fmt.Sprint("wh_ph_", len(tc.body)), []byte(tc.body), next); status != http.StatusNoContent {
			t.Fatalf("%.40s: %d", tc.body, status)
		}
		if typ, id := next.placeholders["http.openai_webhook.event_type"], next.placeholders["http.openai_webhook.event_id"]; typ != tc.typ || id != tc.id {
			t.Errorf("%.40s: type %q id %q, want %q %q", tc.body, typ, id, tc.typ, tc.id)
		}
	}
}

// TestErrorPlaceholder: a refusal leaves its outcome code for
// handle_errors.
func TestErrorPlaceholder(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}})
	for _, tc := range []struct {
		name string
		edit func(r *http.Request)
		want string
	}{
		{"stale", func(r *http.Request) {
			for k, v := range webhooktest.Headers(t, webhooktest.Secret, "wh_err", time.Now().Add(-time.Hour), []byte("{}")) {
				r.Header[k] = v
			}
		}, "stale"},
		{"unsigned", func(r *http.Request) { r.Header.Del("webhook-signature") }, "malformed"},
		{"upgrade", func(r *http.Request) { r.Header.Set("Upgrade", "h2c") }, "bad_framing"},
		{"tampered", func(r *http.Request) { r.Body = http.NoBody; r.ContentLength = 0 }, "bad_signature"},
	} {
		r := signedRequest(t, "wh_err", []byte("{}"), time.Now())
		tc.edit(r)
		repl := caddy.NewReplacer()
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
		if err := h.ServeHTTP(httptest.NewRecorder(), r, &nextApp{status: http.StatusNoContent, read: eventPlaceholders}); err == nil {
			t.Fatalf("%s: accepted", tc.name)
		}
		if got, _ := repl.GetString("http.openai_webhook.error"); got != tc.want {
			t.Errorf("%s: {http.openai_webhook.error} = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestEventParsedOnlyWhenNeeded: without events, a delivery whose
// placeholders nobody reads is not parsed. The body's type is 64 KiB long,
// and parsing copies it at least twice (the raw field, then the string),
// so a parse shows as 128 KiB more allocated per delivery. (Differences,
// not totals: under the race detector sync.Pool drops chunks on purpose,
// so a delivery may allocate its buffers anew.)
func TestEventParsedOnlyWhenNeeded(t *testing.T) {
	body := []byte(`{"type":"` + strings.Repeat("t", 64<<10) + `"}`)
	allocated := func(h *Handler, next caddyhttp.Handler) uint64 {
		t.Helper()
		const n = 20
		requests := make([]*http.Request, n)
		ends := make([]context.CancelFunc, n)
		for i := range requests {
			r := signedRequest(t, "wh_lazy_"+string(rune('a'+i)), body, time.Now())
			ctx, end := context.WithCancel(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
			requests[i], ends[i] = r.WithContext(ctx), end
		}
		w := httptest.NewRecorder()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for i, r := range requests {
			if err := h.ServeHTTP(w, r, next); err != nil {
				t.Fatal(err)
			}
			ends[i]() // the request is done, as Go's server ends it
		}
		runtime.ReadMemStats(&after)
		return (after.TotalAlloc - before.TotalAlloc) / n
	}
	quiet := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error { return nil })
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}, MaxSize: 1 << 20, ReplayWindow: -1})
	unused := allocated(h, quiet)
	reading := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		for _, name := range eventPlaceholders {
			repl.GetString(name)
		}
		return nil
	})
	used := allocated(h, reading)
	if used < unused+128<<10 {
		t.Fatalf("bytes allocated per delivery: %d with the placeholders unused, %d used; want a parse (128 KiB) more when used", unused, used)
	}
	filtering, _ := provisioned(t, &Handler{Secrets: []string{testSecret}, MaxSize: 1 << 20, ReplayWindow: -1, Events: []string{"x.*"}})
	if got := allocated(filtering, quiet); got < unused+128<<10 {
		t.Fatalf("with events, %d bytes allocated per delivery against %d without: the body was not parsed", got, unused)
	}
}

// TestEventPlaceholdersAfterTheHandler: log_append and the access log read
// placeholders once the handlers have returned; the event is still there
// until Go's server ends the request, whether its body was moved to the
// heap or stays in its pooled chunks until then.
func TestEventPlaceholdersAfterTheHandler(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}})
	for _, pad := range []int{0, heapBodyMax, 3 * chunkSize} {
		body := []byte(`{"object":"event","id":"evt_after","type":"eval.run.succeeded","pad":"` + strings.Repeat("p", pad) + `"}`)
		r := signedRequest(t, fmt.Sprint("wh_after_handler_", pad), body, time.Now())
		repl := caddy.NewReplacer()
		ctx, end := context.WithCancel(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
		quiet := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error { return nil })
		if err := h.ServeHTTP(httptest.NewRecorder(), r.WithContext(ctx), quiet); err != nil {
			t.Fatal(err)
		}
		if typ, _ := repl.GetString("http.openai_webhook.event_type"); typ != "eval.run.succeeded" {
			t.Errorf("%d-byte body: event_type after the handler returned: %q", len(body), typ)
		}
		if id, _ := repl.GetString("http.openai_webhook.event_id"); id != "evt_after" {
			t.Errorf("%d-byte body: event_id after the handler returned: %q", len(body), id)
		}
		end()
	}
}
