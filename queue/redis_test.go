package queue

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/webhookgate/caddy-openai-webhook/internal/redisconn"
	"github.com/webhookgate/caddy-openai-webhook/internal/redistest"
)

// TestRedisDurabilityCheck: the store names each Redis setting that would
// lose what it acknowledged, and none on a server set up as docs/queue.md
// says.
func TestRedisDurabilityCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts redistest.Options
		want []string
	}{
		{"durable", redistest.Options{Durable: true}, nil},
		{"no append-only file", redistest.Options{}, []string{"appendonly is no, not yes", "appendfsync is everysec, not always"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t, tc.opts)
			q, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr}}, 10)
			problems, err := q.durabilityProblems(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(problems) != len(tc.want) {
				t.Fatalf("problems %q, want %d", problems, len(tc.want))
			}
			for i, want := range tc.want {
				if !strings.HasPrefix(problems[i], want) {
					t.Errorf("problem %q, want one starting %q", problems[i], want)
				}
			}
		})
	}
}

// TestRedisRestart: with the append-only file, what Redis acknowledged
// outlives a crash of Redis (SIGKILL), the messages in flight included.
func TestRedisRestart(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t, redistest.Options{Durable: true})
	q, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr}}, 10)
	for _, id := range []string{"wh_r1", "wh_r2", "wh_r3"} {
		if err := q.Enqueue(ctx, message(id)); err != nil {
			t.Fatal(err)
		}
	}
	const lease = 200 * time.Millisecond
	if m := take(t, q, lease); m == nil {
		t.Fatal("nothing taken")
	}
	srv.Stop()
	srv.Start()
	time.Sleep(lease)
	got := map[string]bool{}
	for start := time.Now(); len(got) < 3 && time.Since(start) < 10*time.Second; {
		m, err := q.Take(ctx, lease)
		if err != nil { // the client reconnects
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if m == nil {
			break
		}
		got[m.WebhookID] = true
		if err := q.Complete(ctx, m, Attempt{At: time.Now(), Status: 200}); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != 3 {
		t.Fatalf("after Redis restarted: %v, want the three messages", got)
	}
}

// TestRedisDown: while Redis is down, enqueueing fails, and not as full
// (the sender gets 503 and retries); once it is back, empty (it kept
// nothing), the store makes its stream anew and works.
func TestRedisDown(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t, redistest.Options{})
	q, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr, Timeout: caddy.Duration(200 * time.Millisecond)}}, 10)
	srv.Stop()
	if err := q.Enqueue(ctx, message("wh_down")); err == nil || errors.Is(err, ErrFull) {
		t.Fatalf("enqueue with Redis down: %v", err)
	}
	if _, err := q.Take(ctx, time.Minute); err == nil {
		t.Fatal("take with Redis down: no error")
	}
	srv.Start()
	var err error
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(50 * time.Millisecond) {
		if err = q.Enqueue(ctx, message("wh_back")); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("enqueue once Redis is back: %v", err)
	}
	if m := take(t, q, time.Minute); m == nil || m.WebhookID != "wh_back" {
		t.Fatalf("taken once Redis is back: %+v", m)
	}
}

// TestRedisQueuesApart: stores with different key prefixes on one server
// are different queues, and the queue's name shows no credential.
func TestRedisQueuesApart(t *testing.T) {
	ctx := context.Background()
	const password = "pw-queue-5d1c"
	srv := redistest.Start(t, redistest.Options{Password: password, Durable: true})
	a, _ := openStore(t, &Redis{Config: redisconn.Config{Address: "redis://:" + password + "@" + srv.Addr + "/3", KeyPrefix: "a:"}}, 10)
	b, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr, Password: password, DB: 3, KeyPrefix: "b:"}}, 10)
	if err := a.Enqueue(ctx, message("wh_a")); err != nil {
		t.Fatal(err)
	}
	if m := take(t, b, time.Minute); m != nil {
		t.Fatalf("queue b took queue a's message: %+v", m)
	}
	if m := take(t, a, time.Minute); m == nil || m.WebhookID != "wh_a" {
		t.Fatalf("queue a: %+v", m)
	}
	if a.Name() != "redis:"+srv.Addr+"/3/a:" || b.Name() != "redis:"+srv.Addr+"/3/b:" {
		t.Fatalf("names %q and %q", a.Name(), b.Name())
	}
}

// TestRedisProvisionErrors: a misconfigured store fails to load, naming
// the field, without showing a credential.
func TestRedisProvisionErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		q    Redis
		want string
	}{
		{"no address", Redis{}, "address: required"},
		{"bad scheme", Redis{Config: redisconn.Config{Address: "http://:pw-scheme-1a2b@127.0.0.1:6379"}}, "address"},
		{"unset key_prefix placeholder", Redis{Config: redisconn.Config{Address: "127.0.0.1:6379", KeyPrefix: "{env.QUEUETEST_UNSET}"}}, "key_prefix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			err := tc.q.Provision(ctx)
			defer tc.q.Cleanup()
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "pw-") {
				t.Fatalf("error %v, want one naming %q without a credential", err, tc.want)
			}
		})
	}
}

// TestRedisStreamLost: when the stream goes (evicted, deleted) while its
// messages stay, the store makes it anew and every message is due again,
// the one in flight included, each once; one stored after the loss too.
func TestRedisStreamLost(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t, redistest.Options{Durable: true})
	q, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr}}, 10)
	for _, id := range []string{"wh_a", "wh_b", "wh_c"} {
		if err := q.Enqueue(ctx, message(id)); err != nil {
			t.Fatal(err)
		}
	}
	if m := take(t, q, time.Minute); m == nil || m.WebhookID != "wh_a" {
		t.Fatalf("taken: %+v", m)
	}
	if got := srv.Do("DEL", q.keys.stream); got != ":1" {
		t.Fatalf("DEL: %s", got)
	}
	if err := q.Enqueue(ctx, message("wh_d")); err != nil {
		t.Fatal(err)
	}
	taken := map[string]int{}
	for m := take(t, q, time.Minute); m != nil; m = take(t, q, time.Minute) {
		taken[m.WebhookID]++
		if err := q.Complete(ctx, m, Attempt{At: time.Now(), Status: 200}); err != nil {
			t.Fatal(err)
		}
	}
	if len(taken) != 4 || taken["wh_a"] != 1 || taken["wh_b"] != 1 || taken["wh_c"] != 1 || taken["wh_d"] != 1 {
		t.Fatalf("taken after the loss: %v, want each of the four once", taken)
	}
	if c := counts(t, q); c != (Counts{}) {
		t.Fatalf("after all were delivered: %+v", c)
	}
}

// TestRedisPruneConsumers: consumers left by restarts are deleted once
// idle with nothing in flight; one holding a message is kept.
func TestRedisPruneConsumers(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t, redistest.Options{Durable: true})
	holding, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr}, consumer: "holding"}, 10)
	idle, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr}, consumer: "idle"}, 10)
	for _, id := range []string{"wh_held", "wh_done"} {
		if err := holding.Enqueue(ctx, message(id)); err != nil {
			t.Fatal(err)
		}
	}
	if m := take(t, holding, time.Minute); m == nil {
		t.Fatal("nothing taken")
	}
	// Redis makes a consumer when it first gets a message: idle takes one
	// and settles it.
	done := take(t, idle, time.Minute)
	if done == nil {
		t.Fatal("nothing taken")
	}
	if err := idle.Complete(ctx, done, Attempt{At: time.Now(), Status: 200}); err != nil {
		t.Fatal(err)
	}
	if got := srv.Do("XINFO", "CONSUMERS", holding.keys.stream, group); got != "*2" {
		t.Fatalf("consumers before: %s", got)
	}
	time.Sleep(10 * time.Millisecond)
	pruned, err := idle.Exec(ctx, pruneScript, []string{idle.keys.stream}, []string{group, "1"}).AsInt64()
	if err != nil || pruned != 1 {
		t.Fatalf("pruned %d, %v; want the idle one", pruned, err)
	}
	if got := srv.Do("XINFO", "CONSUMERS", holding.keys.stream, group); got != "*1" {
		t.Fatalf("consumers after: %s", got)
	}
}
