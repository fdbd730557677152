// Package queue holds verified deliveries durably until the app has taken
// them: the storage engines of openai_webhook's queue mode, as Caddy modules
// in the namespace http.handlers.openai_webhook.queue_stores. file keeps
// them in one bbolt file (one Caddy); redis in Redis Streams (a fleet).
// Another engine is a module of the same namespace implementing Store.
package queue

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"
)

// Message is one verified delivery in the queue.
type Message struct {
	// ID is the queue's id of the message: unique, and ordered by when it
	// was stored.
	ID string `json:"id"`
	// WebhookID is the delivery's webhook-id.
	WebhookID string `json:"webhook_id"`
	// Header holds the delivery's headers as received (webhook-* included),
	// but for hop-by-hop and framing fields.
	Header http.Header `json:"header,omitempty"`
	// Body is the exact verified body.
	Body []byte `json:"body,omitempty"`
	// Received is when the gateway stored it.
	Received time.Time `json:"received"`
	// Due is when the next attempt may start.
	Due time.Time `json:"due"`
	// Attempts made so far, oldest first.
	Attempts []Attempt `json:"attempts,omitempty"`
	// Tries counts the attempts since the message was stored or revived:
	// its place in the retry schedule.
	Tries int `json:"tries,omitempty"`

	// entry is the engine's handle on this take of the message, for
	// settling it (file: its lease key; redis: its stream entry and
	// delivery count).
	entry string
}

// recordAttempt adds a failed attempt to m's history, counts it in Tries,
// and returns m as the engines store it.
func (m *Message) recordAttempt(a Attempt) ([]byte, error) {
	m.Attempts = append(m.Attempts, a)
	m.Tries++
	return json.Marshal(m)
}

// Attempt is one try at delivering a message to the app.
type Attempt struct {
	At       time.Time     `json:"at"`
	Duration time.Duration `json:"duration"`
	// Status is the app's status, 0 when there was no answer.
	Status int `json:"status,omitempty"`
	// Error says why the attempt failed, when it did: the status, or what
	// happened instead of an answer.
	Error string `json:"error,omitempty"`
}

// Counts are the messages of a queue by state.
type Counts struct {
	// Pending: due now, waiting for a worker.
	Pending int `json:"pending"`
	// Scheduled: to be tried again later.
	Scheduled int `json:"scheduled"`
	// InFlight: taken by a worker, being delivered.
	InFlight int `json:"in_flight"`
	// Dead: out of attempts, kept until retried or dropped by hand.
	Dead int `json:"dead"`
	// Oldest is when the oldest message not dead was stored (zero with
	// none).
	Oldest time.Time `json:"oldest,omitzero"`
}

// Errors of the stores.
var (
	// ErrFull: the queue holds max_pending messages that are not dead.
	ErrFull = errors.New("the queue is full")
	// ErrNotFound: no message with that id is in the state asked.
	ErrNotFound = errors.New("no such message")
)

// Store keeps messages durably. Its methods are safe for concurrent use,
// also from several processes sharing the store where the engine allows it
// (redis); each call is bounded by its context.
type Store interface {
	// Open binds the store to its queue's limit on messages not dead. The
	// handler calls it once, while it is provisioned.
	Open(maxPending int) error
	// Start readies the store for use, once Caddy runs the config (not
	// for caddy validate): the file engine opens and locks its file, the
	// Redis engine makes its consumer group and checks Redis's settings.
	// An error fails the config. It may be called again by the next
	// config sharing the store.
	Start() error
	// Enqueue stores m, due at once, and returns only once it is durable;
	// ErrFull when the queue is at its limit.
	Enqueue(ctx context.Context, m *Message) error
	// Take returns a due message, now in flight until lease from now (when
	// it becomes due again unless settled: the worker died), or nil when
	// none is due. An engine may judge whether a lease ended by the lease
	// of the Take that would take the message over (redis: XAUTOCLAIM's
	// idle time): the workers of one queue take with one lease, but a
	// reload or a fleet with another timeout does not (docs/queue.md).
	Take(ctx context.Context, lease time.Duration) (*Message, error)
	// Complete removes a message taken: the app has it, even if the
	// take's lease ended meanwhile.
	Complete(ctx context.Context, m *Message, a Attempt) error
	// Reschedule records a failed attempt (counting it in Tries) and
	// makes the message due at next. A take whose lease ended (the
	// message was taken again, or is due again) changes nothing: the
	// message is another take's now.
	Reschedule(ctx context.Context, m *Message, a Attempt, next time.Time) error
	// Bury records the last failed attempt (counting it in Tries) and
	// keeps the message as a dead letter; like Reschedule, only while the
	// take holds its lease.
	Bury(ctx context.Context, m *Message, a Attempt) error
	// Counts counts the messages by state.
	Counts(ctx context.Context) (Counts, error)
	// Dead lists up to limit dead letters, oldest first, without bodies.
	Dead(ctx context.Context, limit int) ([]Message, error)
	// Revive makes the dead letter id due at once, with its history and a
	// new round of the retry schedule (Tries 0); all dead letters for id
	// "". It returns how many it revived.
	Revive(ctx context.Context, id string) (int, error)
	// Drop deletes the dead letter id.
	Drop(ctx context.Context, id string) error
	// Name says which queue this is, for the admin API and the metrics:
	// the same for every store that shares the queue, within and across
	// processes, and no secret.
	Name() string
}
