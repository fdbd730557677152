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
	"sync"
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
// scheduled for a retry wait in a sorted set until due. A take claims and
// reads up to n entries in one script; completions are sent together, a
// few milliseconds after they were made (Store.Complete), one script for
// many; a take that finds nothing writes nothing.
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
//   - info: the messages not dead by id: their info (what List shows, as
//     JSON), so that listing reads no body.
//   - dead: the dead letters by id (a hash of JSON); dead_info: their
//     info; dead_index: their ids by when they were buried (ms), the
//     oldest of which the retention drops first.
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
	// shared is what the stores of this queue share in this process,
	// under sharedKey in redisQueues.
	shared    *redisQueue
	sharedKey string
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
	stream, messages, live, scheduled, info, dead, deadInfo, deadIndex, delivery string
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
	q.keys = redisKeys{stream: p + "stream", messages: p + "messages", live: p + "live", scheduled: p + "scheduled", info: p + "info",
		dead: p + "dead", deadInfo: p + "dead_info", deadIndex: p + "dead_index", delivery: p + "delivery:"}
	logger := q.logger
	if logger == nil {
		logger = zap.NewNop()
	}
	q.sharedKey = q.Endpoint() + " " + p
	shared, _, err := redisQueues.LoadOrNew(q.sharedKey, func() (caddy.Destructor, error) {
		return newRedisQueue(logger), nil
	})
	if err != nil {
		return err
	}
	q.shared = shared.(*redisQueue)
	return nil
}

// Start implements Store. It makes the consumer group if Redis answers,
// finds whether Redis has WAITAOF, warns when Redis's settings would
// lose what it acknowledged, and drops the dead letters past this
// config's bounds. A Redis that does not answer fails nothing:
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
	dropped, err := q.retain(ctx)
	if err != nil {
		q.logger.Warn("could not drop the dead letters past dead_letters' bounds", zap.String("endpoint", q.Endpoint()), zap.Error(err))
	}
	if dropped > 0 {
		q.logger.Info("dropped the dead letters past dead_letters' bounds", zap.String("queue", q.opts.Name), zap.Int("dropped", dropped),
			zap.Duration("max_age", q.opts.DeadMaxAge), zap.Int("max_count", q.opts.DeadMaxCount))
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

// Location implements Store: Redis's address and the key prefix.
func (q *Redis) Location() string { return q.sharedKey }

// held begins the scripts that act on a take only while it still holds
// its entry: pending, with the delivery count the take saw (KEYS[1] the
// stream; ARGV group, entry, delivery count). A take-over (XAUTOCLAIM)
// counts one more delivery. Else the script returns ret.
func held(ret string) string {
	return `local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if not p[1] or p[1][4] ~= tonumber(ARGV[3]) then return ` + ret + ` end
`
}

// deadSource defines the scripts' functions on dead letters, given the
// keys dead, dead_index and dead_info, and the prefix of the DeliveryIDs'
// keys: drop_dead deletes one, releasing its DeliveryID (read from its
// info); retain drops up to limit of the oldest (by when they were
// buried) of those buried before cutoff (ms, "0": none) or past maxcount
// (0: none), and returns how many.
const deadSource = `local function drop_dead(dead, index, dinfo, prefix, id)
	local inf = redis.call('HGET', dinfo, id)
	local n = redis.call('HDEL', dead, id)
	redis.call('HDEL', dinfo, id)
	redis.call('ZREM', index, id)
	if inf then
		local ok, v = pcall(cjson.decode, inf)
		if ok and type(v) == 'table' and type(v['delivery_id']) == 'string' and v['delivery_id'] ~= '' then
			local key = prefix .. v['delivery_id']
			if redis.call('GET', key) == id then redis.call('DEL', key) end
		end
	end
	return n
end
local function retain(dead, index, dinfo, prefix, cutoff, maxcount, limit)
	local dropped = 0
	if cutoff ~= '0' then
		for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. cutoff, 'LIMIT', 0, limit)) do
			drop_dead(dead, index, dinfo, prefix, id)
			dropped = dropped + 1
		end
	end
	if maxcount > 0 and dropped < limit then
		local over = math.min(redis.call('ZCARD', index) - maxcount, limit - dropped)
		if over > 0 then
			for _, id in ipairs(redis.call('ZRANGE', index, 0, over - 1)) do
				drop_dead(dead, index, dinfo, prefix, id)
				dropped = dropped + 1
			end
		end
	end
	return dropped
end
`

// enqueueSource: KEYS live, messages, stream, the DeliveryID's key, dead,
// info; ARGV max_pending, id, message, received (ms), "1" when the
// message has a DeliveryID, its info. Returns -1 for a DeliveryID held (by
// a message stored, or one delivered within the retention: its key then
// expires), 0 when full, 1 when stored.
const enqueueSource = `if ARGV[5] == '1' then
	local held = redis.call('GET', KEYS[4])
	if held and (redis.call('PTTL', KEYS[4]) > 0 or redis.call('HEXISTS', KEYS[2], held) == 1 or redis.call('HEXISTS', KEYS[5], held) == 1) then
		return -1
	end
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[6], ARGV[2], ARGV[6])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
redis.call('XADD', KEYS[3], '*', 'id', ARGV[2])
if ARGV[5] == '1' then redis.call('SET', KEYS[4], ARGV[2]) end
return 1`

// enqueueSHA is enqueueSource's SHA-1, for EVALSHA.
var enqueueSHA = func() string {
	sum := sha1.Sum([]byte(enqueueSource))
	return hex.EncodeToString(sum[:])
}()

// The scripts. Each moves messages between states atomically. Enqueue is
// not sent again by the client (sent twice, it would store the message
// twice if it has no DeliveryID), so a broken connection fails it and the
// sender is refused: its retry is a duplicate if the first landed. Nor is
// revive's answer (sent again it finds the letter gone), so the operator
// sees the error. The others are, and the client sends them again over a
// new connection.
var (
	enqueueScript = rueidis.NewLuaScript(enqueueSource)
	// KEYS stream, scheduled, messages; ARGV group, consumer, now (ms),
	// lease (ms), n. Moves the scheduled messages now due into the
	// stream, then claims up to n entries idle for the lease (their
	// consumer died), and reads new ones for the rest. Returns, for each
	// entry, its id, the message and the entry's delivery count (one more
	// with each take). A take that finds nothing writes nothing.
	takeScript = rueidis.NewLuaScriptRetryable(`local n = tonumber(ARGV[5])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, math.max(100, n))
for _, id in ipairs(due) do
	redis.call('ZREM', KEYS[2], id)
	redis.call('XADD', KEYS[1], '*', 'id', id)
end
local entries, counts = {}, {}
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[4], '0-0', 'COUNT', n)
for _, e in ipairs(claimed[2]) do
	if type(e) == 'table' and type(e[2]) == 'table' then
		table.insert(entries, e)
		counts[#entries] = 0
	end
end
if #entries < n then
	local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', n - #entries, 'STREAMS', KEYS[1], '>')
	if read then
		for _, e in ipairs(read[1][2]) do
			table.insert(entries, e)
			counts[#entries] = 1
		end
	end
end
local out = {}
for i, e in ipairs(entries) do
	local m = redis.call('HGET', KEYS[3], e[2][2])
	if m then
		local c = counts[i]
		if c == 0 then c = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)[1][4] end
		table.insert(out, e[1])
		table.insert(out, m)
		table.insert(out, c)
	else
		redis.call('XACK', KEYS[1], ARGV[1], e[1])
		redis.call('XDEL', KEYS[1], e[1])
	end
end
return out`)
	// KEYS stream; ARGV group, entry, delivery count of the take. Makes
	// the entry idle anew, for the consumer that holds it and without
	// counting a delivery (JUSTID), while the take holds it. Returns 0
	// when it does not.
	extendScript = rueidis.NewLuaScriptRetryable(held("0") + `redis.call('XCLAIM', KEYS[1], ARGV[1], p[1][2], 0, ARGV[2], 'JUSTID')
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
	// KEYS stream, messages, live, info, then the DeliveryIDs' keys; ARGV
	// group, then for each message its entry, its id, the index in KEYS
	// of its DeliveryID's key (0: none) and the retention (ms). Removes
	// the messages, whoever holds them, and keeps their DeliveryIDs for
	// the retention (the keys expire then). Returns how many it removed.
	completeScript = rueidis.NewLuaScriptRetryable(`local done = 0
for i = 2, #ARGV, 4 do
	local entry, id, k, retention = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
	if entry ~= '' then
		redis.call('XACK', KEYS[1], ARGV[1], entry)
		redis.call('XDEL', KEYS[1], entry)
	end
	if redis.call('HDEL', KEYS[2], id) == 1 then
		done = done + 1
		redis.call('ZREM', KEYS[3], id)
		redis.call('HDEL', KEYS[4], id)
		if k > 0 then
			local held = redis.call('GET', KEYS[k])
			if not held or held == id then
				if retention > 0 then
					redis.call('SET', KEYS[k], id, 'PX', retention)
				else
					redis.call('DEL', KEYS[k])
				end
			end
		end
	end
end
return done`)
	// KEYS stream, messages, scheduled, info; ARGV group, entry, delivery
	// count of the take, id, message, due (ms), info. A take whose entry
	// was taken over (the count moved on) or settled changes nothing.
	rescheduleScript = rueidis.NewLuaScriptRetryable(held("0") + `redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('HEXISTS', KEYS[2], ARGV[4]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
redis.call('HSET', KEYS[4], ARGV[4], ARGV[7])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[4])
return 1`)
	// KEYS stream, messages, live, dead, dead_index, dead_info, info;
	// ARGV group, entry, delivery count of the take, id, message, buried
	// (ms), info, the prefix of the DeliveryIDs' keys, cutoff (ms, "0":
	// none) and max count (0: none) of the dead letters, BulkBatch; like
	// rescheduleScript, only while the take holds the entry. The
	// DeliveryID stays held. Then drops the dead letters past the bounds.
	// Returns whether it buried, and how many it dropped.
	buryScript = rueidis.NewLuaScriptRetryable(deadSource + held("{0, 0}") + `redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('HDEL', KEYS[2], ARGV[4]) == 0 then return {0, 0} end
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call('HDEL', KEYS[7], ARGV[4])
redis.call('HSET', KEYS[4], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[4])
redis.call('HSET', KEYS[6], ARGV[4], ARGV[7])
return {1, retain(KEYS[4], KEYS[5], KEYS[6], ARGV[8], ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11]))}`)
	// KEYS dead, dead_index, dead_info; ARGV the prefix of the
	// DeliveryIDs' keys, cutoff, max count, limit: as retain. Returns how
	// many it dropped.
	retainScript = rueidis.NewLuaScriptRetryable(deadSource + `return retain(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))`)
	// KEYS dead_index, dead; ARGV n. Returns the n oldest dead letters:
	// id, letter, ...
	deadReadScript = rueidis.NewLuaScriptRetryable(`local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)) do
	local raw = redis.call('HGET', KEYS[2], id)
	if raw then
		table.insert(out, id)
		table.insert(out, raw)
	end
end
return out`)
	// KEYS dead, dead_index, messages, live, stream, dead_info, info;
	// ARGV max_pending (-1: no bound), then for each letter its id, the
	// message revived, when it was received (ms), the SHA-1 of the letter
	// as read and the info revived. Revives each letter unchanged since it
	// was read (not revived and buried again), while live holds fewer than
	// max_pending. Returns how many it revived, 1 if it stopped for want
	// of room, and how many had changed. The DeliveryIDs stay held.
	reviveScript = rueidis.NewLuaScript(`local revived, full, changed = 0, 0, 0
local max = tonumber(ARGV[1])
for i = 2, #ARGV, 5 do
	if max >= 0 and redis.call('ZCARD', KEYS[4]) >= max then
		full = 1
		break
	end
	local id = ARGV[i]
	local dead = redis.call('HGET', KEYS[1], id)
	if dead and redis.sha1hex(dead) == ARGV[i + 3] then
		redis.call('HDEL', KEYS[1], id)
		redis.call('HDEL', KEYS[6], id)
		redis.call('ZREM', KEYS[2], id)
		redis.call('HSET', KEYS[3], id, ARGV[i + 1])
		redis.call('HSET', KEYS[7], id, ARGV[i + 4])
		redis.call('ZADD', KEYS[4], ARGV[i + 2], id)
		redis.call('XADD', KEYS[5], '*', 'id', id)
		revived = revived + 1
	elseif dead then
		changed = changed + 1
	end
end
return {revived, full, changed}`)
	// KEYS dead, dead_index, dead_info; ARGV the prefix of the
	// DeliveryIDs' keys, id. Returns 0 when id is no dead letter.
	// Releases the DeliveryID.
	dropScript = rueidis.NewLuaScriptRetryable(deadSource + `if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then return 0 end
drop_dead(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])
return 1`)
	// KEYS dead, dead_index, dead_info; ARGV the prefix of the
	// DeliveryIDs' keys, limit. Drops up to limit of the oldest dead
	// letters, and returns how many.
	dropAllScript = rueidis.NewLuaScriptRetryable(deadSource + `local n = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[2]) - 1)) do
	drop_dead(KEYS[1], KEYS[2], KEYS[3], ARGV[1], id)
	n = n + 1
end
return n`)
	// KEYS scheduled, info; ARGV now (ms), offset, count. Returns the
	// scheduled messages after now, soonest due first, from offset: id,
	// due (ms), info (nil if none), ...
	scheduledReadScript = rueidis.NewLuaScriptRetryable(`local out = {}
local s = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', tonumber(ARGV[2]), tonumber(ARGV[3]))
for i = 1, #s, 2 do
	table.insert(out, s[i])
	table.insert(out, s[i + 1])
	table.insert(out, redis.call('HGET', KEYS[2], s[i]) or '')
end
return out`)
	// KEYS scheduled, stream; ARGV, for each message, its id and its due
	// time as read (ms). Makes due now each still due then. Returns how
	// many.
	bringForwardScript = rueidis.NewLuaScriptRetryable(`local n = 0
for i = 1, #ARGV, 2 do
	local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
	if s and tonumber(s) == tonumber(ARGV[i + 1]) then
		redis.call('ZREM', KEYS[1], ARGV[i])
		redis.call('XADD', KEYS[2], '*', 'id', ARGV[i])
		n = n + 1
	end
end
return n`)
	// KEYS stream, scheduled, info; ARGV group, now (ms), limit. Returns
	// the pending messages, in the order they are taken: those in the
	// stream that no consumer read, then those scheduled and due, but
	// not moved to the stream yet: id, due (ms), info (nil if none), ...
	listPendingScript = rueidis.NewLuaScriptRetryable(`local out = {}
local limit = tonumber(ARGV[3])
local last
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
if type(groups) == 'table' and not groups.err then
	for _, g in ipairs(groups) do
		local f = {}
		for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
		if f['name'] == ARGV[1] then last = f['last-delivered-id'] end
	end
end
local n = 0
if last then
	for _, e in ipairs(redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', limit)) do
		table.insert(out, e[2][2])
		table.insert(out, string.match(e[1], '^(%d+)'))
		table.insert(out, redis.call('HGET', KEYS[3], e[2][2]) or '')
		n = n + 1
	end
end
if n < limit then
	local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0, limit - n)
	for i = 1, #due, 2 do
		table.insert(out, due[i])
		table.insert(out, due[i + 1])
		table.insert(out, redis.call('HGET', KEYS[3], due[i]) or '')
	end
end
return out`)
	// KEYS stream, info; ARGV group, limit. Returns the messages in
	// flight, the first taken first: id, "", info (nil if none), ...
	listInFlightScript = rueidis.NewLuaScriptRetryable(`local out = {}
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[2]))
if type(p) ~= 'table' or p.err then return out end
for _, e in ipairs(p) do
	local r = redis.call('XRANGE', KEYS[1], e[1], e[1])
	if r[1] then
		table.insert(out, r[1][2][2])
		table.insert(out, '')
		table.insert(out, redis.call('HGET', KEYS[2], r[1][2][2]) or '')
	end
end
return out`)
	// KEYS dead_index, dead_info; ARGV limit. Returns the dead letters,
	// the first buried first: id, "", info (nil if none), ...
	listDeadScript = rueidis.NewLuaScriptRetryable(`local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)) do
	table.insert(out, id)
	table.insert(out, '')
	table.insert(out, redis.call('HGET', KEYS[2], id) or '')
end
return out`)
	// KEYS stream, scheduled, live, dead; ARGV group, now (ms). Returns
	// pending, scheduled, in flight, dead, when the oldest message not
	// dead was stored (ms, -1 with none), and when the soonest scheduled
	// one is due (ms, -1 with none).
	countsScript = rueidis.NewLuaScriptRetryable(`local inflight = 0
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(p) == 'table' and not p.err then inflight = p[1] end
local due = redis.call('ZCOUNT', KEYS[2], '-inf', ARGV[2])
local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
local next = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[2], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
return {redis.call('XLEN', KEYS[1]) - inflight + due, redis.call('ZCARD', KEYS[2]) - due, inflight,
	redis.call('HLEN', KEYS[4]), tonumber(oldest[2] or '-1'), tonumber(next[2] or '-1')}`)
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

// redisPoll is how often Wait's channel is closed with nothing known to
// be due: other instances store messages, and schedule retries, that this
// one hears nothing of.
const redisPoll = 500 * time.Millisecond

// redisQueues keeps, by server and key prefix, what the stores of one
// queue share in this process.
var redisQueues = caddy.NewUsagePool()

// redisQueue is what the stores of one queue share in this process: the
// channel Wait returns, the count of dead letters dropped, and the
// completions not sent to Redis yet (by message id), which a flusher sends
// together, as the file engine commits them (see completeBatch).
type redisQueue struct {
	wake        *waker
	deadDropped atomic.Int64

	mu   sync.Mutex
	done map[string]*redisCompletion
	// flushMu sends one batch of completions at a time.
	flushMu sync.Mutex
	// by is the store whose client sends them: the last that completed.
	by     atomic.Pointer[Redis]
	batch  *batcher
	logger *zap.Logger
}

// redisCompletion is a Complete not sent yet.
type redisCompletion struct {
	id, entry, deliveryID string
	// retention is the completing store's, in ms.
	retention string
}

func newRedisQueue(logger *zap.Logger) *redisQueue {
	s := &redisQueue{
		wake: newWaker(), done: map[string]*redisCompletion{},
		batch: newBatcher(), logger: logger,
	}
	go s.batch.run(s.flushWaiting)
	return s
}

// Destruct stops the flusher (each store's Cleanup sends what waits).
func (s *redisQueue) Destruct() error {
	s.batch.halt()
	s.wake.stop()
	return nil
}

// complete adds a completion by q.
func (s *redisQueue) complete(q *Redis, c *redisCompletion) {
	s.by.Store(q)
	s.mu.Lock()
	if s.done[c.id] == nil {
		s.done[c.id] = c
	}
	n := len(s.done)
	s.mu.Unlock()
	s.batch.added(n)
}

// completing reports whether the message id was completed by this
// process, the completion not being sent yet.
func (s *redisQueue) completing(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done[id] != nil
}

func (s *redisQueue) pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.done)
}

// flushWaiting sends the completions waiting, for the batcher.
func (s *redisQueue) flushWaiting() error {
	q := s.by.Load()
	if q == nil {
		return nil // the stores were unloaded: their Cleanup sent what they could
	}
	err := s.flush(context.Background(), q)
	if err != nil {
		s.logger.Error("could not send completions to Redis; trying again", zap.String("endpoint", q.Endpoint()), zap.Error(err))
	}
	return err
}

// flush sends the completions waiting, with q's client, completeBatch a
// script. Those it could not send wait for the next.
func (s *redisQueue) flush(ctx context.Context, q *Redis) error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.mu.Lock()
	batch := make([]*redisCompletion, 0, len(s.done))
	for _, c := range s.done {
		batch = append(batch, c)
	}
	s.mu.Unlock()
	for len(batch) > 0 {
		chunk := batch[:min(len(batch), completeBatch)]
		batch = batch[len(chunk):]
		keys := []string{q.keys.stream, q.keys.messages, q.keys.live, q.keys.info}
		args := make([]string, 1, 1+4*len(chunk))
		args[0] = group
		for _, c := range chunk {
			k := "0"
			if c.deliveryID != "" {
				keys = append(keys, q.deliveryKey(c.deliveryID))
				k = strconv.Itoa(len(keys))
			}
			args = append(args, c.entry, c.id, k, c.retention)
		}
		if err := q.Exec(ctx, completeScript, keys, args).Error(); err != nil {
			return fmt.Errorf("redis: completing: %w", err)
		}
		s.mu.Lock()
		for _, c := range chunk {
			if s.done[c.id] == c {
				delete(s.done, c.id)
			}
		}
		s.mu.Unlock()
	}
	return nil
}

// Cleanup sends the completions waiting, and releases the store's shares
// of the queue and of the client.
func (q *Redis) Cleanup() error {
	if q.shared != nil {
		if q.shared.pending() > 0 {
			if err := q.shared.flush(context.Background(), q); err != nil {
				q.logger.Warn("could not send the last completions to Redis: their messages will be delivered again", zap.String("endpoint", q.Endpoint()), zap.Error(err))
			}
		}
		q.shared.by.CompareAndSwap(q, nil)
		_, _ = redisQueues.Delete(q.sharedKey)
		q.shared = nil
	}
	return q.Config.Cleanup()
}

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
	inf, err := marshalInfo(m)
	if err != nil {
		return err
	}
	keys := []string{q.keys.live, q.keys.messages, q.keys.stream, q.deliveryKey(m.DeliveryID), q.keys.dead, q.keys.info}
	args := []string{q.max, m.ID, string(raw), ms(now), flag(m.DeliveryID != ""), string(inf)}
	stored, err := q.enqueue(ctx, keys, args)
	if err == nil && stored <= 0 && q.shared.pending() > 0 {
		// The completions waiting may free room, or release the
		// DeliveryID (without a retention).
		if q.shared.flush(ctx, q) == nil {
			stored, err = q.enqueue(ctx, keys, args)
		}
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
	q.shared.wake.notify()
	return nil
}

// enqueue runs the enqueue script, and returns its answer.
func (q *Redis) enqueue(ctx context.Context, keys, args []string) (int64, error) {
	if q.waitAOF.Load() == aofOn {
		return q.enqueueWaitAOF(ctx, keys, args)
	}
	return q.Exec(ctx, enqueueScript, keys, args).AsInt64()
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

// Take implements Store: one script claims the entries whose lease ended
// and reads new ones, up to n. Messages this process completed, whose
// completion it has not sent yet, are left out.
func (q *Redis) Take(ctx context.Context, n int, lease time.Duration) ([]*Message, error) {
	if n <= 0 {
		return nil, nil
	}
	n = min(n, maxTake)
	keys := []string{q.keys.stream, q.keys.scheduled, q.keys.messages}
	args := []string{group, q.consumer, ms(time.Now()), strconv.FormatInt(max(lease.Milliseconds(), 1), 10), strconv.Itoa(n)}
	got, err := q.Exec(ctx, takeScript, keys, args).ToArray()
	if err != nil && strings.Contains(err.Error(), "NOGROUP") {
		// The stream or its group is gone (Redis lost data, or a key was
		// deleted): make them anew.
		if err = q.makeGroup(ctx); err == nil {
			got, err = q.Exec(ctx, takeScript, keys, args).ToArray()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("redis: taking: %w", err)
	}
	if len(got)%3 != 0 {
		return nil, fmt.Errorf("redis: taking: unexpected answer of %d values", len(got))
	}
	out := make([]*Message, 0, len(got)/3)
	for i := 0; i < len(got); i += 3 {
		entry, err := got[i].ToString()
		if err != nil {
			return out, fmt.Errorf("redis: taking: %w", err)
		}
		raw, err := got[i+1].ToString()
		if err != nil {
			return out, fmt.Errorf("redis: taking: %w", err)
		}
		deliveries, err := got[i+2].AsInt64()
		if err != nil {
			return out, fmt.Errorf("redis: taking: %w", err)
		}
		m := new(Message)
		if err := json.Unmarshal([]byte(raw), m); err != nil {
			q.logger.Error("a message cannot be read", zap.String("queue", q.opts.Name), zap.String("entry", entry), zap.Error(err))
			continue
		}
		if q.shared.completing(m.ID) {
			continue // completed: its completion takes the entry, whoever holds it
		}
		m.entry = entry + " " + strconv.FormatInt(deliveries, 10)
		out = append(out, m)
	}
	return out, nil
}

// Wait implements Store: the channel is closed when this process stores a
// message or makes one due, at the due time of a retry this process
// scheduled, and at least every redisPoll.
func (q *Redis) Wait() <-chan struct{} {
	w := q.shared.wake
	ch, at := w.wait()
	now := time.Now()
	if poll := now.Add(redisPoll); at.IsZero() || at.After(poll) {
		w.wakeAt(poll, now)
	}
	return ch
}

// Extend implements Store. The lease then ends when the entry has been
// idle for the lease of the take that would take it over: the queue takes
// and extends with one lease.
func (q *Redis) Extend(ctx context.Context, m *Message, _ time.Duration) error {
	entry, deliveries := taken(m)
	if entry == "" || q.shared.completing(m.ID) {
		return ErrLeaseLost // not taken, or completed
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

// Complete implements Store: the completion is sent with others (see
// redisQueue) within completeDelay; until then this process neither
// takes the message nor settles it otherwise, and Counts, List and the
// bulk operations send it first.
func (q *Redis) Complete(_ context.Context, m *Message, _ Attempt) error {
	entry, _ := taken(m)
	q.shared.complete(q, &redisCompletion{id: m.ID, entry: entry, deliveryID: m.DeliveryID, retention: q.retention})
	return nil
}

// Reschedule implements Store.
func (q *Redis) Reschedule(ctx context.Context, m *Message, a Attempt, next time.Time) error {
	m.Due = next
	raw, err := m.recordAttempt(a)
	if err != nil {
		return err
	}
	return q.schedule(ctx, m, raw, next, "rescheduling")
}

// Postpone implements Store.
func (q *Redis) Postpone(ctx context.Context, m *Message, a Attempt, next time.Time) error {
	m.Due = next
	raw, err := m.recordPostponed(a)
	if err != nil {
		return err
	}
	return q.schedule(ctx, m, raw, next, "postponing")
}

// schedule stores m, whose JSON is raw, due at next, while its take holds
// it.
func (q *Redis) schedule(ctx context.Context, m *Message, raw []byte, next time.Time, doing string) error {
	if q.shared.completing(m.ID) {
		return nil // completed by this process
	}
	inf, err := marshalInfo(m)
	if err != nil {
		return err
	}
	entry, deliveries := taken(m)
	err = q.Exec(ctx, rescheduleScript, []string{q.keys.stream, q.keys.messages, q.keys.scheduled, q.keys.info},
		[]string{group, entry, deliveries, m.ID, string(raw), ms(next), string(inf)}).Error()
	if err != nil {
		return fmt.Errorf("redis: %s: %w", doing, err)
	}
	q.shared.wake.wakeAt(next, time.Now())
	return nil
}

// deadBounds are the arguments of retain: the cutoff and max count.
func (q *Redis) deadBounds(now time.Time) (cutoff, maxCount string) {
	cutoff = "0"
	if q.opts.DeadMaxAge > 0 {
		cutoff = ms(now.Add(-q.opts.DeadMaxAge))
	}
	return cutoff, strconv.Itoa(max(q.opts.DeadMaxCount, 0))
}

// Bury implements Store. The dead letters past this config's bounds are
// dropped with it.
func (q *Redis) Bury(ctx context.Context, m *Message, a Attempt) error {
	if q.shared.completing(m.ID) {
		return nil // completed by this process
	}
	raw, err := m.recordAttempt(a)
	if err != nil {
		return err
	}
	inf, err := marshalInfo(m)
	if err != nil {
		return err
	}
	entry, deliveries := taken(m)
	now := time.Now()
	cutoff, maxCount := q.deadBounds(now)
	got, err := q.Exec(ctx, buryScript, []string{q.keys.stream, q.keys.messages, q.keys.live, q.keys.dead, q.keys.deadIndex, q.keys.deadInfo, q.keys.info},
		[]string{group, entry, deliveries, m.ID, string(raw), ms(now), string(inf), q.keys.delivery, cutoff, maxCount, strconv.Itoa(BulkBatch)}).AsIntSlice()
	if err != nil {
		return fmt.Errorf("redis: burying: %w", err)
	}
	if len(got) == 2 {
		q.shared.deadDropped.Add(got[1])
	}
	return nil
}

// retain drops the dead letters past q's bounds, BulkBatch a script, and
// returns how many it dropped.
func (q *Redis) retain(ctx context.Context) (int, error) {
	if q.opts.DeadMaxAge <= 0 && q.opts.DeadMaxCount <= 0 {
		return 0, nil
	}
	total := 0
	for {
		cutoff, maxCount := q.deadBounds(time.Now())
		n, err := q.Exec(ctx, retainScript, []string{q.keys.dead, q.keys.deadIndex, q.keys.deadInfo},
			[]string{q.keys.delivery, cutoff, maxCount, strconv.Itoa(BulkBatch)}).AsInt64()
		if err != nil {
			return total, fmt.Errorf("redis: dropping dead letters: %w", err)
		}
		q.shared.deadDropped.Add(n)
		total += int(n)
		if n < BulkBatch {
			return total, nil
		}
	}
}

// taken splits m's handle into its take's stream entry and that entry's
// delivery count then.
func taken(m *Message) (entry, deliveries string) {
	entry, deliveries, _ = strings.Cut(m.entry, " ")
	return entry, deliveries
}

// Counts implements Store. It sends this process's completions first.
func (q *Redis) Counts(ctx context.Context) (Counts, error) {
	if err := q.shared.flush(ctx, q); err != nil {
		return Counts{}, err
	}
	got, err := q.Exec(ctx, countsScript, []string{q.keys.stream, q.keys.scheduled, q.keys.live, q.keys.dead},
		[]string{group, ms(time.Now())}).AsIntSlice()
	if err != nil {
		return Counts{}, fmt.Errorf("redis: counting: %w", err)
	}
	if len(got) != 6 {
		return Counts{}, fmt.Errorf("redis: counting: unexpected answer of %d values", len(got))
	}
	c := Counts{Pending: int(got[0]), Scheduled: int(got[1]), InFlight: int(got[2]), Dead: int(got[3]), DeadDropped: q.shared.deadDropped.Load()}
	if got[4] >= 0 {
		c.Oldest = time.UnixMilli(got[4])
	}
	if got[5] >= 0 {
		c.NextDue = time.UnixMilli(got[5])
	}
	return c, nil
}

// List implements Store: it reads the messages' infos (info, dead_info),
// not the messages. Pending messages are listed in the order they are
// taken, scheduled ones soonest due first, those in flight the first taken
// first, dead letters the first buried first. It sends this process's
// completions first.
func (q *Redis) List(ctx context.Context, state State, limit int) ([]Summary, error) {
	var script *rueidis.Lua
	var keys, args []string
	switch state {
	case StatePending:
		script, keys, args = listPendingScript, []string{q.keys.stream, q.keys.scheduled, q.keys.info}, []string{group, ms(time.Now()), strconv.Itoa(limit)}
	case StateScheduled:
		script, keys, args = scheduledReadScript, []string{q.keys.scheduled, q.keys.info}, []string{ms(time.Now()), "0", strconv.Itoa(limit)}
	case StateInFlight:
		script, keys, args = listInFlightScript, []string{q.keys.stream, q.keys.info}, []string{group, strconv.Itoa(limit)}
	case StateDead:
		script, keys, args = listDeadScript, []string{q.keys.deadIndex, q.keys.deadInfo}, []string{strconv.Itoa(limit)}
	default:
		return nil, fmt.Errorf("no state %q", state)
	}
	if limit <= 0 {
		return nil, nil
	}
	if err := q.shared.flush(ctx, q); err != nil {
		return nil, err
	}
	got, err := q.Exec(ctx, script, keys, args).ToArray()
	if err != nil {
		return nil, fmt.Errorf("redis: listing: %w", err)
	}
	rows, err := infoRows(got)
	if err != nil {
		return nil, fmt.Errorf("redis: listing: %w", err)
	}
	out := make([]Summary, 0, len(rows))
	for _, r := range rows {
		if r.info == "" {
			// Stored by the version before, which kept no info: what the
			// id says.
			out = append(out, Summary{ID: r.id, Received: redisIDTime(r.id), Due: r.due})
			continue
		}
		s, err := summaryOf(r.id, []byte(r.info), r.due)
		if err != nil {
			return nil, fmt.Errorf("redis: listing: %w", err)
		}
		out = append(out, s)
	}
	return out, nil
}

// infoRow is a row of the scripts that read infos: an id, a due time (ms,
// zero if empty) and an info ("" if none).
type infoRow struct {
	id   string
	due  time.Time
	info string
}

func infoRows(got []rueidis.RedisMessage) ([]infoRow, error) {
	if len(got)%3 != 0 {
		return nil, fmt.Errorf("unexpected answer of %d values", len(got))
	}
	rows := make([]infoRow, 0, len(got)/3)
	for i := 0; i < len(got); i += 3 {
		var r infoRow
		var err error
		if r.id, err = got[i].ToString(); err != nil {
			return nil, err
		}
		due, err := got[i+1].ToString()
		if err != nil {
			return nil, err
		}
		if due != "" {
			f, err := strconv.ParseFloat(due, 64)
			if err != nil {
				return nil, fmt.Errorf("due time %q: %w", due, err)
			}
			r.due = time.UnixMilli(int64(f))
		}
		if r.info, err = got[i+2].ToString(); err != nil {
			return nil, err
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// redisIDTime is when the message id was stored, as newMessageID wrote it.
func redisIDTime(id string) time.Time {
	return idTime([]byte(id))
}

// BringForward implements Store: it reads the infos of the scheduled
// messages, BulkBatch at a time, soonest due first, and makes due now, in
// one script a batch, those whose last attempt keep says yes to (and that
// were not rescheduled meanwhile).
func (q *Redis) BringForward(ctx context.Context, keep func(Attempt) bool) (int, error) {
	if err := q.shared.flush(ctx, q); err != nil {
		return 0, err
	}
	total, offset := 0, 0
	now := ms(time.Now())
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		got, err := q.Exec(ctx, scheduledReadScript, []string{q.keys.scheduled, q.keys.info}, []string{now, strconv.Itoa(offset), strconv.Itoa(BulkBatch)}).ToArray()
		if err != nil {
			return total, fmt.Errorf("redis: reading scheduled messages: %w", err)
		}
		rows, err := infoRows(got)
		if err != nil {
			return total, fmt.Errorf("redis: reading scheduled messages: %w", err)
		}
		var args []string
		for _, r := range rows {
			if r.info == "" {
				continue
			}
			i, err := decodeInfo([]byte(r.info))
			if err != nil {
				return total, fmt.Errorf("redis: message %s: %w", r.id, err)
			}
			if i.Last != nil && keep(*i.Last) {
				args = append(args, r.id, strconv.FormatInt(r.due.UnixMilli(), 10))
			}
		}
		moved := 0
		if len(args) > 0 {
			n, err := q.Exec(ctx, bringForwardScript, []string{q.keys.scheduled, q.keys.stream}, args).AsInt64()
			if err != nil {
				return total, fmt.Errorf("redis: bringing forward: %w", err)
			}
			moved = int(n)
		}
		total += moved
		if moved > 0 {
			q.shared.wake.notify()
		}
		if len(rows) < BulkBatch {
			return total, nil
		}
		offset += len(rows) - moved
	}
}

// Revive implements Store.
func (q *Redis) Revive(ctx context.Context, id string) error {
	if id == "" {
		return ErrNotFound
	}
	for range 3 {
		raw, err := q.Do(ctx, func(c rueidis.Client) rueidis.Completed {
			return c.B().Hget().Key(q.keys.dead).Field(id).Build()
		}).ToString()
		if rueidis.IsRedisNil(err) {
			return ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("redis: reviving: %w", err)
		}
		revived, _, changed, err := q.revive(ctx, -1, []string{id}, []string{raw})
		if err != nil {
			return err
		}
		switch {
		case revived == 1:
			q.shared.wake.notify()
			return nil
		case changed == 0:
			return ErrNotFound
		}
	}
	return fmt.Errorf("redis: reviving: dead letter %s kept changing", id)
}

// revive revives the letters ids, read as raws, while live holds fewer
// than maxPending (-1: no bound). Returns how many it revived, whether it
// stopped for want of room, and how many had changed since they were read.
// A letter that cannot be read is left.
func (q *Redis) revive(ctx context.Context, maxPending int, ids, raws []string) (revived int, full bool, changed int, err error) {
	now := time.Now()
	args := make([]string, 1, 1+5*len(ids))
	args[0] = strconv.Itoa(maxPending)
	for i, id := range ids {
		var m Message
		if err := json.Unmarshal([]byte(raws[i]), &m); err != nil {
			q.logger.Error("a dead letter cannot be read", zap.String("queue", q.opts.Name), zap.String("id", id), zap.Error(err))
			continue
		}
		m.Due, m.Tries = now, 0
		fresh, err := json.Marshal(&m)
		if err != nil {
			return 0, false, 0, err
		}
		inf, err := marshalInfo(&m)
		if err != nil {
			return 0, false, 0, err
		}
		sum := sha1.Sum([]byte(raws[i]))
		args = append(args, id, string(fresh), ms(m.Received), hex.EncodeToString(sum[:]), string(inf))
	}
	if len(args) == 1 {
		return 0, false, 0, nil
	}
	got, err := q.Exec(ctx, reviveScript, []string{q.keys.dead, q.keys.deadIndex, q.keys.messages, q.keys.live, q.keys.stream, q.keys.deadInfo, q.keys.info},
		args).AsIntSlice()
	if err != nil {
		return 0, false, 0, fmt.Errorf("redis: reviving: %w", err)
	}
	if len(got) != 3 {
		return 0, false, 0, fmt.Errorf("redis: reviving: unexpected answer of %d values", len(got))
	}
	return int(got[0]), got[1] == 1, int(got[2]), nil
}

// ReviveAll implements Store: it reads the oldest dead letters, BulkBatch
// at a time, and revives them in one script a batch, which stops once the
// queue holds max_pending messages. It sends this process's completions
// first.
func (q *Redis) ReviveAll(ctx context.Context) (int, error) {
	if err := q.shared.flush(ctx, q); err != nil {
		return 0, err
	}
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		got, err := q.Exec(ctx, deadReadScript, []string{q.keys.deadIndex, q.keys.dead}, []string{strconv.Itoa(BulkBatch)}).AsStrSlice()
		if err != nil {
			return total, fmt.Errorf("redis: reading dead letters: %w", err)
		}
		ids, raws := make([]string, 0, len(got)/2), make([]string, 0, len(got)/2)
		for i := 0; i+1 < len(got); i += 2 {
			ids, raws = append(ids, got[i]), append(raws, got[i+1])
		}
		revived, full, _, err := q.revive(ctx, q.opts.MaxPending, ids, raws)
		total += revived
		if revived > 0 {
			q.shared.wake.notify()
		}
		if err != nil || full || revived == 0 || len(ids) < BulkBatch {
			return total, err
		}
	}
}

// Drop implements Store. The dead letter's DeliveryID is released.
func (q *Redis) Drop(ctx context.Context, id string) error {
	if id == "" {
		return ErrNotFound
	}
	n, err := q.Exec(ctx, dropScript, []string{q.keys.dead, q.keys.deadIndex, q.keys.deadInfo}, []string{q.keys.delivery, id}).AsInt64()
	if err != nil {
		return fmt.Errorf("redis: dropping: %w", err)
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}

// DropAll implements Store: the oldest first, BulkBatch a script.
func (q *Redis) DropAll(ctx context.Context) (int, error) {
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, err := q.Exec(ctx, dropAllScript, []string{q.keys.dead, q.keys.deadIndex, q.keys.deadInfo}, []string{q.keys.delivery, strconv.Itoa(BulkBatch)}).AsInt64()
		if err != nil {
			return total, fmt.Errorf("redis: dropping: %w", err)
		}
		total += int(n)
		if n < BulkBatch {
			return total, nil
		}
	}
}

// Compact implements Store: Redis gives back the memory of what it
// deletes by itself.
func (q *Redis) Compact(context.Context) (before, after int64, err error) {
	return 0, 0, nil
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
