package webhookqueue

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/webhookgate/caddy-openai-webhook/internal/lograte"
	"github.com/webhookgate/caddy-openai-webhook/queuestore"
)

func init() {
	caddy.RegisterModule(new(App))
}

// appName is the ID of the App.
const appName = "webhook_queue"

// App runs the queues of a config: every webhook_queue handler loads it
// while it is provisioned. Caddy starts it only for a config it runs (not
// for caddy validate, nor for a config that failed to load): it then starts
// each queue's store and workers. The handlers store requests only once
// Caddy has started the whole config (its "started" event): a config that
// fails to start, after its servers took requests, leaves nothing answered
// 200 in a store that no running config delivers from. Caddy stops it when
// the config is replaced or Caddy stops: the handlers refuse (503) from
// then on, the requests being stored finish, and the workers stop after
// the attempts they are making. It has no settings.
type App struct {
	queues  []*queue
	ctx     caddy.Context
	cancel  context.CancelFunc
	workers sync.WaitGroup
	logger  *zap.Logger
	// awaitStarted: the handlers store once the config's "started" event
	// comes, not at Start (without an events app, at Start).
	awaitStarted bool
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  appName,
		New: func() caddy.Module { return new(App) },
	}
}

// Provision keeps what Start needs, and asks to hear when Caddy has
// started the whole config.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx, a.logger = ctx, ctx.Logger()
	events, err := ctx.AppIfConfigured("events")
	if err != nil {
		return nil // no events app (the http app loads one): open at Start
	}
	if err := events.(*caddyevents.App).On("started", configStarted{a}); err != nil {
		return err
	}
	a.awaitStarted = true
	return nil
}

// configStarted hears the config's "started" event, which Caddy emits
// once every app of it started.
type configStarted struct{ app *App }

// Handle implements caddyevents.Handler.
func (s configStarted) Handle(context.Context, caddy.Event) error {
	s.app.open()
	return nil
}

// open lets the handlers store.
func (a *App) open() {
	for _, q := range a.queues {
		q.gate.Lock()
		q.running = true
		q.gate.Unlock()
		running.join(q)
	}
}

// queue is one queue of a config: its store, where and how it delivers,
// and whether the handlers may store into it.
type queue struct {
	store    queuestore.Store
	target   *url.URL
	signKey  []byte
	client   *http.Client
	retry    []caddy.Duration
	span     time.Duration // the schedule's whole length
	longest  time.Duration // its longest wait, which bounds the app's Retry-After
	timeout  caddy.Duration
	workers  int
	settings []byte // the first handler's, which the others must match

	// gate lets handlers store (read-locked, while running) only between
	// Start and Stop, which take it to change running.
	gate    sync.RWMutex
	running bool

	health      *health       // shared with the other configs' queue of this name and store
	healthKey   string        // its key in healths
	limiter     *rate.Limiter // rate's; nil without
	storeErrors *lograte.Limiter
	logger      *zap.Logger
}

// queueFor returns the config's queue of h's name: q, new, or the one
// another handler made, if its settings are h's.
func (a *App) queueFor(h *Handler, q *queue) (*queue, error) {
	settings, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	for _, other := range a.queues {
		if other.store.Name() != h.Name {
			if other.store.Location() == q.store.Location() {
				return nil, fmt.Errorf("store: %s is also the store of the queue %q: give each queue a store of its own", q.store.Location(), other.store.Name())
			}
			continue
		}
		if !bytes.Equal(settings, other.settings) {
			return nil, fmt.Errorf("name: %q is also the queue of another webhook_queue, with other settings (to %s): give each a name of its own", h.Name, other.shownTo())
		}
		return other, nil
	}
	q.retry, q.timeout, q.workers, q.settings = h.Retry, h.Timeout, h.Workers, settings
	for _, d := range h.Retry {
		q.span += time.Duration(d)
		q.longest = max(q.longest, time.Duration(d))
	}
	if h.Rate > 0 {
		q.limiter = rate.NewLimiter(rate.Limit(h.Rate), max(1, int(h.Rate)))
	}
	q.storeErrors = &lograte.Limiter{Every: storeErrorLogEvery}
	q.healthKey = h.Name + "\x00" + q.store.Location()
	shared, _, err := healths.LoadOrNew(q.healthKey, func() (caddy.Destructor, error) { return new(health), nil })
	if err != nil {
		return nil, err
	}
	q.health = shared.(*health)
	a.queues = append(a.queues, q)
	return q, nil
}

// healths keeps each queue's view of its app across config reloads, by
// name and store: a reload during an outage neither forgets it (and hits
// the app with every worker until it learns it again) nor resets the
// time of the last success that alerts watch.
var healths = caddy.NewUsagePool()

// Start starts each queue's store, then its workers.
func (a *App) Start() error {
	a.warnUnauthenticated()
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	for _, q := range a.queues {
		if err := q.store.Start(); err != nil {
			_ = a.Stop()
			return fmt.Errorf("queue %s: %w", q.store.Name(), err)
		}
		a.workers.Go(func() { q.work(ctx) })
	}
	if !a.awaitStarted {
		a.open()
	}
	return nil
}

// Stop refuses new requests, waits for those being stored, and stops the
// workers after their attempts, so that what they settle is settled before
// the store closes. (Their connections to the app close with the
// transport, which Caddy cleans up with the config.)
func (a *App) Stop() error {
	for _, q := range a.queues {
		q.gate.Lock()
		q.running = false
		q.gate.Unlock()
		running.leave(q)
	}
	if a.cancel != nil {
		a.cancel()
	}
	a.workers.Wait()
	return nil
}

// Cleanup releases the queues' views of their apps, when Caddy unloads
// the config (after Stop, if it ran).
func (a *App) Cleanup() error {
	for _, q := range a.queues {
		_, _ = healths.Delete(q.healthKey)
	}
	return nil
}

// authenticators are the handlers that refuse a request whose sender they
// cannot authenticate: a webhook_queue after one of them stores only what
// it let through.
var authenticators = []string{"http.handlers.openai_webhook", "http.handlers.standard_webhooks", "http.handlers.authentication"}

// warnUnauthenticated warns of each queue a handler of which comes with no
// authenticating handler before it in its route: it would store whatever
// anyone sends. Matchers are not weighed: this looks for a mistake, it
// does not prove an absence.
func (a *App) warnUnauthenticated() {
	httpApp, err := a.ctx.AppIfConfigured("http")
	if err != nil {
		return
	}
	warned := map[string]bool{}
	var walk func(routes caddyhttp.RouteList, authenticated bool) bool
	walk = func(routes caddyhttp.RouteList, authenticated bool) bool {
		for _, route := range routes {
			for _, h := range route.Handlers {
				switch h := h.(type) {
				case *Handler:
					if !authenticated && !warned[h.Name] {
						warned[h.Name] = true
						a.logger.Warn("webhook_queue stores whatever reaches it, and no authenticating handler (openai_webhook, standard_webhooks, basic_auth, forward_auth) comes before it in its route",
							zap.String("queue", h.Name))
					}
				case *caddyhttp.Subroute:
					authenticated = walk(h.Routes, authenticated)
				case *reverseproxy.Handler:
					authenticated = authenticated || len(h.HandleResponse) > 0 // forward_auth
				case caddy.Module:
					authenticated = authenticated || slices.Contains(authenticators, string(h.CaddyModule().ID))
				}
			}
		}
		return authenticated
	}
	for _, srv := range httpApp.(*caddyhttp.App).Servers {
		walk(srv.Routes, false)
		if srv.Errors != nil {
			walk(srv.Errors.Routes, false)
		}
	}
}

// running are the queues of the running configs, by name, for the admin
// API and the metrics. During a reload, the old and the new config's queue
// of a name run at once: the newest is shown.
var running = &registry{byName: map[string][]*queue{}}

type registry struct {
	mu     sync.Mutex
	byName map[string][]*queue
}

func (r *registry) join(q *queue) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.byName[q.store.Name()] = append(r.byName[q.store.Name()], q)
}

func (r *registry) leave(q *queue) {
	r.mu.Lock()
	defer r.mu.Unlock()
	name := q.store.Name()
	list := slices.DeleteFunc(r.byName[name], func(other *queue) bool { return other == q })
	if len(list) == 0 {
		delete(r.byName, name)
	} else {
		r.byName[name] = list
	}
}

// all returns one queue per name (the newest config's), sorted by name.
func (r *registry) all() []*queue {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*queue
	for _, list := range r.byName {
		out = append(out, list[len(list)-1])
	}
	slices.SortFunc(out, func(a, b *queue) int { return strings.Compare(a.store.Name(), b.store.Name()) })
	return out
}

// find returns the queue named name, or the only one for "".
func (r *registry) find(name string) (*queue, error) {
	all := r.all()
	if name == "" {
		switch len(all) {
		case 0:
			return nil, fmt.Errorf("no queue is running")
		case 1:
			return all[0], nil
		}
		return nil, fmt.Errorf("%d queues are running: name one with queue=", len(all))
	}
	for _, q := range all {
		if q.store.Name() == name {
			return q, nil
		}
	}
	return nil, fmt.Errorf("no queue %q is running", name)
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
