package openaiwebhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/webhookgate/caddy-openai-webhook/internal/redact"
	"github.com/webhookgate/caddy-openai-webhook/queue"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI exposes the queues of openai_webhook on Caddy's admin endpoint:
//
//	GET  /openai-webhook/queues                        each queue's counts
//	GET  /openai-webhook/queues/dead?queue=&limit=     dead letters, without bodies
//	POST /openai-webhook/queues/retry?queue=[&id=]     retry one dead letter, or all
//	POST /openai-webhook/queues/drop?queue=&id=        drop one dead letter
//
// queue may be left out while one queue runs. Dead letters show their ids,
// when they were received, and every attempt's time, status and error;
// never a body or a header (a signature among them).
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.openai_webhook",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes implements caddy.AdminRouter.
func (a AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/openai-webhook/queues", Handler: caddy.AdminHandlerFunc(a.list)},
		{Pattern: "/openai-webhook/queues/dead", Handler: caddy.AdminHandlerFunc(a.dead)},
		{Pattern: "/openai-webhook/queues/retry", Handler: caddy.AdminHandlerFunc(a.retry)},
		{Pattern: "/openai-webhook/queues/drop", Handler: caddy.AdminHandlerFunc(a.drop)},
	}
}

// queueStatus is a queue as the API lists it.
type queueStatus struct {
	Name   string       `json:"name"`
	To     string       `json:"to"`
	Counts queue.Counts `json:"counts"`
}

func (AdminAPI) list(w http.ResponseWriter, r *http.Request) error {
	if err := method(r, http.MethodGet); err != nil {
		return err
	}
	list := []queueStatus{}
	for _, q := range queues.all() {
		c, err := q.store.Counts(r.Context())
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusBadGateway, Err: fmt.Errorf("%s: %w", q.store.Name(), err)}
		}
		list = append(list, queueStatus{Name: q.store.Name(), To: redact.URL(q.target), Counts: c})
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
	ID        string    `json:"id"`
	WebhookID string    `json:"webhook_id"`
	Received  time.Time `json:"received"`
	Attempts  []attempt `json:"attempts"`
	Tries     int       `json:"tries"`
}

// attempt is an attempt as the API shows it, its duration as Go prints
// durations ("1.825826ms").
type attempt struct {
	At       time.Time `json:"at"`
	Duration string    `json:"duration"`
	Status   int       `json:"status,omitempty"`
	Error    string    `json:"error,omitempty"`
}

func newDeadLetter(m queue.Message) deadLetter {
	d := deadLetter{ID: m.ID, WebhookID: m.WebhookID, Received: m.Received, Attempts: []attempt{}, Tries: m.Tries}
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
	n, err := q.store.Revive(r.Context(), r.URL.Query().Get("id"))
	if err != nil {
		return storeError(err)
	}
	q.logger.Info("dead letters retried by hand", zap.Int("count", n), zap.String("queue_id", r.URL.Query().Get("id")))
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
		return storeError(err)
	}
	q.logger.Info("dead letter dropped by hand", zap.String("queue_id", id))
	return writeJSON(w, map[string]any{"queue": q.store.Name(), "dropped": id})
}

func method(r *http.Request, want string) error {
	if r.Method != want {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed: use %s", r.Method, want)}
	}
	return nil
}

func findQueue(r *http.Request) (*Queue, error) {
	q, err := queues.find(r.URL.Query().Get("queue"))
	if err != nil {
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: err}
	}
	return q, nil
}

func storeError(err error) error {
	if errors.Is(err, queue.ErrNotFound) {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: err}
	}
	return caddy.APIError{HTTPStatus: http.StatusBadGateway, Err: err}
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(v)
}

// Interface guard
var _ caddy.AdminRouter = (*AdminAPI)(nil)
