package e2e_test

// Helpers shared by every end-to-end test: the Caddy binary, the processes
// (Caddy and testdata/upstream.py), signing, sending (with Go's client or
// raw bytes on a TCP connection) and reading what the upstream recorded.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
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
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/internal/caddybuild"
	"github.com/webhookgate/caddy-openai-webhook/internal/freeport"
	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// hookPath is where deliveries are POSTed; the upstream must see it as is.
const hookPath = "/webhooks/openai"

// maxSize is the gateway's max_size in defaultHandler.
const maxSize = 64 << 10

// defaultHandler is the body of the openai_webhook block unless a test sets
// its own: the secret from the environment (see startCaddy) and a small cap.
const defaultHandler = `secret {env.OPENAI_WEBHOOK_SECRET}
		max_size 64KiB`

// Secrets besides webhooktest.Secret, which startCaddy passes to Caddy as
// OPENAI_WEBHOOK_SECRET: secretB as OPENAI_WEBHOOK_SECRET_B, and secretC,
// which no gateway is ever configured with.
var (
	secretB = "whsec_" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xB0, 0x0B}, 16))
	secretC = "whsec_" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xC3}, 32))
)

// bounds are the time limits that keep a broken test from hanging; none of
// them is an assertion.
const (
	ioBound   = time.Minute      // one request, one raw connection
	waitBound = 30 * time.Second // polling for a state a test waits for
)

// e2e is what an end-to-end test starts from.
type e2e struct {
	ctx  context.Context // bounds every process the test starts
	root string          // the repository
	bin  string          // Caddy built with this module
}

// setup skips the test in -short mode and otherwise returns a Caddy binary
// built from the current sources.
func setup(t *testing.T) *e2e {
	t.Helper()
	if testing.Short() {
		t.Skip("builds Caddy with xcaddy and runs it: not in -short mode")
	}
	root, err := caddybuild.FindRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	checkMAC(t)
	ctx := processContext(t)
	return &e2e{ctx: ctx, root: root, bin: caddyBinary(t, ctx, root)}
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

// built is the binary found or built by the first test that asked, so the
// others do not hash the sources again.
var built struct {
	sync.Mutex
	path string
}

// caddyBinary returns a Caddy built with this module, from the cache when
// the sources have not changed.
func caddyBinary(t *testing.T, ctx context.Context, root string) string {
	t.Helper()
	built.Lock()
	defer built.Unlock()
	if built.path != "" {
		return built.path
	}
	// A cold build takes minutes on two cores; it runs under go test's
	// -timeout too, so CI gives the test a longer one than the default 10m.
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	var log bytes.Buffer
	start := time.Now()
	// Under go test -race, Caddy runs with the race detector too, so the
	// reload, fault and hostile tests catch races in the handler.
	bin, err := caddybuild.Cached(ctx, root, caddybuild.Options{Race: raceEnabled}, &log)
	if err != nil {
		t.Fatalf("building Caddy: %v\n%s", err, log.Bytes())
	}
	t.Logf("Caddy binary %s ready in %s", bin, time.Since(start).Round(time.Millisecond))
	built.path = bin
	return bin
}

// client sends every request of the tests.
var client = &http.Client{
	// A fresh connection per request: a refusal that closes its connection
	// cannot affect the next case, and a config reload never meets an idle
	// connection of the old server.
	Transport: &http.Transport{DisableKeepAlives: true},
	Timeout:   ioBound,
}

// ---- the upstream ----

// upstream is testdata/upstream.py, running.
type upstream struct {
	port int
	url  string
}

// startUpstream runs testdata/upstream.py on a free port.
func startUpstream(t *testing.T, e *e2e) *upstream {
	t.Helper()
	return startUpstreamOn(t, e, freeport.Get(t))
}

// startUpstreamOn runs testdata/upstream.py on port, which a test may have
// chosen before, to start the upstream after the gateway.
func startUpstreamOn(t *testing.T, e *e2e, port int) *upstream {
	t.Helper()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 runs the test upstream and must be installed: %v", err)
	}
	cmd := exec.CommandContext(e.ctx, python, filepath.Join(e.root, "testdata", "upstream.py"), strconv.Itoa(port), "--watch-stdin")
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
	var all []record
	getJSON(t, u.url+"/__received", &all)
	return all
}

// count returns how many requests the upstream recorded so far.
func (u *upstream) count(t *testing.T) int {
	t.Helper()
	return len(u.received(t))
}

// release lets the requests held with X-Upstream-Hold: name answer.
func (u *upstream) release(t *testing.T, name string) {
	t.Helper()
	getJSON(t, u.url+"/__release/"+name, new(any))
}

// waitRecorded waits until the upstream recorded a request with webhook-id
// id (a held one, for instance) and returns its record.
func (u *upstream) waitRecorded(t *testing.T, id string) record {
	t.Helper()
	var found record
	webhooktest.WaitFor(t, "the upstream to record "+id, func() bool {
		for _, r := range u.received(t) {
			if ids := r.header("webhook-id"); len(ids) == 1 && ids[0] == id {
				found = r
				return true
			}
		}
		return false
	})
	return found
}

// hold starts a genuine delivery of id that the upstream holds until the
// returned function releases it; when hold returns, the upstream has it.
func hold(t *testing.T, gw *caddyServer, up *upstream, id string, now time.Time) func() {
	t.Helper()
	req := gw.delivery(t, id, now, event(id))
	req.Header.Set("X-Upstream-Hold", id)
	status := make(chan string, 1)
	go func() {
		resp, err := client.Do(req)
		if err != nil {
			status <- err.Error()
			return
		}
		resp.Body.Close()
		status <- resp.Status
	}()
	up.waitRecorded(t, id)
	return func() {
		up.release(t, id)
		if s := <-status; s != "200 OK" {
			t.Errorf("the held delivery was answered %s, want 200 OK", s)
		}
	}
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

// body returns the body the upstream received.
func (r record) body(t *testing.T) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(r.BodyBase64)
	if err != nil {
		t.Fatalf("upstream record body: %v", err)
	}
	return b
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

// ---- Caddy ----

// caddyConfig is what a test varies in the gateway's Caddyfile:
//
//	{ admin …; <Global> }
//	http://127.0.0.1:<port> {
//		<Site>
//		<Directive> { <Handler> }
//		reverse_proxy 127.0.0.1:<upstream> { <Proxy> }
//	}
//
// or, with Routes set, the site's verifying handler and Routes instead of
// the reverse_proxy.
type caddyConfig struct {
	Global       string // global options besides admin
	Site         string // site directives besides the two below
	Directive    string // the verifying handler: "" is openai_webhook
	Handler      string // its block; "" is defaultHandler
	Proxy        string // the reverse_proxy block
	UpstreamPort int
	Routes       string   // the site's directives after openai_webhook, instead of the reverse_proxy
	Sites        string   // more site blocks, after the gateway's
	Env          []string // more of Caddy's environment, NAME=value
}

// caddyServer is a running Caddy.
type caddyServer struct {
	bin    string
	addr   string // the site, host:port
	url    string // the site's base URL
	admin  string // the admin endpoint, host:port
	dir    string // its config, data and log files
	config string // the Caddyfile
	output *syncBuffer
	exited <-chan struct{}
	cmd    *exec.Cmd
}

// startCaddy runs Caddy with cfg, in an environment that holds
// webhooktest.Secret as OPENAI_WEBHOOK_SECRET and secretB as
// OPENAI_WEBHOOK_SECRET_B.
func startCaddy(t *testing.T, e *e2e, cfg caddyConfig) *caddyServer {
	t.Helper()
	dir := t.TempDir()
	c := &caddyServer{
		bin:    e.bin,
		addr:   fmt.Sprintf("127.0.0.1:%d", freeport.Get(t)),
		admin:  fmt.Sprintf("127.0.0.1:%d", freeport.Get(t)),
		dir:    dir,
		config: filepath.Join(dir, "Caddyfile"),
	}
	c.url = "http://" + c.addr
	c.writeConfig(t, cfg)
	c.run(t, e, c.addr, cfg.Env...)
	return c
}

// run starts Caddy on c's config, in an environment that holds
// webhooktest.Secret as OPENAI_WEBHOOK_SECRET, secretB as
// OPENAI_WEBHOOK_SECRET_B, and env, and waits until it listens on addr.
func (c *caddyServer) run(t *testing.T, e *e2e, addr string, env ...string) {
	t.Helper()
	cmd := exec.CommandContext(e.ctx, e.bin, "run", "--config", c.config, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(),
		"OPENAI_WEBHOOK_SECRET="+webhooktest.Secret,
		"OPENAI_WEBHOOK_SECRET_B="+secretB,
		// Caddy's autosaved config and storage stay out of the user's home.
		"XDG_CONFIG_HOME="+filepath.Join(c.dir, "config"),
		"XDG_DATA_HOME="+filepath.Join(c.dir, "data"),
	)
	cmd.Env = append(cmd.Env, env...)
	c.cmd = cmd
	c.output, c.exited = start(t, cmd, "caddy", addr)
}

// kill kills Caddy with SIGKILL, as a crash would, and waits until it is
// gone.
func (c *caddyServer) kill(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.exited:
	case <-time.After(waitBound):
		t.Fatalf("caddy still runs %s after SIGKILL", waitBound)
	}
}

func (c *caddyServer) writeConfig(t *testing.T, cfg caddyConfig) {
	t.Helper()
	if cfg.Handler == "" {
		cfg.Handler = defaultHandler
	}
	if cfg.Directive == "" {
		cfg.Directive = "openai_webhook"
	}
	if cfg.Routes == "" {
		cfg.Routes = fmt.Sprintf("reverse_proxy 127.0.0.1:%d {\n\t\t%s\n\t}", cfg.UpstreamPort, cfg.Proxy)
	}
	caddyfile := fmt.Sprintf(`{
	admin %s
	%s
}

%s {
	%s
	%s {
		%s
	}
	%s
}

%s
`, c.admin, cfg.Global, c.url, cfg.Site, cfg.Directive, cfg.Handler, cfg.Routes, cfg.Sites)
	if err := os.WriteFile(c.config, []byte(caddyfile), 0o644); err != nil {
		t.Fatal(err)
	}
}

// reload replaces the running config with cfg the way an operator does,
// with `caddy reload`, which returns once the new config is running.
func (c *caddyServer) reload(t *testing.T, ctx context.Context, cfg caddyConfig) {
	t.Helper()
	c.writeConfig(t, cfg)
	cmd := exec.CommandContext(ctx, c.bin, "reload", "--config", c.config, "--adapter", "caddyfile", "--address", c.admin)
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("caddy reload: %v\n%s", err, out)
	}
}

// hook is the URL deliveries are POSTed to.
func (c *caddyServer) hook() string { return c.url + hookPath }

// delivery returns a POST of body signed at ts with webhooktest.Secret, as
// OpenAI sends one.
func (c *caddyServer) delivery(t *testing.T, id string, ts time.Time, body []byte) *http.Request {
	t.Helper()
	return c.signedWith(t, webhooktest.Secret, id, ts, body)
}

// signedWith returns a POST of body signed at ts with secret.
func (c *caddyServer) signedWith(t *testing.T, secret, id string, ts time.Time, body []byte) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, c.hook(), bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = webhooktest.Headers(t, secret, id, ts, body)
	req.Header.Set("Content-Type", "application/json")
	return req
}

// request returns a POST of body with the signature headers as given; an
// empty value leaves its header out. It takes no t, so that client
// goroutines can use it.
func (c *caddyServer) request(ctx context.Context, id, ts, sig string, body []byte) *http.Request {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.hook(), bytes.NewReader(body))
	if err != nil {
		panic(err) // a fixed method and URL
	}
	for name, v := range map[string]string{"Webhook-Id": id, "Webhook-Timestamp": ts, "Webhook-Signature": sig} {
		if v != "" {
			req.Header[name] = []string{v}
		}
	}
	req.Header.Set("Content-Type", "application/json")
	return req
}

// checkHealthy checks that Caddy still runs, its admin endpoint answers and
// a genuine delivery goes through to the upstream.
func (c *caddyServer) checkHealthy(t *testing.T, u *upstream) {
	t.Helper()
	select {
	case <-c.exited:
		t.Fatalf("caddy exited")
	default:
	}
	resp, raw := send(t, c.adminRequest(t, "/config/"))
	if resp.StatusCode != http.StatusOK || !json.Valid(raw) {
		t.Fatalf("admin GET /config/: %d %q", resp.StatusCode, raw)
	}
	id := fmt.Sprintf("msg_health_%d", time.Now().UnixNano())
	body := []byte(`{"type":"health.check","data":{"id":"` + id + `"}}`)
	before := u.count(t)
	deliver(t, c.delivery(t, id, time.Now(), body)).checkBody(t, body)
	if n := u.count(t) - before; n != 1 {
		t.Fatalf("a genuine delivery reached the upstream %d times", n)
	}
}

// stop stops Caddy through its admin endpoint and waits until it exited,
// its logs written.
func (c *caddyServer) stop(t *testing.T) {
	t.Helper()
	req := c.adminRequest(t, "/stop")
	req.Method = http.MethodPost
	if resp, raw := send(t, req); resp.StatusCode != http.StatusOK {
		t.Fatalf("admin POST /stop: %d %q", resp.StatusCode, raw)
	}
	select {
	case <-c.exited:
	case <-time.After(waitBound):
		t.Fatalf("caddy still runs %s after POST /stop", waitBound)
	}
}

func (c *caddyServer) adminRequest(t *testing.T, path string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+c.admin+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// Outcomes of metrics.go.
const (
	outcomeForwarded = "forwarded"
	outcomeDuplicate = "duplicate"
	outcomeInFlight  = "in_flight"
	outcomeMalformed = "malformed"
	outcomeStale     = "stale"
	outcomeBadSig    = "bad_signature"
	outcomeTooLarge  = "too_large"
	outcomeUnread    = "unreadable_body"
	outcomeTimeout   = "body_timeout"
	outcomeOverload  = "overloaded"
	outcomeFraming   = "bad_framing"
	outcomeMethod    = "method_not_allowed"
)

// sample is one line of Caddy's /metrics.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// metrics returns the samples the admin endpoint's /metrics gives, of the
// metrics whose names start with prefix.
func (c *caddyServer) metrics(t *testing.T, prefix string) []sample {
	t.Helper()
	resp, raw := send(t, c.adminRequest(t, "/metrics"))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("admin GET /metrics: %d", resp.StatusCode)
	}
	var out []sample
	for line := range strings.Lines(string(raw)) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		head, value, ok := strings.Cut(line, " ")
		if !ok {
			t.Fatalf("metrics line %q", line)
		}
		s := sample{labels: map[string]string{}}
		name, labels, hasLabels := strings.Cut(head, "{")
		s.name = name
		if hasLabels {
			for pair := range strings.SplitSeq(strings.TrimSuffix(labels, "}"), `",`) {
				k, v, ok := strings.Cut(pair, `="`)
				if !ok {
					t.Fatalf("metrics line %q", line)
				}
				s.labels[k] = strings.TrimSuffix(v, `"`)
			}
		}
		var err error
		if s.value, err = strconv.ParseFloat(value, 64); err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out = append(out, s)
	}
	return out
}

// outcomes returns the verifying handlers' requests_total by outcome
// (openai_webhook's and standard_webhooks', every server of the config
// together), from the admin endpoint's /metrics.
func (c *caddyServer) outcomes(t *testing.T) map[string]float64 {
	t.Helper()
	counts := map[string]float64{}
	for _, name := range []string{"caddy_openai_webhook_requests_total", "caddy_standard_webhooks_requests_total"} {
		for _, s := range c.metrics(t, name) {
			counts[s.labels["outcome"]] += s.value
		}
	}
	return counts
}

// waitOutcome waits until the handler counted the outcome more than
// before times: it has finished with a request whose client is gone.
func (c *caddyServer) waitOutcome(t *testing.T, outcome string, before map[string]float64) {
	t.Helper()
	webhooktest.WaitFor(t, "the gateway to count a request as "+outcome, func() bool {
		return c.outcomes(t)[outcome] > before[outcome]
	})
}

// outcomeDelta returns the counts that changed between two outcomes calls.
func outcomeDelta(before, after map[string]float64) map[string]float64 {
	d := map[string]float64{}
	for k, v := range after {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}

// start starts cmd, waits until it accepts connections on addr and stops it
// when the test ends (cmd's context kills it), showing its output if the
// test failed. It returns the process's output and a channel closed when it
// exits.
func start(t *testing.T, cmd *exec.Cmd, name, addr string) (*syncBuffer, <-chan struct{}) {
	t.Helper()
	output, exited := launch(t, cmd, name)
	// Poll until the listener is up: this waits, it asserts nothing.
	deadline := time.Now().Add(waitBound)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return output, exited
		}
		select {
		case <-exited:
			t.Fatalf("%s exited before listening on %s: %v\n%s", name, addr, cmd.ProcessState, output)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening on %s after %s\n%s", name, addr, waitBound, output)
		}
	}
}

// launch starts cmd as start does, without waiting for anything.
func launch(t *testing.T, cmd *exec.Cmd, name string) (*syncBuffer, <-chan struct{}) {
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
		// The process may have been started with a longer-lived context
		// (a parent test's), so stop it here rather than wait for that.
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
		if strings.Contains(output.String(), "WARNING: DATA RACE") {
			t.Errorf("%s found a data race", name)
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, output)
		}
	})
	return output, exited
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

// ---- signing ----

// mac returns the base64 HMAC-SHA256 of "id.ts.body" under secret, with the
// timestamp spelt exactly as given, so a test can sign a header the
// reference library would never write (leading zeros, a sign). It agrees
// with webhooktest.Sign (checkMAC, which setup runs). It takes no t, so that
// client goroutines can sign; the secrets are the tests' own.
func mac(secret, id, ts string, body []byte) string {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		panic("a test secret is not base64: " + err.Error())
	}
	h := hmac.New(sha256.New, key)
	fmt.Fprintf(h, "%s.%s.", id, ts)
	h.Write(body)
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// good is the one correct webhook-signature entry for the gateway's
// secret.
func good(id, ts string, body []byte) string {
	return "v1," + mac(webhooktest.Secret, id, ts, body)
}

// zeroEntry is a well-formed entry that matches nothing.
var zeroEntry = "v1," + base64.StdEncoding.EncodeToString(make([]byte, 32))

// unix spells ts as webhook-timestamp does.
func unix(ts time.Time) string { return strconv.FormatInt(ts.Unix(), 10) }

// checkMAC checks mac against the reference library, for the secrets the
// tests sign with.
func checkMAC(t *testing.T) {
	t.Helper()
	ts := time.Unix(1_750_000_000, 0)
	body := []byte(`{"object":"event"}`)
	for _, secret := range []string{webhooktest.Secret, secretB, secretC} {
		want := webhooktest.Sign(t, secret, "msg_ref", ts, body)
		if got := "v1," + mac(secret, "msg_ref", unix(ts), body); got != want {
			t.Errorf("mac: %s, reference library: %s", got, want)
		}
	}
}

// ---- sending ----

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

// getJSON GETs url, which must answer 200, into v.
func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
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

// rawEnd says what a raw sender does once its bytes are written.
type rawEnd int

const (
	readAnswer rawEnd = iota // read the answer
	halfClose                // close the sending side (the server reads EOF), then read the answer
	hangUp                   // close the connection: there is no answer to read
)

// sendRaw writes msg to addr on a new connection, byte for byte, for what
// Go's client refuses to send (repeated headers, bad framing, a body that
// ends early). It returns the answer, or nil for hangUp.
func sendRaw(t *testing.T, addr string, msg []byte, end rawEnd) *http.Response {
	t.Helper()
	conn := dialRaw(t, addr, msg)
	defer conn.Close()
	switch end {
	case hangUp:
		return nil
	case halfClose:
		if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
	}
	return readRawResponse(t, bufio.NewReader(conn))
}

// dialRaw opens a connection to addr and writes msg to it; the caller
// closes it.
func dialRaw(t *testing.T, addr string, msg []byte) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, ioBound)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(ioBound))
	if _, err := conn.Write(msg); err != nil {
		conn.Close()
		t.Fatalf("writing the request: %v", err)
	}
	return conn
}

// readRawResponse reads one response, body included, from br.
func readRawResponse(t *testing.T, br *bufio.Reader) *http.Response {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the answer's body: %v", err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(raw))
	return resp
}

// rawMessage returns an HTTP/1.1 request: the request line, the header
// lines as given (each "Name: value", repeated names kept) after a Host
// line, and then tail as is (a body, chunks, or nothing).
func rawMessage(requestLine, host string, lines []string, tail []byte) []byte {
	var b bytes.Buffer
	b.WriteString(requestLine + "\r\n")
	b.WriteString("Host: " + host + "\r\n")
	for _, l := range lines {
		b.WriteString(l + "\r\n")
	}
	b.WriteString("\r\n")
	b.Write(tail)
	return b.Bytes()
}

// post is the request line of a delivery.
const post = "POST " + hookPath + " HTTP/1.1"

// lines are the header lines of a delivery, for raw senders to edit:
// webhook-id, webhook-timestamp, webhook-signature, Content-Type,
// Content-Length.
func lines(id, ts, sig string, body []byte) []string {
	return []string{
		"webhook-id: " + id,
		"webhook-timestamp: " + ts,
		"webhook-signature: " + sig,
		"Content-Type: application/json",
		"Content-Length: " + strconv.Itoa(len(body)),
	}
}

// chunkedLines are lines with Content-Length replaced by chunked framing.
func chunkedLines(hdr []string) []string {
	hdr = slices.DeleteFunc(slices.Clone(hdr), func(l string) bool { return strings.HasPrefix(l, "Content-Length:") })
	return append(hdr, "Transfer-Encoding: chunked")
}

// replace returns hdr with the line starting with prefix replaced by with
// (several lines, or none).
func replace(hdr []string, prefix string, with ...string) []string {
	var out []string
	for _, l := range hdr {
		if strings.HasPrefix(l, prefix) {
			out = append(out, with...)
		} else {
			out = append(out, l)
		}
	}
	return out
}

// chunked returns body as chunks of at most size bytes, without the last
// chunk.
func chunked(body []byte, size int) []byte {
	var b bytes.Buffer
	for len(body) > 0 {
		n := min(size, len(body))
		fmt.Fprintf(&b, "%x\r\n", n)
		b.Write(body[:n])
		b.WriteString("\r\n")
		body = body[n:]
	}
	return b.Bytes()
}

// ---- bodies and ids ----

// event is a delivery body that names id, in the shape OpenAI sends.
func event(id string) []byte {
	return []byte(`{"object":"event","type":"response.completed","data":{"id":"` + id + `"}}`)
}

// slug turns a test name into webhook-id characters.
func slug(name string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, name)
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
