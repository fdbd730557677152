package replaystore

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/webhookgate/caddy-openai-webhook/internal/redisconn"
	"github.com/webhookgate/caddy-openai-webhook/internal/redistest"
)

// openRedis provisions a Redis store for the endpoint as Caddy does and
// cleans it up with the test.
func openRedis(t testing.TB, r *Redis, e Endpoint) *Redis {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := r.Provision(ctx); err != nil {
		t.Fatalf("provision: %v", err)
	}
	t.Cleanup(func() { _ = r.Cleanup() })
	if err := r.Open(e); err != nil {
		t.Fatalf("open: %v", err)
	}
	return r
}

// endpoint is an endpoint with the given secrets' fingerprints (made up:
// the store only compares them).
func endpoint(window time.Duration, fingerprints ...string) Endpoint {
	return Endpoint{Fingerprints: fingerprints, Window: window}
}

func claimID(t *testing.T, s Store, id string) (State, Ticket) {
	t.Helper()
	state, ticket, err := s.Claim(context.Background(), id)
	if err != nil {
		t.Fatalf("claim %s: %v", id, err)
	}
	return state, ticket
}

// TestRedisLifecycle: the same semantics as the memory store, on a real
// Redis: claims, leases, tickets, windows.
func TestRedisLifecycle(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := openRedis(t, &Redis{Config: redisconn.Config{Address: srv.Addr}, InFlightTTL: caddy.Duration(300 * time.Millisecond)}, endpoint(time.Second, "fp-lifecycle"))
	ctx := context.Background()

	if state, _ := claimID(t, s, "a"); state != Claimed {
		t.Fatalf("a new id: %d, want Claimed", state)
	}
	if state, _ := claimID(t, s, "a"); state != InFlight {
		t.Fatalf("a claimed id: %d, want InFlight", state)
	}
	// The claim's lease ends by itself: a sender that hung up, or an
	// instance that died.
	time.Sleep(400 * time.Millisecond)
	if state, _ := claimID(t, s, "a"); state != Claimed {
		t.Fatalf("after the lease: %d, want Claimed", state)
	}
	_, taken := claimID(t, s, "b")
	if err := s.Release(ctx, "b", taken); err != nil {
		t.Fatal(err)
	}
	if state, _ := claimID(t, s, "b"); state != Claimed {
		t.Fatalf("a released id: %d, want Claimed", state)
	}

	// Only the claim's holder settles it.
	state, current := claimID(t, s, "c")
	if state != Claimed {
		t.Fatal(state)
	}
	if err := s.Delivered(ctx, "c", current+1); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(ctx, "c", current+1); err != nil {
		t.Fatal(err)
	}
	if state, _ := claimID(t, s, "c"); state != InFlight {
		t.Fatalf("after another ticket settled it: %d, want InFlight", state)
	}
	if err := s.Delivered(ctx, "c", current); err != nil {
		t.Fatal(err)
	}
	if state, _ := claimID(t, s, "c"); state != Delivered {
		t.Fatalf("a delivered id: %d, want Delivered", state)
	}
	if err := s.Release(ctx, "c", current); err != nil {
		t.Fatal(err)
	}
	if state, _ := claimID(t, s, "c"); state != Delivered {
		t.Fatalf("a delivered id released: %d, want Delivered", state)
	}
	// The window ends by itself.
	time.Sleep(1100 * time.Millisecond)
	if state, _ := claimID(t, s, "c"); state != Claimed {
		t.Fatalf("after the window: %d, want Claimed", state)
	}
}

// TestRedisOneClaimAcrossInstances: 200 concurrent claims of one id, from
// two stores with their own clients (two Caddy instances), claim it once.
func TestRedisOneClaimAcrossInstances(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	e := endpoint(time.Minute, "fp-race")
	// Different timeouts, so different connection configurations: each
	// store has a client of its own.
	a := openRedis(t, &Redis{Config: redisconn.Config{Address: srv.Addr, Timeout: caddy.Duration(time.Second)}}, e)
	b := openRedis(t, &Redis{Config: redisconn.Config{Address: srv.Addr, Timeout: caddy.Duration(2 * time.Second)}}, e)
	if a.Shares(&b.Config) {
		t.Fatal("the two stores share a client")
	}
	for round := range 5 {
		id := fmt.Sprint("wh_concurrent_", round)
		var claimed, inFlight atomic.Int64
		var wg sync.WaitGroup
		for i := range 200 {
			s := a
			if i%2 == 1 {
				s = b
			}
			wg.Go(func() {
				state, _, err := s.Claim(context.Background(), id)
				switch {
				case err != nil:
					t.Error(err)
				case state == Claimed:
					claimed.Add(1)
				case state == InFlight:
					inFlight.Add(1)
				}
			})
		}
		wg.Wait()
		if claimed.Load() != 1 || inFlight.Load() != 199 {
			t.Fatalf("round %d: %d claims and %d in flight, want 1 and 199", round, claimed.Load(), inFlight.Load())
		}
	}
}

// TestRedisScopeFollowsRotation: ids stay with the endpoint through a
// rotation that keeps a secret at each step, and endpoints with no secret
// in common never see each other's.
func TestRedisScopeFollowsRotation(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx := context.Background()
	first := openRedis(t, &Redis{Config: redisconn.Config{Address: srv.Addr}}, endpoint(time.Minute, "fp-s1"))
	_, ticket := claimID(t, first, "wh_rotated")
	if err := first.Delivered(ctx, "wh_rotated", ticket); err != nil {
		t.Fatal(err)
	}
	for _, fps := range [][]string{{"fp-s1", "fp-s2"}, {"fp-s2"}, {"fp-s2", "fp-s3"}, {"fp-s3"}} {
		s := openRedis(t, &Redis{Config: redisconn.Config{Address: srv.Addr}}, endpoint(time.Minute, fps...))
		if state, _ := claimID(t, s, "wh_rotated"); state != Delivered {
			t.Fatalf("secrets %v: %d, want Delivered", fps, state)
		}
	}
	other := openRedis(t, &Redis{Config: redisconn.Config{Address: srv.Addr}}, endpoint(time.Minute, "fp-other"))
	if state, _ := claimID(t, other, "wh_rotated"); state != Claimed {
		t.Fatalf("another endpoint: %d, want Claimed", state)
	}
	// No key holds more than a fingerprint and an id.
	keys := srv.Do("KEYS", "*")
	if strings.Contains(keys, "whsec_") {
		t.Fatalf("a key holds a secret: %s", keys)
	}
}

// TestRedisDown: with Redis gone, refuse reports the error and forward
// reports Unchecked; both work again once Redis is back, without a new
// store.
func TestRedisDown(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	refuse := openRedis(t, &Redis{Config: redisconn.Config{Address: srv.Addr, Timeout: caddy.Duration(200 * time.Millisecond)}}, endpoint(time.Minute, "fp-down"))
	forward := openRedis(t, &Redis{Config: redisconn.Config{Address: srv.Addr, Timeout: caddy.Duration(300 * time.Millisecond)}, OnError: "forward"}, endpoint(time.Minute, "fp-down"))
	// Concurrent calls open every connection the client multiplexes, each
	// of which breaks with the server.
	for _, s := range []Store{refuse, forward} {
		var wg sync.WaitGroup
		for i := range 64 {
			wg.Go(func() {
				id := fmt.Sprint("wh_before_", i)
				if _, ticket, err := s.Claim(context.Background(), id); err == nil {
					_ = s.Delivered(context.Background(), id, ticket)
				}
			})
		}
		wg.Wait()
	}
	srv.Stop()
	for _, tc := range []struct {
		name string
		s    Store
		want State
	}{{"refuse", refuse, 0}, {"forward", forward, Unchecked}} {
		start := time.Now()
		state, _, err := tc.s.Claim(context.Background(), "wh_down_"+tc.name)
		if err == nil || state != tc.want {
			t.Fatalf("%s with Redis down: %d, %v; want %d and an error", tc.name, state, err, tc.want)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("%s: the claim took %s with Redis down", tc.name, took)
		}
	}
	srv.Start()
	for _, s := range []Store{refuse, forward} {
		var state State
		var ticket Ticket
		var err error
		var id string
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			id = "wh_back" + strconv.Itoa(int(time.Now().UnixNano()))
			if state, ticket, err = s.Claim(context.Background(), id); err == nil {
				break
			}
		}
		if err != nil || state != Claimed {
			t.Fatalf("with Redis back: %d, %v; want Claimed", state, err)
		}
		if err := s.Delivered(context.Background(), id, ticket); err != nil {
			t.Fatalf("with Redis back, recording a delivery: %v", err)
		}
		// Settling is never lost to a connection that broke with the
		// server, whichever of the client's connections it goes out on.
		var wg sync.WaitGroup
		for i := range 64 {
			wg.Go(func() {
				if err := s.Release(context.Background(), fmt.Sprint("wh_before_", i), 1); err != nil {
					t.Errorf("with Redis back, releasing: %v", err)
				}
			})
		}
		wg.Wait()
		if state, _ := claimID(t, s, id); state != Delivered {
			t.Fatalf("with Redis back, a delivered id: %d", state)
		}
	}
}

// TestRedisAuthAndTLS: a password, an ACL user and TLS to a server with a
// CA of its own all work; wrong credentials fail at the first claim with an
// error that shows none.
func TestRedisAuthAndTLS(t *testing.T) {
	const password, userPassword = "pw-requirepass-8c1f", "pw-acl-user-3b9e"
	for _, tc := range []struct {
		name  string
		opts  redistest.Options
		store func(srv *redistest.Server) *Redis
	}{
		{"password", redistest.Options{Password: password}, func(srv *redistest.Server) *Redis {
			return &Redis{Config: redisconn.Config{Address: srv.Addr, Password: password}}
		}},
		{"password in the URL", redistest.Options{Password: password}, func(srv *redistest.Server) *Redis {
			return &Redis{Config: redisconn.Config{Address: "redis://:" + password + "@" + srv.Addr + "/2"}}
		}},
		{"ACL user", redistest.Options{User: "webhooks", UserPassword: userPassword}, func(srv *redistest.Server) *Redis {
			return &Redis{Config: redisconn.Config{Address: srv.Addr, Username: "webhooks", Password: userPassword}}
		}},
		{"TLS", redistest.Options{TLS: true}, func(srv *redistest.Server) *Redis {
			return &Redis{Config: redisconn.Config{Address: srv.Addr, TLSCA: srv.CAFile}}
		}},
		{"TLS with a server name", redistest.Options{TLS: true, Password: password}, func(srv *redistest.Server) *Redis {
			return &Redis{Config: redisconn.Config{Address: "rediss://" + srv.Addr, TLSCA: srv.CAFile, TLSServerName: "redis.test", Password: password}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t, tc.opts)
			s := openRedis(t, tc.store(srv), endpoint(time.Minute, "fp-auth"))
			if state, _ := claimID(t, s, "wh_auth"); state != Claimed {
				t.Fatalf("claim: %d", state)
			}
		})
	}

	t.Run("wrong password", func(t *testing.T) {
		srv := redistest.Start(t, redistest.Options{Password: password})
		s := openRedis(t, &Redis{Config: redisconn.Config{Address: srv.Addr, Password: "not-" + password}}, endpoint(time.Minute, "fp-auth"))
		_, _, err := s.Claim(context.Background(), "wh_auth")
		if err == nil || strings.Contains(err.Error(), password) {
			t.Fatalf("claim with a wrong password: %v", err)
		}
	})
	t.Run("TLS, wrong name", func(t *testing.T) {
		srv := redistest.Start(t, redistest.Options{TLS: true})
		s := openRedis(t, &Redis{Config: redisconn.Config{Address: srv.Addr, TLSCA: srv.CAFile, TLSServerName: "other.test", Timeout: caddy.Duration(time.Second)}}, endpoint(time.Minute, "fp-auth"))
		if _, _, err := s.Claim(context.Background(), "wh_auth"); err == nil {
			t.Fatal("a certificate for another name was accepted")
		}
	})
}

// TestRedisProvisionErrors: mistakes fail the load, naming the field and
// never showing a credential.
func TestRedisProvisionErrors(t *testing.T) {
	t.Setenv("REDISTEST_PASSWORD", "pw-from-env-71d2")
	t.Setenv("REDISTEST_EMPTY", "")
	for _, tc := range []struct {
		name    string
		r       Redis
		wantErr string
	}{
		{"no address", Redis{}, "address: required"},
		{"missing password placeholder", Redis{Config: redisconn.Config{Address: "127.0.0.1:6379", Password: "{env.REDISTEST_UNSET}"}}, "password"},
		{"empty password placeholder", Redis{Config: redisconn.Config{Address: "127.0.0.1:6379", Password: "{env.REDISTEST_EMPTY}"}}, "password"},
		{"missing username placeholder", Redis{Config: redisconn.Config{Address: "127.0.0.1:6379", Username: "{env.REDISTEST_UNSET}", Password: "{env.REDISTEST_PASSWORD}"}}, "username"},
		{"not host:port", Redis{Config: redisconn.Config{Address: "localhost", Password: "{env.REDISTEST_PASSWORD}"}}, "address: want host:port"},
		{"other scheme", Redis{Config: redisconn.Config{Address: "http://user:pw-in-url-5e7a@127.0.0.1:6379"}}, "address: scheme"},
		{"bad database in URL", Redis{Config: redisconn.Config{Address: "redis://user:pw-in-url-5e7a@127.0.0.1:6379/x"}}, "address: not a valid Redis URL"},
		{"negative db", Redis{Config: redisconn.Config{Address: "127.0.0.1:6379", DB: -1}}, "db"},
		{"on_error", Redis{Config: redisconn.Config{Address: "127.0.0.1:6379"}, OnError: "ignore"}, "on_error"},
		{"negative timeout", Redis{Config: redisconn.Config{Address: "127.0.0.1:6379", Timeout: -1}}, "timeout"},
		{"tls_ca missing", Redis{Config: redisconn.Config{Address: "127.0.0.1:6379", TLSCA: "/nonexistent/ca.pem"}}, "tls_ca"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			r := tc.r
			err := r.Provision(ctx)
			defer func() { _ = r.Cleanup() }()
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
			for _, secret := range []string{"pw-from-env-71d2", "pw-in-url-5e7a"} {
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("error shows a credential: %v", err)
				}
			}
		})
	}
}

// TestRedisClientShared: stores with one connection configuration share a
// client, kept while any of them lives, as across a config reload.
func TestRedisClientShared(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	old := openRedis(t, &Redis{Config: redisconn.Config{Address: srv.Addr}}, endpoint(time.Minute, "fp-shared"))
	claimID(t, old, "wh_shared_1")
	reloaded := openRedis(t, &Redis{Config: redisconn.Config{Address: srv.Addr}}, endpoint(time.Minute, "fp-shared"))
	if !old.Shares(&reloaded.Config) {
		t.Fatal("a reload with the same connection configuration made a new client")
	}
	if err := old.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if state, _ := claimID(t, reloaded, "wh_shared_2"); state != Claimed {
		t.Fatalf("after the old config's cleanup: %d", state)
	}
}

// BenchmarkRedisBytesPerID measures what a delivered id costs Redis, for
// sizing: used_memory before and after 100,000 delivered ids of OpenAI's
// shape.
func BenchmarkRedisBytesPerID(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	s := openRedis(b, &Redis{Config: redisconn.Config{Address: srv.Addr}}, endpoint(time.Hour, "fp-bytes"))
	ctx := context.Background()
	const n = 100_000
	for b.Loop() {
		srv.Do("FLUSHALL")
		before := redisUsedMemory(b, srv)
		for i := range n {
			id := fmt.Sprintf("wh_%032x", i)
			_, ticket, err := s.Claim(ctx, id)
			if err != nil {
				b.Fatal(err)
			}
			if err := s.Delivered(ctx, id, ticket); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric((redisUsedMemory(b, srv)-before)/n, "bytes/id")
	}
}

// redisUsedMemory is INFO memory's used_memory.
func redisUsedMemory(b *testing.B, srv *redistest.Server) float64 {
	b.Helper()
	v, err := strconv.ParseFloat(srv.Do("EVAL", "return redis.call('INFO', 'memory'):match('used_memory:(%d+)')", "0"), 64)
	if err != nil {
		b.Fatal(err)
	}
	return v
}
