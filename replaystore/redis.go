package replaystore

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/rueidis"
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
	// Address is host:port, or a redis:// or rediss:// URL (which may
	// carry the username, the password and the database; the fields below
	// override them). Placeholders are expanded when the config loads.
	// Required.
	Address string `json:"address,omitempty"`

	// Username for Redis ACLs (AUTH username password). Placeholders are
	// expanded when the config loads; one that is unknown or empty fails
	// the load.
	Username string `json:"username,omitempty"`

	// Password (requirepass, or the ACL user's). Placeholders are expanded
	// when the config loads; one that is unknown or empty fails the load.
	// Never logged or shown in an error.
	Password string `json:"password,omitempty"`

	// DB is the database number. Default: 0, or the URL's.
	DB int `json:"db,omitempty"`

	// KeyPrefix starts every key. Default: "openai_webhook:".
	KeyPrefix string `json:"key_prefix,omitempty"`

	// TLS connects over TLS (as does a rediss:// address), verifying the
	// server's certificate against the system's roots, or TLSCA.
	TLS bool `json:"tls,omitempty"`

	// TLSCA is a PEM file of the certificate authorities the server's
	// certificate must chain to. Implies TLS.
	TLSCA string `json:"tls_ca,omitempty"`

	// TLSServerName is the name the server's certificate must carry.
	// Default: the address's host. Implies TLS.
	TLSServerName string `json:"tls_server_name,omitempty"`

	// Timeout bounds each call to Redis, connecting included. Default:
	// 500ms.
	Timeout caddy.Duration `json:"timeout,omitempty"`

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

	client    *sharedClient
	clientKey string // the handler's share of redisClients
	forward   bool
	endpoint  Endpoint
	scope     *atomic.Pointer[string] // resolved on first use
	leaseMS   string                  // in_flight_ttl, in ms, for the scripts
	windowMS  string                  // the replay window, in ms
}

// CaddyModule returns the Caddy module information.
func (Redis) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.openai_webhook.replay_stores.redis",
		New: func() caddy.Module { return new(Redis) },
	}
}

// Defaults of the Redis store.
const (
	DefaultRedisKeyPrefix = "openai_webhook:"
	DefaultRedisTimeout   = 500 * time.Millisecond
)

// flushDelay is how long the client's writer waits after a flush for more
// calls to send with the next.
const flushDelay = 200 * time.Microsecond

// Provision expands the placeholders, sets the defaults and takes a share
// of the client for this connection configuration. Its errors name the
// field and never show a credential.
func (r *Redis) Provision(caddy.Context) error {
	repl := caddy.NewReplacer()
	for _, f := range []struct {
		name  string
		value *string
	}{
		{"address", &r.Address}, {"username", &r.Username}, {"password", &r.Password},
		{"key_prefix", &r.KeyPrefix}, {"tls_ca", &r.TLSCA}, {"tls_server_name", &r.TLSServerName},
	} {
		expanded, err := repl.ReplaceOrErr(*f.value, true, true)
		if err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
		*f.value = expanded
	}
	if r.KeyPrefix == "" {
		r.KeyPrefix = DefaultRedisKeyPrefix
	}
	if r.Timeout == 0 {
		r.Timeout = caddy.Duration(DefaultRedisTimeout)
	}
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
	opt, caPEM, err := r.clientOption()
	if err != nil {
		return err
	}
	r.clientKey = r.connectionKey(caPEM)
	shared, _, err := redisClients.LoadOrNew(r.clientKey, func() (caddy.Destructor, error) {
		return newSharedClient(opt), nil
	})
	if err != nil {
		return err
	}
	r.client = shared.(*sharedClient)
	return nil
}

// Validate checks the settings.
func (r *Redis) Validate() error {
	switch {
	case r.Address == "":
		return errors.New("address: required")
	case r.DB < 0:
		return fmt.Errorf("db: %d is negative", r.DB)
	case r.Timeout <= 0:
		return fmt.Errorf("timeout: %v is not a positive duration", time.Duration(r.Timeout))
	case r.OnError != "refuse" && r.OnError != "forward":
		return fmt.Errorf("on_error: %q is neither refuse nor forward", r.OnError)
	case r.InFlightTTL <= 0:
		return fmt.Errorf("in_flight_ttl: %v is not a positive duration", time.Duration(r.InFlightTTL))
	}
	return nil
}

// clientOption builds the client's options from the fields, and returns
// the PEM of tls_ca. Errors about the address never quote it: a URL can
// hold the password.
func (r *Redis) clientOption() (opt rueidis.ClientOption, caPEM []byte, err error) {
	if strings.Contains(r.Address, "://") {
		u, err := url.Parse(r.Address)
		if err != nil {
			return opt, nil, errors.New("address: not a valid URL")
		}
		if u.Scheme != "redis" && u.Scheme != "rediss" {
			return opt, nil, fmt.Errorf("address: scheme %q is neither redis nor rediss", u.Scheme)
		}
		if opt, err = rueidis.ParseURL(r.Address); err != nil {
			return opt, nil, fmt.Errorf("address: not a valid Redis URL (%s)", redactedURL(u))
		}
	} else {
		if _, _, err := net.SplitHostPort(r.Address); err != nil {
			return opt, nil, errors.New("address: want host:port or a redis:// or rediss:// URL")
		}
		opt.InitAddress = []string{r.Address}
	}
	if r.Username != "" {
		opt.Username = r.Username
	}
	if r.Password != "" {
		opt.Password = r.Password
	}
	if r.DB != 0 {
		opt.SelectDB = r.DB
	}
	if r.TLS || r.TLSCA != "" || r.TLSServerName != "" {
		if opt.TLSConfig == nil {
			host, _, _ := net.SplitHostPort(opt.InitAddress[0])
			opt.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
		}
		if r.TLSServerName != "" {
			opt.TLSConfig.ServerName = r.TLSServerName
		}
		if r.TLSCA != "" {
			if caPEM, err = os.ReadFile(r.TLSCA); err != nil {
				return opt, nil, fmt.Errorf("tls_ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(caPEM) {
				return opt, nil, fmt.Errorf("tls_ca: no PEM certificate in %s", r.TLSCA)
			}
			opt.TLSConfig.RootCAs = pool
		}
	}
	timeout := time.Duration(r.Timeout)
	opt.Dialer.Timeout = timeout
	opt.ConnWriteTimeout = timeout
	// One connection, whose writer waits up to 200µs after each flush for
	// more calls to pipeline: under load, fewer system calls per delivery,
	// at the cost of at most 200µs of latency per call. Measured in a Caddy
	// pinned to one core at 64 concurrent senders (docs/performance.md):
	// 0.78 of the memory store's deliveries per second without the delay,
	// about 0.86 with 200 or 500µs, less again with 1ms.
	opt.ForceSingleClient = true
	opt.PipelineMultiplex = -1
	opt.MaxFlushDelay = flushDelay
	opt.DisableCache = true
	return opt, caPEM, nil
}

// redactedURL is u without its password.
func redactedURL(u *url.URL) string {
	if _, ok := u.User.Password(); ok {
		return u.Redacted()
	}
	return u.String()
}

// redisClients keeps one client per connection configuration, across
// config reloads, closed when no handler uses it any more.
var redisClients = caddy.NewUsagePool()

// connectionKey identifies the connection configuration by a hash, so
// that no credential is kept as a key.
func (r *Redis) connectionKey(caPEM []byte) string {
	h := sha256.New()
	fmt.Fprintf(h, "%q %q %q %d %v %v %q %q\n", r.Address, r.Username, r.Password, r.DB, r.TLS, time.Duration(r.Timeout), r.TLSServerName, r.TLSCA)
	h.Write(caPEM)
	return hex.EncodeToString(h.Sum(nil))
}

// sharedClient is a Redis client made on first use: Caddy starts, and
// reloads, while Redis is down, and the client connects once it is up.
type sharedClient struct {
	opt rueidis.ClientOption

	mu     sync.Mutex
	client rueidis.Client
}

func newSharedClient(opt rueidis.ClientOption) *sharedClient {
	return &sharedClient{opt: opt}
}

// get returns the client, making it if needed. A client made while Redis
// is down reconnects by itself.
func (s *sharedClient) get() (rueidis.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client != nil {
		return s.client, nil
	}
	client, err := rueidis.NewClient(s.opt)
	if client == nil {
		return nil, err
	}
	s.client = client
	return client, nil
}

// Destruct closes the client.
func (s *sharedClient) Destruct() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client != nil {
		s.client.Close()
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

// Cleanup releases the handler's share of the client.
func (r *Redis) Cleanup() error {
	if r.clientKey == "" {
		return nil
	}
	_, err := redisClients.Delete(r.clientKey)
	return err
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

// call runs script with a context bounded by the timeout.
func (r *Redis) call(ctx context.Context, script *rueidis.Lua, keys, args []string) rueidis.RedisResult {
	client, err := r.client.get()
	if err != nil {
		return rueidis.NewErrorResult(err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(r.Timeout))
	defer cancel()
	return script.Exec(ctx, client, keys, args)
}

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
		name, err := r.call(ctx, scopeScript, keys, []string{r.endpoint.Fingerprints[0]}).ToString()
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
	n, err := r.call(ctx, claimScript, []string{key}, []string{claimValue(ticket), r.leaseMS}).AsInt64()
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
	if err := r.call(ctx, deliveredScript, []string{key}, []string{claimValue(t), r.windowMS}).Error(); err != nil {
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
	if err := r.call(ctx, releaseScript, []string{key}, []string{claimValue(t)}).Error(); err != nil {
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
