package queue

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/webhookgate/caddy-openai-webhook/internal/redisconn"
	"github.com/webhookgate/caddy-openai-webhook/internal/redistest"
)

// opener opens a store on one queue; every store it opens shares that
// queue, as the restarts of one Caddy do (file) or the instances of a
// fleet (redis). stop closes the store as a process that dies would: what
// it has in flight stays so.
type opener func(t *testing.T, maxPending int) (s Store, stop func())

// forEachEngine runs test on a fresh queue of each engine.
func forEachEngine(t *testing.T, test func(t *testing.T, open opener)) {
	t.Run("file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "q")
		test(t, func(t *testing.T, maxPending int) (Store, func()) {
			return openStore(t, &File{Path: path}, maxPending)
		})
	})
	t.Run("redis", func(t *testing.T) {
		srv := redistest.Start(t, redistest.Options{Durable: true})
		opened := 0
		test(t, func(t *testing.T, maxPending int) (Store, func()) {
			opened++
			return openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr}, consumer: fmt.Sprint("test-", opened)}, maxPending)
		})
	})
}

// openStore provisions q as Caddy does, opens it, and cleans it up with
// the test, or with the returned function.
func openStore[S interface {
	Store
	caddy.Provisioner
	caddy.CleanerUpper
}](t *testing.T, q S, maxPending int) (S, func()) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	if err := q.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := q.Open(maxPending); err != nil {
		t.Fatal(err)
	}
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	closed := false
	stop := func() {
		if !closed {
			closed = true
			_ = q.Cleanup()
			cancel()
		}
	}
	t.Cleanup(stop)
	return q, stop
}

func message(id string) *Message {
	return &Message{WebhookID: id, Header: http.Header{"Webhook-Id": {id}}, Body: []byte(`{"type":"batch.completed"}`)}
}

func take(t *testing.T, q Store, lease time.Duration) *Message {
	t.Helper()
	m, err := q.Take(context.Background(), lease)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func counts(t *testing.T, q Store) Counts {
	t.Helper()
	c, err := q.Counts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c.Oldest = time.Time{}
	return c
}

func TestStoreLifecycle(t *testing.T) {
	forEachEngine(t, func(t *testing.T, open opener) {
		ctx := context.Background()
		q, _ := open(t, 10)
		if m := take(t, q, time.Minute); m != nil {
			t.Fatalf("an empty queue gave %+v", m)
		}
		before := time.Now()
		for _, id := range []string{"wh_1", "wh_2"} {
			if err := q.Enqueue(ctx, message(id)); err != nil {
				t.Fatal(err)
			}
		}
		c, err := q.Counts(ctx)
		if err != nil || c.Oldest.Before(before.Truncate(time.Millisecond)) || c.Oldest.After(time.Now()) {
			t.Fatalf("oldest %v, want between %v and now (%v)", c.Oldest, before, err)
		}
		if c := counts(t, q); c != (Counts{Pending: 2}) {
			t.Fatalf("after two enqueues: %+v", c)
		}
		first := take(t, q, time.Minute)
		if first == nil || first.WebhookID != "wh_1" || string(first.Body) != `{"type":"batch.completed"}` || first.Header.Get("Webhook-Id") != "wh_1" {
			t.Fatalf("first taken: %+v", first)
		}
		if c := counts(t, q); c != (Counts{Pending: 1, InFlight: 1}) {
			t.Fatalf("one taken: %+v", c)
		}
		if err := q.Reschedule(ctx, first, Attempt{At: time.Now(), Status: 500, Error: "the app answered 500"}, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		second := take(t, q, time.Minute)
		if second == nil || second.WebhookID != "wh_2" {
			t.Fatalf("second taken: %+v", second)
		}
		if m := take(t, q, time.Minute); m != nil {
			t.Fatalf("a scheduled message was taken before it was due: %+v", m)
		}
		if err := q.Complete(ctx, second, Attempt{At: time.Now(), Status: 200}); err != nil {
			t.Fatal(err)
		}
		if c := counts(t, q); c != (Counts{Scheduled: 1}) {
			t.Fatalf("one delivered, one scheduled: %+v", c)
		}
	})
}

// TestStoreRetryDue: a rescheduled message is taken again once due, with
// its attempts so far.
func TestStoreRetryDue(t *testing.T) {
	forEachEngine(t, func(t *testing.T, open opener) {
		ctx := context.Background()
		q, _ := open(t, 10)
		if err := q.Enqueue(ctx, message("wh_retry")); err != nil {
			t.Fatal(err)
		}
		m := take(t, q, time.Minute)
		if err := q.Reschedule(ctx, m, Attempt{At: time.Now(), Status: 503, Error: "the app answered 503"}, time.Now().Add(100*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(150 * time.Millisecond)
		again := take(t, q, time.Minute)
		if again == nil || again.ID != m.ID || again.Tries != 1 || len(again.Attempts) != 1 || again.Attempts[0].Status != 503 {
			t.Fatalf("taken again once due: %+v", again)
		}
	})
}

func TestStoreDeadLetters(t *testing.T) {
	forEachEngine(t, func(t *testing.T, open opener) {
		ctx := context.Background()
		q, _ := open(t, 10)
		for _, id := range []string{"wh_a", "wh_b"} {
			if err := q.Enqueue(ctx, message(id)); err != nil {
				t.Fatal(err)
			}
			m := take(t, q, time.Minute)
			if err := q.Bury(ctx, m, Attempt{At: time.Now(), Error: "connection refused"}); err != nil {
				t.Fatal(err)
			}
		}
		if c := counts(t, q); c != (Counts{Dead: 2}) {
			t.Fatalf("two buried: %+v", c)
		}
		dead, err := q.Dead(ctx, 10)
		if err != nil || len(dead) != 2 || dead[0].WebhookID != "wh_a" || dead[0].Body != nil || dead[0].Header != nil ||
			len(dead[0].Attempts) != 1 || dead[0].Attempts[0].Error != "connection refused" || dead[0].Tries != 1 {
			t.Fatalf("dead letters: %+v, %v", dead, err)
		}
		if one, err := q.Dead(ctx, 1); err != nil || len(one) != 1 || one[0].ID != dead[0].ID {
			t.Fatalf("the first dead letter: %+v, %v", one, err)
		}
		if err := q.Drop(ctx, dead[1].ID); err != nil {
			t.Fatal(err)
		}
		if err := q.Drop(ctx, dead[1].ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("dropping it again: %v", err)
		}
		if n, err := q.Revive(ctx, "nope"); !errors.Is(err, ErrNotFound) || n != 0 {
			t.Fatalf("reviving an unknown id: %d, %v", n, err)
		}
		if n, err := q.Revive(ctx, ""); err != nil || n != 1 {
			t.Fatalf("reviving all: %d, %v", n, err)
		}
		m := take(t, q, time.Minute)
		if m == nil || m.WebhookID != "wh_a" || len(m.Attempts) != 1 || m.Tries != 0 || string(m.Body) != `{"type":"batch.completed"}` {
			t.Fatalf("the revived message: %+v", m)
		}
		if err := q.Bury(ctx, m, Attempt{At: time.Now(), Error: "again"}); err != nil {
			t.Fatal(err)
		}
		if n, err := q.Revive(ctx, m.ID); err != nil || n != 1 {
			t.Fatalf("reviving it by id: %d, %v", n, err)
		}
		if c := counts(t, q); c != (Counts{Pending: 1}) {
			t.Fatalf("after reviving: %+v", c)
		}
	})
}

// TestStoreFull: max_pending bounds the messages not dead, across every
// state; a dead letter frees its place.
func TestStoreFull(t *testing.T) {
	forEachEngine(t, func(t *testing.T, open opener) {
		ctx := context.Background()
		q, _ := open(t, 2)
		for i := range 2 {
			if err := q.Enqueue(ctx, message(fmt.Sprint("wh_", i))); err != nil {
				t.Fatal(err)
			}
		}
		if err := q.Enqueue(ctx, message("wh_over")); !errors.Is(err, ErrFull) {
			t.Fatalf("a third message under max_pending 2: %v", err)
		}
		m := take(t, q, time.Minute)
		if err := q.Reschedule(ctx, m, Attempt{At: time.Now(), Error: "x"}, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if err := q.Enqueue(ctx, message("wh_over")); !errors.Is(err, ErrFull) {
			t.Fatalf("with one scheduled: %v", err)
		}
		m = take(t, q, time.Minute)
		if err := q.Enqueue(ctx, message("wh_over")); !errors.Is(err, ErrFull) {
			t.Fatalf("with one in flight: %v", err)
		}
		if err := q.Bury(ctx, m, Attempt{At: time.Now(), Error: "x"}); err != nil {
			t.Fatal(err)
		}
		if err := q.Enqueue(ctx, message("wh_over")); err != nil {
			t.Fatalf("once one is dead: %v", err)
		}
	})
}

// TestStoreTakeOver: a message whose worker never settles it (its process
// died) is taken again once its lease has ended, by a store that lives;
// not before.
func TestStoreTakeOver(t *testing.T) {
	forEachEngine(t, func(t *testing.T, open opener) {
		ctx := context.Background()
		dying, stop := open(t, 10)
		if err := dying.Enqueue(ctx, message("wh_lease")); err != nil {
			t.Fatal(err)
		}
		const lease = 300 * time.Millisecond
		if m := take(t, dying, lease); m == nil {
			t.Fatal("nothing taken")
		}
		stop()
		q, _ := open(t, 10)
		start := time.Now()
		var m *Message
		for m == nil && time.Since(start) < 5*time.Second {
			m = take(t, q, lease)
			time.Sleep(20 * time.Millisecond)
		}
		if m == nil || m.WebhookID != "wh_lease" {
			t.Fatalf("after the lease: %+v", m)
		}
		if err := q.Complete(ctx, m, Attempt{At: time.Now(), Status: 200}); err != nil {
			t.Fatal(err)
		}
		if c := counts(t, q); c != (Counts{}) {
			t.Fatalf("after completing it: %+v", c)
		}
	})
}

// TestStoreLeaseEnds: within one store too, a message taken and never
// settled is due again after its lease, and not within it. (The queue
// takes with one lease throughout: redis judges a message's lease by the
// lease of the take that would take it over.)
func TestStoreLeaseEnds(t *testing.T) {
	forEachEngine(t, func(t *testing.T, open opener) {
		ctx := context.Background()
		q, _ := open(t, 10)
		if err := q.Enqueue(ctx, message("wh_lease")); err != nil {
			t.Fatal(err)
		}
		const lease = 200 * time.Millisecond
		if m := take(t, q, lease); m == nil {
			t.Fatal("nothing taken")
		}
		if m := take(t, q, lease); m != nil {
			t.Fatal("taken again within its lease")
		}
		time.Sleep(lease + 50*time.Millisecond)
		if m := take(t, q, lease); m == nil || m.WebhookID != "wh_lease" {
			t.Fatalf("after the lease: %+v", m)
		}
	})
}

// TestStoreConcurrent: concurrent enqueues all land with distinct ids, and
// workers of several stores on one queue (a fleet, for redis) taking at
// once take each message once.
func TestStoreConcurrent(t *testing.T) {
	forEachEngine(t, func(t *testing.T, open opener) {
		ctx := context.Background()
		var stores []Store
		for range 2 {
			q, _ := open(t, 1000)
			stores = append(stores, q)
		}
		var wg sync.WaitGroup
		for i := range 200 {
			wg.Go(func() {
				if err := stores[i%2].Enqueue(ctx, message(fmt.Sprint("wh_", i))); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		var mu sync.Mutex
		taken := map[string]int{}
		for w := range 8 {
			wg.Go(func() {
				q := stores[w%2]
				for {
					m, err := q.Take(ctx, time.Minute)
					if err != nil {
						t.Error(err)
						return
					}
					if m == nil {
						return
					}
					mu.Lock()
					taken[m.WebhookID]++
					mu.Unlock()
					if err := q.Complete(ctx, m, Attempt{At: time.Now(), Status: 200}); err != nil {
						t.Error(err)
					}
				}
			})
		}
		wg.Wait()
		if len(taken) != 200 {
			t.Fatalf("%d distinct messages taken, want 200", len(taken))
		}
		for id, n := range taken {
			if n != 1 {
				t.Errorf("%s taken %d times", id, n)
			}
		}
		if c := counts(t, stores[0]); c != (Counts{}) {
			t.Fatalf("after all were completed: %+v", c)
		}
	})
}

// TestStoreLateSettle: a worker whose lease ended while its attempt ran
// (another took the message over and delivered it) settles too late: its
// retry or dead letter must not bring the delivered message back.
func TestStoreLateSettle(t *testing.T) {
	forEachEngine(t, func(t *testing.T, open opener) {
		ctx := context.Background()
		q, _ := open(t, 10)
		if err := q.Enqueue(ctx, message("wh_late")); err != nil {
			t.Fatal(err)
		}
		const lease = 100 * time.Millisecond
		late := take(t, q, lease)
		time.Sleep(lease + 50*time.Millisecond)
		other := take(t, q, lease)
		if late == nil || other == nil || other.ID != late.ID {
			t.Fatalf("taken %+v, then over %+v", late, other)
		}
		if err := q.Complete(ctx, other, Attempt{At: time.Now(), Status: 200}); err != nil {
			t.Fatal(err)
		}
		if err := q.Reschedule(ctx, late, Attempt{At: time.Now(), Error: "timeout"}, time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := q.Bury(ctx, late, Attempt{At: time.Now(), Error: "timeout"}); err != nil {
			t.Fatal(err)
		}
		if c := counts(t, q); c != (Counts{}) {
			t.Fatalf("after the late settles: %+v, want nothing left", c)
		}
		if err := q.Enqueue(ctx, message("wh_after")); err != nil {
			t.Fatal(err)
		}
		if c := counts(t, q); c != (Counts{Pending: 1}) {
			t.Fatalf("max_pending's count after the late settles: %+v", c)
		}
	})
}

// A worker whose lease ended while its attempt was still running (a slow
// store, a pause) settles after another took the message over: its late
// Reschedule or Bury must leave the message to the other take, not make
// it due again (delivered twice at once, and twice each round after) nor
// bury it while it is being delivered.
func TestStoreLateSettleWhileTakenOver(t *testing.T) {
	for _, settle := range []string{"reschedule", "bury"} {
		t.Run(settle, func(t *testing.T) {
			forEachEngine(t, func(t *testing.T, open opener) {
				ctx := context.Background()
				q, _ := open(t, 10)
				if err := q.Enqueue(ctx, message("wh_taken_over")); err != nil {
					t.Fatal(err)
				}
				const short = 100 * time.Millisecond
				late := take(t, q, short)
				time.Sleep(short + 50*time.Millisecond)
				// The file engine judges a lease by the take that holds it,
				// redis by the take that would take the message over (see
				// Store.Take): either way the other take's is live below.
				otherLease, liveLease := time.Hour, time.Hour
				if _, ok := q.(*Redis); ok {
					otherLease = short
				}
				other := take(t, q, otherLease)
				if late == nil || other == nil || other.ID != late.ID {
					t.Fatalf("taken %+v, then over %+v", late, other)
				}
				failed := Attempt{At: time.Now(), Error: "timeout"}
				var err error
				if settle == "bury" {
					err = q.Bury(ctx, late, failed)
				} else {
					err = q.Reschedule(ctx, late, failed, time.Now())
				}
				if err != nil {
					t.Fatal(err)
				}
				if m := take(t, q, liveLease); m != nil {
					t.Fatalf("%s taken again while another take holds it", m.ID)
				}
				if c := counts(t, q); c != (Counts{InFlight: 1}) {
					t.Fatalf("after the late %s: %+v, want it in flight only", settle, c)
				}
				// The other take settles as usual, once.
				if err := q.Reschedule(ctx, other, failed, time.Now()); err != nil {
					t.Fatal(err)
				}
				if c := counts(t, q); c != (Counts{Pending: 1}) {
					t.Fatalf("after the other take's reschedule: %+v, want it pending once", c)
				}
				again := take(t, q, liveLease)
				if again == nil || again.Tries != 1 {
					t.Fatalf("taken again: %+v, want it with the other take's one recorded try", again)
				}
				if m := take(t, q, liveLease); m != nil {
					t.Fatalf("%s due twice", m.ID)
				}
			})
		})
	}
}
