package openaiwebhook

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// provisioned returns a Handler provisioned like Caddy does, logging at
// DEBUG into the returned buffer.
func provisioned(t *testing.T, h *Handler) (*Handler, *bytes.Buffer) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("provision: %v", err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	logs := new(bytes.Buffer)
	enc := zapcore.NewJSONEncoder(zap.NewDevelopmentEncoderConfig())
	h.logger = zap.New(zapcore.NewCore(enc, zapcore.AddSync(logs), zapcore.DebugLevel))
	return h, logs
}

// forwarded records what the next handler received.
type forwarded struct {
	calls         int
	body          []byte
	contentLength int64
	header        http.Header
	id, ts        string
}

func (f *forwarded) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	f.calls++
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	// The transport may rewind the body (GetBody) to retry on a new connection.
	again, err := r.GetBody()
	if err != nil {
		return err
	}
	rewound, _ := io.ReadAll(again)
	if !bytes.Equal(rewound, body) {
		return errors.New("GetBody returned other bytes than Body")
	}
	f.body, f.contentLength, f.header = body, r.ContentLength, r.Header.Clone()
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	f.id, _ = repl.GetString("openai_webhook.id")
	f.ts, _ = repl.GetString("openai_webhook.timestamp")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// serve runs one request through h the way Caddy's server would.
func serve(h *Handler, r *http.Request) (*forwarded, error) {
	repl := caddy.NewReplacer()
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	next := new(forwarded)
	err := h.ServeHTTP(httptest.NewRecorder(), r, next)
	return next, err
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
	h, _ := provisioned(t, &Handler{Secrets: []string{webhooktest.Secret}, MaxSize: 100 << 10})
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
			if got.id != id || got.ts != strconv.FormatInt(ts.Unix(), 10) {
				t.Fatalf("placeholders id=%q ts=%q", got.id, got.ts)
			}
		})
	}
}

func TestRefusesWithStatusAndForwardsNothing(t *testing.T) {
	h, logs := provisioned(t, &Handler{Secrets: []string{webhooktest.Secret}, MaxSize: 1024})
	body := []byte(`{"type":"response.completed","secret_marker":"BODY-MARKER"}`)
	stale := time.Now().Add(-6 * time.Minute)
	for _, tc := range []struct {
		name    string
		status  int
		outcome string
		modify  func(r *http.Request)
	}{
		{"GET", 405, outcomeMethodNotAllowed, func(r *http.Request) { r.Method = http.MethodGet }},
		{"PUT", 405, outcomeMethodNotAllowed, func(r *http.Request) { r.Method = http.MethodPut }},
		{"no headers", 401, outcomeMalformed, func(r *http.Request) { r.Header = http.Header{} }},
		{"no webhook-id", 401, outcomeMalformed, func(r *http.Request) { r.Header.Del("webhook-id") }},
		{"no webhook-timestamp", 401, outcomeMalformed, func(r *http.Request) { r.Header.Del("webhook-timestamp") }},
		{"no webhook-signature", 401, outcomeMalformed, func(r *http.Request) { r.Header.Del("webhook-signature") }},
		{"empty webhook-signature", 401, outcomeMalformed, func(r *http.Request) { r.Header.Set("webhook-signature", "") }},
		{"webhook-id twice", 401, outcomeMalformed, func(r *http.Request) { r.Header.Add("webhook-id", "wh_other") }},
		{"webhook-timestamp twice", 401, outcomeMalformed, func(r *http.Request) { r.Header.Add("webhook-timestamp", r.Header.Get("webhook-timestamp")) }},
		{"webhook-signature twice", 401, outcomeMalformed, func(r *http.Request) { r.Header.Add("webhook-signature", r.Header.Get("webhook-signature")) }},
		{"stale", 401, outcomeStale, func(r *http.Request) {
			for k, v := range webhooktest.Headers(t, webhooktest.Secret, "wh_test", stale, body) {
				r.Header[k] = v
			}
		}},
		{"other secret", 401, outcomeBadSignature, func(r *http.Request) {
			for k, v := range webhooktest.Headers(t, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "wh_test", time.Now(), body) {
				r.Header[k] = v
			}
		}},
		{"tampered body", 401, outcomeBadSignature, func(r *http.Request) {
			r.Body = io.NopCloser(bytes.NewReader(bytes.Replace(body, []byte("completed"), []byte("cancelled"), 1)))
		}},
		{"bare base64", 401, outcomeMalformed, func(r *http.Request) {
			r.Header.Set("webhook-signature", strings.TrimPrefix(r.Header.Get("webhook-signature"), "v1,"))
		}},
		{"Content-Length over max_size", 413, outcomeTooLarge, func(r *http.Request) {
			r.Body = io.NopCloser(bytes.NewReader(make([]byte, 1025)))
			r.ContentLength = 1025
		}},
		{"chunked over max_size", 413, outcomeTooLarge, func(r *http.Request) {
			r.Body = io.NopCloser(hiddenLength{bytes.NewReader(make([]byte, 5000))})
			r.ContentLength = -1
		}},
		{"request_body limit hit first", 413, outcomeTooLarge, func(r *http.Request) {
			r.Body = http.MaxBytesReader(httptest.NewRecorder(), io.NopCloser(bytes.NewReader(body)), 10)
		}},
		{"body shorter than declared", 400, outcomeUnreadableBody, func(r *http.Request) {
			r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body[:10]), errReader{io.ErrUnexpectedEOF}))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := signedRequest(t, "wh_test", body, time.Now())
			tc.modify(r)
			counted := map[string]float64{}
			for _, o := range allOutcomes {
				counted[o] = testutil.ToFloat64(requestsTotal.WithLabelValues(o))
			}
			got, err := serve(h, r)
			if status := statusOf(err); status != tc.status {
				t.Fatalf("status %d (err %v), want %d", status, err, tc.status)
			}
			for _, o := range allOutcomes {
				want := counted[o]
				if o == tc.outcome {
					want++
				}
				if n := testutil.ToFloat64(requestsTotal.WithLabelValues(o)); n != want {
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

var allOutcomes = []string{outcomeForwarded, outcomeDuplicate, outcomeInFlight, outcomeMalformed, outcomeStale,
	outcomeBadSignature, outcomeTooLarge, outcomeUnreadableBody, outcomeMethodNotAllowed}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// TestRefusesWithoutReadingBody: header and freshness refusals cost no body
// read, so a flood of unsigned or stale requests cannot make Caddy buffer.
func TestRefusesWithoutReadingBody(t *testing.T) {
	h, _ := provisioned(t, &Handler{Secrets: []string{webhooktest.Secret}})
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
		{name: "literal", h: Handler{Secrets: []string{webhooktest.Secret}}},
		{name: "env placeholder", h: Handler{Secrets: []string{"{env.OPENAI_WEBHOOK_TEST_SECRET}"}}},
		{name: "two secrets", h: Handler{Secrets: []string{webhooktest.Secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}}},
		{name: "none", h: Handler{}, wantErr: "secrets: at least one"},
		{name: "unset env", h: Handler{Secrets: []string{"{env.OPENAI_WEBHOOK_TEST_UNSET}"}}, wantErr: "secrets[0]"},
		{name: "empty env", h: Handler{Secrets: []string{webhooktest.Secret, "{env.OPENAI_WEBHOOK_TEST_EMPTY}"}}, wantErr: "secrets[1]"},
		{name: "unknown placeholder", h: Handler{Secrets: []string{"{nope}"}}, wantErr: "secrets[0]"},
		{name: "missing file", h: Handler{Secrets: []string{"{file./nonexistent/secret}"}}, wantErr: "secrets[0]"},
		{name: "bad env value", h: Handler{Secrets: []string{"{env.OPENAI_WEBHOOK_TEST_BAD}"}}, wantErr: "secrets[0]"},
		{name: "no prefix", h: Handler{Secrets: []string{strings.TrimPrefix(webhooktest.Secret, "whsec_")}}, wantErr: "secrets[0]"},
		{name: "tolerance too short", h: Handler{Secrets: []string{webhooktest.Secret}, Tolerance: caddy.Duration(500 * time.Millisecond)}, wantErr: "tolerance"},
		{name: "negative tolerance", h: Handler{Secrets: []string{webhooktest.Secret}, Tolerance: caddy.Duration(-time.Minute)}, wantErr: "tolerance"},
		{name: "negative max_size", h: Handler{Secrets: []string{webhooktest.Secret}, MaxSize: -1}, wantErr: "max_size"},
		{name: "huge max_size", h: Handler{Secrets: []string{webhooktest.Secret}, MaxSize: 2 << 30}, wantErr: "max_size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			err := tc.h.Provision(ctx)
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
	h, _ := provisioned(t, &Handler{Secrets: []string{webhooktest.Secret}})
	if h.MaxSize != 1<<20 || time.Duration(h.Tolerance) != 5*time.Minute {
		t.Fatalf("defaults max_size=%d tolerance=%s", h.MaxSize, time.Duration(h.Tolerance))
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
