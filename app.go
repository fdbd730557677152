package openaiwebhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/internal/portcheck"
	"github.com/webhookgate/caddy-openai-webhook/internal/redact"
)

func init() {
	caddy.RegisterModule(new(App))
}

// appName is the ID of the App.
const appName = "openai_webhook"

// App is what a config with openai_webhook handlers does when Caddy runs
// it, not when it only loads it (caddy validate, or a config that failed
// to load): it refuses to start while another process listens on the
// config's addresses, and runs the workers of its queues. Every handler
// loads it while it is provisioned; Caddy stops it when the config is
// replaced or Caddy stops. It has no settings.
type App struct {
	queues  []*Queue
	cancel  context.CancelFunc
	workers sync.WaitGroup
	ctx     caddy.Context // for the http app's servers, at start
	logger  *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  appName,
		New: func() caddy.Module { return new(App) },
	}
}

// Provision keeps what Start needs.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx, a.logger = ctx, ctx.Logger()
	return nil
}

// add makes q one of the config's queues. Handlers of one config may share
// a store only with the same queue settings: each handler's workers
// deliver any message of the store, to their own app.
func (a *App) add(q *Queue) error {
	for _, other := range a.queues {
		if other.store.Name() != q.store.Name() {
			continue
		}
		if !bytes.Equal(q.settings(), other.settings()) {
			return fmt.Errorf("store: %s is also the store of another handler, with other queue settings (to %s): give each endpoint a store of its own (another path or key_prefix)",
				q.store.Name(), redact.URL(other.target))
		}
	}
	a.queues = append(a.queues, q)
	return nil
}

// settings are the queue's settings as loaded, with to expanded.
func (q *Queue) settings() []byte {
	loaded := *q
	loaded.To = q.target.String()
	raw, _ := json.Marshal(&loaded)
	return raw
}

// Start checks that no other process listens on the config's addresses,
// readies the queues' stores (the file engine opens its file) and starts
// their workers.
func (a *App) Start() error {
	if err := a.checkListeners(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	for _, q := range a.queues {
		if err := q.store.Start(); err != nil {
			_ = a.Stop()
			return fmt.Errorf("queue %s: %w", q.store.Name(), err)
		}
		for range q.Workers {
			a.workers.Go(func() { q.work(ctx) })
		}
	}
	return nil
}

// Stop stops the workers and waits for them, each after the attempt it is
// making, so that what they settle is settled before the store closes;
// then it closes their idle connections to the app, which the next
// config's workers do not use.
func (a *App) Stop() error {
	if a.cancel != nil {
		a.cancel()
	}
	a.workers.Wait()
	for _, q := range a.queues {
		q.client.CloseIdleConnections()
	}
	return nil
}

// checkListeners refuses to start while another process listens on an
// address of the config's HTTP servers or on one this process listens on
// already (its admin endpoint, whose address the config does not show to
// modules). Caddy binds with SO_REUSEPORT, so a second Caddy on a port
// would start without a word, and the kernel would split the deliveries
// between the two: some verified with one config's secret, some with the
// other's. Sockets of this process (the previous config's, on a reload)
// are not counted. The check needs Linux's /proc; elsewhere, or when it
// cannot be made, it passes.
func (a *App) checkListeners() error {
	addrs, err := portcheck.OwnListeners()
	if err != nil {
		a.logger.Warn("could not list this process's listeners to check that no other process shares them", zap.Error(err))
	}
	if httpApp, err := a.ctx.AppIfConfigured("http"); err == nil {
		for _, srv := range httpApp.(*caddyhttp.App).Servers {
			for _, listen := range srv.Listen {
				addrs = append(addrs, tcpAddresses(listen)...)
			}
		}
	}
	holders, err := portcheck.OtherListeners(addrs)
	if err != nil {
		a.logger.Warn("could not check that no other process listens on this config's addresses", zap.Error(err))
		return nil
	}
	if len(holders) > 0 {
		return fmt.Errorf("%s: two servers on one port share it silently (SO_REUSEPORT) and each gets some of the deliveries; stop the other one first, or move this one to another port", holders[0])
	}
	return nil
}

// tcpAddresses returns the host:port addresses of a Caddy listen address
// that are TCP (none for a unix socket or UDP), one per port of a range.
func tcpAddresses(listen string) []string {
	addr, err := caddy.ParseNetworkAddress(listen)
	if err != nil || !strings.HasPrefix(addr.Network, "tcp") {
		return nil
	}
	var out []string
	for i := range addr.PortRangeSize() {
		out = append(out, addr.JoinHostPort(i))
	}
	return out
}

// Interface guards
var (
	_ caddy.App         = (*App)(nil)
	_ caddy.Provisioner = (*App)(nil)
)
