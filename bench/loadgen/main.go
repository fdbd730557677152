// Command loadgen drives the openai_webhook gateway (or a plain
// reverse_proxy) with signed webhook deliveries over keep-alive HTTP/1.1
// connections, for a bounded time and a bounded number of requests.
//
//	go run ./bench/loadgen -url http://127.0.0.1:8080/ -mode throughput -duration 10s -concurrency 32 -size 1KiB
//
// Every request is signed before the timed phase starts, each with its own
// webhook-id and a fresh timestamp, so signing is not what is measured and
// replay refusal never short-circuits a valid request. Modes:
//
//   - throughput: valid unique deliveries only; requests/s, latency
//     percentiles, errors. Each must be answered 200 with the upstream's
//     non-empty answer.
//   - mix: valid, tampered, stale and replayed deliveries from concurrent
//     clients, each with a known verdict: valid → 200 from the upstream,
//     tampered → 401, stale → 401, a replay of a delivery already answered
//     200 → 200 with an empty body, not forwarded. Counts outcomes per kind
//     and wrong verdicts (must be 0); with -upstream-stats, checks that the
//     upstream received exactly the valid deliveries accepted, byte for byte.
//   - refuse: a flood of unsigned (-refuse-kind unsigned) or stale
//     (-refuse-kind stale) requests declaring a large body (-size, e.g.
//     1MiB) by Content-Length; each must be answered 401. The client counts
//     the bytes it actually wrote to its sockets.
//
// -json prints the result as one JSON object on stdout. The exit status is
// 1 when a check failed (a wrong verdict, a transport error, a forwarding
// mismatch), 2 on a usage or setup error.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
)

type config struct {
	url           string
	secret        string
	mode          string
	duration      time.Duration
	maxRequests   int
	concurrency   int
	size          int
	json          bool
	upstreamStats string
	label         string
	refuseKind    string
	mix           string
	tolerance     time.Duration
	timeout       time.Duration
	seed          uint64
	queued        bool
}

func main() {
	os.Exit(run())
}

func run() int {
	var cfg config
	var size string
	flag.StringVar(&cfg.url, "url", "http://127.0.0.1:8080/", "`URL` to POST to (loopback hosts only)")
	flag.StringVar(&cfg.secret, "secret", os.Getenv("OPENAI_WEBHOOK_SECRET"), "signing `secret` (whsec_...); default $OPENAI_WEBHOOK_SECRET")
	flag.StringVar(&cfg.mode, "mode", "throughput", "`mode`: throughput, mix or refuse")
	flag.DurationVar(&cfg.duration, "duration", 10*time.Second, "length of the timed phase")
	flag.IntVar(&cfg.maxRequests, "max-requests", 100_000, "most requests sent (also how many are pre-signed)")
	flag.IntVar(&cfg.concurrency, "concurrency", 16, "concurrent clients, each with its own keep-alive connection")
	flag.StringVar(&size, "size", "1KiB", "body `size`: bytes or with a unit (1KiB, 64KiB, 1MiB); for refuse, the declared Content-Length")
	flag.BoolVar(&cfg.json, "json", false, "print the result as JSON on stdout")
	flag.StringVar(&cfg.upstreamStats, "upstream-stats", "", "`URL` of the bench upstream's /__stats, read before and after the run")
	flag.StringVar(&cfg.label, "label", "", "free-form `label` copied into the result (e.g. plain, webhook)")
	flag.StringVar(&cfg.refuseKind, "refuse-kind", "unsigned", "refuse mode: `kind` of request, unsigned or stale")
	flag.StringVar(&cfg.mix, "mix", "valid=55,tampered=15,stale=15,replay=15", "mix mode: `weights` of the kinds")
	flag.DurationVar(&cfg.tolerance, "tolerance", verifier.DefaultTolerance, "the gateway's tolerance: stale requests are signed 2× it in the past, and the run stops before the first signature gets this old")
	flag.DurationVar(&cfg.timeout, "timeout", 30*time.Second, "per-request timeout")
	flag.Uint64Var(&cfg.seed, "seed", 1, "seed of the kind mix and the replay choices")
	flag.BoolVar(&cfg.queued, "queued", false, "the gateway is in queue mode: it answers a valid delivery 200 with no body, once stored")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "loadgen: unexpected arguments %q\n", flag.Args())
		return 2
	}
	var err error
	if cfg.size, err = parseSize(size); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen: -size:", err)
		return 2
	}
	res, err := execute(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		return 2
	}
	if cfg.json {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(res)
	} else {
		res.print(os.Stdout)
	}
	if !res.OK {
		fmt.Fprintf(os.Stderr, "loadgen: FAILED: %s\n", strings.Join(res.Failures, "; "))
		return 1
	}
	return 0
}

// execute checks the configuration, signs the corpus and runs the timed phase.
func execute(cfg config) (*result, error) {
	if err := checkLoopbackURL(cfg.url); err != nil {
		return nil, fmt.Errorf("-url: %w", err)
	}
	if cfg.upstreamStats != "" {
		if err := checkLoopbackURL(cfg.upstreamStats); err != nil {
			return nil, fmt.Errorf("-upstream-stats: %w", err)
		}
	}
	switch {
	case cfg.duration <= 0 || cfg.duration > 10*time.Minute:
		return nil, fmt.Errorf("-duration %s: want more than 0 and at most 10m", cfg.duration)
	case cfg.maxRequests <= 0 || cfg.maxRequests > 10_000_000:
		return nil, fmt.Errorf("-max-requests %d: want 1 to 10000000", cfg.maxRequests)
	case cfg.concurrency <= 0 || cfg.concurrency > 4096:
		return nil, fmt.Errorf("-concurrency %d: want 1 to 4096", cfg.concurrency)
	case cfg.size < 0 || cfg.size > 1<<30:
		return nil, fmt.Errorf("-size %d: want 0 to 1GiB", cfg.size)
	case cfg.tolerance < 30*time.Second:
		return nil, fmt.Errorf("-tolerance %s: want at least 30s", cfg.tolerance)
	case cfg.timeout <= 0:
		return nil, fmt.Errorf("-timeout %s: want more than 0", cfg.timeout)
	}
	key, err := verifier.ParseSecret(cfg.secret)
	if err != nil {
		return nil, fmt.Errorf("-secret (or $OPENAI_WEBHOOK_SECRET): %w", err)
	}

	var weights [numKinds]int
	bodySize := cfg.size
	switch cfg.mode {
	case "throughput":
		weights[kindValid] = 1
	case "mix":
		if weights, err = parseMix(cfg.mix); err != nil {
			return nil, fmt.Errorf("-mix: %w", err)
		}
	case "refuse":
		k, err := parseKind(cfg.refuseKind)
		if err != nil || (k != kindUnsigned && k != kindStale) {
			return nil, fmt.Errorf("-refuse-kind %q: want unsigned or stale", cfg.refuseKind)
		}
		weights[k] = 1
		// The declared body is streamed from a filler, never held: the
		// signature of a stale request covers a small event, which does not
		// matter since a stale request must be refused before its body.
		bodySize = 0
	default:
		return nil, fmt.Errorf("-mode %q: want throughput, mix or refuse", cfg.mode)
	}

	corp, err := newCorpus(key, cfg.maxRequests, bodySize, weights, cfg.tolerance, cfg.seed)
	if err != nil {
		return nil, err
	}
	if !cfg.json {
		fmt.Printf("signed %d requests (%d distinct bodies of %d bytes) in %s\n",
			len(corp.jobs), len(corp.bodies), len(corp.bodies[0]), corp.signTook.Round(time.Millisecond))
	} else {
		fmt.Fprintf(os.Stderr, "loadgen: signed %d requests (%d distinct bodies of %d bytes) in %s\n",
			len(corp.jobs), len(corp.bodies), len(corp.bodies[0]), corp.signTook.Round(time.Millisecond))
	}
	g := newGenerator(cfg, corp)
	return g.run()
}

// generator runs the timed phase.
type generator struct {
	cfg    config
	corp   *corpus
	client *http.Client
	conns  connCounters
	// delivered holds recently delivered valid jobs, which replays copy.
	delivered deliveredRing
	next      atomic.Int64
	stop      atomic.Pointer[string]
}

func newGenerator(cfg config, corp *corpus) *generator {
	g := &generator{cfg: cfg, corp: corp}
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			g.conns.dials.Add(1)
			return &countingConn{Conn: c, n: &g.conns}, nil
		},
		// One idle connection kept per client at least, so every client
		// reuses its connection (HTTP/1.1 keep-alive); plain http:// URLs
		// never negotiate HTTP/2.
		MaxIdleConns:          2 * cfg.concurrency,
		MaxIdleConnsPerHost:   2 * cfg.concurrency,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		ResponseHeaderTimeout: cfg.timeout,
		WriteBufferSize:       64 << 10,
	}
	g.client = &http.Client{
		Transport: tr,
		Timeout:   cfg.timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	g.delivered.buf = make([]int32, 0, 4096)
	return g
}

func (g *generator) setStop(reason string) { g.stop.CompareAndSwap(nil, &reason) }

func (g *generator) run() (*result, error) {
	cfg := g.cfg
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	var before *upstreamStats
	if cfg.upstreamStats != "" {
		s, err := fetchUpstreamStats(ctx, cfg.upstreamStats)
		if err != nil {
			return nil, fmt.Errorf("upstream stats before the run: %w", err)
		}
		before = s
	}

	start := time.Now()
	end := start.Add(cfg.duration)
	// Every pre-signed timestamp must still be fresh when it is sent; the
	// earliest was taken when signing started.
	fresh := g.corp.signedAt.Add(cfg.tolerance - 15*time.Second)
	if !fresh.After(start) {
		return nil, fmt.Errorf("signing took %s: the signatures are no longer fresh; lower -max-requests", g.corp.signTook)
	}
	endReason := "duration"
	if fresh.Before(end) {
		end, endReason = fresh, "freshness (the pre-signed timestamps would turn stale; lower -max-requests or -duration)"
		fmt.Fprintf(os.Stderr, "loadgen: the timed phase is cut to %s to keep the signatures fresh\n", end.Sub(start).Round(time.Millisecond))
	}
	// A hard bound on the whole phase, requests in flight included.
	ctx, cancelPhase := context.WithDeadline(ctx, end.Add(cfg.timeout+5*time.Second))
	defer cancelPhase()

	workers := make([]*worker, cfg.concurrency)
	var wg sync.WaitGroup
	for w := range workers {
		workers[w] = &worker{
			g:   g,
			rng: rand.New(rand.NewPCG(cfg.seed, uint64(w)+1)),
		}
		wg.Go(func() { workers[w].loop(ctx, end, endReason) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	if ctx.Err() != nil {
		g.setStop("interrupted or timed out")
	}

	res := g.collect(workers, elapsed)
	if cfg.upstreamStats != "" {
		// The upstream may still be reading a body whose response the
		// client gave up on; a short settle keeps the check honest.
		time.Sleep(200 * time.Millisecond)
		after, err := fetchUpstreamStats(context.Background(), cfg.upstreamStats)
		if err != nil {
			return nil, fmt.Errorf("upstream stats after the run: %w", err)
		}
		res.Upstream = &upstreamDelta{
			Requests:   after.Requests - before.Requests,
			Bytes:      after.Bytes - before.Bytes,
			ReadErrors: after.ReadErrors - before.ReadErrors,
		}
	}
	res.check()
	return res, nil
}

// worker is one client: it sends one request at a time.
type worker struct {
	g   *generator
	rng *rand.Rand
	buf [512]byte

	latencies []time.Duration
	kinds     [numKinds]kindCounts
	// acceptedBytes sums the bodies of valid deliveries answered 200.
	acceptedBytes int64
	errSamples    []string
}

type kindCounts struct {
	sent, expected, wrong, errors, skipped int64
	outcomes                               map[string]int64
}

func (w *worker) loop(ctx context.Context, end time.Time, endReason string) {
	g := w.g
	n := int64(len(g.corp.jobs))
	for {
		if ctx.Err() != nil {
			return
		}
		if !time.Now().Before(end) {
			g.setStop(endReason)
			return
		}
		i := g.next.Add(1) - 1
		if i >= n {
			g.setStop("max-requests")
			return
		}
		w.do(ctx, int(i))
	}
}

// do sends job i and records its outcome against the expected verdict.
func (w *worker) do(ctx context.Context, i int) {
	g, corp := w.g, w.g.corp
	k := corp.jobs[i].kind
	src := i // the job whose headers and body are sent
	if k == kindReplay {
		var ok bool
		if src, ok = g.delivered.pick(w.rng); !ok {
			w.count(k).skipped++ // nothing delivered yet to replay
			return
		}
	}
	j := &corp.jobs[src]

	var req *http.Request
	var err error
	if g.cfg.mode == "refuse" {
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, g.cfg.url, nil)
		if err == nil {
			req.Body = io.NopCloser(&fillReader{remain: int64(g.cfg.size)})
			req.ContentLength = int64(g.cfg.size)
		}
	} else {
		body := corp.bodies[j.body]
		if j.kind == kindTampered {
			body = corp.tampered[j.body]
		}
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, g.cfg.url, bytes.NewReader(body))
	}
	if err != nil {
		panic(err) // the URL was parsed already
	}
	req.Header = http.Header{"Content-Type": {"application/json"}}
	if j.kind != kindUnsigned {
		id, ts, sig := corp.headers(src)
		req.Header["Webhook-Id"] = []string{id}
		req.Header["Webhook-Timestamp"] = []string{ts}
		req.Header["Webhook-Signature"] = []string{sig}
	}

	c := w.count(k)
	c.sent++
	t0 := time.Now()
	resp, err := g.client.Do(req)
	if err != nil {
		w.fail(c, err)
		return
	}
	n, _ := io.ReadFull(resp.Body, w.buf[:])
	_, rerr := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if rerr != nil {
		w.fail(c, fmt.Errorf("reading the response: %w", rerr))
		return
	}
	w.latencies = append(w.latencies, time.Since(t0))

	outcome := strconv.Itoa(resp.StatusCode)
	if resp.StatusCode == http.StatusOK {
		if n == 0 {
			outcome = "200 empty"
		} else {
			outcome = "200 with body"
		}
	}
	c.outcomes[outcome]++
	var right bool
	switch k {
	case kindValid:
		right = outcome == "200 with body"
		if g.cfg.queued {
			right = outcome == "200 empty"
		}
		if right {
			g.delivered.add(i)
			w.acceptedBytes += int64(len(corp.bodies[j.body]))
		}
	case kindReplay:
		right = outcome == "200 empty"
	default: // tampered, stale, unsigned
		right = resp.StatusCode == http.StatusUnauthorized
	}
	if right {
		c.expected++
	} else {
		c.wrong++
	}
}

func (w *worker) count(k kind) *kindCounts {
	c := &w.kinds[k]
	if c.outcomes == nil {
		c.outcomes = map[string]int64{}
	}
	return c
}

func (w *worker) fail(c *kindCounts, err error) {
	c.errors++
	c.outcomes["error"]++
	if len(w.errSamples) < 3 {
		w.errSamples = append(w.errSamples, err.Error())
	}
}

// deliveredRing keeps the most recent delivered valid jobs.
type deliveredRing struct {
	mu  sync.Mutex
	buf []int32
	pos int
}

func (r *deliveredRing) add(i int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.buf) < cap(r.buf) {
		r.buf = append(r.buf, int32(i))
		r.pos = len(r.buf) % cap(r.buf)
		return
	}
	r.buf[r.pos] = int32(i)
	r.pos = (r.pos + 1) % len(r.buf)
}

// pick returns, half of the time, the delivery answered last (replayed
// from another connection the moment after its 200), otherwise a random
// recent one. Only recent ones are kept so that none has left the gateway's
// replay store (capacity 100000 by default) when it is replayed.
func (r *deliveredRing) pick(rng *rand.Rand) (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.buf) == 0 {
		return 0, false
	}
	if rng.IntN(2) == 0 {
		last := (r.pos - 1 + len(r.buf)) % len(r.buf)
		return int(r.buf[last]), true
	}
	return int(r.buf[rng.IntN(len(r.buf))]), true
}

// fillReader streams a body of remain bytes without holding it.
type fillReader struct{ remain int64 }

var filler = bytes.Repeat([]byte("x"), 32<<10)

func (r *fillReader) Read(p []byte) (int, error) {
	if r.remain <= 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(int64(len(p)), r.remain)], filler)
	r.remain -= int64(n)
	return n, nil
}

// connCounters count what the client's connections carried.
type connCounters struct {
	dials, written, read atomic.Int64
}

type countingConn struct {
	net.Conn
	n *connCounters
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.written.Add(int64(n))
	return n, err
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.read.Add(int64(n))
	return n, err
}

type upstreamStats struct {
	Requests   int64 `json:"requests"`
	Bytes      int64 `json:"bytes"`
	ReadErrors int64 `json:"read_errors"`
}

func fetchUpstreamStats(ctx context.Context, u string) (*upstreamStats, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	var s upstreamStats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	return &s, nil
}

// checkLoopbackURL refuses URLs that are not http:// to a loopback address:
// the benchmarks never leave the machine.
func checkLoopbackURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if u.Scheme != "http" {
		return fmt.Errorf("%q: want an http:// URL", raw)
	}
	host := u.Hostname()
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q: the host must be a loopback IP (127.0.0.1) or localhost", raw)
	}
	return nil
}

// parseSize parses "1024", "1KiB", "64KiB", "1MiB", "1GiB" (also KB/MB as
// powers of 1000 and k/K/M as powers of 1024).
func parseSize(s string) (int, error) {
	units := []struct {
		suffix string
		mult   int
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
		{"KB", 1000}, {"MB", 1000_000}, {"GB", 1000_000_000},
		{"k", 1 << 10}, {"K", 1 << 10}, {"M", 1 << 20}, {"B", 1},
	}
	mult := 1
	num := s
	for _, u := range units {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = rest, u.mult
			break
		}
	}
	n, err := strconv.Atoi(strings.TrimSpace(num))
	if err != nil || n < 0 || n > (1<<30)/mult {
		return 0, fmt.Errorf("%q is not a size up to 1GiB", s)
	}
	return n * mult, nil
}

// parseMix parses "valid=55,tampered=15,stale=15,replay=15".
func parseMix(s string) ([numKinds]int, error) {
	var w [numKinds]int
	for part := range strings.SplitSeq(s, ",") {
		name, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return w, fmt.Errorf("%q: want kind=weight", part)
		}
		k, err := parseKind(name)
		if err != nil {
			return w, err
		}
		n, err := strconv.Atoi(val)
		if err != nil || n < 0 {
			return w, fmt.Errorf("%q: the weight must be a non-negative integer", part)
		}
		w[k] = n
	}
	if w[kindReplay] > 0 && w[kindValid] == 0 {
		return w, errors.New("replays need valid deliveries to copy")
	}
	return w, nil
}

// result is what a run measured.
type result struct {
	Mode          string               `json:"mode"`
	Label         string               `json:"label,omitempty"`
	URL           string               `json:"url"`
	Size          int                  `json:"size"` // body bytes; for refuse, the declared Content-Length
	Concurrency   int                  `json:"concurrency"`
	DurationS     float64              `json:"duration_s"` // asked for
	MaxRequests   int                  `json:"max_requests"`
	Presigned     int                  `json:"presigned"`
	DistinctBody  int                  `json:"distinct_bodies"`
	SignS         float64              `json:"sign_s"`
	ElapsedS      float64              `json:"elapsed_s"` // the timed phase as it ran
	StopReason    string               `json:"stop_reason"`
	Sent          int64                `json:"sent"`
	Responses     int64                `json:"responses"`
	Errors        int64                `json:"errors"`
	ErrorSamples  []string             `json:"error_samples,omitempty"`
	RequestsPerS  float64              `json:"requests_per_s"` // responses per second of the timed phase
	LatencyMs     latency              `json:"latency_ms"`
	Kinds         map[string]kindStats `json:"kinds"`
	WrongVerdicts int64                `json:"wrong_verdicts"`
	Client        clientStats          `json:"client"`
	Upstream      *upstreamDelta       `json:"upstream,omitempty"`
	Forwarding    *forwardCheck        `json:"forwarding,omitempty"`
	OK            bool                 `json:"ok"`
	Failures      []string             `json:"failures,omitempty"`

	acceptedBytes int64
}

type latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

type kindStats struct {
	Sent     int64            `json:"sent"`
	Expected int64            `json:"expected_verdict"`
	Wrong    int64            `json:"wrong_verdict"`
	Errors   int64            `json:"errors"`
	Skipped  int64            `json:"skipped,omitempty"`
	Outcomes map[string]int64 `json:"outcomes"`
}

type clientStats struct {
	Dials           int64   `json:"dials"`
	BytesWritten    int64   `json:"bytes_written"`
	BytesRead       int64   `json:"bytes_read"`
	WrittenPerReqKB float64 `json:"written_per_request_kib"`
}

type upstreamDelta struct {
	Requests   int64 `json:"requests"`
	Bytes      int64 `json:"bytes"`
	ReadErrors int64 `json:"read_errors"`
}

type forwardCheck struct {
	Accepted       int64 `json:"accepted"`        // valid deliveries answered 200 by the upstream
	Forwarded      int64 `json:"forwarded"`       // requests the upstream received
	AcceptedBytes  int64 `json:"accepted_bytes"`  // their body bytes
	ForwardedBytes int64 `json:"forwarded_bytes"` // body bytes the upstream received
	OK             bool  `json:"ok"`
}

func (g *generator) collect(workers []*worker, elapsed time.Duration) *result {
	cfg := g.cfg
	res := &result{
		Mode: cfg.mode, Label: cfg.label, URL: cfg.url, Size: cfg.size, Concurrency: cfg.concurrency,
		DurationS: cfg.duration.Seconds(), MaxRequests: cfg.maxRequests,
		Presigned: len(g.corp.jobs), DistinctBody: len(g.corp.bodies), SignS: g.corp.signTook.Seconds(),
		ElapsedS: elapsed.Seconds(), Kinds: map[string]kindStats{},
	}
	if r := g.stop.Load(); r != nil {
		res.StopReason = *r
	}
	var lat []time.Duration
	for _, w := range workers {
		lat = append(lat, w.latencies...)
		res.acceptedBytes += w.acceptedBytes
		for _, e := range w.errSamples {
			if len(res.ErrorSamples) < 5 && !slices.Contains(res.ErrorSamples, e) {
				res.ErrorSamples = append(res.ErrorSamples, e)
			}
		}
		for k := range numKinds {
			c := w.kinds[k]
			if c.outcomes == nil {
				continue
			}
			s := res.Kinds[k.String()]
			if s.Outcomes == nil {
				s.Outcomes = map[string]int64{}
			}
			s.Sent += c.sent
			s.Expected += c.expected
			s.Wrong += c.wrong
			s.Errors += c.errors
			s.Skipped += c.skipped
			for o, n := range c.outcomes {
				s.Outcomes[o] += n
			}
			res.Kinds[k.String()] = s
		}
	}
	for _, s := range res.Kinds {
		res.Sent += s.Sent
		res.Errors += s.Errors
		res.WrongVerdicts += s.Wrong
	}
	res.Responses = int64(len(lat))
	if elapsed > 0 {
		res.RequestsPerS = float64(res.Responses) / elapsed.Seconds()
	}
	if len(lat) > 0 {
		sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
		var sum time.Duration
		for _, d := range lat {
			sum += d
		}
		q := func(p float64) float64 {
			i := int(float64(len(lat))*p+0.999999) - 1
			return ms(lat[max(0, min(i, len(lat)-1))])
		}
		res.LatencyMs = latency{P50: q(0.50), P90: q(0.90), P99: q(0.99), Max: ms(lat[len(lat)-1]), Mean: ms(sum / time.Duration(len(lat)))}
	}
	res.Client = clientStats{Dials: g.conns.dials.Load(), BytesWritten: g.conns.written.Load(), BytesRead: g.conns.read.Load()}
	if res.Sent > 0 {
		res.Client.WrittenPerReqKB = float64(res.Client.BytesWritten) / float64(res.Sent) / 1024
	}
	return res
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// check sets OK and Failures.
func (r *result) check() {
	if r.WrongVerdicts > 0 {
		r.Failures = append(r.Failures, fmt.Sprintf("%d wrong verdicts", r.WrongVerdicts))
	}
	// A refusal made before the body is read closes the connection while a
	// refuse-mode client is still writing its large body: the client may see
	// a reset instead of the 401. That is the gateway working as designed.
	if r.Errors > 0 && r.Mode != "refuse" {
		r.Failures = append(r.Failures, fmt.Sprintf("%d transport errors", r.Errors))
	}
	if r.Responses == 0 {
		r.Failures = append(r.Failures, "no response at all")
	}
	if r.Upstream != nil {
		switch r.Mode {
		case "mix", "throughput":
			accepted := r.Kinds[kindValid.String()].Expected
			r.Forwarding = &forwardCheck{
				Accepted: accepted, Forwarded: r.Upstream.Requests,
				AcceptedBytes: r.acceptedBytes, ForwardedBytes: r.Upstream.Bytes,
			}
			r.Forwarding.OK = accepted == r.Upstream.Requests && r.acceptedBytes == r.Upstream.Bytes
			if !r.Forwarding.OK {
				r.Failures = append(r.Failures, fmt.Sprintf("the upstream received %d requests (%d body bytes), want the %d valid deliveries accepted (%d bytes)",
					r.Upstream.Requests, r.Upstream.Bytes, accepted, r.acceptedBytes))
			}
		case "refuse":
			if r.Upstream.Requests != 0 || r.Upstream.Bytes != 0 {
				r.Failures = append(r.Failures, fmt.Sprintf("refused requests reached the upstream: %d requests, %d bytes", r.Upstream.Requests, r.Upstream.Bytes))
			}
		}
	}
	r.OK = len(r.Failures) == 0
}

func (r *result) print(w io.Writer) {
	fmt.Fprintf(w, "mode %s%s: %s, body %d bytes, concurrency %d\n", r.Mode, labelSuffix(r.Label), r.URL, r.Size, r.Concurrency)
	fmt.Fprintf(w, "timed phase: %.2fs (asked %.0fs, stopped by %s), %d sent, %d responses, %d transport errors\n",
		r.ElapsedS, r.DurationS, r.StopReason, r.Sent, r.Responses, r.Errors)
	fmt.Fprintf(w, "throughput: %.0f requests/s; latency ms p50 %.3f p90 %.3f p99 %.3f max %.3f mean %.3f\n",
		r.RequestsPerS, r.LatencyMs.P50, r.LatencyMs.P90, r.LatencyMs.P99, r.LatencyMs.Max, r.LatencyMs.Mean)
	for k := range numKinds {
		s, ok := r.Kinds[k.String()]
		if !ok {
			continue
		}
		outcomes := make([]string, 0, len(s.Outcomes))
		for o, n := range s.Outcomes {
			outcomes = append(outcomes, fmt.Sprintf("%s: %d", o, n))
		}
		sort.Strings(outcomes)
		skipped := ""
		if s.Skipped > 0 {
			skipped = fmt.Sprintf(", %d skipped (nothing delivered yet)", s.Skipped)
		}
		fmt.Fprintf(w, "  %-9s sent %d, expected verdict %d, wrong %d, errors %d%s [%s]\n",
			k, s.Sent, s.Expected, s.Wrong, s.Errors, skipped, strings.Join(outcomes, ", "))
	}
	fmt.Fprintf(w, "wrong verdicts: %d\n", r.WrongVerdicts)
	fmt.Fprintf(w, "client: %d connections dialed, %d bytes written (%.1f KiB per request), %d bytes read\n",
		r.Client.Dials, r.Client.BytesWritten, r.Client.WrittenPerReqKB, r.Client.BytesRead)
	if r.Upstream != nil {
		fmt.Fprintf(w, "upstream received: %d requests, %d body bytes, %d unreadable bodies\n", r.Upstream.Requests, r.Upstream.Bytes, r.Upstream.ReadErrors)
	}
	if f := r.Forwarding; f != nil {
		fmt.Fprintf(w, "forwarded vs accepted: %d/%d requests, %d/%d bytes: %s\n", f.Forwarded, f.Accepted, f.ForwardedBytes, f.AcceptedBytes, okString(f.OK))
	}
	for _, e := range r.ErrorSamples {
		fmt.Fprintf(w, "error sample: %s\n", e)
	}
	fmt.Fprintf(w, "result: %s\n", okString(r.OK))
}

func labelSuffix(l string) string {
	if l == "" {
		return ""
	}
	return " (" + l + ")"
}

func okString(ok bool) string {
	if ok {
		return "OK"
	}
	return "FAILED"
}
