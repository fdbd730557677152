package e2e_test

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/internal/redistest"
)

// The fleet: Caddy instances sharing one Redis as their replay store, each
// in front of the same upstream, as several instances behind a load
// balancer are.

// redisHandler is the openai_webhook block of a fleet instance.
func redisHandler(srv *redistest.Server, options string) string {
	return fmt.Sprintf(`secret {env.OPENAI_WEBHOOK_SECRET}
		max_size 64KiB
		replay_store redis {
			address %s
			timeout 300ms
			%s
		}`, srv.Addr, options)
}

// deliveriesOf returns what the upstream recorded of id.
func deliveriesOf(t *testing.T, up *upstream, id string) []record {
	t.Helper()
	var out []record
	for _, r := range up.received(t) {
		if slices.Equal(r.header("webhook-id"), []string{id}) {
			out = append(out, r)
		}
	}
	return out
}

func TestFleet(t *testing.T) {
	e := setup(t)
	srv := redistest.Start(t, redistest.Options{})
	up := startUpstream(t, e)
	cfg := caddyConfig{UpstreamPort: up.port, Handler: redisHandler(srv, "")}
	a, b := startCaddy(t, e, cfg), startCaddy(t, e, cfg)

	t.Run("delivered by one, a duplicate on the other", func(t *testing.T) {
		id := "msg_fleet_dup"
		body := event(id)
		deliver(t, a.delivery(t, id, time.Now(), body)).checkBody(t, body)
		resp, answer := send(t, b.delivery(t, id, time.Now(), body))
		if resp.StatusCode != http.StatusOK || len(answer) != 0 {
			t.Fatalf("the repeat on the other instance: %d %q, want 200 and no body", resp.StatusCode, answer)
		}
		if n := len(deliveriesOf(t, up, id)); n != 1 {
			t.Fatalf("the upstream got %d copies, want 1", n)
		}
	})

	t.Run("200 concurrent identical deliveries over both, forwarded once", func(t *testing.T) {
		id := "msg_fleet_race"
		body := event(id)
		ts := time.Now()
		statuses := map[int]int{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := range 200 {
			gw := a
			if i%2 == 1 {
				gw = b
			}
			req := gw.delivery(t, id, ts, body)
			wg.Go(func() {
				resp, err := client.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				mu.Lock()
				statuses[resp.StatusCode]++
				mu.Unlock()
			})
		}
		wg.Wait()
		if n := len(deliveriesOf(t, up, id)); n != 1 {
			t.Fatalf("the upstream got %d copies, want 1 (answers %v)", n, statuses)
		}
		if statuses[http.StatusOK]+statuses[http.StatusConflict] != 200 {
			t.Fatalf("answers %v, want only 200 (the forward, or a duplicate) and 409 (in flight)", statuses)
		}
	})

	t.Run("an upstream 5xx through one, the retry through the other", func(t *testing.T) {
		id := "msg_fleet_retry"
		body := event(id)
		req := a.delivery(t, id, time.Now(), body)
		req.Header.Set("X-Upstream-Status", "503")
		resp, answer := send(t, req)
		checkStatus(t, resp, answer, http.StatusServiceUnavailable)
		deliver(t, b.delivery(t, id, time.Now(), body)).checkBody(t, body)
		if n := len(deliveriesOf(t, up, id)); n != 2 {
			t.Fatalf("the upstream got %d copies, want the failed one and the retry", n)
		}
	})

	t.Run("a restarted instance remembers", func(t *testing.T) {
		id := "msg_fleet_restart"
		body := event(id)
		deliver(t, a.delivery(t, id, time.Now(), body)).checkBody(t, body)
		a.stop(t)
		restarted := startCaddy(t, e, cfg)
		resp, answer := send(t, restarted.delivery(t, id, time.Now(), body))
		if resp.StatusCode != http.StatusOK || len(answer) != 0 {
			t.Fatalf("after the restart: %d %q, want a duplicate", resp.StatusCode, answer)
		}
		if n := len(deliveriesOf(t, up, id)); n != 1 {
			t.Fatalf("the upstream got %d copies, want 1", n)
		}
	})
}

// TestFleetRedisDown: with Redis gone, on_error refuse answers 503 with
// Retry-After (nothing forwarded, so nothing can be forwarded twice) and
// on_error forward forwards unchecked; both check again once Redis is back,
// without a reload.
func TestFleetRedisDown(t *testing.T) {
	e := setup(t)
	srv := redistest.Start(t, redistest.Options{})
	up := startUpstream(t, e)
	refuse := startCaddy(t, e, caddyConfig{UpstreamPort: up.port, Handler: redisHandler(srv, "on_error refuse")})
	forward := startCaddy(t, e, caddyConfig{UpstreamPort: up.port, Handler: redisHandler(srv, "on_error forward")})
	for _, gw := range []*caddyServer{refuse, forward} {
		id := fmt.Sprintf("msg_fleet_before_%p", gw)
		deliver(t, gw.delivery(t, id, time.Now(), event(id))) // the scope is resolved while Redis is up
	}

	srv.Stop()
	before := up.count(t)
	id := "msg_fleet_down_refused"
	resp, answer := send(t, refuse.delivery(t, id, time.Now(), event(id)))
	checkStatus(t, resp, answer, http.StatusServiceUnavailable)
	if resp.Header.Get("Retry-After") == "" {
		t.Error("a 503 without Retry-After")
	}
	if up.count(t) != before {
		t.Fatal("refused with Redis down, yet forwarded")
	}
	id = "msg_fleet_down_forwarded"
	deliver(t, forward.delivery(t, id, time.Now(), event(id))).checkBody(t, event(id))
	if o := forward.outcomes(t); o["unchecked"] != 1 {
		t.Errorf("outcomes %v, want unchecked once", o)
	}

	srv.Start()
	for _, gw := range []*caddyServer{refuse, forward} {
		// Until the client has reconnected, deliveries are still refused
		// or forwarded unchecked; then one is checked, and its repeat is a
		// duplicate.
		var id string
		for attempt := 0; ; attempt++ {
			id = fmt.Sprintf("msg_fleet_back_%p_%d", gw, attempt)
			before := gw.outcomes(t)
			send(t, gw.delivery(t, id, time.Now(), event(id)))
			if outcomeDelta(before, gw.outcomes(t))[outcomeForwarded] == 1 {
				break
			}
			if attempt == 100 {
				t.Fatal("the gateway never checked a delivery again after Redis came back")
			}
			time.Sleep(100 * time.Millisecond)
		}
		resp, answer := send(t, gw.delivery(t, id, time.Now(), event(id)))
		if resp.StatusCode != http.StatusOK || len(answer) != 0 {
			_, metrics := send(t, gw.adminRequest(t, "/metrics"))
			for line := range strings.Lines(string(metrics)) {
				if strings.HasPrefix(line, "caddy_openai_webhook") {
					t.Log(line)
				}
			}
			t.Fatalf("a repeat once Redis is back: %d %.100q, want a duplicate", resp.StatusCode, answer)
		}
	}
}

// TestFleetRedisAuthTLS: the password from the environment and TLS with a
// CA of its own, as a production Redis needs.
func TestFleetRedisAuthTLS(t *testing.T) {
	e := setup(t)
	const password = "fleet-redis-pw-4a1c"
	srv := redistest.Start(t, redistest.Options{TLS: true, Password: password})
	up := startUpstream(t, e)
	handler := redisHandler(srv, fmt.Sprintf("password {env.REDIS_PASSWORD}\n\t\t\ttls_ca %s", srv.CAFile))
	a := startCaddy(t, e, caddyConfig{UpstreamPort: up.port, Handler: handler, Env: []string{"REDIS_PASSWORD=" + password}})
	b := startCaddy(t, e, caddyConfig{UpstreamPort: up.port, Handler: handler, Env: []string{"REDIS_PASSWORD=" + password}})
	id := "msg_fleet_tls"
	body := event(id)
	deliver(t, a.delivery(t, id, time.Now(), body)).checkBody(t, body)
	resp, answer := send(t, b.delivery(t, id, time.Now(), body))
	if resp.StatusCode != http.StatusOK || len(answer) != 0 {
		t.Fatalf("the repeat on the other instance: %d %q, want a duplicate", resp.StatusCode, answer)
	}
}
