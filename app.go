package openaiwebhook

import (
	"fmt"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/internal/portcheck"
)

func init() {
	caddy.RegisterModule(new(App))
}

// appName is the ID of the App.
const appName = "openai_webhook"

// App is what a config with openai_webhook handlers does when Caddy runs
// it, not when it only loads it (caddy validate, or a config that failed
// to load): it refuses to start while another process listens on the
// config's addresses. Every handler loads it while it is provisioned. It
// has no settings.
type App struct {
	ctx    caddy.Context // for the http app's servers, at start
	logger *zap.Logger
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

// Start checks that no other process listens on the config's addresses.
func (a *App) Start() error {
	return a.checkListeners()
}

// Stop does nothing: Start started nothing.
func (a *App) Stop() error {
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
