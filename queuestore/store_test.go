package queuestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/webhookgate/caddy-openai-webhook/internal/redisconn"
	"github.com/webhookgate/caddy-openai-webhook/internal/redistest"
)

// engine is a fresh queue of one engine, and the clock its stores judge
// leases, schedules and retention by.
type engine struct {
	// open opens a store on the queue: every store it opens shares it, as
	// the restarts of one Caddy do (file) or the instances of a fleet
	// (redis). stop closes the store as a process that dies would: what
	// it has in flight stays so.
	open func(t *testing.T, o Options) (s Store, stop func())
	// now reads the clock.
	now func() time.Time
	// elapse lets d pass on the clock: the file engine's is the test's
	// (fakeClock), which moves at once; Redis's is its server's, and the
	// test sleeps.
	elapse func(d time.Duration)
	// seed stores n messages of 1 KiB straight into the engine, each a
	// dead letter (dead) or scheduled an hour ahead, its last attempt
	// failing with last: for the bulk operations.
	seed func(t *testing.T, q Store, n int, dead bool, last Attempt)
	// settle commits, or sends, the completions that wait.
	settle func(t *testing.T, q Store)
	// writes counts the writes the engine made so far.
	writes func(t *testing.T, q Store) int64
}

// forEachEngine runs test on a fresh queue of each engine, in parallel
// with the other tests that do: each has a server, or a clock, of its own.
func forEachEngine(t *testing.T, test func(t *testing.T, e engine)) {
	t.Parallel()
	t.Run("file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "q")
		clock := newFakeClock(t)
		test(t, engine{
			open: func(t *testing.T, o Options) (Store, func()) {
				return openStore(t, &File{Path: path, now: clock.Now}, o)
			},
			now:    clock.Now,
			elapse: clock.Advance,
			seed:   func(t *testing.T, q Store, n int, dead bool, last Attempt) { seedFile(t, q.(*File), n, dead, last) },
			settle: func(t *testing.T, q Store) { settleFile(t, q.(*File)) },
			writes: func(t *testing.T, q Store) int64 { return fileWrites(t, q.(*File)) },
		})
	})
	t.Run("redis", func(t *testing.T) {
		srv := redistest.Start(t, redistest.Options{Durable: true})
		opened := 0
		test(t, engine{
			open: func(t *testing.T, o Options) (Store, func()) {
				opened++
				return openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr}, consumer: fmt.Sprint("test-", opened)}, o)
			},
			now:    time.Now,
			elapse: time.Sleep,
			seed:   func(t *testing.T, q Store, n int, dead bool, last Attempt) { seedRedis(t, q.(*Redis), n, dead, last) },
			settle: func(t *testing.T, q Store) { settleRedis(t, q.(*Redis)) },
			writes: func(t *testing.T, q Store) int64 { return redisWrites(t, q.(*Redis)) },
		})
	})
}

// options are a queue's options for tests: its name is "test".
func options(maxPending int) Options {
	return Options{Name: "test", MaxPending: maxPending, Retention: time.Hour}
}

// openStore provisions q as Caddy does, opens it, and cleans it up with
// the test, or with the returned function.
func openStore[S interface {
	Store
	caddy.Provisioner
	caddy.CleanerUpper
}](t testing.TB, q S, o Options) (S, func()) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	if err := q.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := q.Open(o); err != nil {
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

const body = `{"type":"batch.completed"}`

func message(id string) *Message {
	return &Message{DeliveryID: id, Header: Fields(http.Header{"Webhook-Id": {id}}), Body: []byte(body)}
}

func enqueue(t *testing.T, q Store, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if err := q.Enqueue(context.Background(), message(id)); err != nil {
			t.Fatalf("enqueueing %s: %v", id, err)
		}
	}
}

// take takes one message, or none (nil).
func take(t *testing.T, q Store, lease time.Duration) *Message {
	t.Helper()
	ms := takeN(t, q, 1, lease)
	if len(ms) == 0 {
		return nil
	}
	return ms[0]
}

func takeN(t *testing.T, q Store, n int, lease time.Duration) []*Message {
	t.Helper()
	ms, err := q.Take(context.Background(), n, lease)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) > n {
		t.Fatalf("took %d messages, asked for %d", len(ms), n)
	}
	return ms
}

// counts are q's counts but for Oldest and NextDue.
func counts(t *testing.T, q Store) Counts {
	t.Helper()
	c, err := q.Counts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c.Oldest, c.NextDue = time.Time{}, time.Time{}
	return c
}

func list(t *testing.T, q Store, state State, limit int) []Summary {
	t.Helper()
	s, err := q.List(context.Background(), state, limit)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStoreLifecycle(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		q, _ := e.open(t, options(10))
		if q.Name() != "test" {
			t.Fatalf("name %q, want the queue's", q.Name())
		}
		if m := take(t, q, time.Minute); m != nil {
			t.Fatalf("an empty queue gave %+v", m)
		}
		before := e.now()
		enqueue(t, q, "wh_1", "wh_2")
		c, err := q.Counts(ctx)
		if err != nil || c.Oldest.Before(before.Truncate(time.Millisecond)) || c.Oldest.After(e.now()) {
			t.Fatalf("oldest %v, want between %v and now (%v)", c.Oldest, before, err)
		}
		if c := counts(t, q); c != (Counts{Pending: 2}) {
			t.Fatalf("after two enqueues: %+v", c)
		}
		first := take(t, q, time.Minute)
		if first == nil || first.DeliveryID != "wh_1" || string(first.Body) != body || first.HTTPHeader().Get("Webhook-Id") != "wh_1" {
			t.Fatalf("first taken: %+v", first)
		}
		if c := counts(t, q); c != (Counts{Pending: 1, InFlight: 1}) {
			t.Fatalf("one taken: %+v", c)
		}
		if err := q.Reschedule(ctx, first, Attempt{At: time.Now(), Status: 500, Error: "the app answered 500"}, e.now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		second := take(t, q, time.Minute)
		if second == nil || second.DeliveryID != "wh_2" {
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

// TestStoreHeaderBytes: header values and the body are kept byte for
// byte, also bytes that are not UTF-8, and through a dead letter.
func TestStoreHeaderBytes(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		q, _ := e.open(t, options(10))
		header := []HeaderField{{Name: "Webhook-Id", Value: []byte("wh_bytes")}, {Name: "X-Note", Value: []byte("caf\xe9")}, {Name: "X-Note", Value: []byte("\x00\xff")}}
		raw := []byte("caf\xe9 \x00")
		if err := q.Enqueue(ctx, &Message{DeliveryID: "wh_bytes", Header: header, Body: raw}); err != nil {
			t.Fatal(err)
		}
		check := func(m *Message) {
			t.Helper()
			if m == nil || !reflect.DeepEqual(m.Header, header) || !bytes.Equal(m.Body, raw) {
				t.Fatalf("taken: %+v, want the header %q and the body %q", m, header, raw)
			}
			if got := m.HTTPHeader()["X-Note"]; len(got) != 2 || got[0] != "caf\xe9" || got[1] != "\x00\xff" {
				t.Fatalf("X-Note: %q", got)
			}
		}
		m := take(t, q, time.Minute)
		check(m)
		if err := q.Bury(ctx, m, Attempt{At: time.Now(), Error: "x"}); err != nil {
			t.Fatal(err)
		}
		if err := q.Revive(ctx, m.ID); err != nil {
			t.Fatal(err)
		}
		check(take(t, q, time.Minute))
	})
}

// TestStoreRetryDue: a rescheduled message is taken again once due, with
// its attempts so far.
func TestStoreRetryDue(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		q, _ := e.open(t, options(10))
		enqueue(t, q, "wh_retry")
		m := take(t, q, time.Minute)
		if err := q.Reschedule(ctx, m, Attempt{At: time.Now(), Status: 503, Error: "the app answered 503"}, e.now().Add(100*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		e.elapse(150 * time.Millisecond)
		again := take(t, q, time.Minute)
		if again == nil || again.ID != m.ID || again.Tries != 1 || len(again.Attempts) != 1 || again.Attempts[0].Status != 503 {
			t.Fatalf("taken again once due: %+v", again)
		}
	})
}

func TestStoreDeadLetters(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		q, _ := e.open(t, options(10))
		for _, id := range []string{"wh_a", "wh_b", "wh_c"} {
			enqueue(t, q, id)
			m := take(t, q, time.Minute)
			if err := q.Bury(ctx, m, Attempt{At: time.Now(), Error: "connection refused"}); err != nil {
				t.Fatal(err)
			}
		}
		if c := counts(t, q); c != (Counts{Dead: 3}) {
			t.Fatalf("three buried: %+v", c)
		}
		dead := list(t, q, StateDead, 10)
		if len(dead) != 3 || dead[0].DeliveryID != "wh_a" || dead[0].Attempts != 1 || dead[0].Last == nil ||
			dead[0].Last.Error != "connection refused" || dead[0].Tries != 1 || dead[0].Received.IsZero() || !dead[0].Due.IsZero() {
			t.Fatalf("dead letters: %+v", dead)
		}
		if one := list(t, q, StateDead, 1); len(one) != 1 || one[0].ID != dead[0].ID {
			t.Fatalf("the first dead letter: %+v", one)
		}
		if none := list(t, q, StateDead, 0); len(none) != 0 {
			t.Fatalf("no dead letter asked: %+v", none)
		}
		if err := q.Drop(ctx, dead[2].ID); err != nil {
			t.Fatal(err)
		}
		if err := q.Drop(ctx, dead[2].ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("dropping it again: %v", err)
		}
		for _, id := range []string{"nope", ""} {
			if err := q.Revive(ctx, id); !errors.Is(err, ErrNotFound) {
				t.Fatalf("reviving %q: %v", id, err)
			}
		}
		if err := q.Revive(ctx, dead[1].ID); err != nil {
			t.Fatalf("reviving %s: %v", dead[1].ID, err)
		}
		if err := q.Revive(ctx, dead[1].ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("reviving it again: %v", err)
		}
		if n, err := q.ReviveAll(ctx); err != nil || n != 1 {
			t.Fatalf("reviving all: %d, %v", n, err)
		}
		if n, err := q.ReviveAll(ctx); err != nil || n != 0 {
			t.Fatalf("reviving all of none: %d, %v", n, err)
		}
		if c := counts(t, q); c != (Counts{Pending: 2}) {
			t.Fatalf("after reviving: %+v", c)
		}
		// Due in the order they were revived.
		if m := take(t, q, time.Minute); m == nil || m.DeliveryID != "wh_b" {
			t.Fatalf("the first revived: %+v", m)
		}
		m := take(t, q, time.Minute)
		if m == nil || m.DeliveryID != "wh_a" || len(m.Attempts) != 1 || m.Tries != 0 || string(m.Body) != body {
			t.Fatalf("the revived message: %+v", m)
		}
		if err := q.Bury(ctx, m, Attempt{At: time.Now(), Error: "again"}); err != nil {
			t.Fatal(err)
		}
		if dead := list(t, q, StateDead, 10); len(dead) != 1 || dead[0].ID != m.ID || dead[0].Attempts != 2 || dead[0].Tries != 1 || dead[0].Last.Error != "again" {
			t.Fatalf("buried again: %+v", dead)
		}
	})
}

// TestStoreFull: max_pending bounds the messages not dead, across every
// state; a dead letter frees its place. A full queue still answers a
// duplicate as one.
func TestStoreFull(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		q, _ := e.open(t, options(2))
		enqueue(t, q, "wh_0", "wh_1")
		if err := q.Enqueue(ctx, message("wh_over")); !errors.Is(err, ErrFull) {
			t.Fatalf("a third message under max_pending 2: %v", err)
		}
		if err := q.Enqueue(ctx, message("wh_1")); !errors.Is(err, ErrDuplicate) {
			t.Fatalf("a duplicate into the full queue: %v", err)
		}
		m := take(t, q, time.Minute)
		if err := q.Reschedule(ctx, m, Attempt{At: time.Now(), Error: "x"}, e.now().Add(time.Hour)); err != nil {
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

// TestStoreDuplicate: a message with the DeliveryID of one queued,
// scheduled, in flight, dead or revived is not stored; nor is one
// delivered within the retention, but once it has passed it is. Messages
// without a DeliveryID are all stored.
func TestStoreDuplicate(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		const retention = 400 * time.Millisecond
		q, _ := e.open(t, Options{Name: "test", MaxPending: 10, Retention: retention})
		other, _ := e.open(t, Options{Name: "test", MaxPending: 10, Retention: retention})
		duplicate := func(state string, want Counts) {
			t.Helper()
			for _, s := range []Store{q, other} {
				if err := s.Enqueue(ctx, message("wh_dup")); !errors.Is(err, ErrDuplicate) {
					t.Fatalf("a duplicate of a message %s: %v, want ErrDuplicate", state, err)
				}
			}
			if c := counts(t, q); c != want {
				t.Fatalf("after the duplicates of one %s: %+v, want %+v", state, c, want)
			}
		}
		enqueue(t, q, "wh_dup")
		duplicate("queued", Counts{Pending: 1})
		m := take(t, q, time.Minute)
		duplicate("in flight", Counts{InFlight: 1})
		if err := q.Reschedule(ctx, m, Attempt{At: time.Now(), Error: "x"}, e.now().Add(50*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		duplicate("scheduled", Counts{Scheduled: 1})
		e.elapse(60 * time.Millisecond)
		if m = take(t, q, time.Minute); m == nil {
			t.Fatal("not taken once due")
		}
		if err := q.Bury(ctx, m, Attempt{At: time.Now(), Error: "x"}); err != nil {
			t.Fatal(err)
		}
		duplicate("dead", Counts{Dead: 1})
		if err := q.Revive(ctx, m.ID); err != nil {
			t.Fatal(err)
		}
		duplicate("revived", Counts{Pending: 1})
		if m = take(t, q, time.Minute); m == nil {
			t.Fatal("not taken once revived")
		}
		if err := q.Complete(ctx, m, Attempt{At: time.Now(), Status: 200}); err != nil {
			t.Fatal(err)
		}
		duplicate("delivered within the retention", Counts{})
		e.elapse(retention + 100*time.Millisecond)
		enqueue(t, other, "wh_dup")
		duplicate("queued again once the retention passed", Counts{Pending: 1})

		for range 2 {
			if err := q.Enqueue(ctx, &Message{Body: []byte(body)}); err != nil {
				t.Fatalf("a message without DeliveryID: %v", err)
			}
		}
		if c := counts(t, q); c != (Counts{Pending: 3}) {
			t.Fatalf("with two messages without DeliveryID: %+v", c)
		}
	})
}

// TestStoreDropReleasesID: a dropped dead letter's DeliveryID is released
// (a resend of it is stored); one completed without retention too.
func TestStoreDropReleasesID(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		q, _ := e.open(t, Options{Name: "test", MaxPending: 10})
		enqueue(t, q, "wh_dropped")
		m := take(t, q, time.Minute)
		if err := q.Bury(ctx, m, Attempt{At: time.Now(), Error: "x"}); err != nil {
			t.Fatal(err)
		}
		if err := q.Drop(ctx, m.ID); err != nil {
			t.Fatal(err)
		}
		enqueue(t, q, "wh_dropped")
		m = take(t, q, time.Minute)
		if err := q.Complete(ctx, m, Attempt{At: time.Now(), Status: 200}); err != nil {
			t.Fatal(err)
		}
		enqueue(t, q, "wh_dropped") // no retention: forgotten at once
		if c := counts(t, q); c != (Counts{Pending: 1}) {
			t.Fatalf("after the resends: %+v", c)
		}
	})
}

// TestStoreConcurrentDuplicates: of concurrent enqueues of one DeliveryID
// (batched into one commit by the file engine) one is stored.
func TestStoreConcurrentDuplicates(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		q, _ := e.open(t, options(100))
		var wg sync.WaitGroup
		var mu sync.Mutex
		stored := 0
		for i := range 40 {
			wg.Go(func() {
				err := q.Enqueue(ctx, message(fmt.Sprint("wh_", i%4)))
				if err != nil && !errors.Is(err, ErrDuplicate) {
					t.Error(err)
				}
				if err == nil {
					mu.Lock()
					stored++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if c := counts(t, q); stored != 4 || c != (Counts{Pending: 4}) {
			t.Fatalf("%d stored, counts %+v; want one of each of the four ids", stored, c)
		}
	})
}

// TestStoreTakeOver: a message whose worker never settles it (its process
// died) is taken again once its lease has ended, by a store that lives;
// not before.
func TestStoreTakeOver(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		dying, stop := e.open(t, options(10))
		enqueue(t, dying, "wh_lease")
		const lease = 300 * time.Millisecond
		if m := take(t, dying, lease); m == nil {
			t.Fatal("nothing taken")
		}
		stop()
		q, _ := e.open(t, options(10))
		var m *Message
		for start := time.Now(); m == nil && time.Since(start) < 5*time.Second; {
			if m = take(t, q, lease); m == nil {
				e.elapse(20 * time.Millisecond)
			}
		}
		if m == nil || m.DeliveryID != "wh_lease" {
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
	forEachEngine(t, func(t *testing.T, e engine) {
		q, _ := e.open(t, options(10))
		enqueue(t, q, "wh_lease")
		const lease = 200 * time.Millisecond
		if m := take(t, q, lease); m == nil {
			t.Fatal("nothing taken")
		}
		if m := take(t, q, lease); m != nil {
			t.Fatal("taken again within its lease")
		}
		e.elapse(lease + 50*time.Millisecond)
		if m := take(t, q, lease); m == nil || m.DeliveryID != "wh_lease" {
			t.Fatalf("after the lease: %+v", m)
		}
	})
}

// TestStoreExtend: Extend keeps a message from being taken over past its
// first lease; once it was taken over (or settled), the take's Extend is
// refused and its settle changes nothing.
func TestStoreExtend(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		q, _ := e.open(t, options(10))
		fleet, _ := e.open(t, options(10))
		enqueue(t, q, "wh_extend")
		const lease = 400 * time.Millisecond
		first := take(t, q, lease)
		e.elapse(lease * 7 / 10)
		if err := q.Extend(ctx, first, lease); err != nil {
			t.Fatalf("extending the lease: %v", err)
		}
		e.elapse(lease / 2) // past the first lease
		if m := take(t, fleet, lease); m != nil {
			t.Fatal("taken over within the extended lease")
		}
		e.elapse(lease * 6 / 10) // past the extended lease
		other := take(t, fleet, lease)
		if other == nil || other.ID != first.ID {
			t.Fatalf("taken over after the extended lease: %+v", other)
		}
		if err := q.Extend(ctx, first, lease); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("extending a lease taken over: %v, want ErrLeaseLost", err)
		}
		if err := q.Reschedule(ctx, first, Attempt{At: time.Now(), Error: "timeout"}, e.now()); err != nil {
			t.Fatal(err)
		}
		if c := counts(t, q); c != (Counts{InFlight: 1}) {
			t.Fatalf("after the late reschedule: %+v, want the other take's in flight", c)
		}
		if err := fleet.Extend(ctx, other, lease); err != nil {
			t.Fatalf("extending the other take: %v", err)
		}
		if err := fleet.Complete(ctx, other, Attempt{At: time.Now(), Status: 200}); err != nil {
			t.Fatal(err)
		}
		if err := fleet.Extend(ctx, other, lease); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("extending a take completed: %v, want ErrLeaseLost", err)
		}
	})
}

// TestStoreConcurrent: concurrent enqueues all land with distinct ids, and
// workers of several stores on one queue (a fleet, for redis) taking at
// once take each message once.
func TestStoreConcurrent(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		var stores []Store
		for range 2 {
			q, _ := e.open(t, options(1000))
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
					ms, err := q.Take(ctx, 1+w%4, time.Minute)
					if err != nil {
						t.Error(err)
						return
					}
					if len(ms) == 0 {
						return
					}
					for _, m := range ms {
						mu.Lock()
						taken[m.DeliveryID]++
						mu.Unlock()
						if err := q.Complete(ctx, m, Attempt{At: time.Now(), Status: 200}); err != nil {
							t.Error(err)
						}
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
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		q, _ := e.open(t, options(10))
		enqueue(t, q, "wh_late")
		const lease = 100 * time.Millisecond
		late := take(t, q, lease)
		e.elapse(lease + 50*time.Millisecond)
		other := take(t, q, lease)
		if late == nil || other == nil || other.ID != late.ID {
			t.Fatalf("taken %+v, then over %+v", late, other)
		}
		if err := q.Complete(ctx, other, Attempt{At: time.Now(), Status: 200}); err != nil {
			t.Fatal(err)
		}
		if err := q.Reschedule(ctx, late, Attempt{At: time.Now(), Error: "timeout"}, e.now()); err != nil {
			t.Fatal(err)
		}
		if err := q.Bury(ctx, late, Attempt{At: time.Now(), Error: "timeout"}); err != nil {
			t.Fatal(err)
		}
		if c := counts(t, q); c != (Counts{}) {
			t.Fatalf("after the late settles: %+v, want nothing left", c)
		}
		enqueue(t, q, "wh_after")
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
			forEachEngine(t, func(t *testing.T, e engine) {
				ctx := context.Background()
				q, _ := e.open(t, options(10))
				enqueue(t, q, "wh_taken_over")
				const short = 100 * time.Millisecond
				late := take(t, q, short)
				e.elapse(short + 50*time.Millisecond)
				// The file engine judges a lease by the take that holds it,
				// redis by the take that would take it over (see
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
					err = q.Reschedule(ctx, late, failed, e.now())
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
				if err := q.Reschedule(ctx, other, failed, e.now()); err != nil {
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

// TestFields: Fields and HTTPHeader keep every value, in order.
func TestFields(t *testing.T) {
	h := http.Header{"B": {"2", "3"}, "A": {"caf\xe9"}}
	fields := Fields(h)
	want := []HeaderField{{"A", []byte("caf\xe9")}, {"B", []byte("2")}, {"B", []byte("3")}}
	if !reflect.DeepEqual(fields, want) {
		t.Fatalf("fields %q, want %q", fields, want)
	}
	if back := (&Message{Header: fields}).HTTPHeader(); !reflect.DeepEqual(back, h) {
		t.Fatalf("back %q, want %q", back, h)
	}
}
