package openaiwebhook

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// testSecret is webhooktest.Secret as the tests' handlers take it: from the
// environment, as the docs ask of a config, so that no test config writes
// it in (which the handler warns of at every load).
const (
	testSecretEnv = "OPENAI_WEBHOOK_TEST_SECRET"
	testSecret    = "{env." + testSecretEnv + "}"
)

func TestMain(m *testing.M) {
	if err := os.Setenv(testSecretEnv, webhooktest.Secret); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

// configContext returns a context of a config of its own, as Caddy gives a
// module it provisions (the handler loads the config's App from it), and
// its cancel, which cleans up what was loaded in it.
func configContext(t testing.TB) (caddy.Context, func()) {
	t.Helper()
	config, err := caddy.ProvisionContext(new(caddy.Config))
	if err != nil {
		t.Fatal(err)
	}
	return caddy.NewContext(config)
}

// nextApp is the handler after openai_webhook in a test, where
// reverse_proxy would be: it reads what reached it (the body, and again
// through GetBody, as a transport that retries does) and records it with
// the placeholders named in read, then answers status (nothing written for
// 0: Go's server answers 200) and returns err.
type nextApp struct {
	status int
	err    error
	read   []string // placeholders to record, as a later handler reads them

	calls         int
	body          []byte
	contentLength int64
	header        http.Header
	placeholders  map[string]string
}

// eventPlaceholders are the placeholders read from the body.
var eventPlaceholders = []string{"http.openai_webhook.event_type", "http.openai_webhook.event_id"}

func (a *nextApp) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	a.calls++
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	again, err := r.GetBody()
	if err != nil {
		return err
	}
	if rewound, _ := io.ReadAll(again); !bytes.Equal(rewound, body) {
		return errors.New("GetBody returned other bytes than Body")
	}
	a.body, a.contentLength, a.header = body, r.ContentLength, r.Header.Clone()
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	a.placeholders = map[string]string{}
	for _, name := range append([]string{"http.openai_webhook.id", "http.openai_webhook.timestamp"}, a.read...) {
		a.placeholders[name], _ = repl.GetString(name)
	}
	if a.status != 0 {
		w.WriteHeader(a.status)
	}
	return a.err
}

// waitBound bounds a test's wait for another goroutine or process; it
// asserts nothing.
const waitBound = time.Minute

// rawUpstream is an upstream on a bare TCP listener: it reads one request
// per connection, records it, writes answer as given and then records every
// byte that still comes on the connection, as an app that switched
// protocols would.
type rawUpstream struct {
	ln     net.Listener
	answer string
	mu     sync.Mutex
	got    []*http.Request
	after  bytes.Buffer
}

func startRawUpstream(t *testing.T, answer string) *rawUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{ln: ln, answer: answer}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { u.serve(conn) })
		}
	})
	return u
}

func (u *rawUpstream) serve(conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(ioBound))
	br := bufio.NewReader(conn)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	_, _ = io.Copy(io.Discard, req.Body)
	u.mu.Lock()
	u.got = append(u.got, req)
	u.mu.Unlock()
	if _, err := io.WriteString(conn, u.answer); err != nil {
		return
	}
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	rest, _ := io.ReadAll(br)
	u.mu.Lock()
	u.after.Write(rest)
	u.mu.Unlock()
}

func (u *rawUpstream) requests() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.got)
}

// upstreamRecorder is a real HTTP upstream that remembers what reached it.
type upstreamRecorder struct {
	mu       sync.Mutex
	requests []receivedRequest
}

type receivedRequest struct {
	body             []byte
	header           http.Header
	transferEncoding []string
}

func (u *upstreamRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	u.mu.Lock()
	u.requests = append(u.requests, receivedRequest{body: body, header: r.Header.Clone(), transferEncoding: r.TransferEncoding})
	u.mu.Unlock()
	fmt.Fprint(w, "app got it")
}

func (u *upstreamRecorder) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.requests)
}

func (u *upstreamRecorder) last() receivedRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.requests[len(u.requests)-1]
}
