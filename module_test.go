package openaiwebhook

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// provisioned returns a Handler provisioned like Caddy does, in a config
// of its own, logging at DEBUG into the returned buffer.
func provisioned(t testing.TB, h *Handler) (*Handler, *bytes.Buffer) {
	t.Helper()
	ctx, cancel := configContext(t)
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("provision: %v", err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	logs := new(bytes.Buffer)
	enc := zapcore.NewJSONEncoder(zap.NewDevelopmentEncoderConfig())
	h.logger = zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(logs)), zapcore.DebugLevel))
	return h, logs
}

// serve runs one request through h the way Caddy's server would.
func serve(h *Handler, r *http.Request) (*nextApp, error) {
	next := &nextApp{status: http.StatusNoContent}
	err := h.ServeHTTP(httptest.NewRecorder(), withReplacer(r), next)
	return next, err
}

// withReplacer gives r the replacer Caddy's server gives every request.
func withReplacer(r *http.Request) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
}

// hiddenLength hides a reader's length, as a chunked request body does.
type hiddenLength struct{ io.Reader }

func signedRequest(t *testing.T, id string, body []byte, ts time.Time) *http.Request {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/webhook", bytes.NewReader(body))
	for k, v := range webhooktest.Headers(t, webhooktest.Secret, id, ts, body) {
		r.Header[k] = v
	}
	return r
}

func statusOf(err error) int {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) {
		return he.StatusCode
	}
	return 0
}

func TestForwardsExactVerifiedBytes(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}, MaxSize: 100 << 10})
	binary := make([]byte, 0, 512)
	for i := range 512 {
		binary = append(binary, byte(i))
	}
	for _, tc := range []struct {
		name    string
		body    []byte
		chunked bool
	}{
		{name: "event", body: []byte(`{"id": "evt_1", "object": "event", "type": "response.completed"}`)},
		{name: "empty", body: nil},
		{name: "binary", body: binary},
		{name: "chunked", body: bytes.Repeat([]byte("0123456789"), 7000), chunked: true},
		{name: "exactly max_size", body: bytes.Repeat([]byte{'x'}, 100<<10)},
		{name: "chunk boundary", body: bytes.Repeat([]byte{'y'}, chunkSize)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := time.Now()
			id := "wh_unit_" + strings.ReplaceAll(tc.name, " ", "_")
			r := signedRequest(t, id, tc.body, ts)
			if tc.chunked {
				r.Body = io.NopCloser(hiddenLength{bytes.NewReader(tc.body)})
				r.ContentLength = -1
				r.TransferEncoding = []string{"chunked"}
			}
			sig := r.Header.Get("webhook-signature")
			got, err := serve(h, r)
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if got.calls != 1 || !bytes.Equal(got.body, tc.body) {
				t.Fatalf("next got %d calls, %d bytes; want 1 call, %d bytes", got.calls, len(got.body), len(tc.body))
			}
			if got.contentLength != int64(len(tc.body)) || got.header.Get("Content-Length") != strconv.Itoa(len(tc.body)) {
				t.Fatalf("Content-Length %d / %q, want %d", got.contentLength, got.header.Get("Content-Length"), len(tc.body))
			}
			if got.header.Get("webhook-signature") != sig {
				t.Fatal("webhook-signature header not passed on")
			}
			if gotID, gotTS := got.placeholders["http.openai_webhook.id"], got.placeholders["http.openai_webhook.timestamp"]; gotID != id || gotTS != strconv.FormatInt(ts.Unix(), 10) {
				t.Fatalf("placeholders id=%q ts=%q", gotID, gotTS)
			}
		})
	}
}

func TestRefusesWithStatusAndForwardsNothing(t *testing.T) {
	h, logs := provisioned(t, &Handler{Secrets: []string{testSecret}, MaxSize: 1024})
	body := []byte(`{"type":"response.completed","secret_marker":"BODY-MARKER"}`)
	stale := time.Now().Add(-6 * time.Minute)
	for _, tc := range []struct {
		name    string
		outcome outcome
		modify  func(r *http.Request)
	}{
		{"GET", outcomeMethodNotAllowed, func(r *http.Request) { r.Method = http.MethodGet }},
		{"PUT", outcomeMethodNotAllowed, func(r *http.Request) { r.Method = http.MethodPut }},
		{"no headers", outcomeMalformed, func(r *http.Request) { r.Header = http.Header{} }},
		{"no webhook-id", outcomeMalformed, func(r *http.Request) { r.Header.Del("webhook-id") }},
		{"no webhook-timestamp", outcomeMalformed, func(r *http.Request) { r.Header.Del("webhook-timestamp") }},
		{"no webhook-signature", outcomeMalformed, func(r *http.Request) { r.Header.Del("webhook-signature") }},
		{"empty webhook-signature", outcomeMalformed, func(r *http.Request) { r.Header.Set("webhook-signature", "") }},
		{"webhook-id twice", outcomeMalformed, func(r *http.Request) { r.Header.Add("webhook-id", "wh_other") }},
		{"webhook-timestamp twice", outcomeMalformed, func(r *http.Request) { r.Header.Add("webhook-timestamp", r.Header.Get("webhook-timestamp")) }},
		{"webhook-signature twice", outcomeMalformed, func(r *http.Request) { r.Header.Add("webhook-signature", r.Header.Get("webhook-signature")) }},
		{"stale", outcomeStale, func(r *http.Request) {
			for k, v := range webhooktest.Headers(t, webhooktest.Secret, "wh_test", stale, body) {
				r.Header[k] = v
			}
		}},
		{"other secret", outcomeBadSignature, func(r *http.Request) {
			for k, v := range webhooktest.Headers(t, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "wh_test", time.Now(), body) {
				r.Header[k] = v
			}
		}},
		{"tampered body", outcomeBadSignature, func(r *http.Request) {
			r.Body = io.NopCloser(bytes.NewReader(bytes.Replace(body, []byte("completed"), []byte("cancelled"), 1)))
		}},
		{"bare base64", outcomeMalformed, func(r *http.Request) {
			r.Header.Set("webhook-signature", strings.TrimPrefix(r.Header.Get("webhook-signature"), "v1,"))
		}},
		{"Content-Length over max_size", outcomeTooLarge, func(r *http.Request) {
			r.Body = io.NopCloser(bytes.NewReader(make([]byte, 1025)))
			r.ContentLength = 1025
		}},
		{"chunked over max_size", outcomeTooLarge, func(r *http.Request) {
			r.Body = io.NopCloser(hiddenLength{bytes.NewReader(make([]byte, 5000))})
			r.ContentLength = -1
		}},
		{"request_body limit hit first", outcomeTooLarge, func(r *http.Request) {
			r.Body = http.MaxBytesReader(httptest.NewRecorder(), io.NopCloser(bytes.NewReader(body)), 10)
		}},
		{"body shorter than declared", outcomeUnreadableBody, func(r *http.Request) {
			r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body[:10]), errReader{io.ErrUnexpectedEOF}))
		}},
		// A signed request that would carry more, or less, than the
		// verified bytes and headers to the app.
		{"Connection: Upgrade", outcomeBadFraming, func(r *http.Request) {
			r.Header.Set("Connection", "keep-alive, Upgrade")
			r.Header.Set("Upgrade", "websocket")
		}},
		{"Upgrade: h2c", outcomeBadFraming, func(r *http.Request) {
			r.Header.Set("Connection", "Upgrade, HTTP2-Settings")
			r.Header.Set("Upgrade", "h2c")
			r.Header.Set("HTTP2-Settings", "AAMAAABkAAQAoAAAAAIAAAAA")
		}},
		{"Upgrade without Connection", outcomeBadFraming, func(r *http.Request) { r.Header.Set("Upgrade", "websocket") }},
		{"Connection names webhook-signature", outcomeBadFraming, func(r *http.Request) {
			r.Header.Set("Connection", "webhook-signature, webhook-id")
		}},
		{"Connection names webhook-timestamp", outcomeBadFraming, func(r *http.Request) {
			r.Header.Set("Connection", "close, Webhook-Timestamp")
		}},
		{"two Content-Lengths", outcomeBadFraming, func(r *http.Request) {
			r.Header["Content-Length"] = []string{strconv.Itoa(len(body)), "3"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := signedRequest(t, "wh_test", body, time.Now())
			tc.modify(r)
			counted := map[string]float64{}
			for _, o := range allOutcomes {
				counted[o] = testutil.ToFloat64(openAIFace.metrics.requests.WithLabelValues("UNKNOWN", o))
			}
			got, err := serve(h, r)
			if status := statusOf(err); status != tc.outcome.status {
				t.Fatalf("status %d (err %v), want %d", status, err, tc.outcome.status)
			}
			for _, o := range allOutcomes {
				want := counted[o]
				if o == tc.outcome.name {
					want++
				}
				if n := testutil.ToFloat64(openAIFace.metrics.requests.WithLabelValues("UNKNOWN", o)); n != want {
					t.Errorf("requests_total{outcome=%q} = %v, want %v", o, n, want)
				}
			}
			if got.calls != 0 {
				t.Fatal("refused request reached the next handler")
			}
		})
	}
	secretB64 := strings.TrimPrefix(webhooktest.Secret, "whsec_")
	for _, leak := range []string{secretB64, secretB64[:16], "BODY-MARKER", signedRequest(t, "wh_test", body, time.Now()).Header.Get("webhook-signature")[3:20]} {
		if strings.Contains(logs.String(), leak) {
			t.Errorf("debug log contains %q", leak)
		}
	}
	if !strings.Contains(logs.String(), "webhook refused") {
		t.Error("refusals were not logged at debug level")
	}
}

var allOutcomes = []string{outcomeForwarded.name, outcomeDuplicate.name, outcomeInFlight.name, outcomeMalformed.name,
	outcomeStale.name, outcomeBadSignature.name, outcomeTooLarge.name, outcomeBodyTimeout.name, outcomeOverloaded.name,
	outcomeUnreadableBody.name, outcomeBadFraming.name, outcomeMethodNotAllowed.name}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// TestRefusesWithoutReadingBody: header and freshness refusals cost no body
// read, so a flood of unsigned or stale requests cannot make Caddy buffer.
func TestRefusesWithoutReadingBody(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}})
	for _, ts := range []time.Time{time.Now().Add(-time.Hour), time.Now().Add(time.Hour)} {
		r := signedRequest(t, "wh_test", nil, ts)
		r.Body = io.NopCloser(errReader{errors.New("body was read")})
		if _, err := serve(h, r); statusOf(err) != 401 {
			t.Fatalf("got %v, want 401", err)
		}
	}
	r := httptest.NewRequest(http.MethodPost, "/", io.NopCloser(errReader{errors.New("body was read")}))
	if _, err := serve(h, r); statusOf(err) != 401 {
		t.Fatalf("unsigned: got %v, want 401", err)
	}
}

func TestProvisionErrors(t *testing.T) {
	t.Setenv("OPENAI_WEBHOOK_TEST_SECRET", webhooktest.Secret)
	t.Setenv("OPENAI_WEBHOOK_TEST_BAD", "whsec_tooshortAAAA")
	t.Setenv("OPENAI_WEBHOOK_TEST_EMPTY", "")
	for _, tc := range []struct {
		name    string
		h       Handler
		wantErr string // "" means provisioning succeeds
	}{
		{name: "literal", h: Handler{Secrets: []string{testSecret}}},
		{name: "env placeholder", h: Handler{Secrets: []string{"{env.OPENAI_WEBHOOK_TEST_SECRET}"}}},
		{name: "two secrets", h: Handler{Secrets: []string{webhooktest.Secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}}},
		{name: "none", h: Handler{}, wantErr: "secrets: at least one"},
		{name: "unset env", h: Handler{Secrets: []string{"{env.OPENAI_WEBHOOK_TEST_UNSET}"}}, wantErr: "secrets[0]"},
		{name: "empty env", h: Handler{Secrets: []string{webhooktest.Secret, "{env.OPENAI_WEBHOOK_TEST_EMPTY}"}}, wantErr: "secrets[1]"},
		{name: "unknown placeholder", h: Handler{Secrets: []string{"{nope}"}}, wantErr: "secrets[0]"},
		{name: "missing file", h: Handler{Secrets: []string{"{file./nonexistent/secret}"}}, wantErr: "secrets[0]"},
		{name: "bad env value", h: Handler{Secrets: []string{"{env.OPENAI_WEBHOOK_TEST_BAD}"}}, wantErr: "secrets[0]"},
		{name: "no prefix", h: Handler{Secrets: []string{strings.TrimPrefix(webhooktest.Secret, "whsec_")}}, wantErr: "secrets[0]"},
		{name: "tolerance too short", h: Handler{Secrets: []string{testSecret}, Tolerance: caddy.Duration(500 * time.Millisecond)}, wantErr: "tolerance"},
		{name: "negative tolerance", h: Handler{Secrets: []string{testSecret}, Tolerance: caddy.Duration(-time.Minute)}, wantErr: "tolerance"},
		{name: "tolerance of a day", h: Handler{Secrets: []string{testSecret}, Tolerance: caddy.Duration(24 * time.Hour)}},
		{name: "tolerance over a day", h: Handler{Secrets: []string{testSecret}, Tolerance: caddy.Duration(24*time.Hour + time.Second)}, wantErr: "tolerance"},
		{name: "huge tolerance", h: Handler{Secrets: []string{testSecret}, Tolerance: caddy.Duration(math.MaxInt64)}, wantErr: "tolerance"},
		{name: "replay_store with replay_window off", h: Handler{Secrets: []string{testSecret}, ReplayWindow: -1, ReplayStoreRaw: []byte(`{"backend":"memory"}`)}, wantErr: "replay_store"},
		{name: "negative max_size", h: Handler{Secrets: []string{testSecret}, MaxSize: -1}, wantErr: "max_size"},
		{name: "huge max_size", h: Handler{Secrets: []string{testSecret}, MaxSize: 2 << 30}, wantErr: "max_size"},
		{name: "negative body_timeout", h: Handler{Secrets: []string{testSecret}, BodyTimeout: caddy.Duration(-time.Second)}, wantErr: "body_timeout"},
		{name: "max_unverified below max_size", h: Handler{Secrets: []string{testSecret}, MaxSize: 1 << 20, MaxUnverified: 1<<20 - 1}, wantErr: "max_unverified"},
		{name: "max_unverified below max_size's chunks", h: Handler{Secrets: []string{testSecret}, MaxSize: 1<<20 + 1, MaxUnverified: 1<<20 + 1}, wantErr: "max_unverified"},
		{name: "max_unverified of one max_size body", h: Handler{Secrets: []string{testSecret}, MaxSize: 1<<20 + 1, MaxUnverified: 1<<20 + chunkSize}},
		{name: "max_size of 1GiB raises the default max_unverified", h: Handler{Secrets: []string{testSecret}, MaxSize: 1 << 30}},
		{name: "negative capacity", h: Handler{Secrets: []string{testSecret}, ReplayStoreRaw: json.RawMessage(`{"backend":"memory","capacity":-1}`)}, wantErr: "capacity: -1 is not a positive number"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := configContext(t)
			defer cancel()
			err := tc.h.Provision(ctx)
			// Caddy cleans up after a failed provisioning too.
			defer func() {
				if err := tc.h.Cleanup(); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			}()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("provision: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one naming %q", err, tc.wantErr)
			}
			for _, secret := range []string{webhooktest.Secret[6:], "tooshortAAAA"} {
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("error leaks the secret: %v", err)
				}
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}})
	if h.MaxSize != 1<<20 || time.Duration(h.Tolerance) != 5*time.Minute || time.Duration(h.BodyTimeout) != 10*time.Second ||
		h.MaxUnverified != 64<<20 || time.Duration(h.ReplayWindow) != 10*time.Minute+time.Second {
		t.Fatalf("defaults max_size=%d tolerance=%s body_timeout=%s max_unverified=%d replay_window=%s",
			h.MaxSize, time.Duration(h.Tolerance), time.Duration(h.BodyTimeout), h.MaxUnverified, time.Duration(h.ReplayWindow))
	}
	for _, tc := range []struct {
		age    time.Duration
		status int
	}{{4*time.Minute + 50*time.Second, 0}, {-4*time.Minute - 50*time.Second, 0}, {5*time.Minute + 10*time.Second, 401}, {-5*time.Minute - 10*time.Second, 401}} {
		_, err := serve(h, signedRequest(t, "wh_"+tc.age.String(), []byte("{}"), time.Now().Add(-tc.age)))
		if statusOf(err) != tc.status {
			t.Errorf("age %s: got %v, want status %d", tc.age, err, tc.status)
		}
	}
}

// TestUnverifiedBudget: senders without the secret can make the gateway
// hold at most max_unverified bytes at once. A delivery that finds the
// budget spent is refused with 503 and Retry-After before its body is
// read; once the held bodies end, deliveries pass again.
func TestUnverifiedBudget(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}, MaxSize: 64 << 10, MaxUnverified: 4 * chunkSize,
		BodyTimeout: caddy.Duration(time.Minute)})
	body := bytes.Repeat([]byte{'x'}, 64<<10)
	// Two stalled bodies of 64 KiB less a byte, with fake signatures, hold
	// two chunks each: the whole budget.
	var stalled []*io.PipeWriter
	done := make(chan error, 2)
	for i := range 2 {
		pr, pw := io.Pipe()
		stalled = append(stalled, pw)
		r := signedRequest(t, fmt.Sprint("wh_stalled_", i), body, time.Now())
		r.Header.Set("webhook-signature", "v1,"+strings.Repeat("A", 43)+"=")
		r.Body = pr
		go func() {
			_, err := serve(h, r)
			done <- err
		}()
		if _, err := pw.Write(body[:len(body)-1]); err != nil {
			t.Fatal(err)
		}
	}
	if used := h.budget.used.Load(); used != 4*chunkSize {
		t.Fatalf("stalled bodies hold %d bytes of budget, want %d", used, 4*chunkSize)
	}

	r := signedRequest(t, "wh_refused_for_now", body, time.Now())
	r.Body = io.NopCloser(errReader{errors.New("body was read")})
	w := httptest.NewRecorder()
	before := testutil.ToFloat64(openAIFace.metrics.requests.WithLabelValues("UNKNOWN", outcomeOverloaded.name))
	err := h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer())), &nextApp{status: http.StatusNoContent})
	if statusOf(err) != http.StatusServiceUnavailable || w.Header().Get("Retry-After") != "60" {
		t.Fatalf("with the budget spent: %v, Retry-After %q; want 503 and 60", err, w.Header().Get("Retry-After"))
	}
	if testutil.ToFloat64(openAIFace.metrics.requests.WithLabelValues("UNKNOWN", outcomeOverloaded.name)) != before+1 {
		t.Error("not counted as overloaded")
	}

	for _, pw := range stalled {
		pw.CloseWithError(io.ErrUnexpectedEOF) // the senders give up
	}
	for range stalled {
		select {
		case err := <-done:
			if statusOf(err) != http.StatusBadRequest {
				t.Fatalf("a body cut short: %v, want 400", err)
			}
		case <-time.After(waitBound):
			t.Fatal("a stalled request never ended")
		}
	}
	if used := h.budget.used.Load(); used != 0 {
		t.Fatalf("%d bytes of budget held after every body ended", used)
	}
	if got, err := serve(h, signedRequest(t, "wh_after_budget", body, time.Now())); err != nil || got.calls != 1 {
		t.Fatalf("a delivery after the budget came back: %v", err)
	}
}

// TestDeclaredLengthCostsNothing: what a sender announces in
// Content-Length does not decide what the gateway allocates; only bytes
// that arrive do.
func TestDeclaredLengthCostsNothing(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}, MaxSize: 1 << 30})
	r := signedRequest(t, "wh_announced", []byte("x"), time.Now())
	r.ContentLength = 1 << 30
	r.Body = io.NopCloser(io.MultiReader(strings.NewReader("x"), errReader{io.ErrUnexpectedEOF}))
	chunkPool.Put(chunkPool.Get()) // a pooled chunk, as in a server that has run
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := serve(h, r)
	runtime.ReadMemStats(&after)
	if statusOf(err) != http.StatusBadRequest {
		t.Fatalf("a body cut short: %v, want 400", err)
	}
	// One chunk, plus the request's bookkeeping, at most: a list sized
	// from 1 GiB of chunks would be 256 KiB.
	if allocated := after.TotalAlloc - before.TotalAlloc; allocated > 2*chunkSize {
		t.Fatalf("one byte of an announced 1 GiB cost %d bytes of allocations", allocated)
	}
}

// TestBodyTimeout: a body that does not arrive within body_timeout is
// refused with 408, and nothing is forwarded. (Served without a server
// here, the handler ends the read by closing the body, as it does on
// HTTP/3; HTTP/1 and HTTP/2 use a read deadline, tested in
// integration_test.go.)
func TestBodyTimeout(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}, BodyTimeout: caddy.Duration(100 * time.Millisecond)})
	body := []byte(`{"type":"response.completed"}`)
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() { _, _ = pw.Write(body[:5]) }() // then nothing
	r := signedRequest(t, "wh_trickle", body, time.Now())
	r.Body = pr
	got, err := serve(h, r)
	if statusOf(err) != http.StatusRequestTimeout || got.calls != 0 {
		t.Fatalf("a stalled body: %v with %d forwards, want 408 and none", err, got.calls)
	}
}

// TestVerifiedCountedBySecret: verified_total tells which secret signed
// each delivery, by its position in secrets, so that an operator can see a
// rotation through; a refused delivery counts under none.
func TestVerifiedCountedBySecret(t *testing.T) {
	other := "whsec_" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x42}, 32))
	for _, tc := range []struct {
		secrets []string
		signer  string // the label of webhooktest.Secret
	}{
		{[]string{webhooktest.Secret, other}, "0"},
		{[]string{other, webhooktest.Secret}, "1"},
	} {
		h, _ := provisioned(t, &Handler{Secrets: tc.secrets})
		counted := func() (signer, others float64) {
			for _, label := range []string{"0", "1"} {
				n := testutil.ToFloat64(openAIFace.metrics.verified.WithLabelValues("UNKNOWN", label))
				if label == tc.signer {
					signer = n
				} else {
					others = n
				}
			}
			return signer, others
		}
		signer, others := counted()
		deliverBody(t, h, "wh_by_secret_"+tc.signer, []byte(`{}`), &nextApp{status: http.StatusNoContent})
		r := signedRequest(t, "wh_by_secret_tampered", []byte(`{}`), time.Now())
		r.Body = io.NopCloser(strings.NewReader(`{"x":1}`))
		r.ContentLength = 7
		_ = h.ServeHTTP(httptest.NewRecorder(), r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer())), &nextApp{status: http.StatusNoContent})
		signerAfter, othersAfter := counted()
		if signerAfter-signer != 1 || othersAfter != others {
			t.Errorf("signed by the secret at %s: its count rose by %v, the other's by %v; want 1 and 0",
				tc.signer, signerAfter-signer, othersAfter-others)
		}
	}
}

// TestSignWith: with sign_with, the request passed on carries a signature
// made with the app's secret over the exact bytes (here across chunks),
// with the delivery's own id and timestamp, in place of the sender's: the
// reference library accepts it under the app's secret, not the sender's.
func TestSignWith(t *testing.T) {
	const appSecret = "whsec_QXBwU2VjcmV0LW9ubHktdGhlLWFwcC1ob2xkcy1pdA=="
	t.Setenv("OPENAI_WEBHOOK_TEST_APP_SECRET", appSecret)
	h, _ := provisioned(t, &Handler{Secrets: []string{testSecret}, SignWith: "{env.OPENAI_WEBHOOK_TEST_APP_SECRET}"})
	body := bytes.Repeat([]byte("y"), 3*chunkSize+5)
	r := signedRequest(t, "wh_resigned", body, time.Now())
	id, ts := r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp")
	got, err := serve(h, r)
	if err != nil || got.calls != 1 {
		t.Fatalf("serve: %v, %d calls", err, got.calls)
	}
	app, err := standardwebhooks.NewWebhook(appSecret)
	if err != nil {
		t.Fatal(err)
	}
	sender, err := standardwebhooks.NewWebhook(webhooktest.Secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := app.Verify(got.body, got.header); err != nil {
		t.Errorf("the request passed on does not verify under the app's secret: %v", err)
	}
	if err := sender.Verify(got.body, got.header); err == nil {
		t.Error("the request passed on verifies under the sender's secret: its signature was passed on")
	}
	if got.header.Get("webhook-id") != id || got.header.Get("webhook-timestamp") != ts || len(got.header["Webhook-Signature"]) != 1 {
		t.Errorf("headers passed on: %q", got.header)
	}
}
