// Package redisconn is the connection to Redis that the replay store and
// the queue's Redis engine share: its settings (JSON fields and Caddyfile
// options), and one client per distinct connection configuration, kept
// across config reloads and closed when nothing uses it any more.
package redisconn

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/redis/rueidis"

	"github.com/webhookgate/caddy-openai-webhook/internal/cfparse"
	"github.com/webhookgate/caddy-openai-webhook/internal/redact"
)

// Config is a connection to a Redis server (or Valkey). Standalone Redis:
// the stores' scripts touch several keys, which a cluster would split.
type Config struct {
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

	// DB is the database number. Default: the URL's, or 0. A URL's
	// database can be overridden by another number but not by 0 (0 is
	// also "unset"): to use database 0, leave it out of the URL.
	DB int `json:"db,omitempty"`

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

	// KeyPrefix starts every key the store writes; stores with the same
	// server, database and key_prefix share what is kept there.
	// Placeholders are expanded when the config loads. Default: the
	// store's own ("openai_webhook:" for the replay store).
	KeyPrefix string `json:"key_prefix,omitempty"`

	client    *sharedClient
	clientKey string // the share of clients held
	endpoint  string // host:port/db, without credentials
}

// DefaultTimeout bounds each call to Redis.
const DefaultTimeout = 500 * time.Millisecond

// flushDelay is how long the client's writer waits after a flush for more
// calls to send with the next.
const flushDelay = 200 * time.Microsecond

// Provision expands the placeholders, sets the defaults (defaultKeyPrefix
// for key_prefix), checks the settings and takes a share of the client for
// this connection configuration. Its errors name the field and never show
// a credential.
func (c *Config) Provision(defaultKeyPrefix string) error {
	repl := caddy.NewReplacer()
	for _, f := range []struct {
		name  string
		value *string
	}{
		{"address", &c.Address}, {"username", &c.Username}, {"password", &c.Password},
		{"tls_ca", &c.TLSCA}, {"tls_server_name", &c.TLSServerName}, {"key_prefix", &c.KeyPrefix},
	} {
		expanded, err := repl.ReplaceOrErr(*f.value, true, true)
		if err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
		*f.value = expanded
	}
	if c.Timeout == 0 {
		c.Timeout = caddy.Duration(DefaultTimeout)
	}
	if c.KeyPrefix == "" {
		c.KeyPrefix = defaultKeyPrefix
	}
	switch {
	case c.Address == "":
		return errors.New("address: required")
	case c.DB < 0:
		return fmt.Errorf("db: %d is negative", c.DB)
	case c.Timeout <= 0:
		return fmt.Errorf("timeout: %v is not a positive duration", time.Duration(c.Timeout))
	}
	opt, caPEM, err := c.clientOption()
	if err != nil {
		return err
	}
	c.endpoint = opt.InitAddress[0] + "/" + strconv.Itoa(opt.SelectDB)
	c.clientKey = c.connectionKey(caPEM)
	shared, _, err := clients.LoadOrNew(c.clientKey, func() (caddy.Destructor, error) {
		return &sharedClient{opt: opt}, nil
	})
	if err != nil {
		return err
	}
	c.client = shared.(*sharedClient)
	return nil
}

// Cleanup releases the share of the client.
func (c *Config) Cleanup() error {
	if c.clientKey == "" {
		return nil
	}
	_, err := clients.Delete(c.clientKey)
	return err
}

// Client returns the shared client, made on first use.
func (c *Config) Client() (rueidis.Client, error) {
	return c.client.get()
}

// Endpoint is the server and database, host:port/db, without credentials:
// to name what is kept there.
func (c *Config) Endpoint() string { return c.endpoint }

// Shares reports whether c and o share one client.
func (c *Config) Shares(o *Config) bool { return c.client == o.client }

// Do runs cmd, bounded by the timeout.
func (c *Config) Do(ctx context.Context, cmd func(rueidis.Client) rueidis.Completed) rueidis.RedisResult {
	client, err := c.client.get()
	if err != nil {
		return rueidis.NewErrorResult(err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(c.Timeout))
	defer cancel()
	return client.Do(ctx, cmd(client))
}

// Exec runs script, bounded by the timeout.
func (c *Config) Exec(ctx context.Context, script *rueidis.Lua, keys, args []string) rueidis.RedisResult {
	client, err := c.client.get()
	if err != nil {
		return rueidis.NewErrorResult(err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(c.Timeout))
	defer cancel()
	return script.Exec(ctx, client, keys, args)
}

// UnmarshalBlock reads a Redis store's Caddyfile block, `<name> { ... }`:
// the options above, and the store's own, which option reads from d,
// reporting false for one it does not know. kind names the store in the
// error for an unknown option.
func (c *Config) UnmarshalBlock(d *caddyfile.Dispenser, kind string, option func(name string) (known bool, err error)) error {
	d.Next() // consume the store's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		if ok, err := c.unmarshalOption(d); ok {
			if err != nil {
				return err
			}
			continue
		}
		name := d.Val()
		known, err := option(name)
		if !known {
			return d.Errf("unrecognized %s option %q", kind, name)
		}
		if err != nil {
			return d.Errf("%s: %v", name, err)
		}
	}
	return nil
}

// unmarshalOption reads the connection option the dispenser is at, if it
// is one, and reports whether it was.
func (c *Config) unmarshalOption(d *caddyfile.Dispenser) (bool, error) {
	name := d.Val()
	var err error
	switch name {
	case "address":
		c.Address, err = cfparse.One(d)
	case "username":
		c.Username, err = cfparse.One(d)
	case "password":
		c.Password, err = cfparse.One(d)
	case "db":
		c.DB, err = cfparse.With(d, func(v string) (int, error) {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return 0, fmt.Errorf("%q is not a database number", v)
			}
			return n, nil
		})
	case "tls":
		err = cfparse.Flag(d)
		c.TLS = true
	case "tls_ca":
		c.TLSCA, err = cfparse.One(d)
	case "tls_server_name":
		c.TLSServerName, err = cfparse.One(d)
	case "timeout":
		c.Timeout, err = cfparse.With(d, cfparse.Duration)
	case "key_prefix":
		c.KeyPrefix, err = cfparse.One(d)
	default:
		return false, nil
	}
	if err != nil {
		return true, d.Errf("%s: %v", name, err)
	}
	return true, nil
}

// clientOption builds the client's options from the fields, and returns
// the PEM of tls_ca. Errors about the address never quote it: a URL can
// hold the password.
func (c *Config) clientOption() (opt rueidis.ClientOption, caPEM []byte, err error) {
	if strings.Contains(c.Address, "://") {
		u, err := url.Parse(c.Address)
		if err != nil {
			return opt, nil, errors.New("address: not a valid URL")
		}
		if u.Scheme != "redis" && u.Scheme != "rediss" {
			return opt, nil, fmt.Errorf("address: scheme %q is neither redis nor rediss", u.Scheme)
		}
		if opt, err = rueidis.ParseURL(c.Address); err != nil {
			return opt, nil, fmt.Errorf("address: not a valid Redis URL (%s)", redact.URL(u))
		}
	} else {
		if _, _, err := net.SplitHostPort(c.Address); err != nil {
			return opt, nil, errors.New("address: want host:port or a redis:// or rediss:// URL")
		}
		opt.InitAddress = []string{c.Address}
	}
	if c.Username != "" {
		opt.Username = c.Username
	}
	if c.Password != "" {
		opt.Password = c.Password
	}
	if c.DB != 0 {
		opt.SelectDB = c.DB
	}
	if c.TLS || c.TLSCA != "" || c.TLSServerName != "" {
		if opt.TLSConfig == nil {
			host, _, _ := net.SplitHostPort(opt.InitAddress[0])
			opt.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
		}
		if c.TLSServerName != "" {
			opt.TLSConfig.ServerName = c.TLSServerName
		}
		if c.TLSCA != "" {
			if caPEM, err = os.ReadFile(c.TLSCA); err != nil {
				return opt, nil, fmt.Errorf("tls_ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(caPEM) {
				return opt, nil, fmt.Errorf("tls_ca: no PEM certificate in %s", c.TLSCA)
			}
			opt.TLSConfig.RootCAs = pool
		}
	}
	timeout := time.Duration(c.Timeout)
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

// clients keeps one client per connection configuration, across config
// reloads, closed when nothing uses it any more.
var clients = caddy.NewUsagePool()

// connectionKey identifies the connection configuration by a hash, so
// that no credential is kept as a key.
func (c *Config) connectionKey(caPEM []byte) string {
	h := sha256.New()
	fmt.Fprintf(h, "%q %q %q %d %v %v %q %q\n", c.Address, c.Username, c.Password, c.DB, c.TLS, time.Duration(c.Timeout), c.TLSServerName, c.TLSCA)
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
