package queuestore

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
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
// another once it has been idle for the lease (XAUTOCLAIM), and Extend
// makes it idle anew. Idle times are measured by the Redis server, on its
// own clock (Redis reads its host's wall clock for them: a step of that
// clock moves every lease; the instances' clocks do not). Messages
// scheduled for a retry wait in a sorted set until due.
//
// What is stored is only as durable as Redis makes it. On Redis 7.2 or
// later (WAITAOF) with appendonly yes, each enqueue returns only once
// Redis has fsynced its append-only file. Without WAITAOF (Redis 7.0, 7.1)
// an acknowledged delivery survives a crash of Redis only with appendonly
// yes and appendfsync always. Either way no-appendfsync-on-rewrite must be
// no (else Redis skips the fsync while it saves a snapshot or rewrites its
// append-only file), and a delivery survives memory pressure only with
// maxmemory-policy noeviction. The store checks these when Caddy starts
// the config and warns when they differ. Standalone Redis only: the
// scripts touch several keys, which a cluster would split.
//
// The keys, after the key prefix (default: webhook_queue:<name>:):
//
//   - stream: the due messages' ids, read through the consumer group
//     "workers"; the entries pending in the group are in flight.
//   - messages: the messages not dead by id (a hash of JSON).
//   - live: their ids by when they were stored (a sorted set: max_pending
//     and the oldest).
//   - scheduled: the ids scheduled for a retry, by when they are due.
//   - dead: the dead letters by id (a hash of JSON); dead_info: the same
//     without headers and body, which Dead lists; dead_index: their ids
//     by when they were stored.
//   - delivery:<DeliveryID>: the id of the message holding that
//     DeliveryID (queued, in flight or dead), or of the one delivered,
//     then expiring after the retention.
type Redis struct {
	redisconn.Config

	opts      Options
	keys      redisKeys
	consumer  string
	max       string // max_pending, for the enqueue script
	retention string // in milliseconds, for the complete script
	logger    *zap.Logger
	// waitAOF says whether enqueues wait for the append-only file's fsync
	// (aofOn), a pointer because the module is copied.
	waitAOF *atomic.Int32
}

// States of Redis.waitAOF.
const (
	aofUnknown  = iota // Redis did not answer yet: the next enqueue finds out
	aofChecking        // an enqueue is finding out
	aofOff             // no WAITAOF (Redis before 7.2), or no append-only file
	aofOn              // each enqueue waits with WAITAOF
)

// waitAOFTimeout is the least an enqueue waits for the append-only file's
// fsync: with appendfsync everysec Redis fsyncs once a second.
const waitAOFTimeout = 1500 * time.Millisecond

// CaddyModule returns the Caddy module information.
func (Redis) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.webhook_queue.stores.redis",
		New: func() caddy.Module { return new(Redis) },
	}
}

// DefaultRedisKeyPrefix starts the keys of a queue without key_prefix,
// followed by the queue's name and a colon.
const DefaultRedisKeyPrefix = "webhook_queue:"

// group is the consumer group of the instances' workers.
const group = "workers"

// redisKeys are the queue's keys, described at Redis; delivery is the
// prefix of the DeliveryIDs' keys.
type redisKeys struct {
	stream, messages, live, scheduled, dead, deadInfo, deadIndex, delivery string
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

// Provision expands the placeholders, sets the defaults but for the key
// prefix (Open's, from the queue's name) and takes a share of the client
// for this connection configuration. Its errors name the field and never
// show a credential.
func (q *Redis) Provision(ctx caddy.Context) error {
	q.logger = ctx.Logger()
	q.waitAOF = new(atomic.Int32)
	if err := q.Config.Provision(""); err != nil {
		return err
	}
	if q.consumer == "" {
		q.consumer = consumer
	}
	return nil
}

// Open implements Store: without key_prefix, the queue's keys start with
// webhook_queue:<name>:.
func (q *Redis) Open(o Options) error {
	q.opts = o
	q.max = strconv.Itoa(o.MaxPending)
	q.retention = "0"
	if o.Retention > 0 {
		q.retention = strconv.FormatInt(max(o.Retention.Milliseconds(), 1), 10)
	}
	if q.KeyPrefix == "" {
		if o.Name == "" {
			return errors.New("key_prefix: the queue has no name to derive the default key prefix from")
		}
		q.KeyPrefix = DefaultRedisKeyPrefix + o.Name + ":"
	}
	p := q.KeyPrefix
	q.keys = redisKeys{stream: p + "stream", messages: p + "messages", live: p + "live", scheduled: p + "scheduled",
		dead: p + "dead", deadInfo: p + "dead_info", deadIndex: p + "dead_index", delivery: p + "delivery:"}
	return nil
}

// Start implements Store. It makes the consumer group if Redis answers,
// finds whether Redis has WAITAOF, and warns when Redis's settings would
// lose what it acknowledged. A Redis that does not answer fails nothing:
// deliveries are refused with 503 until it does, and the group is made on
// first use; its settings are checked at the next start.
func (q *Redis) Start() error {
	ctx := context.Background()
	if err := q.makeGroup(ctx); err != nil {
		q.logger.Warn("could not use Redis to check its settings; deliveries are refused with 503 until it answers",
			zap.String("endpoint", q.Endpoint()), zap.Error(err))
		return nil
	}
	settings, err := q.settings(ctx)
	if err != nil {
		q.logger.Warn("could not check that Redis keeps what it acknowledged (CONFIG GET is refused?): see docs/queue.md",
			zap.String("endpoint", q.Endpoint()), zap.Error(err))
	}
	q.detectWaitAOF(ctx, settings)
	for _, p := range durabilityProblems(settings, q.waitAOF.Load() == aofOn) {
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

// durabilitySettings are the Redis settings that decide whether it keeps
// what it acknowledged.
var durabilitySettings = []string{"appendonly", "appendfsync", "no-appendfsync-on-rewrite", "maxmemory-policy"}

// settings reads durabilitySettings (one by one: CONFIG GET takes one
// parameter before Redis 7).
func (q *Redis) settings(ctx context.Context) (map[string]string, error) {
	out := make(map[string]string, len(durabilitySettings))
	for _, name := range durabilitySettings {
		got, err := q.Do(ctx, func(c rueidis.Client) rueidis.Completed {
			return c.B().ConfigGet().Parameter(name).Build()
		}).AsStrMap()
		if err != nil {
			return out, err
		}
		if v, ok := got[name]; ok {
			out[name] = v
		}
	}
	return out, nil
}

// durabilityProblems says which of Redis's settings would lose messages it
// acknowledged, when enqueues wait for the append-only file's fsync
// (waitAOF) and when not. A setting Redis did not show is not judged.
func durabilityProblems(settings map[string]string, waitAOF bool) []string {
	var problems []string
	check := func(name, want, why string) {
		if v, ok := settings[name]; ok && v != want {
			problems = append(problems, fmt.Sprintf("%s is %s, not %s: %s", name, v, want, why))
		}
	}
	check("appendonly", "yes", "a restart of Redis loses what was stored since its last snapshot")
	if waitAOF {
		check("no-appendfsync-on-rewrite", "no", "Redis skips the fsync while it saves a snapshot or rewrites its append-only file, and enqueues, which wait for that fsync (WAITAOF), fail meanwhile")
	} else {
		check("appendfsync", "always", "a crash of Redis's machine loses up to a second of stored deliveries (Redis 7.2 or later would have each enqueue wait for the fsync: WAITAOF)")
		check("no-appendfsync-on-rewrite", "no", "Redis skips the fsync while it saves a snapshot or rewrites its append-only file, so a crash then loses what it acknowledged meanwhile")
	}
	check("maxmemory-policy", "noeviction", "Redis may evict queued deliveries when it runs out of memory")
	return problems
}

// detectWaitAOF finds whether enqueues can wait for the append-only file's
// fsync: Redis has WAITAOF (7.2 and later: tried once, with nothing to
// wait for) and appendonly is not known to be off. A Redis that does not
// answer leaves it to the next enqueue.
func (q *Redis) detectWaitAOF(ctx context.Context, settings map[string]string) {
	if settings["appendonly"] == "no" {
		q.waitAOF.Store(aofOff)
		return
	}
	err := q.Do(ctx, func(c rueidis.Client) rueidis.Completed {
		return c.B().Waitaof().Numlocal(0).Numreplicas(0).Timeout(1).Build()
	}).Error()
	_, refused := rueidis.IsRedisErr(err)
	switch {
	case err == nil:
		q.waitAOF.Store(aofOn)
	case refused: // unknown command: Redis before 7.2
		q.waitAOF.Store(aofOff)
	default:
		q.waitAOF.Store(aofUnknown)
	}
}

// Name implements Store.
func (q *Redis) Name() string { return q.opts.Name }

// heldScript begins the scripts that act on a take only while it still
// holds its entry: pending, with the delivery count the take saw (ARGV
// group, entry, delivery count). A take-over (XAUTOCLAIM) counts one more
// delivery.
const heldScript = `local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if not p[1] or p[1][4] ~= tonumber(ARGV[3]) then return 0 end
`

// enqueueSource: KEYS live, messages, stream, the DeliveryID's key, dead;
// ARGV max_pending, id, message, received (ms), "1" when the message has
// a DeliveryID. Returns -1 for a DeliveryID held (by a message stored, or
// one delivered within the retention: its key then expires), 0 when full,
// 1 when stored.
const enqueueSource = `if ARGV[5] == '1' then
	local held = redis.call('GET', KEYS[4])
	if held and (redis.call('PTTL', KEYS[4]) > 0 or redis.call('HEXISTS', KEYS[2], held) == 1 or redis.call('HEXISTS', KEYS[5], held) == 1) then
		return -1
	end
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
redis.call('XADD', KEYS[3], '*', 'id', ARGV[2])
if ARGV[5] == '1' then redis.call('SET', KEYS[4], ARGV[2]) end
return 1`

// enqueueSHA is enqueueSource's SHA-1, for EVALSHA.
var enqueueSHA = func() string {
	sum := sha1.Sum([]byte(enqueueSource))
	return hex.EncodeToString(sum[:])
}()

// The scripts. Each moves a message between states atomically. Enqueue is
// not sent again by the client (sent twice, it would store the message
// twice if it has no DeliveryID), so a broken connection fails it and the
// sender is refused: its retry is a duplicate if the first landed. Nor is
// revive's answer (sent again it finds the letter gone), so the operator
// sees the error. The others are, and the client sends them again over a
// new connection.
var (
	enqueueScript = rueidis.NewLuaScript(enqueueSource)
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
	// KEYS stream; ARGV group, entry, delivery count of the take. Makes
	// the entry idle anew, for the consumer that holds it and without
	// counting a delivery (JUSTID), while the take holds it. Returns 0
	// when it does not.
	extendScript = rueidis.NewLuaScriptRetryable(heldScript + `redis.call('XCLAIM', KEYS[1], ARGV[1], p[1][2], 0, ARGV[2], 'JUSTID')
return 1`)
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
	// KEYS stream, messages, live, the DeliveryID's key; ARGV group,
	// entry, id, retention (ms), "1" when the message has a DeliveryID.
	// Removes the message, whoever holds it, and keeps its DeliveryID
	// for the retention (the key expires then).
	completeScript = rueidis.NewLuaScriptRetryable(`redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('HDEL', KEYS[2], ARGV[3]) == 0 then return 0 end
redis.call('ZREM', KEYS[3], ARGV[3])
if ARGV[5] == '1' then
	local held = redis.call('GET', KEYS[4])
	if not held or held == ARGV[3] then
		if tonumber(ARGV[4]) > 0 then
			redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
		else
			redis.call('DEL', KEYS[4])
		end
	end
end
return 1`)
	// KEYS stream, messages, scheduled; ARGV group, entry, delivery count
	// of the take, id, message, due (ms). A take whose entry was taken
	// over (the count moved on) or settled changes nothing.
	rescheduleScript = rueidis.NewLuaScriptRetryable(heldScript + `redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('HEXISTS', KEYS[2], ARGV[4]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[4])
return 1`)
	// KEYS stream, messages, live, dead, dead_index, dead_info; ARGV
	// group, entry, delivery count of the take, id, message, received
	// (ms), the message without headers and body; like rescheduleScript,
	// only while the take holds the entry. The DeliveryID stays held.
	buryScript = rueidis.NewLuaScriptRetryable(heldScript + `redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('HDEL', KEYS[2], ARGV[4]) == 0 then return 0 end
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call('HSET', KEYS[4], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[4])
redis.call('HSET', KEYS[6], ARGV[4], ARGV[7])
return 1`)
	// KEYS dead, dead_index, messages, live, stream, dead_info; ARGV id,
	// message, received (ms), the dead letter as read. Returns 0 when id
	// is no dead letter, -1 when it changed since it was read (revived
	// and buried again). The DeliveryID stays held.
	reviveScript = rueidis.NewLuaScript(`local dead = redis.call('HGET', KEYS[1], ARGV[1])
if not dead then return 0 end
if dead ~= ARGV[4] then return -1 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('XADD', KEYS[5], '*', 'id', ARGV[1])
return 1`)
	// KEYS dead, dead_index, dead_info, the DeliveryID's key; ARGV id, "1"
	// when the letter has a DeliveryID. Returns 0 when id is no dead
	// letter. Releases the DeliveryID.
	dropScript = rueidis.NewLuaScriptRetryable(`if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] == '1' and redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
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

// flag is a script's argument for a condition.
func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// deliveryKey is the key of a DeliveryID (of none: a key never written).
func (q *Redis) deliveryKey(deliveryID string) string { return q.keys.delivery + deliveryID }

// Enqueue implements Store. The message and its DeliveryID are stored by
// one script: an enqueue whose answer was lost (a timeout) but that landed
// makes the sender's retry a duplicate. With WAITAOF, it then waits for
// the append-only file's fsync.
func (q *Redis) Enqueue(ctx context.Context, m *Message) error {
	if q.waitAOF.Load() == aofUnknown && q.waitAOF.CompareAndSwap(aofUnknown, aofChecking) {
		// Redis did not answer at Start.
		settings, _ := q.settings(ctx)
		q.detectWaitAOF(ctx, settings)
	}
	now := time.Now()
	m.ID, m.Received, m.Due = newMessageID(now), now, now
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	keys := []string{q.keys.live, q.keys.messages, q.keys.stream, q.deliveryKey(m.DeliveryID), q.keys.dead}
	args := []string{q.max, m.ID, string(raw), ms(now), flag(m.DeliveryID != "")}
	var stored int64
	if q.waitAOF.Load() == aofOn {
		stored, err = q.enqueueWaitAOF(ctx, keys, args)
	} else {
		stored, err = q.Exec(ctx, enqueueScript, keys, args).AsInt64()
	}
	if err != nil {
		return fmt.Errorf("redis: storing: %w", err)
	}
	switch stored {
	case -1:
		return ErrDuplicate
	case 0:
		return ErrFull
	}
	return nil
}

// errNotFsynced: WAITAOF timed out.
var errNotFsynced = errors.New("the delivery is stored, but Redis did not fsync its append-only file in time")

// enqueueWaitAOF runs the enqueue script, then WAITAOF 1 0, which waits
// until Redis has fsynced the writes of its connection: both on one
// connection (a pipeline of the two on a connection of rueidis's pool for
// blocking commands, as WAITAOF is one), not the shared one, whose writes
// are others'. Returns the script's answer.
func (q *Redis) enqueueWaitAOF(ctx context.Context, keys, args []string) (int64, error) {
	client, err := q.Client()
	if err != nil {
		return 0, err
	}
	wait := max(time.Duration(q.Timeout), waitAOFTimeout)
	ctx, cancel := context.WithTimeout(ctx, time.Duration(q.Timeout)+wait)
	defer cancel()
	waitAOF := client.B().Waitaof().Numlocal(1).Numreplicas(0).Timeout(wait.Milliseconds()).Build()
	got := client.DoMulti(ctx,
		client.B().Evalsha().Sha1(enqueueSHA).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build(), waitAOF)
	if err, ok := rueidis.IsRedisErr(got[0].Error()); ok && err.IsNoScript() {
		waitAOF = client.B().Waitaof().Numlocal(1).Numreplicas(0).Timeout(wait.Milliseconds()).Build()
		got = client.DoMulti(ctx,
			client.B().Eval().Script(enqueueSource).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build(), waitAOF)
	}
	stored, err := got[0].AsInt64()
	if err != nil || stored != 1 {
		return stored, err // nothing written, or not known to be
	}
	fsynced, err := got[1].AsIntSlice()
	if rerr, ok := rueidis.IsRedisErr(err); ok {
		// Redis refuses WAITAOF (not permitted, renamed, appendonly
		// turned off since Start): the delivery is stored, as durable as
		// appendfsync makes it.
		if q.waitAOF.CompareAndSwap(aofOn, aofOff) {
			q.logger.Warn("Redis refused WAITAOF: enqueues no longer wait for the fsync of its append-only file, and what Redis acknowledges is only as durable as appendfsync makes it",
				zap.String("endpoint", q.Endpoint()), zap.Error(rerr))
		}
		return stored, nil
	}
	if err != nil {
		return 0, err
	}
	if len(fsynced) == 0 || fsynced[0] < 1 {
		return 0, errNotFsynced
	}
	return stored, nil
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

// Extend implements Store. The lease then ends when the entry has been
// idle for the lease of the take that would take it over: the queue takes
// and extends with one lease.
func (q *Redis) Extend(ctx context.Context, m *Message, _ time.Duration) error {
	entry, deliveries := taken(m)
	if entry == "" {
		return ErrLeaseLost // not taken
	}
	held, err := q.Exec(ctx, extendScript, []string{q.keys.stream}, []string{group, entry, deliveries}).AsInt64()
	if err != nil {
		return fmt.Errorf("redis: extending: %w", err)
	}
	if held == 0 {
		return ErrLeaseLost
	}
	return nil
}

// Complete implements Store.
func (q *Redis) Complete(ctx context.Context, m *Message, _ Attempt) error {
	entry, _ := taken(m)
	err := q.Exec(ctx, completeScript, []string{q.keys.stream, q.keys.messages, q.keys.live, q.deliveryKey(m.DeliveryID)},
		[]string{group, entry, m.ID, q.retention, flag(m.DeliveryID != "")}).Error()
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
		[]string{group, entry, deliveries, m.ID, string(raw), ms(next)}).Error()
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
	info, err := summary(m)
	if err != nil {
		return err
	}
	entry, deliveries := taken(m)
	err = q.Exec(ctx, buryScript, []string{q.keys.stream, q.keys.messages, q.keys.live, q.keys.dead, q.keys.deadIndex, q.keys.deadInfo},
		[]string{group, entry, deliveries, m.ID, string(raw), ms(m.Received), string(info)}).Error()
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

// Dead implements Store: it reads the dead letters' summaries (dead_info),
// not the letters.
func (q *Redis) Dead(ctx context.Context, limit int) ([]Message, error) {
	if limit <= 0 {
		return nil, nil
	}
	ids, err := q.Do(ctx, func(c rueidis.Client) rueidis.Completed {
		return c.B().Zrange().Key(q.keys.deadIndex).Min("0").Max(strconv.Itoa(limit - 1)).Build()
	}).AsStrSlice()
	if err != nil || len(ids) == 0 {
		return nil, err
	}
	raws, err := q.Do(ctx, func(c rueidis.Client) rueidis.Completed {
		return c.B().Hmget().Key(q.keys.deadInfo).Field(ids...).Build()
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
		out = append(out, m)
	}
	return out, nil
}

// Revive implements Store.
func (q *Redis) Revive(ctx context.Context, id string) error {
	if id == "" {
		return ErrNotFound
	}
	revived, err := q.revive(ctx, id)
	if err == nil && !revived {
		return ErrNotFound
	}
	return err
}

// ReviveAll implements Store.
func (q *Redis) ReviveAll(ctx context.Context) (int, error) {
	return q.reviveOldest(ctx, 0)
}

// reviveOldest revives the oldest dead letters, up to limit of them (0:
// all), and returns how many it revived.
func (q *Redis) reviveOldest(ctx context.Context, limit int) (int, error) {
	last := "-1"
	if limit > 0 {
		last = strconv.Itoa(limit - 1)
	}
	ids, err := q.Do(ctx, func(c rueidis.Client) rueidis.Completed {
		return c.B().Zrange().Key(q.keys.deadIndex).Min("0").Max(last).Build()
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
		if revived {
			n++
		}
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
		n, err := q.Exec(ctx, reviveScript, []string{q.keys.dead, q.keys.deadIndex, q.keys.messages, q.keys.live, q.keys.stream, q.keys.deadInfo},
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

// Drop implements Store. The dead letter's DeliveryID is released.
func (q *Redis) Drop(ctx context.Context, id string) error {
	info, err := q.Do(ctx, func(c rueidis.Client) rueidis.Completed {
		return c.B().Hget().Key(q.keys.deadInfo).Field(id).Build()
	}).ToString()
	if rueidis.IsRedisNil(err) {
		return ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("redis: dropping: %w", err)
	}
	var held struct {
		DeliveryID string `json:"delivery_id"`
	}
	if err := json.Unmarshal([]byte(info), &held); err != nil {
		return fmt.Errorf("redis: dropping: %w", err)
	}
	n, err := q.Exec(ctx, dropScript, []string{q.keys.dead, q.keys.deadIndex, q.keys.deadInfo, q.deliveryKey(held.DeliveryID)},
		[]string{id, flag(held.DeliveryID != "")}).AsInt64()
	if err != nil {
		return fmt.Errorf("redis: dropping: %w", err)
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}

// UnmarshalCaddyfile sets up the Redis store from Caddyfile tokens, within
// a webhook_queue block. Syntax:
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
