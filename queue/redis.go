package queue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/redis/rueidis"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/internal/redisconn"
)

func init() {
	caddy.RegisterModule(Redis{})
}

// Redis keeps the queue in Redis (or Valkey), shared by every Caddy
// instance configured with the same server, database and key_prefix: a
// fleet delivers one queue. Due messages are entries of a stream read
// through a consumer group, so each is taken by one instance at a time;
// one that an instance took and never settled (it died) is claimed by
// another once it has been idle for the lease (XAUTOCLAIM). Messages
// scheduled for a retry wait in a sorted set until due.
//
// What is stored is only as durable as Redis makes it: an acknowledged
// delivery survives a crash of Redis only with appendonly yes and
// appendfsync always, and survives memory pressure only with
// maxmemory-policy noeviction. The store checks these when Caddy starts
// the config and warns when they differ. Standalone Redis only: the
// scripts touch several keys, which a cluster would split.
type Redis struct {
	redisconn.Config

	keys     redisKeys
	consumer string
	max      string // max_pending, for the enqueue script
	logger   *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Redis) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.openai_webhook.queue_stores.redis",
		New: func() caddy.Module { return new(Redis) },
	}
}

// DefaultRedisKeyPrefix starts the queue's keys.
const DefaultRedisKeyPrefix = "openai_webhook:queue:"

// group is the consumer group of the instances' workers.
const group = "workers"

// redisKeys are the queue's keys: the stream of due messages' ids; the
// messages not dead by id (a hash of JSON); their ids by when they were
// stored (for max_pending and the oldest); the ids scheduled for a retry,
// by when they are due; the dead letters by id (a hash of JSON); their ids
// by when they were stored.
type redisKeys struct {
	stream, messages, live, scheduled, dead, deadIndex string
}

// consumer names this process in the consumer group: the instance's host
// and process, and a random part, as a process can be restarted under the
// same pid.
var consumer = func() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}()

// Provision expands the placeholders, sets the defaults and takes a share
// of the client for this connection configuration. Its errors name the
// field and never show a credential.
func (q *Redis) Provision(ctx caddy.Context) error {
	q.logger = ctx.Logger()
	if err := q.Config.Provision(DefaultRedisKeyPrefix); err != nil {
		return err
	}
	p := q.KeyPrefix
	q.keys = redisKeys{stream: p + "stream", messages: p + "messages", live: p + "live",
		scheduled: p + "scheduled", dead: p + "dead", deadIndex: p + "dead_index"}
	if q.consumer == "" {
		q.consumer = consumer
	}
	return nil
}

// Open implements Store.
func (q *Redis) Open(maxPending int) error {
	q.max = strconv.Itoa(maxPending)
	return nil
}

// Start implements Store. It makes the consumer group if Redis answers,
// and warns when Redis's settings would lose what it acknowledged. A Redis
// that does not answer fails nothing: deliveries are refused with 503
// until it does, and the group is made on first use; its settings are
// checked at the next start.
func (q *Redis) Start() error {
	ctx := context.Background()
	if err := q.makeGroup(ctx); err != nil {
		q.logger.Warn("could not use Redis to check its settings; deliveries are refused with 503 until it answers",
			zap.String("endpoint", q.Endpoint()), zap.Error(err))
		return nil
	}
	problems, err := q.durabilityProblems(ctx)
	if err != nil {
		q.logger.Warn("could not check that Redis keeps what it acknowledged (CONFIG GET is refused?): see docs/queue.md",
			zap.String("endpoint", q.Endpoint()), zap.Error(err))
	}
	for _, p := range problems {
		q.logger.Warn("Redis can lose queued deliveries it acknowledged: "+p, zap.String("endpoint", q.Endpoint()))
	}
	if err := q.Exec(ctx, pruneScript, []string{q.keys.stream}, []string{group, strconv.FormatInt(consumerIdlePrune.Milliseconds(), 10)}).Error(); err != nil && !rueidis.IsRedisNil(err) {
		q.logger.Debug("could not prune idle consumers", zap.Error(err))
	}
	return nil
}

// consumerIdlePrune is how long a consumer with nothing in flight stays in
// the group: each Caddy process that took a message is one (Redis makes
// it then), so restarts leave them behind.
const consumerIdlePrune = 24 * time.Hour

// makeGroup makes the consumer group if it does not exist, and puts back
// in the stream the messages whose entries went with it (see groupScript).
func (q *Redis) makeGroup(ctx context.Context) error {
	n, err := q.Exec(ctx, groupScript, []string{q.keys.stream, q.keys.messages, q.keys.scheduled}, []string{group}).AsInt64()
	if err != nil {
		return err
	}
	if n > 0 {
		q.logger.Warn("the queue's stream or consumer group was gone (Redis lost data, or a key was deleted): its messages are due again",
			zap.String("endpoint", q.Endpoint()), zap.Int64("messages", n))
	}
	return nil
}

// durabilityProblems says which of Redis's settings would lose messages it
// acknowledged.
func (q *Redis) durabilityProblems(ctx context.Context) ([]string, error) {
	want := []struct{ name, value, why string }{
		{"appendonly", "yes", "a restart of Redis loses what was stored since its last snapshot"},
		{"appendfsync", "always", "a crash of Redis's machine loses up to a second of stored deliveries"},
		{"maxmemory-policy", "noeviction", "Redis may evict queued deliveries when it runs out of memory"},
	}
	var problems []string
	for _, w := range want {
		got, err := q.Do(ctx, func(c rueidis.Client) rueidis.Completed {
			return c.B().ConfigGet().Parameter(w.name).Build()
		}).AsStrMap()
		if err != nil {
			return problems, err
		}
		if v, ok := got[w.name]; ok && v != w.value {
			problems = append(problems, fmt.Sprintf("%s is %s, not %s: %s", w.name, v, w.value, w.why))
		}
	}
	return problems, nil
}

// Name implements Store.
func (q *Redis) Name() string { return "redis:" + q.Endpoint() + "/" + q.KeyPrefix }

// heldScript begins the scripts that settle a take only while it still holds
// its entry: pending, with the delivery count the take saw (ARGV group,
// entry, and the count as ARGV[6]).
const heldScript = `local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if not p[1] or p[1][4] ~= tonumber(ARGV[6]) then return 0 end
`

// The scripts. Each moves a message between states atomically. Enqueue is
// not idempotent (sent twice it stores the message twice), so a broken
// connection fails it and the sender is refused; nor is revive's answer (sent
// again it finds the letter gone), so the operator sees the error. The
// others are, and the client sends them again over a new connection.
var (
	// KEYS live, messages, stream; ARGV max_pending, id, message,
	// received (ms). Returns 0 when full.
	enqueueScript = rueidis.NewLuaScript(`if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
redis.call('XADD', KEYS[3], '*', 'id', ARGV[2])
return 1`)
	// KEYS stream, scheduled, messages; ARGV group, consumer, now (ms),
	// lease (ms). Moves the scheduled messages now due into the stream,
	// then claims an entry idle for the lease (its consumer died) or reads
	// a new one. Returns the entry's id, the message and the entry's
	// delivery count (one more with each take), or nil.
	takeScript = rueidis.NewLuaScriptRetryable(`local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, 100)
for _, id in ipairs(due) do
	redis.call('ZREM', KEYS[2], id)
	redis.call('XADD', KEYS[1], '*', 'id', id)
end
local entry
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[4], '0-0', 'COUNT', 1)
if claimed[2][1] then entry = claimed[2][1] end
if not entry then
	local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
	if read then entry = read[1][2][1] end
end
if not entry then return false end
local m = redis.call('HGET', KEYS[3], entry[2][2])
if not m then
	redis.call('XACK', KEYS[1], ARGV[1], entry[1])
	redis.call('XDEL', KEYS[1], entry[1])
	return false
end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
return {entry[1], m, p[1][4]}`)
	// KEYS stream, messages, scheduled; ARGV group. Makes the consumer
	// group, reading the stream from its start, unless it exists; then
	// every message neither in the stream nor scheduled (its entry was
	// lost with the stream, or was in flight in the lost group) is added
	// to the stream again, at least once. Returns how many were.
	groupScript = rueidis.NewLuaScriptRetryable(`local made = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(made) == 'table' and made.err then
	if string.find(made.err, 'BUSYGROUP') then return 0 end
	return made
end
local streamed = {}
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do streamed[e[2][2]] = true end
local n = 0
for _, id in ipairs(redis.call('HKEYS', KEYS[2])) do
	if not streamed[id] and not redis.call('ZSCORE', KEYS[3], id) then
		redis.call('XADD', KEYS[1], '*', 'id', id)
		n = n + 1
	end
end
return n`)
	// KEYS stream, messages, live; ARGV group, entry, id.
	completeScript = rueidis.NewLuaScriptRetryable(`redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
return 1`)
	// KEYS stream, messages, scheduled; ARGV group, entry, id, message,
	// due (ms), delivery count of the take. A take whose entry was taken
	// over (the count moved on) or settled changes nothing.
	rescheduleScript = rueidis.NewLuaScriptRetryable(heldScript + `redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[3])
return 1`)
	// KEYS stream, messages, live, dead, dead_index; ARGV group, entry,
	// id, message, received (ms), delivery count of the take; like
	// rescheduleScript, only while the take holds the entry.
	buryScript = rueidis.NewLuaScriptRetryable(heldScript + `redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('HDEL', KEYS[2], ARGV[3]) == 0 then return 0 end
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[3])
return 1`)
	// KEYS dead, dead_index, messages, live, stream; ARGV id, message,
	// received (ms), the dead letter as read. Returns 0 when id is no dead
	// letter, -1 when it changed since it was read (revived and buried
	// again).
	reviveScript = rueidis.NewLuaScript(`local dead = redis.call('HGET', KEYS[1], ARGV[1])
if not dead then return 0 end
if dead ~= ARGV[4] then return -1 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('XADD', KEYS[5], '*', 'id', ARGV[1])
return 1`)
	// KEYS dead, dead_index; ARGV id. Returns 0 when id is no dead letter.
	dropScript = rueidis.NewLuaScriptRetryable(`if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1`)
	// KEYS stream, scheduled, live, dead; ARGV group, now (ms). Returns
	// pending, scheduled, in flight, dead, and when the oldest message not
	// dead was stored (ms, -1 with none).
	countsScript = rueidis.NewLuaScriptRetryable(`local inflight = 0
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(p) == 'table' and not p.err then inflight = p[1] end
local due = redis.call('ZCOUNT', KEYS[2], '-inf', ARGV[2])
local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
return {redis.call('XLEN', KEYS[1]) - inflight + due, redis.call('ZCARD', KEYS[2]) - due, inflight,
	redis.call('HLEN', KEYS[4]), tonumber(oldest[2] or '-1')}`)
	// KEYS stream; ARGV group, idle (ms). Deletes the consumers with
	// nothing in flight that have been idle that long.
	pruneScript = rueidis.NewLuaScriptRetryable(`local cs = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if type(cs) ~= 'table' or cs.err then return 0 end
local n = 0
for _, c in ipairs(cs) do
	local f = {}
	for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
	if f['pending'] == 0 and f['idle'] > tonumber(ARGV[2]) then
		redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
		n = n + 1
	end
end
return n`)
)

// newMessageID returns a message id unique across instances, ordered by
// time: the nanosecond, then random bits.
func newMessageID(now time.Time) string {
	var b [16]byte
	t := uint64(now.UnixNano())
	for i := range 8 {
		b[i] = byte(t >> (56 - 8*i))
	}
	_, _ = rand.Read(b[8:])
	return hex.EncodeToString(b[:])
}

func ms(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

// Enqueue implements Store.
func (q *Redis) Enqueue(ctx context.Context, m *Message) error {
	now := time.Now()
	m.ID, m.Received, m.Due = newMessageID(now), now, now
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	stored, err := q.Exec(ctx, enqueueScript, []string{q.keys.live, q.keys.messages, q.keys.stream},
		[]string{q.max, m.ID, string(raw), ms(now)}).AsInt64()
	if err != nil {
		return fmt.Errorf("redis: storing: %w", err)
	}
	if stored == 0 {
		return ErrFull
	}
	return nil
}

// Take implements Store.
func (q *Redis) Take(ctx context.Context, lease time.Duration) (*Message, error) {
	keys := []string{q.keys.stream, q.keys.scheduled, q.keys.messages}
	args := []string{group, q.consumer, ms(time.Now()), strconv.FormatInt(max(lease.Milliseconds(), 1), 10)}
	got, err := q.Exec(ctx, takeScript, keys, args).ToArray()
	if err != nil && strings.Contains(err.Error(), "NOGROUP") {
		// The stream or its group is gone (Redis lost data, or a key was
		// deleted): make them anew.
		if err = q.makeGroup(ctx); err == nil {
			got, err = q.Exec(ctx, takeScript, keys, args).ToArray()
		}
	}
	if rueidis.IsRedisNil(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("redis: taking: %w", err)
	}
	if len(got) != 3 {
		return nil, fmt.Errorf("redis: taking: unexpected answer of %d values", len(got))
	}
	entry, err := got[0].ToString()
	if err != nil {
		return nil, fmt.Errorf("redis: taking: %w", err)
	}
	raw, err := got[1].ToString()
	if err != nil {
		return nil, fmt.Errorf("redis: taking: %w", err)
	}
	m := new(Message)
	if err := json.Unmarshal([]byte(raw), m); err != nil {
		return nil, fmt.Errorf("redis: taking: %w", err)
	}
	deliveries, err := got[2].AsInt64()
	if err != nil {
		return nil, fmt.Errorf("redis: taking: %w", err)
	}
	m.entry = entry + " " + strconv.FormatInt(deliveries, 10)
	return m, nil
}

// Complete implements Store.
func (q *Redis) Complete(ctx context.Context, m *Message, _ Attempt) error {
	entry, _ := taken(m)
	err := q.Exec(ctx, completeScript, []string{q.keys.stream, q.keys.messages, q.keys.live},
		[]string{group, entry, m.ID}).Error()
	if err != nil {
		return fmt.Errorf("redis: completing: %w", err)
	}
	return nil
}

// Reschedule implements Store.
func (q *Redis) Reschedule(ctx context.Context, m *Message, a Attempt, next time.Time) error {
	m.Due = next
	raw, err := m.recordAttempt(a)
	if err != nil {
		return err
	}
	entry, deliveries := taken(m)
	err = q.Exec(ctx, rescheduleScript, []string{q.keys.stream, q.keys.messages, q.keys.scheduled},
		[]string{group, entry, m.ID, string(raw), ms(next), deliveries}).Error()
	if err != nil {
		return fmt.Errorf("redis: rescheduling: %w", err)
	}
	return nil
}

// Bury implements Store.
func (q *Redis) Bury(ctx context.Context, m *Message, a Attempt) error {
	raw, err := m.recordAttempt(a)
	if err != nil {
		return err
	}
	entry, deliveries := taken(m)
	err = q.Exec(ctx, buryScript, []string{q.keys.stream, q.keys.messages, q.keys.live, q.keys.dead, q.keys.deadIndex},
		[]string{group, entry, m.ID, string(raw), ms(m.Received), deliveries}).Error()
	if err != nil {
		return fmt.Errorf("redis: burying: %w", err)
	}
	return nil
}

// taken splits m's handle into its take's stream entry and that entry's
// delivery count then.
func taken(m *Message) (entry, deliveries string) {
	entry, deliveries, _ = strings.Cut(m.entry, " ")
	return entry, deliveries
}

// Counts implements Store.
func (q *Redis) Counts(ctx context.Context) (Counts, error) {
	got, err := q.Exec(ctx, countsScript, []string{q.keys.stream, q.keys.scheduled, q.keys.live, q.keys.dead},
		[]string{group, ms(time.Now())}).AsIntSlice()
	if err != nil {
		return Counts{}, fmt.Errorf("redis: counting: %w", err)
	}
	if len(got) != 5 {
		return Counts{}, fmt.Errorf("redis: counting: unexpected answer of %d values", len(got))
	}
	c := Counts{Pending: int(got[0]), Scheduled: int(got[1]), InFlight: int(got[2]), Dead: int(got[3])}
	if got[4] >= 0 {
		c.Oldest = time.UnixMilli(got[4])
	}
	return c, nil
}

// Dead implements Store.
func (q *Redis) Dead(ctx context.Context, limit int) ([]Message, error) {
	ids, err := q.Do(ctx, func(c rueidis.Client) rueidis.Completed {
		return c.B().Zrange().Key(q.keys.deadIndex).Min("0").Max(strconv.Itoa(limit - 1)).Build()
	}).AsStrSlice()
	if err != nil || len(ids) == 0 {
		return nil, err
	}
	raws, err := q.Do(ctx, func(c rueidis.Client) rueidis.Completed {
		return c.B().Hmget().Key(q.keys.dead).Field(ids...).Build()
	}).ToArray()
	if err != nil {
		return nil, fmt.Errorf("redis: listing dead letters: %w", err)
	}
	out := make([]Message, 0, len(raws))
	for _, v := range raws {
		raw, err := v.ToString()
		if err != nil {
			continue // dropped or revived meanwhile
		}
		var m Message
		if err := json.Unmarshal([]byte(raw), &m); err != nil {
			return nil, fmt.Errorf("redis: listing dead letters: %w", err)
		}
		m.Header, m.Body = nil, nil
		out = append(out, m)
	}
	return out, nil
}

// Revive implements Store.
func (q *Redis) Revive(ctx context.Context, id string) (int, error) {
	if id != "" {
		revived, err := q.revive(ctx, id)
		if err == nil && !revived {
			return 0, ErrNotFound
		}
		return btoi(revived), err
	}
	ids, err := q.Do(ctx, func(c rueidis.Client) rueidis.Completed {
		return c.B().Zrange().Key(q.keys.deadIndex).Min("0").Max("-1").Build()
	}).AsStrSlice()
	if err != nil {
		return 0, fmt.Errorf("redis: listing dead letters: %w", err)
	}
	n := 0
	for _, id := range ids {
		revived, err := q.revive(ctx, id)
		if err != nil {
			return n, err
		}
		n += btoi(revived)
	}
	return n, nil
}

// revive makes the dead letter id due, and reports whether there was one
// (it may have been dropped or revived meanwhile). The letter is read, made
// due, and written back only if it is still as read, so a letter buried
// again meanwhile keeps its newer history; that is tried a few times.
func (q *Redis) revive(ctx context.Context, id string) (bool, error) {
	for range 3 {
		raw, err := q.Do(ctx, func(c rueidis.Client) rueidis.Completed {
			return c.B().Hget().Key(q.keys.dead).Field(id).Build()
		}).ToString()
		if rueidis.IsRedisNil(err) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("redis: reviving: %w", err)
		}
		var m Message
		if err := json.Unmarshal([]byte(raw), &m); err != nil {
			return false, fmt.Errorf("redis: reviving: %w", err)
		}
		m.Due, m.Tries = time.Now(), 0
		fresh, err := json.Marshal(m)
		if err != nil {
			return false, err
		}
		n, err := q.Exec(ctx, reviveScript, []string{q.keys.dead, q.keys.deadIndex, q.keys.messages, q.keys.live, q.keys.stream},
			[]string{id, string(fresh), ms(m.Received), raw}).AsInt64()
		if err != nil {
			return false, fmt.Errorf("redis: reviving: %w", err)
		}
		if n >= 0 {
			return n == 1, nil
		}
	}
	return false, fmt.Errorf("redis: reviving: dead letter %s kept changing", id)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Drop implements Store.
func (q *Redis) Drop(ctx context.Context, id string) error {
	n, err := q.Exec(ctx, dropScript, []string{q.keys.dead, q.keys.deadIndex}, []string{id}).AsInt64()
	if err != nil {
		return fmt.Errorf("redis: dropping: %w", err)
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}

// UnmarshalCaddyfile sets up the Redis store from Caddyfile tokens, within
// openai_webhook's queue block. Syntax:
//
//	store redis {
//		address    <host:port>|<redis:// or rediss:// URL>
//		username   <username>
//		password   <password>
//		db         <number>
//		key_prefix <prefix>
//		tls
//		tls_ca     <PEM file>
//		tls_server_name <name>
//		timeout    <duration>
//	}
func (q *Redis) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return q.Config.UnmarshalBlock(d, "redis queue store", func(string) (bool, error) { return false, nil })
}

// Interface guards
var (
	_ Store                 = (*Redis)(nil)
	_ caddy.Provisioner     = (*Redis)(nil)
	_ caddy.CleanerUpper    = (*Redis)(nil)
	_ caddyfile.Unmarshaler = (*Redis)(nil)
)
