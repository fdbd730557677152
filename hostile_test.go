package openaiwebhook

// Hostile senders against the handler in an in-process Caddy, over real
// sockets: what holds only with Go's HTTP server, Caddy's reverse_proxy and
// a network between them (read deadlines, draining, upgrades, HTTP/2
// framing).

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// gatewayAddr is where startGateway's Caddy listens.
const gatewayAddr = "127.0.0.1:9080"

// startGateway runs, in this process, a Caddy that verifies with the
// options in handler and forwards to upstream, over HTTP/1.1 and h2c.
func startGateway(t *testing.T, handler, upstream string) *caddytest.Tester {
	t.Helper()
	t.Setenv("OPENAI_WEBHOOK_SECRET", webhooktest.Secret)
	tester := caddytest.NewTester(t)
	tester.InitServer(fmt.Sprintf(`
	{
		skip_install_trust
		admin localhost:2999
		http_port 9080
		https_port 9443
		default_bind 127.0.0.1
		grace_period 1ns
		servers {
			protocols h1 h2c
		}
	}
	http://:9080 {
		openai_webhook {env.OPENAI_WEBHOOK_SECRET} {
			%s
		}
		reverse_proxy %s
	}`, handler, upstream), "caddyfile")
	return tester
}

// ioBound keeps a broken exchange from hanging a test; it asserts nothing.
const ioBound = time.Minute

// rawConn opens a connection to the gateway.
func rawConn(t *testing.T) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", gatewayAddr, ioBound)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(ioBound))
	return conn
}

// requestHead is the head of an HTTP/1.1 POST of a body of length bytes,
// with the signature headers hdr and the extra lines.
func requestHead(hdr http.Header, length int, extra ...string) string {
	var b strings.Builder
	b.WriteString("POST /webhook HTTP/1.1\r\nHost: localhost:9080\r\n")
	for _, name := range []string{"Webhook-Id", "Webhook-Timestamp", "Webhook-Signature"} {
		fmt.Fprintf(&b, "%s: %s\r\n", name, hdr.Get(name))
	}
	if length >= 0 {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", length)
	}
	for _, l := range extra {
		b.WriteString(l + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// readAnswer reads one response and its body from br.
func readAnswer(t *testing.T, br *bufio.Reader) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

// TestSlowBodyCannotOutliveReplayRecord: a delivery replayed with its
// headers on time and its last body byte held back until the record of the
// first delivery has expired is judged stale when its body ends (finding 1
// of issue 7). With tolerance 1s, the record lasts 3s.
func TestSlowBodyCannotOutliveReplayRecord(t *testing.T) {
	app := new(upstreamRecorder)
	upstream := newUpstream(t, app)
	startGateway(t, "tolerance 1s", upstream)

	body := []byte(`{"object":"event","type":"response.completed","data":{"id":"resp_slow"}}`)
	hdr := webhooktest.Headers(t, webhooktest.Secret, "wh_slow_replay", time.Now(), body)
	send := func() *http.Response {
		conn := rawConn(t)
		if _, err := io.WriteString(conn, requestHead(hdr, len(body))+string(body)); err != nil {
			t.Fatal(err)
		}
		resp, _ := readAnswer(t, bufio.NewReader(conn))
		return resp
	}
	if resp := send(); resp.StatusCode != http.StatusOK {
		t.Fatalf("the delivery: %s", resp.Status)
	}
	delivered := time.Now()
	if resp := send(); resp.StatusCode != http.StatusOK || app.count() != 1 {
		t.Fatalf("an immediate replay: %s, %d forwards; want 200 and 1", resp.Status, app.count())
	}

	conn := rawConn(t)
	if _, err := io.WriteString(conn, requestHead(hdr, len(body))+string(body[:len(body)-1])); err != nil {
		t.Fatal(err)
	}
	// Past the 2 s the record lasted before the fix, and so past the
	// timestamp's tolerance.
	time.Sleep(time.Until(delivered.Add(2200 * time.Millisecond)))
	if _, err := conn.Write(body[len(body)-1:]); err != nil {
		t.Fatal(err)
	}
	resp, _ := readAnswer(t, bufio.NewReader(conn))
	if resp.StatusCode != http.StatusUnauthorized || app.count() != 1 {
		t.Fatalf("a replay whose body ended past the tolerance: %s, %d forwards; want 401 and 1", resp.Status, app.count())
	}
}

// TestUpgradeIsNotTunnelled: a genuine delivery that asks to upgrade the
// connection is refused, so an upstream that would answer 101 never opens a
// tunnel for unverified bytes (finding 2 of issue 7).
func TestUpgradeIsNotTunnelled(t *testing.T) {
	up := startRawUpstream(t, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	startGateway(t, "", up.ln.Addr().String())
	smuggled := "POST /admin HTTP/1.1\r\nHost: app\r\nContent-Length: 20\r\n\r\nnot verified at all!"
	for _, upgrade := range [][]string{
		{"Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"},
		{"Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA"},
	} {
		t.Run(upgrade[2], func(t *testing.T) {
			body := []byte(`{"object":"event","type":"response.completed"}`)
			hdr := webhooktest.Headers(t, webhooktest.Secret, "wh_upgrade_"+strconv.Itoa(len(upgrade)), time.Now(), body)
			conn := rawConn(t)
			if _, err := io.WriteString(conn, requestHead(hdr, len(body), upgrade...)+string(body)+smuggled); err != nil {
				t.Fatal(err)
			}
			resp, _ := readAnswer(t, bufio.NewReader(conn))
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("a delivery asking to upgrade: %s, want 400", resp.Status)
			}
			time.Sleep(100 * time.Millisecond) // any forward would have reached the upstream by now
			up.mu.Lock()
			defer up.mu.Unlock()
			if len(up.got) != 0 || up.after.Len() != 0 {
				t.Fatalf("the upstream got %d requests and %d bytes after them", len(up.got), up.after.Len())
			}
		})
	}
}

// TestAnswerCutShortIsDelivered: the app answered 200 and then broke off
// its body. It has the event, so a retry is a duplicate (finding 4).
func TestAnswerCutShortIsDelivered(t *testing.T) {
	up := startRawUpstream(t, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n1234567")
	tester := startGateway(t, "", up.ln.Addr().String())
	body := []byte(`{"object":"event","type":"batch.completed"}`)
	for i, want := range []int{http.StatusOK, http.StatusOK} {
		req, err := http.NewRequest(http.MethodPost, "http://"+gatewayAddr+"/webhook", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header = webhooktest.Headers(t, webhooktest.Secret, "wh_cut_short", time.Now(), body)
		resp, err := tester.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body) // fails for the first: the answer was cut short
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("delivery %d: %s, want %d", i+1, resp.Status, want)
		}
	}
	if n := up.requests(); n != 1 {
		t.Fatalf("the upstream got the delivery %d times, want once", n)
	}
}

// TestBodyTimeout: a body trickled a byte at a time ends at body_timeout
// with 408, over HTTP/1.1 and HTTP/2, and nothing is forwarded.
func TestBodyTimeoutOverTheWire(t *testing.T) {
	app := new(upstreamRecorder)
	startGateway(t, "body_timeout 1s", newUpstream(t, app))
	body := bytes.Repeat([]byte("x"), 100)

	t.Run("HTTP/1.1", func(t *testing.T) {
		hdr := webhooktest.Headers(t, webhooktest.Secret, "wh_trickle_1", time.Now(), body)
		conn := rawConn(t)
		if _, err := io.WriteString(conn, requestHead(hdr, len(body))); err != nil {
			t.Fatal(err)
		}
		answered := make(chan *http.Response, 1)
		go func() {
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				resp = nil
			}
			answered <- resp
		}()
		for i := 0; ; i++ {
			select {
			case resp := <-answered:
				if resp == nil || resp.StatusCode != http.StatusRequestTimeout || !resp.Close {
					t.Fatalf("a trickled body: %v, want 408 and the connection closed", resp)
				}
				if app.count() != 0 {
					t.Fatal("a trickled body was forwarded")
				}
				return
			case <-time.After(200 * time.Millisecond):
				if i == len(body) {
					t.Fatal("the whole body was sent without a refusal")
				}
				_, _ = conn.Write(body[i : i+1])
			}
		}
	})

	t.Run("HTTP/2", func(t *testing.T) {
		pr, pw := io.Pipe()
		defer pw.Close()
		go func() {
			for i := range body {
				if _, err := pw.Write(body[i : i+1]); err != nil {
					return
				}
				time.Sleep(200 * time.Millisecond)
			}
		}()
		req, err := http.NewRequest(http.MethodPost, "http://"+gatewayAddr+"/webhook", pr)
		if err != nil {
			t.Fatal(err)
		}
		req.Header = webhooktest.Headers(t, webhooktest.Secret, "wh_trickle_2", time.Now(), body)
		resp, err := h2cClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusRequestTimeout || app.count() != 0 {
			t.Fatalf("a trickled body over %s: %s with %d forwards, want 408 over HTTP/2 and none", resp.Proto, resp.Status, app.count())
		}
	})
}

// h2cClient speaks HTTP/2 without TLS, with prior knowledge.
func h2cClient() *http.Client {
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr, Timeout: ioBound}
}

// TestHTTP2ContentLengthTwice: HTTP/2 lets a sender give content-length
// twice, with different values; such a request is refused (finding 8).
func TestHTTP2ContentLengthTwice(t *testing.T) {
	app := new(upstreamRecorder)
	startGateway(t, "", newUpstream(t, app))
	body := []byte(`{"object":"event","type":"response.completed"}`)
	hdr := webhooktest.Headers(t, webhooktest.Secret, "wh_h2_two_lengths", time.Now(), body)

	conn := rawConn(t)
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":authority", "localhost:9080"}, {":path", "/webhook"},
		{"content-length", strconv.Itoa(len(body))}, {"content-length", "3"},
		{"webhook-id", hdr.Get("webhook-id")}, {"webhook-timestamp", hdr.Get("webhook-timestamp")}, {"webhook-signature", hdr.Get("webhook-signature")},
	} {
		if err := enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteData(1, true, body); err != nil {
		t.Fatal(err)
	}
	dec := hpack.NewDecoder(4096, nil)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no answer on the stream: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.RSTStreamFrame:
			// Go's server may refuse the stream itself: also not forwarded.
			if app.count() != 0 {
				t.Fatal("the request was forwarded")
			}
			return
		case *http2.HeadersFrame:
			fields, err := dec.DecodeFull(f.HeaderBlockFragment())
			if err != nil {
				t.Fatal(err)
			}
			if fields[0].Name != ":status" || fields[0].Value != "400" || app.count() != 0 {
				t.Fatalf("answer %v with %d forwards, want :status 400 and none", fields, app.count())
			}
			return
		}
	}
}

// TestRefusalIsReadWhileWriting: an HTTP/1.1 sender still writing a body
// the gateway refuses reads its answer instead of a reset (finding 7), for
// refusals on the headers and on the declared length, with the connection
// kept alive or not. A body withheld gets its answer within the drain's
// bound, on a closed connection.
func TestRefusalIsReadWhileWriting(t *testing.T) {
	startGateway(t, "max_size 64KiB", newUpstream(t, new(upstreamRecorder)))
	big := bytes.Repeat([]byte("0123456789abcdef"), 10<<20/16)
	stale := webhooktest.Headers(t, webhooktest.Secret, "wh_stale_big", time.Now().Add(-time.Hour), big)
	fresh := webhooktest.Headers(t, webhooktest.Secret, "wh_too_big", time.Now(), big)
	for _, tc := range []struct {
		name   string
		hdr    http.Header
		extra  []string
		status int
	}{
		{"stale, 10 MiB", stale, nil, http.StatusUnauthorized},
		{"stale, 10 MiB, Connection: close", stale, []string{"Connection: close"}, http.StatusUnauthorized},
		{"unsigned, 10 MiB", http.Header{}, nil, http.StatusUnauthorized},
		{"over max_size, 10 MiB", fresh, nil, http.StatusRequestEntityTooLarge},
		{"over max_size, 10 MiB, Connection: close", fresh, []string{"Connection: close"}, http.StatusRequestEntityTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 5 { // a reset is a race: give it chances to show
				conn := rawConn(t)
				written := make(chan error, 1)
				go func() {
					_, err := conn.Write(append([]byte(requestHead(tc.hdr, len(big), tc.extra...)), big...))
					written <- err
				}()
				resp, _ := readAnswer(t, bufio.NewReader(conn))
				if err := <-written; err != nil {
					t.Fatalf("writing the body: %v", err)
				}
				if resp.StatusCode != tc.status {
					t.Fatalf("status %s, want %d", resp.Status, tc.status)
				}
				conn.Close()
			}
		})
	}

	t.Run("body withheld", func(t *testing.T) {
		conn := rawConn(t)
		if _, err := io.WriteString(conn, requestHead(stale, len(big))); err != nil {
			t.Fatal(err)
		}
		resp, _ := readAnswer(t, bufio.NewReader(conn))
		if resp.StatusCode != http.StatusUnauthorized || !resp.Close {
			t.Fatalf("status %s, close %v; want 401 and close", resp.Status, resp.Close)
		}
	})
}

// TestUnverifiedBudgetAcrossConnections: stalled fake deliveries on several
// connections hold at most max_unverified; the next delivery is refused
// with 503 and Retry-After at once, and passes once they time out.
func TestUnverifiedBudgetAcrossConnections(t *testing.T) {
	app := new(upstreamRecorder)
	const limit = 256 << 10
	startGateway(t, "max_size 64KiB\n\t\t\tmax_unverified 256KiB\n\t\t\tbody_timeout 4s", newUpstream(t, app))
	body := bytes.Repeat([]byte("x"), 64<<10)
	fake := webhooktest.Headers(t, webhooktest.Secret, "wh_fake", time.Now(), body)
	fake.Set("Webhook-Signature", "v1,"+strings.Repeat("A", 43)+"=")
	var stalled []net.Conn
	for range 4 { // 2 chunks each: 256 KiB
		conn := rawConn(t)
		if _, err := io.WriteString(conn, requestHead(fake, len(body))+string(body[:len(body)-1])); err != nil {
			t.Fatal(err)
		}
		stalled = append(stalled, conn)
	}
	genuine := func(id string) *http.Response {
		conn := rawConn(t)
		hdr := webhooktest.Headers(t, webhooktest.Secret, id, time.Now(), body)
		if _, err := io.WriteString(conn, requestHead(hdr, len(body))+string(body)); err != nil {
			t.Fatal(err)
		}
		resp, _ := readAnswer(t, bufio.NewReader(conn))
		return resp
	}
	// The stalled bodies reach the handler in their own time: wait until
	// they hold the budget, looking at it rather than probing it with
	// deliveries, which would take a share a stalled body then finds gone.
	webhooktest.WaitFor(t, "the stalled bodies to hold max_unverified", func() bool { return heldUnverified(limit) == limit })
	if resp := genuine("wh_budget_spent"); resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "4" {
		t.Fatalf("with the budget spent: %s, Retry-After %q; want 503 and 4", resp.Status, resp.Header.Get("Retry-After"))
	}
	for _, conn := range stalled {
		resp, _ := readAnswer(t, bufio.NewReader(conn))
		if resp.StatusCode != http.StatusRequestTimeout {
			t.Fatalf("a stalled body: %s, want 408", resp.Status)
		}
	}
	if resp := genuine("wh_budget_back"); resp.StatusCode != http.StatusOK {
		t.Fatalf("once the stalled bodies ended: %s, want 200", resp.Status)
	}
}

// heldUnverified is what the budget for max_unverified limit holds now, in
// this process's Caddy.
func heldUnverified(limit int64) int64 {
	var held int64
	budgets.Range(func(key, value any) bool {
		if key == strconv.FormatInt(limit, 10) {
			held = value.(pooledBudget).used.Load()
		}
		return true
	})
	return held
}
