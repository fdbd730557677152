package main

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// The ceiling is only a limit if it verifies: a handler that let a bad
// delivery through, or skipped the hash, would be faster than any
// verifying gateway. Each case is what it must refuse or pass.
func TestVerifyOnly(t *testing.T) {
	v := &VerifyOnly{Secret: webhooktest.Secret}
	if err := v.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	const otherSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	body := []byte(`{"type":"response.completed","data":{"id":"resp_1"}}`)
	now := time.Now()
	signed := func(secret string, ts time.Time, body []byte) http.Header {
		return webhooktest.Headers(t, secret, "wh_1", ts, body)
	}
	for _, tc := range []struct {
		name   string
		header http.Header
		body   []byte
		length int64 // -1: unknown
		want   int
	}{
		{"valid", signed(webhooktest.Secret, now, body), body, int64(len(body)), http.StatusOK},
		{"valid second of two signatures", func() http.Header {
			h := signed(webhooktest.Secret, now, body)
			h.Set("webhook-signature", signed(otherSecret, now, body).Get("webhook-signature")+" "+h.Get("webhook-signature"))
			return h
		}(), body, int64(len(body)), http.StatusOK},
		{"body changed", signed(webhooktest.Secret, now, body), bytes.Replace(body, []byte("resp_1"), []byte("resp_2"), 1), int64(len(body)), http.StatusUnauthorized},
		{"other secret", signed(otherSecret, now, body), body, int64(len(body)), http.StatusUnauthorized},
		{"stale", signed(webhooktest.Secret, now.Add(-6*time.Minute), body), body, int64(len(body)), http.StatusUnauthorized},
		{"future", signed(webhooktest.Secret, now.Add(6*time.Minute), body), body, int64(len(body)), http.StatusUnauthorized},
		{"wrong version", func() http.Header {
			h := signed(webhooktest.Secret, now, body)
			h.Set("webhook-signature", strings.Replace(h.Get("webhook-signature"), "v1,", "v2,", 1))
			return h
		}(), body, int64(len(body)), http.StatusUnauthorized},
		{"no headers", http.Header{}, body, int64(len(body)), http.StatusUnauthorized},
		{"unknown length", signed(webhooktest.Secret, now, body), body, -1, http.StatusRequestEntityTooLarge},
		{"body shorter than declared", signed(webhooktest.Secret, now, body), body, int64(len(body)) + 1, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(tc.body))
			r.Header = tc.header
			r.ContentLength = tc.length
			var forwarded []byte
			next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				var err error
				forwarded, err = io.ReadAll(r.Body)
				return err
			})
			status := http.StatusOK
			if err := v.ServeHTTP(httptest.NewRecorder(), r, next); err != nil {
				var he caddyhttp.HandlerError
				if !errors.As(err, &he) {
					t.Fatalf("error %v is not a caddyhttp.HandlerError", err)
				}
				status = he.StatusCode
			}
			if status != tc.want {
				t.Fatalf("status %d, want %d", status, tc.want)
			}
			if tc.want == http.StatusOK && !bytes.Equal(forwarded, body) {
				t.Fatalf("forwarded %q, want the signed body %q", forwarded, body)
			}
			if tc.want != http.StatusOK && forwarded != nil {
				t.Fatal("a refused delivery reached the next handler")
			}
		})
	}
}
