// Package e2e_test runs the gateway as users run it: a Caddy binary built by
// xcaddy with this module, configured by a Caddyfile, in front of an
// upstream that is not written in Go, driven over real HTTP. The helpers
// all its tests share are in helpers_test.go.
package e2e_test

import (
	"bytes"
	"encoding/base64"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestGateway(t *testing.T) {
	e := setup(t)
	upstream := startUpstream(t, e)
	gw := startCaddy(t, e, caddyConfig{UpstreamPort: upstream.port})

	openAIEvent := []byte(`{
  "id": "evt_685343a1381c819085d44c354e1b330e",
  "object": "event",
  "created_at": 1750287018,
  "type": "response.completed",
  "data": {"id": "resp_abc123", "note": "naïve ünïcode ✓"}
}
`)

	t.Run("accepted", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			body    []byte
			chunked bool // sent with Transfer-Encoding: chunked
		}{
			{"openai event", openAIEvent, false},
			{"empty body", []byte{}, false},
			{"all byte values and CRLFs", binaryBody(), false},
			{"chunked by the client", randomBytes(40_000), true},
			{"exactly max_size", randomBytes(maxSize), false},
			{"exactly max_size chunked", randomBytes(maxSize), true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				id := "msg_e2e_" + strings.ReplaceAll(tc.name, " ", "_")
				req := gw.delivery(t, id, time.Now(), tc.body)
				if tc.chunked {
					sendChunked(req, tc.body)
				}
				sent := req.Header.Clone()
				before := len(upstream.received(t))

				got := deliver(t, req)

				all := upstream.received(t)
				if len(all) != before+1 {
					t.Fatalf("upstream recorded %d requests, want 1", len(all)-before)
				}
				if !all[len(all)-1].equal(got) {
					t.Errorf("the response is not the upstream's record of this request:\n got %+v\nwant %+v", got, all[len(all)-1])
				}
				got.checkBody(t, tc.body)
				if got.Method != http.MethodPost || got.Path != hookPath {
					t.Errorf("upstream got %s %s, want POST %s", got.Method, got.Path, hookPath)
				}
				for _, name := range []string{"webhook-id", "webhook-timestamp", "webhook-signature"} {
					if vals, want := got.header(name), sent.Get(name); len(vals) != 1 || vals[0] != want {
						t.Errorf("upstream got %s %q, want exactly %q", name, vals, want)
					}
				}
			})
		}
	})

	t.Run("refused", func(t *testing.T) {
		body := openAIEvent
		for _, tc := range []struct {
			name   string
			status int
			req    func(t *testing.T, id string) *http.Request
		}{
			{"tampered body", http.StatusUnauthorized, func(t *testing.T, id string) *http.Request {
				req := gw.delivery(t, id, time.Now(), body)
				tampered := bytes.Replace(body, []byte("completed"), []byte("cancelled"), 1)
				req.Body, req.ContentLength, req.GetBody = io.NopCloser(bytes.NewReader(tampered)), int64(len(tampered)), nil
				return req
			}},
			{"another secret", http.StatusUnauthorized, func(t *testing.T, id string) *http.Request {
				other := "whsec_" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
				return gw.signedWith(t, other, id, time.Now(), body)
			}},
			{"stale timestamp", http.StatusUnauthorized, func(t *testing.T, id string) *http.Request {
				return gw.delivery(t, id, time.Now().Add(-10*time.Minute), body) // tolerance is 5m
			}},
			{"missing headers", http.StatusUnauthorized, func(t *testing.T, id string) *http.Request {
				req := gw.delivery(t, id, time.Now(), body)
				for _, name := range []string{"webhook-id", "webhook-timestamp", "webhook-signature"} {
					req.Header.Del(name)
				}
				return req
			}},
			{"duplicated webhook-id", http.StatusUnauthorized, func(t *testing.T, id string) *http.Request {
				req := gw.delivery(t, id, time.Now(), body) // signed for the first id
				req.Header.Add("webhook-id", id+"_2")
				return req
			}},
			{"max_size+1 with Content-Length", http.StatusRequestEntityTooLarge, func(t *testing.T, id string) *http.Request {
				return gw.delivery(t, id, time.Now(), randomBytes(maxSize+1))
			}},
			{"max_size+1 chunked", http.StatusRequestEntityTooLarge, func(t *testing.T, id string) *http.Request {
				big := randomBytes(maxSize + 1)
				return sendChunked(gw.delivery(t, id, time.Now(), big), big)
			}},
			{"GET", http.StatusMethodNotAllowed, func(t *testing.T, id string) *http.Request {
				req := gw.delivery(t, id, time.Now(), nil)
				req.Method, req.Body, req.ContentLength = http.MethodGet, nil, 0
				return req
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				req := tc.req(t, "msg_e2e_refused_"+strings.ReplaceAll(tc.name, " ", "_"))
				before := len(upstream.received(t))
				resp, _ := send(t, req)
				if resp.StatusCode != tc.status {
					t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
				}
				if tc.status == http.StatusMethodNotAllowed && resp.Header.Get("Allow") != http.MethodPost {
					t.Errorf("Allow: %q, want POST", resp.Header.Get("Allow"))
				}
				if n := len(upstream.received(t)) - before; n != 0 {
					t.Errorf("%d refused requests reached the upstream", n)
				}
			})
		}
	})

	t.Run("repeated delivery", func(t *testing.T) {
		// A sender's retry or a captured delivery replayed in its
		// freshness window: the app gets it once, the sender a 200.
		body := []byte(`{"type":"batch.completed","data":{"id":"batch_abc123"}}`)
		ts := time.Now()
		deliver(t, gw.delivery(t, "msg_e2e_repeated", ts, body)).checkBody(t, body)
		before := len(upstream.received(t))
		resp, answer := send(t, gw.delivery(t, "msg_e2e_repeated", ts, body))
		if resp.StatusCode != http.StatusOK || len(answer) != 0 {
			t.Errorf("repeat answered %d %q, want 200 and no body", resp.StatusCode, answer)
		}
		if n := len(upstream.received(t)) - before; n != 0 {
			t.Errorf("the repeat reached the upstream (%d requests)", n)
		}
	})

	t.Run("still healthy", func(t *testing.T) {
		body := []byte(`{"type":"response.completed","data":{"id":"resp_last"}}`)
		deliver(t, gw.delivery(t, "msg_e2e_last", time.Now(), body)).checkBody(t, body)
	})
}
