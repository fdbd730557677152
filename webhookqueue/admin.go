package webhookqueue

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/queuestore"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI exposes the running queues on Caddy's admin endpoint:
//
//	GET  /webhook-queue/queues                               each queue's counts and its view of its app
//	GET  /webhook-queue/queues/list?queue=&state=&limit=     messages in a state, without bodies
//	POST /webhook-queue/queues/retry?queue=&id=              retry one dead letter
//	POST /webhook-queue/queues/retry?queue=&all=true         retry the dead letters (while there is room)
//	POST /webhook-queue/queues/retry?queue=&scheduled=true   make every scheduled message due now
//	POST /webhook-queue/queues/drop?queue=&id=               drop one dead letter
//	POST /webhook-queue/queues/drop?queue=&all=true          drop every dead letter
//	POST /webhook-queue/queues/compact?queue=                give the store's free space back
//
// queue may be left out while one queue runs. Messages show their ids,
// times and attempts; never a body or a header (a signature among them).
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.webhook_queue",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes implements caddy.AdminRouter.
func (a AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/webhook-queue/queues", Handler: caddy.AdminHandlerFunc(a.status)},
		{Pattern: "/webhook-queue/queues/list", Handler: caddy.AdminHandlerFunc(a.list)},
		{Pattern: "/webhook-queue/queues/retry", Handler: caddy.AdminHandlerFunc(a.retry)},
		{Pattern: "/webhook-queue/queues/drop", Handler: caddy.AdminHandlerFunc(a.drop)},
		{Pattern: "/webhook-queue/queues/compact", Handler: caddy.AdminHandlerFunc(a.compact)},
	}
}

// queueStatus is a queue as the API shows it: its counts, the age of its
// oldest message, and its view of its app; or the error that kept its
// store from counting (the others are shown anyway).
type queueStatus struct {
	Name      string             `json:"name"`
	To        string             `json:"to"`
	Counts    *queuestore.Counts `json:"counts,omitempty"`
	OldestAge string             `json:"oldest_age,omitempty"`
	App       status             `json:"app"`
	Error     string             `json:"error,omitempty"`
}

func (AdminAPI) status(w http.ResponseWriter, r *http.Request) error {
	if err := method(r, http.MethodGet); err != nil {
		return err
	}
	now := time.Now()
	list := []queueStatus{}
	for _, q := range running.all() {
		s := queueStatus{Name: q.store.Name(), To: q.shownTo(), App: q.health.status(now)}
		if c, err := q.store.Counts(r.Context()); err != nil {
			q.storeFailed("counts", err)
			s.Error = err.Error()
		} else {
			s.Counts = &c
			if !c.Oldest.IsZero() {
				s.OldestAge = now.Sub(c.Oldest).Round(time.Second).String()
			}
		}
		list = append(list, s)
	}
	return writeJSON(w, list)
}

// maxListed bounds the messages one call lists.
const maxListed = 1000

func (AdminAPI) list(w http.ResponseWriter, r *http.Request) error {
	if err := method(r, http.MethodGet); err != nil {
		return err
	}
	q, err := findQueue(r)
	if err != nil {
		return err
	}
	state := queuestore.State(r.URL.Query().Get("state"))
	switch state {
	case queuestore.StatePending, queuestore.StateScheduled, queuestore.StateInFlight, queuestore.StateDead:
	default:
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("state: %q is none of pending, scheduled, in_flight, dead", state)}
	}
	limit := 100
	if s := r.URL.Query().Get("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > maxListed {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("limit: %q is not between 1 and %d", s, maxListed)}
		}
	}
	summaries, err := q.store.List(r.Context(), state, limit)
	if err != nil {
		return storeError(q, "list", err)
	}
	shown := make([]message, 0, len(summaries))
	for _, m := range summaries {
		shown = append(shown, newMessage(m))
	}
	return writeJSON(w, map[string]any{"queue": q.store.Name(), "state": state, "messages": shown})
}

// message is a message as the API lists it: its ids, times and attempts;
// never its body or a header.
type message struct {
	ID         string    `json:"id"`
	DeliveryID string    `json:"delivery_id,omitempty"`
	Received   time.Time `json:"received"`
	Due        time.Time `json:"due,omitzero"`
	Attempts   int       `json:"attempts"`
	Tries      int       `json:"tries"`
	Last       *attempt  `json:"last_attempt,omitempty"`
}

// attempt is an attempt as the API shows it, its duration as Go prints
// durations ("1.825826ms").
type attempt struct {
	At       time.Time `json:"at"`
	Duration string    `json:"duration"`
	Status   int       `json:"status,omitempty"`
	Error    string    `json:"error,omitempty"`
}

func newMessage(s queuestore.Summary) message {
	m := message{ID: s.ID, DeliveryID: s.DeliveryID, Received: s.Received, Due: s.Due, Attempts: s.Attempts, Tries: s.Tries}
	if a := s.Last; a != nil {
		m.Last = &attempt{At: a.At, Duration: a.Duration.String(), Status: a.Status, Error: a.Error}
	}
	return m
}

func (AdminAPI) retry(w http.ResponseWriter, r *http.Request) error {
	if err := method(r, http.MethodPost); err != nil {
		return err
	}
	q, err := findQueue(r)
	if err != nil {
		return err
	}
	id, which, err := target(r, "scheduled")
	if err != nil {
		return err
	}
	var n int
	switch which {
	case "all":
		n, err = q.store.ReviveAll(r.Context())
	case "scheduled":
		q.health.resume()
		n, err = q.store.BringForward(r.Context(), func(queuestore.Attempt) bool { return true })
	default:
		err = q.store.Revive(r.Context(), id)
		n = 1
	}
	if err != nil {
		return storeError(q, "retry", err)
	}
	q.logger.Info("messages retried by hand", zap.String("queue", q.store.Name()), zap.String("which", which), zap.Int("count", n), zap.String("queue_id", id))
	return writeJSON(w, map[string]any{"queue": q.store.Name(), "retried": n})
}

func (AdminAPI) drop(w http.ResponseWriter, r *http.Request) error {
	if err := method(r, http.MethodPost); err != nil {
		return err
	}
	q, err := findQueue(r)
	if err != nil {
		return err
	}
	id, which, err := target(r, "")
	if err != nil {
		return err
	}
	var n int
	if which == "all" {
		n, err = q.store.DropAll(r.Context())
	} else {
		err = q.store.Drop(r.Context(), id)
		n = 1
	}
	if err != nil {
		return storeError(q, "drop", err)
	}
	q.logger.Info("dead letters dropped by hand", zap.String("queue", q.store.Name()), zap.Int("count", n), zap.String("queue_id", id))
	return writeJSON(w, map[string]any{"queue": q.store.Name(), "dropped": n})
}

// target reads which messages a retry or drop is for: one id, all=true
// (every dead letter) or, where other is given, other=true; exactly one.
func target(r *http.Request, other string) (id, which string, err error) {
	query := r.URL.Query()
	id = query.Get("id")
	var given []string
	if id != "" {
		given, which = append(given, "id"), "id"
	}
	for _, flag := range []string{"all", other} {
		if flag != "" && query.Get(flag) == "true" {
			given, which = append(given, flag), flag
		}
	}
	if len(given) != 1 {
		choices := "id= or all=true"
		if other != "" {
			choices = "id=, all=true or " + other + "=true"
		}
		return "", "", caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("give exactly one of %s", choices)}
	}
	return id, which, nil
}

func (AdminAPI) compact(w http.ResponseWriter, r *http.Request) error {
	if err := method(r, http.MethodPost); err != nil {
		return err
	}
	q, err := findQueue(r)
	if err != nil {
		return err
	}
	before, after, err := q.store.Compact(r.Context())
	if err != nil {
		return storeError(q, "compact", err)
	}
	q.logger.Info("store compacted by hand", zap.String("queue", q.store.Name()), zap.Int64("bytes_before", before), zap.Int64("bytes_after", after))
	return writeJSON(w, map[string]any{"queue": q.store.Name(), "bytes_before": before, "bytes_after": after})
}

func method(r *http.Request, want string) error {
	if r.Method != want {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed: use %s", r.Method, want)}
	}
	return nil
}

func findQueue(r *http.Request) (*queue, error) {
	q, err := running.find(r.URL.Query().Get("queue"))
	if err != nil {
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: err}
	}
	return q, nil
}

// storeError is the API's error for a store call that failed: 404 for no
// such message, else 502, counted as a store failure.
func storeError(q *queue, operation string, err error) error {
	if errors.Is(err, queuestore.ErrNotFound) {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: err}
	}
	q.storeFailed(operation, err)
	return caddy.APIError{HTTPStatus: http.StatusBadGateway, Err: err}
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(v)
}

// Interface guard
var _ caddy.AdminRouter = (*AdminAPI)(nil)
