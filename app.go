package openaiwebhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/webhookgate/caddy-openai-webhook/internal/redact"
)

func init() {
	caddy.RegisterModule(new(App))
}

// appName is the ID of the App.
const appName = "openai_webhook"

// App runs the workers of a config's queues. Handlers with a queue load it
// while they are provisioned; Caddy starts it only for a config it runs
// (not for caddy validate, nor for a config that failed to load), and
// stops it when the config is replaced or Caddy stops. It has no settings.
type App struct {
	queues  []*Queue
	cancel  context.CancelFunc
	workers sync.WaitGroup
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  appName,
		New: func() caddy.Module { return new(App) },
	}
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

// Start readies the queues' stores (the file engine opens its file) and
// starts their workers.
func (a *App) Start() error {
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

// Interface guard
var _ caddy.App = (*App)(nil)
