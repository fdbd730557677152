package openaiwebhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/internal/verifier"
	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
	"github.com/webhookgate/caddy-openai-webhook/replaystore"
)

// socketBody is a reusable request body that, like a connection, can only
// be Read: no WriteTo shortcut lets a consumer skip copying it out.
type socketBody struct{ r bytes.Reader }

func (s *socketBody) Read(p []byte) (int, error) { return s.r.Read(p) }
func (*socketBody) Close() error                 { return nil }

// BenchmarkServeHTTP measures one delivery through the handler as Caddy's
// server runs it: a request context that ends once the handler returned
// (which gives the body back to its pools), the next handler draining the
// verified body, and replay refusal on with the default memory store, each
// delivery a new claim. Three setups at each size:
//
//   - hmac-stream: the floor of any verifying handler, the body read
//     through one reused buffer into one reused HMAC;
//   - harness: what each request costs with no handler (its context and
//     request, the drain): subtract it from the next;
//   - openai_webhook: the handler.
//
// The handler's own cost per delivery, in ns and allocations, is
// openai_webhook minus harness; TestAllocationsPerDelivery holds the
// allocations to their budget.
func BenchmarkServeHTTP(b *testing.B) {
	for _, size := range []int{1 << 10, 64 << 10, 1 << 20} {
		body := bytes.Repeat([]byte("x"), size)
		name := fmt.Sprintf("%dKiB", size>>10)
		b.Run(name+"/hmac-stream", func(b *testing.B) {
			key, err := verifier.ParseSecret(webhooktest.Secret)
			if err != nil {
				b.Fatal(err)
			}
			mac := hmac.New(sha256.New, key)
			buf := make([]byte, chunkSize)
			src := &socketBody{}
			var sum [sha256.Size]byte
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				src.r.Reset(body)
				mac.Reset()
				if _, err := io.CopyBuffer(mac, src, buf); err != nil {
					b.Fatal(err)
				}
				mac.Sum(sum[:0])
			}
		})
		// Made before the runs, so that what provisioning logs (a replay
		// window this short is warned of) does not cut a result line.
		d := newDeliveries(b, body)
		for _, setup := range []string{"harness", "openai_webhook"} {
			b.Run(name+"/"+setup, func(b *testing.B) {
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					if err := d.next(setup == "harness"); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// deliveries sends signed deliveries of one body through a handler as
// Caddy's server would, for the benchmark and the allocation budget.
type deliveries struct {
	h       *Handler
	body    []byte
	headers []http.Header // signed, each with its own webhook-id
	i       int
	src     socketBody
	w       http.ResponseWriter
	base    context.Context
	drain   caddyhttp.Handler
}

// newDeliveries provisions a handler with replay refusal on (a window of
// 1ns: every id is claimed anew when the cycle of signed headers comes
// round again, so each delivery takes the claim-and-deliver path) and
// signs 1024 deliveries of body.
func newDeliveries(tb testing.TB, body []byte) *deliveries {
	h, _ := provisioned(tb, &Handler{Secrets: []string{testSecret}, MaxSize: 2 << 20, ReplayWindow: 1})
	h.logger = zap.NewNop()
	d := &deliveries{h: h, body: body, w: deadlineRecorder{httptest.NewRecorder()}, base: context.Background()}
	for i := range 1024 {
		d.headers = append(d.headers, webhooktest.Headers(tb, webhooktest.Secret, fmt.Sprintf("wh_%032x", i), time.Now(), body))
	}
	buf := make([]byte, chunkSize)
	d.drain = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		_, err := io.CopyBuffer(io.Discard, r.Body, buf)
		w.WriteHeader(http.StatusOK)
		return err
	})
	return d
}

// deadlineRecorder is a response recorder that takes deadlines, as the
// connection of Caddy's HTTP/1 and HTTP/2 servers does (the handler sets a
// read deadline for the body).
type deadlineRecorder struct{ *httptest.ResponseRecorder }

func (deadlineRecorder) SetReadDeadline(time.Time) error  { return nil }
func (deadlineRecorder) SetWriteDeadline(time.Time) error { return nil }

// next sends the next delivery through the handler, or straight to the
// drain for the harness alone.
func (d *deliveries) next(harness bool) error {
	d.src.r.Reset(d.body)
	ctx, end := context.WithCancel(context.WithValue(d.base, caddy.ReplacerCtxKey, caddy.NewReplacer()))
	defer func() {
		end() // the request is done, as Go's server ends it
		// A body longer than heapBodyMax goes back to its pools in a
		// goroutine of its own (context.AfterFunc): let it run, so that
		// the next delivery finds the chunks there, as it does on a server
		// that is not held to one thread.
		runtime.Gosched()
	}()
	r := &http.Request{Method: http.MethodPost, Header: d.headers[d.i%len(d.headers)], Body: &d.src,
		ContentLength: int64(len(d.body)), ProtoMajor: 1, ProtoMinor: 1}
	r = r.WithContext(ctx)
	d.i++
	if harness {
		return d.drain.ServeHTTP(d.w, r)
	}
	return d.h.ServeHTTP(d.w, r, d.drain)
}

// BenchmarkReplayStore measures what replay refusal adds to a delivery
// with the default memory store at its steady state under load: full (its
// default capacity of ids), each delivery a new id that is claimed, then
// recorded as delivered while the oldest is forgotten. The ids come round
// again only after more than the capacity, when they are long forgotten, so
// every claim is a new one (a store that answered "delivered" would measure
// the cheaper refusal instead).
func BenchmarkReplayStore(b *testing.B) {
	h, _ := provisioned(b, &Handler{Secrets: []string{testSecret}})
	ctx := context.Background()
	ids := make([]string, 1<<18)
	if len(ids) <= replaystore.DefaultCapacity {
		b.Fatalf("%d ids do not outnumber the capacity, %d", len(ids), replaystore.DefaultCapacity)
	}
	for i := range ids {
		ids[i] = fmt.Sprintf("wh_%032x", i)
	}
	deliver := func(tb testing.TB, id string) {
		state, ticket, err := h.replay.Claim(ctx, id)
		if err != nil || state != replaystore.Claimed {
			tb.Fatalf("claim of a forgotten id: %v, %v", state, err)
		}
		_ = h.replay.Delivered(ctx, id, ticket)
	}
	// To the steady state, full and its FIFO grown, before the run: what
	// the store logs when it fills does not cut a result line.
	for _, id := range ids {
		deliver(b, id)
	}
	i := 0
	b.Run("memory", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			deliver(b, ids[i%len(ids)])
			i++
		}
	})
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
	h, _ := provisioned(b, &Handler{Secrets: []string{testSecret}, MaxSize: 2 << 20})
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
			h, _ := provisioned(b, &Handler{Secrets: []string{testSecret}, ReplayWindow: -1, Events: tc.events})
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

// handlerAllocations is the most allocations the handler may add to a
// delivery that it verifies and forwards once (with the replay store), on
// top of what the request costs without it: its delivery, the replacer's
// provider, the replay claim's recorder and settling, GetBody; and the copy
// of a body of at most heapBodyMax bytes (moveToHeap), or, for a longer
// one, the release of its chunks at the request's end (context.AfterFunc).
// BenchmarkServeHTTP measures them; a change that adds one on this path
// must say why here.
var handlerAllocations = map[int]float64{1 << 10: 8, 64 << 10: 13}

// TestAllocationsPerDelivery holds the handler to its allocation budget.
func TestAllocationsPerDelivery(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector drops sync.Pool items at random: allocation counts mean nothing under it")
	}
	for size, budget := range handlerAllocations {
		d := newDeliveries(t, bytes.Repeat([]byte("x"), size))
		// One round of every signed delivery first: the replay store's
		// maps grow to their steady size, as they do once in production.
		for range d.headers {
			if err := d.next(false); err != nil {
				t.Fatal(err)
			}
		}
		run := func(harness bool) float64 {
			return testing.AllocsPerRun(200, func() {
				if err := d.next(harness); err != nil {
					t.Fatal(err)
				}
			})
		}
		if added := run(false) - run(true); added > budget {
			t.Errorf("%d-byte delivery: the handler allocates %.0f times, more than its budget of %.0f", size, added, budget)
		}
	}
}

// recorderSink and heapSink keep what BenchmarkStep makes on the heap, as
// the handler's are.
var (
	recorderSink http.ResponseWriter
	heapSink     []byte
)

// BenchmarkStep measures, one by one, what the handler does around the
// HMAC for each delivery it forwards, for docs/performance.md's table of
// per-request costs. Each runs the step alone, as the handler does it.
func BenchmarkStep(b *testing.B) {
	b.Run("release-at-request-end", func(b *testing.B) { // context.AfterFunc, and the goroutine it starts at the end
		b.ReportAllocs()
		for b.Loop() {
			ctx, end := context.WithCancel(context.Background())
			context.AfterFunc(ctx, func() {})
			end()
		}
	})
	// What a body of at most heapBodyMax costs instead: its copy to the heap
	// (the chunk goes back to the pool either way), by size.
	for _, size := range []int{1 << 10, 2 << 10, 4 << 10} {
		b.Run(fmt.Sprintf("move-to-heap/%dKiB", size>>10), func(b *testing.B) {
			chunk := bytes.Repeat([]byte("x"), chunkSize)
			b.ReportAllocs()
			for b.Loop() {
				heapSink = bytes.Clone(chunk[:size])
			}
		})
	}
	b.Run("request-context-alone", func(b *testing.B) { // to subtract from the above
		b.ReportAllocs()
		for b.Loop() {
			_, end := context.WithCancel(context.Background())
			end()
		}
	})
	b.Run("placeholder-provider", func(b *testing.B) { // one Map per request
		d := new(delivery)
		reps := make([]*caddy.Replacer, 1024)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if i%len(reps) == 0 {
				b.StopTimer()
				for j := range reps {
					reps[j] = caddy.NewReplacer()
				}
				b.StartTimer()
			}
			reps[i%len(reps)].Map(d.placeholder)
			i++
		}
	})
	b.Run("response-recorder", func(b *testing.B) { // the replay claim's watch on the status
		d := new(delivery)
		w := httptest.NewRecorder()
		b.ReportAllocs()
		for b.Loop() {
			recorderSink = caddyhttp.NewResponseRecorder(w, nil, d.beforeStatus)
		}
	})
	b.Run("budget-reserve-and-free", func(b *testing.B) { // per 32 KiB chunk of a body
		bud := &budget{limit: 64 << 20}
		b.ReportAllocs()
		for b.Loop() {
			if bud.reserve(chunkSize) {
				bud.free(chunkSize)
			}
		}
	})
	b.Run("counters-resolved-once", func(b *testing.B) { // requests and verified, as the handler counts them
		s := openAIFace.metrics.forServer("srv0", 1)
		b.ReportAllocs()
		for b.Loop() {
			s.requests[outcomeForwarded.name].Inc()
			s.verified[0].Inc()
		}
	})
	b.Run("counters-looked-up", func(b *testing.B) { // the same through WithLabelValues, as before
		b.ReportAllocs()
		for b.Loop() {
			openAIFace.metrics.requests.WithLabelValues("srv0", outcomeForwarded.name).Inc()
			openAIFace.metrics.verified.WithLabelValues("srv0", "0").Inc()
		}
	})
	b.Run("read-deadline-set-and-cleared", func(b *testing.B) { // on a TCP connection, as for HTTP/1
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		go func() {
			if c, err := ln.Accept(); err == nil {
				defer c.Close()
				_, _ = io.Copy(io.Discard, c)
			}
		}()
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		b.ReportAllocs()
		for b.Loop() {
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			_ = conn.SetReadDeadline(time.Time{})
		}
	})
}
