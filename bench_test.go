package openaiwebhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// socketBody is a reusable request body that, like a connection, can only
// be Read: no WriteTo shortcut lets a consumer skip copying it out.
type socketBody struct{ r bytes.Reader }

func (s *socketBody) Read(p []byte) (int, error) { return s.r.Read(p) }
func (*socketBody) Close() error                 { return nil }

// BenchmarkServeHTTP measures the handler on one delivery, from headers to
// the next handler draining the verified body, against the floor of any
// verifying handler: reading the same body through one reused buffer into a
// reused HMAC. Replay
// refusal is off so one signed request can be sent again;
// BenchmarkReplayStore covers it.
func BenchmarkServeHTTP(b *testing.B) {
	for _, size := range []int{1 << 10, 64 << 10, 1 << 20} {
		body := bytes.Repeat([]byte("x"), size)
		name := fmt.Sprintf("%dKiB", size>>10)
		drain := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			_, err := io.Copy(io.Discard, r.Body)
			return err
		})
		src := &socketBody{}
		newRequest := func(b *testing.B) *http.Request {
			r := httptest.NewRequest(http.MethodPost, "/", nil)
			for k, v := range webhooktest.Headers(b, webhooktest.Secret, "wh_685c059ae39c8190af8c71ed1022a24d", time.Now(), body) {
				r.Header[k] = v
			}
			return r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
		}
		rewind := func(r *http.Request) {
			src.r.Reset(body)
			r.Body, r.ContentLength = src, int64(size)
		}

		b.Run(name+"/hmac-stream", func(b *testing.B) {
			key, err := verifier.ParseSecret(webhooktest.Secret)
			if err != nil {
				b.Fatal(err)
			}
			mac := hmac.New(sha256.New, key)
			buf := make([]byte, chunkSize)
			r := newRequest(b)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				rewind(r)
				mac.Reset()
				if _, err := io.CopyBuffer(mac, r.Body, buf); err != nil {
					b.Fatal(err)
				}
				mac.Sum(nil)
			}
		})
		b.Run(name+"/openai_webhook", func(b *testing.B) {
			h, _ := provisioned(b, &Handler{Secrets: []string{webhooktest.Secret}, MaxSize: 2 << 20, ReplayWindow: -1})
			r := newRequest(b)
			w := httptest.NewRecorder()
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				rewind(r)
				if err := h.ServeHTTP(w, r, drain); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReplayStore measures what replay refusal adds to a delivery:
// claiming a new id and recording it as delivered.
func BenchmarkReplayStore(b *testing.B) {
	h, _ := provisioned(b, &Handler{Secrets: []string{webhooktest.Secret}, ReplayStoreRaw: json.RawMessage(`{"backend":"memory","capacity":65536}`)})
	ctx := context.Background()
	ids := make([]string, 1<<16)
	for i := range ids {
		ids[i] = fmt.Sprintf("wh_%032x", i)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		id := ids[i%len(ids)]
		_, ticket, _ := h.replay.Claim(ctx, id)
		_ = h.replay.Delivered(ctx, id, ticket)
		i++
	}
}

// countingBody counts the bytes a handler reads from it.
type countingBody struct {
	socketBody
	read int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.socketBody.Read(p)
	c.read += int64(n)
	return n, err
}

// BenchmarkRefusal measures refusing 1 MiB deliveries that are unsigned,
// stale or wrongly signed, and reports the body bytes each refusal read:
// none for the first two, which fail on their headers.
func BenchmarkRefusal(b *testing.B) {
	const size = 1 << 20
	body := bytes.Repeat([]byte("x"), size)
	h, _ := provisioned(b, &Handler{Secrets: []string{webhooktest.Secret}, MaxSize: 2 << 20})
	h.logger = zap.NewNop() // production logs refusals only at DEBUG
	for _, tc := range []struct {
		name   string
		header http.Header
	}{
		{"unsigned", http.Header{}},
		{"stale", webhooktest.Headers(b, webhooktest.Secret, "wh_stale", time.Now().Add(-time.Hour), body)},
		{"wrong-signature", webhooktest.Headers(b, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "wh_wrong", time.Now(), body)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			r := httptest.NewRequest(http.MethodPost, "/", nil)
			r.Header = tc.header
			r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
			src := &countingBody{}
			w := httptest.NewRecorder()
			b.ReportAllocs()
			for b.Loop() {
				src.r.Reset(body)
				r.Body, r.ContentLength = src, size
				if err := h.ServeHTTP(w, r, nil); err == nil {
					b.Fatal("accepted")
				}
			}
			b.ReportMetric(float64(src.read)/float64(b.N), "body-bytes-read/op")
		})
	}
}

// BenchmarkEvents measures what reading the event costs a 1 KiB delivery:
// none when nothing needs it, the JSON parse with events or an event
// placeholder in use. Replay refusal is off so one signed request can be
// sent again.
func BenchmarkEvents(b *testing.B) {
	body := []byte(`{"object":"event","id":"evt_685343a1381c819085d44c354e1b330e","type":"response.completed","created_at":1750287018,"data":{"id":"resp_abc123"},"pad":"` +
		strings.Repeat("x", 1<<10-140) + `"}`)
	readType := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		_, _ = repl.GetString("http.openai_webhook.event_type")
		return nil
	})
	quiet := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error { return nil })
	for _, tc := range []struct {
		name   string
		events []string
		next   caddyhttp.Handler
	}{
		{"unused", nil, quiet},
		{"placeholder", nil, readType},
		{"events", []string{"response.*"}, quiet},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h, _ := provisioned(b, &Handler{Secrets: []string{webhooktest.Secret}, ReplayWindow: -1, Events: tc.events})
			h.logger = zap.NewNop()
			headers := webhooktest.Headers(b, webhooktest.Secret, "wh_685c059ae39c8190af8c71ed1022a24d", time.Now(), body)
			src := &socketBody{}
			w := httptest.NewRecorder()
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				src.r.Reset(body)
				ctx, end := context.WithCancel(context.WithValue(context.Background(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
				r := httptest.NewRequestWithContext(ctx, http.MethodPost, "/", src)
				r.Header, r.ContentLength = headers, int64(len(body))
				if err := h.ServeHTTP(w, r, tc.next); err != nil {
					b.Fatal(err)
				}
				end() // the request is done: the body goes back to the pool
			}
		})
	}
}
