// Package queuestore keeps the deliveries of webhook_queue durably until the
// app has them: the storage engines, as Caddy modules in the namespace
// http.webhook_queue.stores. file keeps them in one bbolt file (one Caddy);
// redis in Redis Streams (a fleet). Another engine is a module of the same
// namespace implementing Store.
package queuestore

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"time"
)

// Message is one delivery in the queue.
type Message struct {
	// ID is the queue's id of the message: unique, and ordered by when it
	// was stored.
	ID string `json:"id"`
	// DeliveryID is the sender's id of the delivery (its webhook-id): a
	// message with the DeliveryID of one the store holds, or delivered
	// within its retention, is not stored again. Empty: no such check.
	DeliveryID string `json:"delivery_id,omitempty"`
	// Header holds the delivery's headers byte for byte as received, but
	// for hop-by-hop and framing fields.
	Header []HeaderField `json:"header,omitempty"`
	// Body is the exact body.
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

// HeaderField is one header line as received: its canonical name and its
// value's bytes, which JSON keeps as base64 (a JSON string would turn a
// byte that is not UTF-8 into U+FFFD).
type HeaderField struct {
	Name  string `json:"name"`
	Value []byte `json:"value"`
}

// Fields returns h's lines, names sorted and each name's values in order.
func Fields(h http.Header) []HeaderField {
	names := make([]string, 0, len(h))
	for name := range h {
		names = append(names, name)
	}
	slices.Sort(names)
	var fields []HeaderField
	for _, name := range names {
		for _, v := range h[name] {
			fields = append(fields, HeaderField{Name: name, Value: []byte(v)})
		}
	}
	return fields
}

// HTTPHeader returns the message's headers, each value's bytes as they
// were received (a Go string holds any bytes).
func (m *Message) HTTPHeader() http.Header {
	h := make(http.Header, len(m.Header))
	for _, f := range m.Header {
		h[f.Name] = append(h[f.Name], string(f.Value))
	}
	return h
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
	// NextDue is when the soonest scheduled message is due (zero with
	// none).
	NextDue time.Time `json:"next_due,omitzero"`
	// DeadDropped counts the dead letters the retention dropped, since
	// the store was opened by this process.
	DeadDropped int64 `json:"dead_dropped"`
}

// State is a message's state, for List.
type State string

// States.
const (
	StatePending   State = "pending"
	StateScheduled State = "scheduled"
	StateInFlight  State = "in_flight"
	StateDead      State = "dead"
)

// Summary is a message as List shows it: never its body nor a header.
// (The admin API has its own JSON form of it.)
type Summary struct {
	ID         string
	DeliveryID string
	Received   time.Time
	// Due: when it is due (pending, scheduled); zero for the others.
	Due time.Time
	// Attempts counts its attempts; Tries those since it was stored or
	// revived.
	Attempts int
	Tries    int
	// Last is its last attempt, if any.
	Last *Attempt
}

// Options are what a store is told of its queue.
type Options struct {
	// Name is the queue's name, which the operator gives (or
	// webhook_queue derives from to): it names the queue in the admin API,
	// the metrics and the logs, and a store's default place (the file's
	// name, the Redis key prefix). No path, address or secret.
	Name string
	// MaxPending bounds the messages that are not dead letters.
	MaxPending int
	// Retention is how long the DeliveryID of a delivered message is
	// remembered, so that the sender's repeat of it is not stored again.
	Retention time.Duration
	// DeadMaxAge and DeadMaxCount bound the dead letters kept: past
	// either, the oldest are dropped (their DeliveryIDs released) and
	// counted in Counts.DeadDropped. Zero: no bound of that kind.
	DeadMaxAge   time.Duration
	DeadMaxCount int
}

// BulkBatch bounds the messages one transaction of a bulk operation
// (ReviveAll, DropAll, BringForward) touches, so that it never holds the
// store's writer, and the enqueues waiting for it, for long.
const BulkBatch = 500

// Errors of the stores.
var (
	// ErrFull: the queue holds max_pending messages that are not dead.
	ErrFull = errors.New("the queue is full")
	// ErrDuplicate: a message with this DeliveryID is queued, in flight or
	// dead, or was delivered within the retention; nothing was stored.
	ErrDuplicate = errors.New("a delivery with this id is already queued or delivered")
	// ErrNotFound: no message with that id is in the state asked.
	ErrNotFound = errors.New("no such message")
	// ErrLeaseLost: the take no longer holds the message (its lease ended
	// and another take, or the store, has it now).
	ErrLeaseLost = errors.New("the take's lease on the message ended")
)

// Store keeps messages durably. Its methods are safe for concurrent use,
// also from several processes sharing the store where the engine allows it
// (redis); each call is bounded by its context.
type Store interface {
	// Open binds the store to its queue. The handler calls it once, while
	// it is provisioned, before any other method; it opens nothing.
	Open(o Options) error
	// Start readies the store for use, once Caddy runs the config (not
	// for caddy validate): the file engine opens and locks its file, the
	// Redis engine makes its consumer group and checks Redis's settings.
	// An error fails the config. It may be called again by the next
	// config sharing the store.
	Start() error
	// Enqueue stores m, due at once, and returns only once it is durable;
	// ErrDuplicate (storing nothing) for a DeliveryID the store holds or
	// delivered within the retention; ErrFull when the queue is at its
	// limit.
	Enqueue(ctx context.Context, m *Message) error
	// Take returns up to n due messages, each now in flight until lease
	// from now (when it becomes due again unless settled or extended: the
	// worker died), or none when none is due. A lease is measured on a
	// clock that a step of the wall clock does not move. A Take that finds
	// nothing due writes nothing (an idle queue costs no write, no fsync).
	Take(ctx context.Context, n int, lease time.Duration) ([]*Message, error)
	// Wait returns a channel that is closed when a message may have
	// become due: one was stored or made due by this process, or the
	// soonest scheduled one's time came (engines that other processes
	// share also close it at a poll's interval). Workers wait on it
	// instead of polling.
	Wait() <-chan struct{}
	// Extend moves the end of the take's lease to lease from now, while
	// an attempt runs longer than planned; ErrLeaseLost when the take no
	// longer holds it.
	Extend(ctx context.Context, m *Message, lease time.Duration) error
	// Complete removes a message taken: the app has it, even if the
	// take's lease ended meanwhile. Its DeliveryID is remembered for the
	// retention. It need not be durable when it returns (a completion a
	// crash loses is one more delivery of the message): an engine may
	// commit completions together, without an fsync of their own, as long
	// as a completed message is not taken again by this process.
	Complete(ctx context.Context, m *Message, a Attempt) error
	// Reschedule records a failed attempt (counting it in Tries) and
	// makes the message due at next. A take whose lease ended (the
	// message was taken again, or is due again) changes nothing: the
	// message is another take's now.
	Reschedule(ctx context.Context, m *Message, a Attempt, next time.Time) error
	// Postpone records a failed attempt without counting it in Tries and
	// makes the message due at next: an attempt the queue made while it
	// knew the app to be down (a probe) costs the message no place in its
	// schedule. Like Reschedule, only while the take holds its lease.
	Postpone(ctx context.Context, m *Message, a Attempt, next time.Time) error
	// Bury records the last failed attempt (counting it in Tries) and
	// keeps the message as a dead letter; like Reschedule, only while the
	// take holds its lease.
	Bury(ctx context.Context, m *Message, a Attempt) error
	// Counts counts the messages by state.
	Counts(ctx context.Context) (Counts, error)
	// List lists up to limit messages in state, oldest first, as
	// summaries (an engine does not decode bodies to list them).
	List(ctx context.Context, state State, limit int) ([]Summary, error)
	// BringForward makes due now every scheduled message whose last
	// attempt keep says yes to (the app was unreachable, say, and is
	// back), in batches of BulkBatch, and returns how many.
	BringForward(ctx context.Context, keep func(Attempt) bool) (int, error)
	// Revive makes the dead letter id due at once, with its history and a
	// new round of the retry schedule (Tries 0); ErrNotFound if it is not
	// a dead letter.
	Revive(ctx context.Context, id string) error
	// ReviveAll revives dead letters, oldest first, in batches of
	// BulkBatch, while the queue has room under MaxPending, and returns
	// how many (those left stay dead letters).
	ReviveAll(ctx context.Context) (int, error)
	// Drop deletes the dead letter id (ErrNotFound if it is not one), and
	// releases its DeliveryID: the operator gave it up, and the sender's
	// next delivery of it (a resend asked of the sender) is stored anew.
	// A dead letter, and one revived, holds its DeliveryID.
	Drop(ctx context.Context, id string) error
	// DropAll drops every dead letter, in batches of BulkBatch, and
	// returns how many.
	DropAll(ctx context.Context) (int, error)
	// Compact gives the space that messages delivered or dropped left
	// back to the system, and returns the store's size before and after
	// in bytes; an engine with nothing to give back returns 0, 0. Writes
	// wait while it runs.
	Compact(ctx context.Context) (before, after int64, err error)
	// Name is the queue's name, as Options gave it.
	Name() string
	// Location says where the store keeps its queue, once opened (the
	// file's path; Redis's address and the key prefix), without
	// credentials: two queues of a config with one location would take
	// each other's messages.
	Location() string
}
