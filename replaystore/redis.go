package replaystore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/rueidis"

	"github.com/webhookgate/caddy-openai-webhook/internal/redisconn"
)

func init() {
	caddy.RegisterModule(Redis{})
}

// Redis keeps the ids in a Redis server (or Valkey), shared by every Caddy
// instance configured with it and kept across restarts. Claims, deliveries
// and releases are atomic on the server, so concurrent deliveries of one id
// on several instances are forwarded once. A claim holds the id for
// in_flight_ttl, so it ends even if the instance that holds it dies
// mid-forward, and only the instance holding a claim can settle it.
//
// Keys are key_prefix, a scope, ":" and the webhook-id. The scope comes
// from the fingerprint of the first of the handler's secrets seen before
// (key_prefix + "scope:" + fingerprint), so a rotation that keeps a secret
// keeps the ids, and endpoints with different secrets sharing one Redis
// never collide. No key or value holds a secret. Standalone Redis only:
// the scripts touch several keys, which a cluster would split.
type Redis struct {
	redisconn.Config

	// OnError says what happens to a delivery when Redis cannot answer
	// within the timeout: "refuse" (the default) answers 503 with
	// Retry-After, so the sender retries later and nothing is lost or
	// forwarded twice; "forward" forwards it without the replay check.
	// Either way the failure is logged and counted.
	OnError string `json:"on_error,omitempty"`

	// InFlightTTL is how long a claimed id stays in flight when nobody
	// settles it: a sender that hung up before the app answered, or an
	// instance that died mid-forward. Keep it above reverse_proxy's
	// timeouts: a forward that outlives it loses its claim. Default: 1m.
	InFlightTTL caddy.Duration `json:"in_flight_ttl,omitempty"`

	forward  bool
	endpoint Endpoint
	scope    *atomic.Pointer[string] // resolved on first use
	leaseMS  string                  // in_flight_ttl, in ms, for the scripts
	windowMS string                  // the replay window, in ms
}

// CaddyModule returns the Caddy module information.
func (Redis) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.openai_webhook.replay_stores.redis",
		New: func() caddy.Module { return new(Redis) },
	}
}

// DefaultRedisKeyPrefix starts the replay store's keys.
const DefaultRedisKeyPrefix = "openai_webhook:"

// Provision expands the placeholders, sets the defaults and takes a share
// of the client for this connection configuration. Its errors name the
// field and never show a credential.
func (r *Redis) Provision(caddy.Context) error {
	if r.OnError == "" {
		r.OnError = "refuse"
	}
	if r.InFlightTTL == 0 {
		r.InFlightTTL = caddy.Duration(DefaultInFlightTTL)
	}
	if err := r.Validate(); err != nil {
		return err
	}
	r.forward = r.OnError == "forward"
	return r.Config.Provision(DefaultRedisKeyPrefix)
}

// Validate checks the settings.
func (r *Redis) Validate() error {
	switch {
	case r.OnError != "refuse" && r.OnError != "forward":
		return fmt.Errorf("on_error: %q is neither refuse nor forward", r.OnError)
	case r.InFlightTTL <= 0:
		return fmt.Errorf("in_flight_ttl: %v is not a positive duration", time.Duration(r.InFlightTTL))
	}
	return nil
}

// Open implements Store.
func (r *Redis) Open(e Endpoint) error {
	if len(e.Fingerprints) == 0 {
		return errors.New("no secret fingerprint")
	}
	r.endpoint = e
	r.scope = new(atomic.Pointer[string])
	r.leaseMS = strconv.FormatInt(max(time.Duration(r.InFlightTTL).Milliseconds(), 1), 10)
	r.windowMS = strconv.FormatInt(max(e.Window.Milliseconds(), 1), 10)
	return nil
}

// The scripts. A claim's value is "f" and its ticket; a delivered id's is
// "d". Claims and deliveries expire on the server (PX), so nothing is
// left behind by an instance that dies. All but the claim are idempotent,
// so the client may send them again over a new connection when the one
// they went out on broke (Redis restarted); a claim is not (one that did
// land would hold the id for its lease, unknown to its sender), so a
// broken connection fails it.
var (
	// KEYS[1] the id's key; ARGV[1] the claim's value, ARGV[2] its lease
	// in ms. Returns 0 claimed, 1 in flight, 2 delivered.
	claimScript = rueidis.NewLuaScript(`local v = redis.call('GET', KEYS[1])
if not v then
	redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
	return 0
end
if v == 'd' then return 2 end
return 1`)
	// KEYS[1] the id's key; ARGV[1] the claim's value, ARGV[2] the window
	// in ms. Marks the id delivered only if the claim is still this one.
	deliveredScript = rueidis.NewLuaScriptRetryable(`if redis.call('GET', KEYS[1]) == ARGV[1] then
	redis.call('SET', KEYS[1], 'd', 'PX', ARGV[2])
	return 1
end
return 0`)
	// KEYS[1] the id's key; ARGV[1] the claim's value. Ends the claim
	// only if it is still this one.
	releaseScript = rueidis.NewLuaScriptRetryable(`if redis.call('GET', KEYS[1]) == ARGV[1] then
	redis.call('DEL', KEYS[1])
	return 1
end
return 0`)
	// KEYS the scope keys of the handler's fingerprints; ARGV[1] the
	// scope to take if none has one. Returns the scope, given to all.
	scopeScript = rueidis.NewLuaScriptRetryable(`local scope = ARGV[1]
for _, k in ipairs(KEYS) do
	local v = redis.call('GET', k)
	if v then scope = v break end
end
for _, k in ipairs(KEYS) do redis.call('SET', k, scope) end
return scope`)
)

// key returns the key of id, resolving the scope on first use. Requests
// that come before it is resolved each try (the script is idempotent), so
// none waits for another's call.
func (r *Redis) key(ctx context.Context, id string) (string, error) {
	scope := r.scope.Load()
	if scope == nil {
		keys := make([]string, len(r.endpoint.Fingerprints))
		for i, fp := range r.endpoint.Fingerprints {
			keys[i] = r.KeyPrefix + "scope:" + fp
		}
		name, err := r.Exec(ctx, scopeScript, keys, []string{r.endpoint.Fingerprints[0]}).ToString()
		if err != nil {
			return "", err
		}
		scope = &name
		r.scope.Store(scope)
	}
	return r.KeyPrefix + *scope + ":" + id, nil
}

// Claim implements Store.
func (r *Redis) Claim(ctx context.Context, id string) (State, Ticket, error) {
	state, ticket, err := r.claim(ctx, id)
	if err != nil {
		if r.forward {
			return Unchecked, 0, err
		}
		return 0, 0, err
	}
	return state, ticket, nil
}

func (r *Redis) claim(ctx context.Context, id string) (State, Ticket, error) {
	key, err := r.key(ctx, id)
	if err != nil {
		return 0, 0, fmt.Errorf("redis: resolving the scope: %w", err)
	}
	ticket := newTicket()
	n, err := r.Exec(ctx, claimScript, []string{key}, []string{claimValue(ticket), r.leaseMS}).AsInt64()
	if err != nil {
		return 0, 0, fmt.Errorf("redis: claiming: %w", err)
	}
	switch n {
	case 0:
		return Claimed, ticket, nil
	case 1:
		return InFlight, 0, nil
	case 2:
		return Delivered, 0, nil
	}
	return 0, 0, fmt.Errorf("redis: claiming: unexpected answer %d", n)
}

// Delivered implements Store.
func (r *Redis) Delivered(ctx context.Context, id string, t Ticket) error {
	key, err := r.key(ctx, id)
	if err != nil {
		return fmt.Errorf("redis: resolving the scope: %w", err)
	}
	if err := r.Exec(ctx, deliveredScript, []string{key}, []string{claimValue(t), r.windowMS}).Error(); err != nil {
		return fmt.Errorf("redis: recording a delivery: %w", err)
	}
	return nil
}

// Release implements Store.
func (r *Redis) Release(ctx context.Context, id string, t Ticket) error {
	key, err := r.key(ctx, id)
	if err != nil {
		return fmt.Errorf("redis: resolving the scope: %w", err)
	}
	if err := r.Exec(ctx, releaseScript, []string{key}, []string{claimValue(t)}).Error(); err != nil {
		return fmt.Errorf("redis: releasing a claim: %w", err)
	}
	return nil
}

// newTicket returns a random ticket: claims of one id from several
// instances must not share one. It needs to be unique, not secret: the
// runtime's generator (ChaCha8, seeded by the system) spares a system call
// per delivery.
func newTicket() Ticket {
	return Ticket(rand.Uint64())
}

func claimValue(t Ticket) string { return "f" + strconv.FormatUint(uint64(t), 36) }

// Interface guards
var (
	_ Store              = (*Redis)(nil)
	_ caddy.Provisioner  = (*Redis)(nil)
	_ caddy.Validator    = (*Redis)(nil)
	_ caddy.CleanerUpper = (*Redis)(nil)
)
