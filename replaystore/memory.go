package replaystore

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/internal/lograte"
)

func init() {
	caddy.RegisterModule(Memory{})
}

// Memory keeps the ids in the Caddy process: at most capacity delivered
// ids (about 64 bytes each), the oldest forgotten first past it. The ids survive every config reload that keeps at least
// one of the handler's secrets, whatever else changes; a handler that keeps
// none of them starts empty, and handlers with a secret in common share
// one memory. The ids do not survive a restart and are not shared with
// other instances: use the redis store for those.
type Memory struct {
	// Capacity is the most delivered ids kept; past it the oldest is
	// forgotten before its replay window ends (counted, and warned of at
	// most once a minute). Each costs about 64 bytes, whatever the id's
	// length. Default: 100000 (about 6.4 MB when full).
	Capacity int `json:"capacity,omitempty"`

	// InFlightTTL is how long a claimed id stays in flight when nobody
	// settles it, e.g. because the sender hung up before the app answered
	// (the app may still be working on it). Keep it above reverse_proxy's
	// timeouts: a forward that outlives it loses its claim. Default: 1m.
	InFlightTTL caddy.Duration `json:"in_flight_ttl,omitempty"`

	ids       *memoryIDs
	scope     string // the handler's share of memories
	evictions *lograte.Limiter
	logger    *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Memory) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.openai_webhook.replay_stores.memory",
		New: func() caddy.Module { return new(Memory) },
	}
}

// DefaultCapacity is the memory store's default capacity.
const DefaultCapacity = 100_000

// Provision sets the defaults.
func (m *Memory) Provision(ctx caddy.Context) error {
	m.logger = ctx.Logger()
	m.evictions = &lograte.Limiter{Every: evictionLogEvery}
	if m.Capacity == 0 {
		m.Capacity = DefaultCapacity
	}
	if m.InFlightTTL == 0 {
		m.InFlightTTL = caddy.Duration(DefaultInFlightTTL)
	}
	return nil
}

// Validate checks the settings.
func (m *Memory) Validate() error {
	switch {
	case m.Capacity < 1:
		return fmt.Errorf("capacity: %d is not a positive number", m.Capacity)
	case m.InFlightTTL <= 0:
		return fmt.Errorf("in_flight_ttl: %v is not a positive duration", time.Duration(m.InFlightTTL))
	}
	return nil
}

// memories keeps the in-memory stores across config reloads, by scope.
var memories = caddy.NewUsagePool()

type sharedMemory struct{ *memoryIDs }

func (sharedMemory) Destruct() error { return nil }

// scopes maps each secret's fingerprint ever seen by this process to the
// scope of its store: a handler takes the scope of the first of its
// secrets that has one, so a store is kept across reloads that keep any
// secret. One entry per distinct secret configured.
var scopes = struct {
	sync.Mutex
	of map[string]string
}{of: map[string]string{}}

// resolveScope returns the scope of a handler with secrets fingerprints,
// and gives it to all of them.
func resolveScope(fingerprints []string) string {
	scopes.Lock()
	defer scopes.Unlock()
	scope := fingerprints[0]
	for _, fp := range fingerprints {
		if s, ok := scopes.of[fp]; ok {
			scope = s
			break
		}
	}
	for _, fp := range fingerprints {
		scopes.of[fp] = scope
	}
	return scope
}

// Open implements Store. An existing memory of the scope takes the new
// window, capacity and lease; a smaller capacity forgets the oldest ids.
func (m *Memory) Open(e Endpoint) error {
	if len(e.Fingerprints) == 0 {
		return fmt.Errorf("no secret fingerprint")
	}
	scope := resolveScope(e.Fingerprints)
	shared, loaded, err := memories.LoadOrNew(scope, func() (caddy.Destructor, error) {
		return sharedMemory{newMemoryIDs(e.Window, m.Capacity, time.Duration(m.InFlightTTL), nil)}, nil
	})
	if err != nil {
		return err
	}
	m.scope = scope
	m.ids = shared.(sharedMemory).memoryIDs
	if loaded {
		m.ids.Reconfigure(e.Window, m.Capacity, time.Duration(m.InFlightTTL))
	}
	return nil
}

// Cleanup releases the handler's share of its memory.
func (m *Memory) Cleanup() error {
	if m.scope == "" {
		return nil
	}
	_, err := memories.Delete(m.scope)
	return err
}

// Claim implements Store.
func (m *Memory) Claim(_ context.Context, id string) (State, Ticket, error) {
	if m.ids == nil {
		return 0, 0, errNotOpen
	}
	state, ticket := m.ids.Claim(id)
	return state, ticket, nil
}

// evictionLogEvery is the least time between two warnings that the store
// is full.
const evictionLogEvery = time.Minute

// Delivered implements Store. A full store forgets its oldest id, which
// it warns about at most once a evictionLogEvery.
func (m *Memory) Delivered(_ context.Context, id string, t Ticket) error {
	if m.ids.Delivered(id, t) {
		if suppressed, ok := m.evictions.Allow(time.Now()); ok {
			m.logger.Warn("replay store full: delivered ids are forgotten before replay_window ends; raise the memory store's capacity",
				zap.Int64("earlier_warnings_held_back", suppressed))
		}
	}
	return nil
}

// Release implements Store.
func (m *Memory) Release(_ context.Context, id string, t Ticket) error {
	m.ids.Release(id, t)
	return nil
}

// Counter is a store that counts its ids.
type Counter interface {
	// Stats reports the ids held (delivered and claimed) and how many
	// were forgotten before their window ended.
	Stats() (held int, evictedEarly uint64)
}

// Counter returns the counts of the store the handler shares with others:
// the same for every handler of one scope.
func (m *Memory) Counter() Counter {
	return m.ids
}

// Interface guards
var (
	_ Store              = (*Memory)(nil)
	_ caddy.Provisioner  = (*Memory)(nil)
	_ caddy.Validator    = (*Memory)(nil)
	_ caddy.CleanerUpper = (*Memory)(nil)
)
