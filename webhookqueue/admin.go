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
//	GET  /webhook-queue/queues                          each queue's counts
//	GET  /webhook-queue/queues/dead?queue=&limit=       dead letters, without bodies
//	POST /webhook-queue/queues/retry?queue=&id=         retry one dead letter
//	POST /webhook-queue/queues/retry?queue=&all=true    retry every dead letter
//	POST /webhook-queue/queues/drop?queue=&id=          drop one dead letter
//
// queue may be left out while one queue runs. Dead letters show their ids,
// when they were received, and every attempt's time, status and error;
// never a body or a header (a signature among them).
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
		{Pattern: "/webhook-queue/queues", Handler: caddy.AdminHandlerFunc(a.list)},
		{Pattern: "/webhook-queue/queues/dead", Handler: caddy.AdminHandlerFunc(a.dead)},
		{Pattern: "/webhook-queue/queues/retry", Handler: caddy.AdminHandlerFunc(a.retry)},
		{Pattern: "/webhook-queue/queues/drop", Handler: caddy.AdminHandlerFunc(a.drop)},
	}
}

// queueStatus is a queue as the API lists it: its counts, or the error
// that kept its store from counting (the others are listed anyway).
type queueStatus struct {
	Name   string             `json:"name"`
	To     string             `json:"to"`
	Counts *queuestore.Counts `json:"counts,omitempty"`
	Error  string             `json:"error,omitempty"`
}

func (AdminAPI) list(w http.ResponseWriter, r *http.Request) error {
	if err := method(r, http.MethodGet); err != nil {
		return err
	}
	list := []queueStatus{}
	for _, q := range running.all() {
		s := queueStatus{Name: q.store.Name(), To: q.shownTo()}
		if c, err := q.store.Counts(r.Context()); err != nil {
			q.storeFailed("counts", err)
			s.Error = err.Error()
		} else {
			s.Counts = &c
		}
		list = append(list, s)
	}
	return writeJSON(w, list)
}

// maxDeadListed bounds the dead letters one call lists.
const maxDeadListed = 1000

func (AdminAPI) dead(w http.ResponseWriter, r *http.Request) error {
	if err := method(r, http.MethodGet); err != nil {
		return err
	}
	q, err := findQueue(r)
	if err != nil {
		return err
	}
	limit := 100
	if s := r.URL.Query().Get("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > maxDeadListed {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("limit: %q is not between 1 and %d", s, maxDeadListed)}
		}
	}
	dead, err := q.store.Dead(r.Context(), limit)
	if err != nil {
		q.storeFailed("dead", err)
		return caddy.APIError{HTTPStatus: http.StatusBadGateway, Err: err}
	}
	shown := make([]deadLetter, 0, len(dead))
	for _, m := range dead {
		shown = append(shown, newDeadLetter(m))
	}
	return writeJSON(w, map[string]any{"queue": q.store.Name(), "dead": shown})
}

// deadLetter is a dead letter as the API shows it: its ids, when it was
// received, its attempts, and how many since it was stored or retried by
// hand; never its body or a header.
type deadLetter struct {
	ID         string    `json:"id"`
	DeliveryID string    `json:"delivery_id,omitempty"`
	Received   time.Time `json:"received"`
	Attempts   []attempt `json:"attempts"`
	Tries      int       `json:"tries"`
}

// attempt is an attempt as the API shows it, its duration as Go prints
// durations ("1.825826ms").
type attempt struct {
	At       time.Time `json:"at"`
	Duration string    `json:"duration"`
	Status   int       `json:"status,omitempty"`
	Error    string    `json:"error,omitempty"`
}

func newDeadLetter(m queuestore.Message) deadLetter {
	d := deadLetter{ID: m.ID, DeliveryID: m.DeliveryID, Received: m.Received, Attempts: []attempt{}, Tries: m.Tries}
	for _, a := range m.Attempts {
		d.Attempts = append(d.Attempts, attempt{At: a.At, Duration: a.Duration.String(), Status: a.Status, Error: a.Error})
	}
	return d
}

func (AdminAPI) retry(w http.ResponseWriter, r *http.Request) error {
	if err := method(r, http.MethodPost); err != nil {
		return err
	}
	q, err := findQueue(r)
	if err != nil {
		return err
	}
	id, all := r.URL.Query().Get("id"), r.URL.Query().Get("all") == "true"
	var n int
	switch {
	case id != "" && all, id == "" && !all:
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("give the dead letter's id, or all=true for every one")}
	case all:
		n, err = q.store.ReviveAll(r.Context())
	default:
		err = q.store.Revive(r.Context(), id)
		n = 1
	}
	if err != nil {
		return storeError(q, "revive", err)
	}
	q.wakeWorker()
	q.logger.Info("dead letters retried by hand", zap.String("queue", q.store.Name()), zap.Int("count", n), zap.String("queue_id", id))
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
	id := r.URL.Query().Get("id")
	if id == "" {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("id: the dead letter to drop is required")}
	}
	if err := q.store.Drop(r.Context(), id); err != nil {
		return storeError(q, "drop", err)
	}
	q.logger.Info("dead letter dropped by hand", zap.String("queue", q.store.Name()), zap.String("queue_id", id))
	return writeJSON(w, map[string]any{"queue": q.store.Name(), "dropped": id})
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
