package queuestore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/rueidis"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/webhookgate/caddy-openai-webhook/internal/redisconn"
	"github.com/webhookgate/caddy-openai-webhook/internal/redistest"
)

// TestRedisDurabilityCheck: the store names each Redis setting that would
// lose what it acknowledged, and none on a server set up as docs/queue.md
// says. Redis 7.0 has no WAITAOF: the store finds so, and enqueues rely on
// appendfsync always.
func TestRedisDurabilityCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts redistest.Options
		want []string
	}{
		{"durable", redistest.Options{Durable: true}, nil},
		{"no append-only file", redistest.Options{}, []string{"appendonly is no, not yes", "appendfsync is everysec, not always"}},
		{"no fsync on rewrite", redistest.Options{Durable: true, Args: []string{"--no-appendfsync-on-rewrite", "yes"}},
			[]string{"no-appendfsync-on-rewrite is yes, not no: Redis skips the fsync while it saves a snapshot or rewrites"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t, tc.opts)
			q, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr}}, options(10))
			settings, err := q.settings(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			problems := durabilityProblems(settings, q.waitAOF.Load() == aofOn)
			if len(problems) != len(tc.want) {
				t.Fatalf("problems %q, want %d", problems, len(tc.want))
			}
			for i, want := range tc.want {
				if !strings.HasPrefix(problems[i], want) {
					t.Errorf("problem %q, want one starting %q", problems[i], want)
				}
			}
			want := int32(aofOff)
			if hasWaitAOF(t, q) && tc.opts.Durable {
				want = aofOn
			}
			if got := q.waitAOF.Load(); got != want {
				t.Errorf("WAITAOF state %d, want %d", got, want)
			}
		})
	}
}

// TestRedisDurabilityProblemsWaitAOF: when enqueues wait for the fsync
// (WAITAOF), appendfsync does not matter, no-appendfsync-on-rewrite does.
func TestRedisDurabilityProblemsWaitAOF(t *testing.T) {
	settings := map[string]string{"appendonly": "yes", "appendfsync": "everysec", "no-appendfsync-on-rewrite": "yes", "maxmemory-policy": "noeviction"}
	problems := durabilityProblems(settings, true)
	if len(problems) != 1 || !strings.Contains(problems[0], "enqueues, which wait for that fsync (WAITAOF), fail meanwhile") {
		t.Fatalf("with WAITAOF: %q", problems)
	}
	if problems := durabilityProblems(settings, false); len(problems) != 2 {
		t.Fatalf("without WAITAOF: %q, want appendfsync and no-appendfsync-on-rewrite", problems)
	}
	if problems := durabilityProblems(map[string]string{}, false); len(problems) != 0 {
		t.Fatalf("with the settings unknown: %q", problems)
	}
}

// TestRedisWaitAOF: with WAITAOF (as the check at Start would find on
// Redis 7.2), an enqueue sends it after its script; refused (Redis 7.0
// here knows no such command), the message is stored nonetheless, the
// store warns and enqueues no longer wait.
func TestRedisWaitAOF(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t, redistest.Options{Durable: true})
	q, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr}}, options(10))
	core, logs := observer.New(zap.WarnLevel)
	q.logger = zap.New(core)
	q.waitAOF.Store(aofOn)
	srv.Do("SCRIPT", "FLUSH") // the first EVALSHA fails: the enqueue sends EVAL, then WAITAOF again
	enqueue(t, q, "wh_waitaof")
	if hasWaitAOF(t, q) {
		if got := q.waitAOF.Load(); got != aofOn || len(logs.All()) != 0 {
			t.Fatalf("WAITAOF state %d, warnings %+v; want it on, and none", got, logs.All())
		}
		return
	}
	if got := q.waitAOF.Load(); got != aofOff {
		t.Fatalf("WAITAOF state %d after Redis refused it, want off", got)
	}
	if warned := logs.FilterMessageSnippet("Redis refused WAITAOF").All(); len(warned) != 1 || !strings.Contains(fmt.Sprint(warned[0].ContextMap()["error"]), "WAITAOF") {
		t.Fatalf("warnings: %+v", logs.All())
	}
	if err := q.Enqueue(ctx, message("wh_waitaof")); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("enqueueing it again: %v", err)
	}
	enqueue(t, q, "wh_after")
	if c := counts(t, q); c != (Counts{Pending: 2}) {
		t.Fatalf("counts: %+v", c)
	}
}

// hasWaitAOF reports whether q's Redis has WAITAOF: 7.2 or later (Valkey
// says 7.2.4).
func hasWaitAOF(t *testing.T, q *Redis) bool {
	t.Helper()
	info, err := q.Do(context.Background(), func(c rueidis.Client) rueidis.Completed {
		return c.B().Info().Section("server").Build()
	}).ToString()
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(info, "redis_version:")
	var major, minor int
	if _, err := fmt.Sscanf(rest, "%d.%d", &major, &minor); err != nil {
		t.Fatalf("redis_version in %q: %v", info, err)
	}
	return major > 7 || major == 7 && minor >= 2
}

// TestRedisEnqueueLanded: an enqueue that timed out on the client, but that
// Redis ran, makes the sender's retry a duplicate, not a second message.
func TestRedisEnqueueLanded(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t, redistest.Options{Durable: true})
	const timeout = 200 * time.Millisecond
	q, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr, Timeout: caddy.Duration(timeout)}}, options(10))
	enqueue(t, q, "wh_warm") // the script is loaded
	// Redis runs a script of another client past the enqueue's timeout: the
	// enqueue's script waits, unread, and runs after it.
	busy, err := net.Dial("tcp", srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	const script = `local s = redis.call('TIME')
repeat local n = redis.call('TIME') until (n[1] - s[1]) * 1000000 + n[2] - s[2] > tonumber(ARGV[1])`
	wait := strconv.FormatInt((timeout * 2).Microseconds(), 10)
	fmt.Fprintf(busy, "*4\r\n$4\r\nEVAL\r\n$%d\r\n%s\r\n$1\r\n0\r\n$%d\r\n%s\r\n", len(script), script, len(wait), wait)
	time.Sleep(timeout / 10)
	if err := q.Enqueue(ctx, message("wh_landed")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("enqueue while Redis runs another script: %v, want a timeout", err)
	}
	_ = busy.SetReadDeadline(time.Now().Add(10 * time.Second))
	if reply, err := bufio.NewReader(busy).ReadString('\n'); err != nil || reply != "$-1\r\n" {
		t.Fatalf("the other script: %q, %v", reply, err)
	}
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(50 * time.Millisecond) {
		if err = q.Enqueue(ctx, message("wh_landed")); !errors.Is(err, context.DeadlineExceeded) {
			break
		}
	}
	if !errors.Is(err, ErrDuplicate) {
		t.Fatalf("the sender's retry: %v, want ErrDuplicate", err)
	}
	if c := counts(t, q); c != (Counts{Pending: 2}) {
		t.Fatalf("counts: %+v, want wh_warm and wh_landed once", c)
	}
}

// TestRedisRestart: with the append-only file, what Redis acknowledged
// outlives a crash of Redis (SIGKILL), the messages in flight included.
func TestRedisRestart(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t, redistest.Options{Durable: true})
	q, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr}}, options(10))
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
		ms, err := q.Take(ctx, 2, lease)
		if err != nil { // the client reconnects
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if len(ms) == 0 {
			break
		}
		for _, m := range ms {
			got[m.DeliveryID] = true
			if err := q.Complete(ctx, m, Attempt{At: time.Now(), Status: 200}); err != nil {
				t.Fatal(err)
			}
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
	q, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr, Timeout: caddy.Duration(200 * time.Millisecond)}}, options(10))
	srv.Stop()
	if err := q.Enqueue(ctx, message("wh_down")); err == nil || errors.Is(err, ErrFull) {
		t.Fatalf("enqueue with Redis down: %v", err)
	}
	if _, err := q.Take(ctx, 1, time.Minute); err == nil {
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
	if m := take(t, q, time.Minute); m == nil || m.DeliveryID != "wh_back" {
		t.Fatalf("taken once Redis is back: %+v", m)
	}
}

// TestRedisQueuesApart: stores with different key prefixes on one server
// are different queues; without key_prefix, the queue's name makes it.
func TestRedisQueuesApart(t *testing.T) {
	const password = "pw-queue-5d1c"
	srv := redistest.Start(t, redistest.Options{Password: password, Durable: true})
	a, _ := openStore(t, &Redis{Config: redisconn.Config{Address: "redis://:" + password + "@" + srv.Addr + "/3", KeyPrefix: "a:"}}, options(10))
	b, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr, Password: password, DB: 3, KeyPrefix: "b:"}}, options(10))
	named := func(name string) *Redis {
		q, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr, Password: password, DB: 3}}, options(10).with(name))
		return q
	}
	c, d := named("orders"), named("refunds")
	if c.keys.stream != "webhook_queue:orders:stream" || c.Name() != "orders" {
		t.Fatalf("queue orders: keys %+v, name %q", c.keys, c.Name())
	}
	stores := []*Redis{a, b, c, d}
	for i, q := range stores {
		enqueue(t, q, fmt.Sprint("wh_", i))
	}
	for i, q := range stores {
		if m := take(t, q, time.Minute); m == nil || m.DeliveryID != fmt.Sprint("wh_", i) {
			t.Fatalf("queue %d: %+v", i, m)
		}
		if m := take(t, q, time.Minute); m != nil {
			t.Fatalf("queue %d took another's message: %+v", i, m)
		}
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
	q, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr}}, options(10))
	for _, id := range []string{"wh_a", "wh_b", "wh_c"} {
		if err := q.Enqueue(ctx, message(id)); err != nil {
			t.Fatal(err)
		}
	}
	if m := take(t, q, time.Minute); m == nil || m.DeliveryID != "wh_a" {
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
		taken[m.DeliveryID]++
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
	holding, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr}, consumer: "holding"}, options(10))
	idle, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr}, consumer: "idle"}, options(10))
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
	settleRedis(t, idle)
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

// seedScript: KEYS messages, info, live, scheduled, dead, dead_info,
// dead_index; ARGV "1" for dead letters, the prefix of the DeliveryIDs'
// keys, now (ms), then for each message its id, JSON, info, DeliveryID
// and due time (ms). Stores them as the scripts would.
var seedScript = rueidis.NewLuaScript(`for i = 4, #ARGV, 5 do
	local id = ARGV[i]
	if ARGV[1] == '1' then
		redis.call('HSET', KEYS[5], id, ARGV[i + 1])
		redis.call('HSET', KEYS[6], id, ARGV[i + 2])
		redis.call('ZADD', KEYS[7], ARGV[3], id)
	else
		redis.call('HSET', KEYS[1], id, ARGV[i + 1])
		redis.call('HSET', KEYS[2], id, ARGV[i + 2])
		redis.call('ZADD', KEYS[3], ARGV[3], id)
		redis.call('ZADD', KEYS[4], ARGV[i + 4], id)
	end
	redis.call('SET', ARGV[2] .. ARGV[i + 3], id)
end
return 0`)

// seedRedis stores n messages of 1 KiB straight into q's Redis, as the
// scripts would: dead letters buried now, or messages scheduled an hour
// ahead; each with one attempt, last.
func seedRedis(t *testing.T, q *Redis, n int, dead bool, last Attempt) {
	t.Helper()
	ctx := context.Background()
	now := time.Now()
	keys := []string{q.keys.messages, q.keys.info, q.keys.live, q.keys.scheduled, q.keys.dead, q.keys.deadInfo, q.keys.deadIndex}
	msgs, raws, infs := seedMessages(t, n, now, func(i int) string { return newMessageID(now.Add(time.Duration(i))) }, last)
	// A client of its own: the store's gives Redis 500 ms to answer its
	// keep-alive PING, and a script that writes megabytes of bodies waits
	// for its fsync, which a disk busy with other tests can take longer
	// than that to finish.
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{q.Address}, ConnWriteTimeout: time.Minute, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	const batch = 250
	for start := 0; start < n; start += batch {
		args := []string{flag(dead), q.keys.delivery, ms(now)}
		for i := start; i < min(n, start+batch); i++ {
			args = append(args, msgs[i].ID, string(raws[i]), string(infs[i]), msgs[i].DeliveryID, ms(msgs[i].Due))
		}
		if err := seedScript.Exec(ctx, client, keys, args).Error(); err != nil {
			t.Fatal(err)
		}
	}
}

// settleRedis sends the completions that wait.
func settleRedis(t *testing.T, q *Redis) {
	t.Helper()
	if err := q.shared.flush(context.Background(), q); err != nil {
		t.Fatal(err)
	}
}

// redisWrites counts the changes Redis made to its data
// (rdb_changes_since_last_save: the test servers never save).
func redisWrites(t *testing.T, q *Redis) int64 {
	t.Helper()
	info, err := q.Do(context.Background(), func(c rueidis.Client) rueidis.Completed {
		return c.B().Info().Section("persistence").Build()
	}).ToString()
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(info, "rdb_changes_since_last_save:")
	if !ok {
		t.Fatalf("no rdb_changes_since_last_save in %q", info)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(strings.SplitN(rest, "\n", 2)[0]), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestRedisListReadsNoBody: List shows each state from the infos, and
// reads no message nor letter (here made unreadable).
func TestRedisListReadsNoBody(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t, redistest.Options{Durable: true})
	q, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr}}, options(10))
	enqueue(t, q, "wh_dead", "wh_scheduled", "wh_flight", "wh_pending")
	dead := take(t, q, time.Minute)
	if err := q.Bury(ctx, dead, Attempt{At: time.Now(), Error: "x"}); err != nil {
		t.Fatal(err)
	}
	scheduled := take(t, q, time.Minute)
	if err := q.Reschedule(ctx, scheduled, Attempt{At: time.Now(), Status: 503}, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	flight := take(t, q, time.Minute)
	for _, m := range []*Message{scheduled, flight} {
		srv.Do("HSET", q.keys.messages, m.ID, "not JSON")
	}
	srv.Do("HSET", q.keys.dead, dead.ID, "not JSON")
	for state, want := range map[State]string{StateDead: "wh_dead", StateScheduled: "wh_scheduled", StateInFlight: "wh_flight", StatePending: "wh_pending"} {
		got := list(t, q, state, 10)
		if len(got) != 1 || got[0].DeliveryID != want || got[0].Received.IsZero() {
			t.Errorf("%s: %+v, want %s", state, got, want)
		}
	}
	if got := list(t, q, StatePending, 10)[0]; got.Due.IsZero() || got.Due.After(time.Now()) {
		t.Errorf("pending: due %v", got.Due)
	}
}
