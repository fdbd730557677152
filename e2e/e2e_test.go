// Package e2e_test runs the gateway as users run it: a Caddy binary built by
// xcaddy with this module, configured by a Caddyfile, in front of an
// upstream that is not written in Go, driven over real HTTP.
package e2e_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/internal/caddybuild"
	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// maxSize is the gateway's max_size in the Caddyfile below.
const maxSize = 64 << 10

const caddyfileTemplate = `{
	admin 127.0.0.1:%d
}

http://127.0.0.1:%d {
	openai_webhook {env.OPENAI_WEBHOOK_SECRET} {
		max_size 64KiB
	}
	reverse_proxy 127.0.0.1:%d
}
`

// hookPath is where deliveries are POSTed; the upstream must see it as is.
const hookPath = "/webhooks/openai"

func TestGateway(t *testing.T) {
	if testing.Short() {
		t.Skip("builds Caddy with xcaddy and runs it: not in -short mode")
	}
	root, err := caddybuild.FindRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	ctx := processContext(t)
	bin := caddyBinary(t, ctx, root)
	upstream := startUpstream(t, ctx, root)
	gw := &gateway{url: startCaddy(t, ctx, bin, upstream.port) + hookPath}

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

// client sends every request of the test.
var client = &http.Client{
	// A fresh connection per request: a refusal that closes its connection
	// cannot affect the next case.
	Transport: &http.Transport{DisableKeepAlives: true},
	Timeout:   time.Minute, // bounds a hang; not an assertion
}

// gateway is the Caddy under test.
type gateway struct {
	url string
}

// delivery returns a POST of body signed at ts with the gateway's secret, as
// OpenAI sends one.
func (g *gateway) delivery(t *testing.T, id string, ts time.Time, body []byte) *http.Request {
	t.Helper()
	return g.signedWith(t, webhooktest.Secret, id, ts, body)
}

// signedWith returns a POST of body signed at ts with secret.
func (g *gateway) signedWith(t *testing.T, secret, id string, ts time.Time, body []byte) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, g.url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = webhooktest.Headers(t, secret, id, ts, body)
	req.Header.Set("Content-Type", "application/json")
	return req
}

// send sends req and returns the response and its body.
func send(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, raw
}

// deliver sends req, which must be accepted, and returns what the upstream
// says it received.
func deliver(t *testing.T, req *http.Request) record {
	t.Helper()
	resp, raw := send(t, req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200; body %q", resp.StatusCode, raw)
	}
	var r record
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("the upstream's answer %q: %v", raw, err)
	}
	return r
}

// sendChunked makes the client send req's body with chunked transfer
// encoding: a reader that hides its length leaves Go's client no choice.
func sendChunked(req *http.Request, body []byte) *http.Request {
	req.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body)))
	req.GetBody = nil
	req.ContentLength = -1
	req.TransferEncoding = []string{"chunked"}
	return req
}

// record is what testdata/upstream.py recorded of one request.
type record struct {
	Method     string     `json:"method"`
	Path       string     `json:"path"`
	Headers    [][]string `json:"headers"` // [name, value] pairs, in order
	Chunked    bool       `json:"chunked"`
	BodyLength int        `json:"body_length"`
	BodySHA256 string     `json:"body_sha256"`
	BodyBase64 string     `json:"body_base64"`
	Error      string     `json:"error"`
}

// header returns every value of the header name, in order.
func (r record) header(name string) []string {
	var vals []string
	for _, kv := range r.Headers {
		if len(kv) == 2 && strings.EqualFold(kv[0], name) {
			vals = append(vals, kv[1])
		}
	}
	return vals
}

func (r record) equal(o record) bool {
	a, _ := json.Marshal(r)
	b, _ := json.Marshal(o)
	return bytes.Equal(a, b)
}

// checkBody checks that the upstream got exactly want, framed by an exact
// Content-Length and nothing else.
func (r record) checkBody(t *testing.T, want []byte) {
	t.Helper()
	if r.Error != "" {
		t.Errorf("upstream could not read the request: %s", r.Error)
	}
	sum := sha256.Sum256(want)
	if r.BodyLength != len(want) || r.BodySHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("upstream got %d bytes with SHA-256 %s, want %d bytes with %x", r.BodyLength, r.BodySHA256, len(want), sum)
	}
	if got, err := base64.StdEncoding.DecodeString(r.BodyBase64); err != nil || !bytes.Equal(got, want) {
		t.Errorf("upstream body differs from the one sent (decoding: %v)", err)
	}
	if cl := r.header("Content-Length"); len(cl) != 1 || cl[0] != strconv.Itoa(len(want)) {
		t.Errorf("upstream got Content-Length %q, want exactly %d", cl, len(want))
	}
	if te := r.header("Transfer-Encoding"); len(te) != 0 || r.Chunked {
		t.Errorf("upstream got Transfer-Encoding %q (chunked: %v), want none", te, r.Chunked)
	}
}

// binaryBody holds every byte value, CRLFs and a line that looks like the
// end of a chunked body, so any re-encoding or framing confusion shows.
func binaryBody() []byte {
	var b []byte
	for i := range 256 {
		b = append(b, byte(i))
	}
	b = append(b, "\r\n0\r\n\r\n\n\r"...)
	for i := 255; i >= 0; i-- {
		b = append(b, byte(i), '\r', '\n')
	}
	return b
}

// randomBytes returns n reproducible pseudo-random bytes.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{byte(n), byte(n >> 8), byte(n >> 16)}).Read(b)
	return b
}

// processContext bounds the processes a test starts: it ends with the test
// (t.Context) or a little before go test's -timeout would kill the test
// binary without running cleanups, so no process outlives the test.
func processContext(t *testing.T) context.Context {
	ctx := t.Context()
	if deadline, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline.Add(-10*time.Second))
		t.Cleanup(cancel)
	}
	return ctx
}

// caddyBinary returns a Caddy built with this module, from the cache when
// the sources have not changed.
func caddyBinary(t *testing.T, ctx context.Context, root string) string {
	t.Helper()
	// A cold build takes minutes on two cores; it runs under go test's
	// -timeout too, so CI gives the test a longer one than the default 10m.
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	var log bytes.Buffer
	start := time.Now()
	bin, err := caddybuild.Cached(ctx, root, &log)
	if err != nil {
		t.Fatalf("building Caddy: %v\n%s", err, log.Bytes())
	}
	t.Logf("Caddy binary %s ready in %s", bin, time.Since(start).Round(time.Millisecond))
	return bin
}

// upstream is testdata/upstream.py, running.
type upstream struct {
	port int
	url  string
}

func startUpstream(t *testing.T, ctx context.Context, root string) *upstream {
	t.Helper()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 runs the test upstream and must be installed: %v", err)
	}
	port := freePort(t)
	cmd := exec.CommandContext(ctx, python, filepath.Join(root, "testdata", "upstream.py"), strconv.Itoa(port), "--watch-stdin")
	// An open pipe that only the test holds: if the test binary dies
	// without cleanups, the upstream sees end of input and exits.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close() })
	start(t, cmd, "upstream", fmt.Sprintf("127.0.0.1:%d", port))
	return &upstream{port: port, url: fmt.Sprintf("http://127.0.0.1:%d", port)}
}

// received returns everything the upstream recorded so far.
func (u *upstream) received(t *testing.T) []record {
	t.Helper()
	resp, err := client.Get(u.url + "/__received")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var all []record
	if err := json.NewDecoder(resp.Body).Decode(&all); err != nil {
		t.Fatalf("GET /__received: %v", err)
	}
	return all
}

// startCaddy runs bin with a Caddyfile that puts openai_webhook in front
// of the upstream, and returns the gateway's base URL.
func startCaddy(t *testing.T, ctx context.Context, bin string, upstreamPort int) string {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	config := filepath.Join(dir, "Caddyfile")
	caddyfile := fmt.Sprintf(caddyfileTemplate, freePort(t), port, upstreamPort)
	if err := os.WriteFile(config, []byte(caddyfile), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, bin, "run", "--config", config, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(),
		"OPENAI_WEBHOOK_SECRET="+webhooktest.Secret,
		// Caddy's autosaved config and storage stay out of the user's home.
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"),
		"XDG_DATA_HOME="+filepath.Join(dir, "data"),
	)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	start(t, cmd, "caddy", addr)
	return "http://" + addr
}

// start starts cmd, waits until it accepts connections on addr and stops it
// when the test ends (cmd's context kills it), showing its output if the
// test failed.
func start(t *testing.T, cmd *exec.Cmd, name, addr string) {
	t.Helper()
	output := new(syncBuffer)
	cmd.Stdout, cmd.Stderr = output, output
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		<-exited // t.Context, and so cmd's context, is already done
		if t.Failed() {
			t.Logf("%s output:\n%s", name, output)
		}
	})

	// Poll until the listener is up: this waits, it asserts nothing.
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return
		}
		select {
		case <-exited:
			t.Fatalf("%s exited before listening on %s: %v\n%s", name, addr, cmd.ProcessState, output)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening on %s after 30s\n%s", name, addr, output)
		}
	}
}

// freePort returns a port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// syncBuffer is a bytes.Buffer safe for the goroutines that copy a
// process's output while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
