package e2e_test

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/internal/freeport"
	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// The gateway forwards a delivery at most once per id while the app
// accepts it, and otherwise lets the sender's retry through: a failed
// forward releases the id. These tests make the forward fail in each way
// and check that the retry (same id, new timestamp, as OpenAI retries) is
// delivered, once.

// checkRetried sends the delivery of id again, signed now, and checks that
// it reaches the upstream (the id was released) and that a further repeat
// is then answered as a duplicate (the id is now delivered).
func checkRetried(t *testing.T, gw *caddyServer, up *upstream, id string, body []byte) {
	t.Helper()
	before := up.count(t)
	deliver(t, gw.delivery(t, id, time.Now(), body)).checkBody(t, body)
	if n := up.count(t) - before; n != 1 {
		t.Fatalf("the retry reached the upstream %d times, want once", n)
	}
	resp, answer := send(t, gw.delivery(t, id, time.Now(), body))
	if resp.StatusCode != http.StatusOK || len(answer) != 0 {
		t.Errorf("a repeat of the delivered retry: %d %q, want 200 and no body", resp.StatusCode, answer)
	}
	if n := up.count(t) - before; n != 1 {
		t.Errorf("the repeat reached the upstream")
	}
}

// checkStatus fails unless resp has the status want.
func checkStatus(t *testing.T, resp *http.Response, answer []byte, want int) {
	t.Helper()
	if resp.StatusCode != want {
		t.Fatalf("status %d, want %d (answer %.200q)", resp.StatusCode, want, answer)
	}
}

// (a) The upstream is down: 502, and the id is released.
func TestFaultUpstreamDown(t *testing.T) {
	e := setup(t)
	port := freeport.Get(t) // where the upstream starts later
	gw := startCaddy(t, e, caddyConfig{UpstreamPort: port})
	id := "msg_fault_down"
	body := event(id)

	resp, answer := send(t, gw.delivery(t, id, time.Now().Add(-2*time.Second), body))
	checkStatus(t, resp, answer, http.StatusBadGateway)

	up := startUpstreamOn(t, e, port)
	checkRetried(t, gw, up, id, body)
}

// (b) The upstream answers later than reverse_proxy waits: 504, and the id
// is released. The slow request did reach the upstream: the app must be
// idempotent, as docs/security.md says.
func TestFaultUpstreamTimeout(t *testing.T) {
	e := setup(t)
	up := startUpstream(t, e)
	gw := startCaddy(t, e, caddyConfig{UpstreamPort: up.port, Proxy: `transport http {
			response_header_timeout 1s
		}`})
	id := "msg_fault_slow"
	body := event(id)

	req := gw.delivery(t, id, time.Now().Add(-2*time.Second), body)
	req.Header.Set("X-Upstream-Delay", "3")
	resp, answer := send(t, req)
	checkStatus(t, resp, answer, http.StatusGatewayTimeout)
	if all := up.received(t); len(all) != 1 {
		t.Fatalf("the upstream recorded %d requests, want the slow one", len(all))
	}
	checkRetried(t, gw, up, id, body)
}

// The app answers with an error: the gateway passes it on, and the id is
// released.
func TestFaultUpstreamError(t *testing.T) {
	e := setup(t)
	up := startUpstream(t, e)
	gw := startCaddy(t, e, caddyConfig{UpstreamPort: up.port})
	for _, status := range []int{http.StatusInternalServerError, http.StatusServiceUnavailable, http.StatusBadRequest, http.StatusConflict} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			id := fmt.Sprintf("msg_fault_status_%d", status)
			body := event(id)
			req := gw.delivery(t, id, time.Now().Add(-2*time.Second), body)
			req.Header.Set("X-Upstream-Status", fmt.Sprint(status))
			resp, answer := send(t, req)
			checkStatus(t, resp, answer, status)
			checkRetried(t, gw, up, id, body)
		})
	}
}

// (c) The client hangs up while sending the body: nothing is forwarded,
// and the id is not recorded, so the genuine delivery passes later.
func TestFaultClientGoneDuringBody(t *testing.T) {
	e := setup(t)
	up := startUpstream(t, e)
	gw := startCaddy(t, e, caddyConfig{UpstreamPort: up.port})
	body := binaryBody()
	for _, tc := range []struct {
		name    string
		chunked bool
		sent    int // body bytes sent before hanging up
	}{
		{"after the headers", false, 0},
		{"half the body", false, len(body) / 2},
		{"all but one byte", false, len(body) - 1},
		{"chunked, half the body", true, len(body) / 2},
		{"chunked, without the last chunk", true, len(body)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "msg_fault_gone_" + slug(tc.name)
			ts := unix(time.Now())
			hdr := lines(id, ts, good(id, ts, body), body)
			tail := body[:tc.sent]
			if tc.chunked {
				hdr, tail = chunkedLines(hdr), chunked(body[:tc.sent], 100)
			}
			before, outcomes := up.count(t), gw.outcomes(t)
			sendRaw(t, gw.addr, rawMessage(post, gw.addr, hdr, tail), hangUp)
			gw.waitOutcome(t, outcomeUnread, outcomes)
			if n := up.count(t) - before; n != 0 {
				t.Fatalf("%d requests reached the upstream", n)
			}
			if d := outcomeDelta(outcomes, gw.outcomes(t)); fmt.Sprint(d) != fmt.Sprint(map[string]float64{outcomeUnread: 1}) {
				t.Errorf("counted as %v, want unreadable_body once", d)
			}
			checkRetried(t, gw, up, id, body)
		})
	}
}

// The client hangs up while the upstream works on a forwarded delivery:
// reverse_proxy gives up, but the app may still be working on the event, so
// the id stays in flight until its lease ends (a minute; the store's unit
// tests cover its end): the sender's retries get 409 meanwhile, and the app
// never sees the delivery twice at once.
func TestFaultClientGoneDuringForward(t *testing.T) {
	e := setup(t)
	up := startUpstream(t, e)
	gw := startCaddy(t, e, caddyConfig{UpstreamPort: up.port, Global: "debug"})
	id := "msg_fault_gone_forward"
	body := event(id)
	ts := unix(time.Now().Add(-2 * time.Second))
	hdr := append(lines(id, ts, good(id, ts, body), body), "X-Upstream-Hold: "+id)

	outcomes := gw.outcomes(t)
	conn := dialRaw(t, gw.addr, rawMessage(post, gw.addr, hdr, body))
	up.waitRecorded(t, id)
	defer up.release(t, id) // the upstream's thread is still waiting
	conn.Close()
	// The handler logs, at DEBUG, that it leaves the id to its lease.
	webhooktest.WaitFor(t, "the gateway to see the hang-up", func() bool {
		return strings.Contains(gw.output.String(), "sender went away before the app answered")
	})
	for range 3 {
		resp, answer := send(t, gw.delivery(t, id, time.Now(), body))
		checkStatus(t, resp, answer, http.StatusConflict)
	}
	if d := outcomeDelta(outcomes, gw.outcomes(t)); fmt.Sprint(d) != fmt.Sprint(map[string]float64{outcomeForwarded: 1, outcomeInFlight: 3}) {
		t.Errorf("counted as %v, want forwarded once and in_flight 3 times", d)
	}
	var delivered []record
	for _, r := range up.received(t) {
		if slices.Equal(r.header("webhook-id"), []string{id}) {
			delivered = append(delivered, r)
		}
	}
	if len(delivered) != 1 {
		t.Fatalf("the upstream got %d requests with the id, want only the abandoned one", len(delivered))
	}
	delivered[0].checkBody(t, body)
}

// (d) The secret is rotated by reloads (A; A and B; B, and back and forth)
// while four clients deliver. Every answer is one that a config active
// during the request allows (never a 5xx), and the upstream receives
// exactly the accepted deliveries, byte for byte.
func TestReloadRotatesSecret(t *testing.T) {
	e := setup(t)
	up := startUpstream(t, e)
	type secrets struct {
		handler string
		secrets []string // the secrets the handler accepts
	}
	a := secrets{"secret {env.OPENAI_WEBHOOK_SECRET}", []string{webhooktest.Secret}}
	ab := secrets{"secret {env.OPENAI_WEBHOOK_SECRET}\n\t\tsecret {env.OPENAI_WEBHOOK_SECRET_B}", []string{webhooktest.Secret, secretB}}
	b := secrets{"secret {env.OPENAI_WEBHOOK_SECRET_B}", []string{secretB}}
	// A rotation to B, back to A, and to B again: six reloads meet more
	// requests than two.
	configs := []secrets{a, ab, b, ab, a, ab, b}
	config := func(i int) caddyConfig {
		return caddyConfig{UpstreamPort: up.port, Handler: configs[i].handler + "\n\t\tmax_size 64KiB"}
	}
	gw := startCaddy(t, e, config(0))

	// Kinds of delivery, and which configs accept each.
	type kind struct {
		name string
		sign func(id, ts string, body []byte) (sig string, sent []byte)
		// accepted says whether a config with these secrets accepts it.
		accepted func(secrets []string) bool
	}
	signedBy := func(secret string) func(id, ts string, body []byte) (string, []byte) {
		return func(id, ts string, body []byte) (string, []byte) {
			return "v1," + mac(secret, id, ts, body), body
		}
	}
	has := func(secret string) func([]string) bool {
		return func(secrets []string) bool { return slices.Contains(secrets, secret) }
	}
	never := func([]string) bool { return false }
	kinds := []kind{
		{"A", signedBy(webhooktest.Secret), has(webhooktest.Secret)},
		{"B", signedBy(secretB), has(secretB)},
		{"A and B", func(id, ts string, body []byte) (string, []byte) {
			return "v1," + mac(webhooktest.Secret, id, ts, body) + " v1," + mac(secretB, id, ts, body), body
		}, func([]string) bool { return true }},
		{"A, tampered", func(id, ts string, body []byte) (string, []byte) {
			return "v1," + mac(webhooktest.Secret, id, ts, body), append(slices.Clone(body), ' ')
		}, never},
		{"B, tampered", func(id, ts string, body []byte) (string, []byte) {
			return "v1," + mac(secretB, id, ts, body), body[1:]
		}, never},
		{"C", signedBy(secretC), never},
	}

	type result struct {
		id         string
		kind       int
		body       []byte // as sent
		start, end time.Time
		status     int
		err        error
	}
	const workers, maxPerWorker = 4, 1000
	var (
		answered atomic.Int64
		stop     = make(chan struct{})
		results  = make([][]result, workers)
		wg       sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			for i := range maxPerWorker {
				select {
				case <-stop:
					return
				default:
				}
				k := (w + i) % len(kinds)
				id := fmt.Sprintf("msg_rot_%d_%d", w, i)
				body := append(event(id), binaryBody()[:64*w+i%64]...)
				ts := unix(time.Now())
				sig, sent := kinds[k].sign(id, ts, body)
				req := gw.request(t.Context(), id, ts, sig, sent)
				r := result{id: id, kind: k, body: sent, start: time.Now()}
				resp, err := client.Do(req)
				if err == nil {
					r.status = resp.StatusCode
					resp.Body.Close()
				}
				r.end, r.err = time.Now(), err
				results[w] = append(results[w], r)
				if err == nil {
					answered.Add(1)
				}
			}
		})
	}
	// Each config gets at least perPhase answers of its own; the reloads
	// happen while the workers keep sending.
	const perPhase = 40
	type span struct{ start, end time.Time }
	reloads := make([]span, len(configs)) // reloads[i]: when config i took over; reloads[0] is the start
	waitDone := func(n int64) {
		webhooktest.WaitFor(t, fmt.Sprintf("%d answers", n), func() bool {
			return answered.Load() >= n
		})
	}
	waitDone(perPhase)
	for i := 1; i < len(configs); i++ {
		reloads[i].start = time.Now()
		gw.reload(t, e.ctx, config(i))
		reloads[i].end = time.Now()
		waitDone(answered.Load() + perPhase)
	}
	close(stop)
	wg.Wait()
	if n := len(slices.Concat(results...)); n == workers*maxPerWorker {
		t.Fatalf("the workers sent all %d requests before the test was done with them", n)
	}

	// Config i can have judged a request that overlaps the time it may
	// have been active: from when its reload began until the next reload
	// ended.
	active := func(i int, r result) bool {
		if i > 0 && r.end.Before(reloads[i].start) {
			return false
		}
		if i+1 < len(configs) && r.start.After(reloads[i+1].end) {
			return false
		}
		return true
	}
	duringReload := func(start, end time.Time) bool {
		for _, rl := range reloads[1:] {
			if !end.Before(rl.start) && !start.After(rl.end) {
				return true
			}
		}
		return false
	}
	// A request's connection can be reset as a reload closes the old
	// config's listening socket (Caddy binds each config's with
	// SO_REUSEPORT; Linux drops the connections queued on a socket that
	// closes). Such a request was not judged: it must be one a reload
	// could have met, and it may have reached the upstream only if an
	// active config accepts it.
	accepted := map[string]result{}   // answered 200
	unanswered := map[string]result{} // no answer
	total, overlapping := 0, 0
	for _, rs := range results {
		for _, r := range rs {
			total++
			var allowed []int
			for i, c := range configs {
				if !active(i, r) {
					continue
				}
				status := http.StatusUnauthorized
				if kinds[r.kind].accepted(c.secrets) {
					status = http.StatusOK
				}
				if !slices.Contains(allowed, status) {
					allowed = append(allowed, status)
				}
			}
			if len(allowed) > 1 {
				overlapping++
			}
			if r.err != nil {
				t.Logf("%s (%s, %s to %s): no answer: %v", r.id, kinds[r.kind].name, r.start.Format(time.StampMicro), r.end.Format(time.StampMicro), r.err)
				if !duringReload(r.start, r.end) {
					t.Errorf("%s got no answer, and no reload was under way", r.id)
				}
				if slices.Contains(allowed, http.StatusOK) {
					unanswered[r.id] = r
				}
				continue
			}
			if !slices.Contains(allowed, r.status) {
				t.Errorf("%s (%s, %s to %s) answered %d; the configs active then allow %v",
					r.id, kinds[r.kind].name, r.start.Format(time.StampMicro), r.end.Format(time.StampMicro), r.status, allowed)
			}
			if r.status == http.StatusOK {
				accepted[r.id] = r
			}
		}
	}
	t.Logf("%d deliveries, %d accepted, %d unanswered, %d sent while a reload could decide their answer", total, len(accepted), len(unanswered), overlapping)
	for i := 1; i < len(reloads); i++ {
		t.Logf("reload %d: %s to %s", i, reloads[i].start.Format(time.StampMicro), reloads[i].end.Format(time.StampMicro))
	}

	got := map[string]int{}
	for _, rec := range up.received(t) {
		ids := rec.header("webhook-id")
		if len(ids) != 1 {
			t.Errorf("the upstream got a request with webhook-id %q", ids)
			continue
		}
		got[ids[0]]++
		r, ok := accepted[ids[0]]
		if !ok {
			r, ok = unanswered[ids[0]]
		}
		if !ok {
			t.Errorf("the upstream got %s, which was not accepted", ids[0])
			continue
		}
		rec.checkBody(t, r.body)
	}
	for id := range unanswered {
		if got[id] > 1 {
			t.Errorf("the upstream got unanswered delivery %s %d times, want at most once", id, got[id])
		}
	}
	for id := range accepted {
		if got[id] != 1 {
			t.Errorf("the upstream got accepted delivery %s %d times, want once", id, got[id])
		}
	}
}

// TestReloadKeepsReplayMemory: `caddy reload` with a secret added, the old
// one removed, the tolerance changed and the capacity shrunk: a delivered
// id stays a duplicate through each, as long as a secret is kept.
func TestReloadKeepsReplayMemory(t *testing.T) {
	e := setup(t)
	up := startUpstream(t, e)
	config := func(handler string) caddyConfig {
		return caddyConfig{UpstreamPort: up.port, Handler: handler + "\n\t\tmax_size 64KiB"}
	}
	gw := startCaddy(t, e, config("secret {env.OPENAI_WEBHOOK_SECRET}"))
	first, second := "msg_reload_first", "msg_reload_second"
	deliver(t, gw.signedWith(t, webhooktest.Secret, first, time.Now(), event(first)))

	isDuplicate := func(secret, id string) bool {
		t.Helper()
		before := up.count(t)
		resp, answer := send(t, gw.signedWith(t, secret, id, time.Now(), event(id)))
		checkStatus(t, resp, answer, http.StatusOK)
		return up.count(t) == before
	}
	for _, step := range []struct {
		name, handler, signWith string
		deliver                 string
		duplicates              []string
	}{
		{"a secret added", "secret {env.OPENAI_WEBHOOK_SECRET}\n\t\tsecret {env.OPENAI_WEBHOOK_SECRET_B}", secretB, second, []string{first}},
		{"the first secret removed, tolerance changed", "secret {env.OPENAI_WEBHOOK_SECRET_B}\n\t\ttolerance 1m", secretB, "", []string{first, second}},
		{"capacity shrunk to one", "secret {env.OPENAI_WEBHOOK_SECRET_B}\n\t\treplay_store memory {\n\t\t\tcapacity 1\n\t\t}", secretB, "", []string{second}},
	} {
		gw.reload(t, e.ctx, config(step.handler))
		for _, id := range step.duplicates {
			if !isDuplicate(step.signWith, id) {
				t.Errorf("%s: %s was forwarded again", step.name, id)
			}
		}
		if step.deliver != "" && isDuplicate(step.signWith, step.deliver) {
			t.Fatalf("%s: delivering %s: a duplicate", step.name, step.deliver)
		}
	}
	// The oldest id went with the capacity: it is forwarded again.
	if isDuplicate(secretB, first) {
		t.Errorf("with a capacity of one, the older id %s was still remembered", first)
	}
}
