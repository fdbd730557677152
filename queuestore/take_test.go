package queuestore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/webhookgate/caddy-openai-webhook/internal/redisconn"
	"github.com/webhookgate/caddy-openai-webhook/internal/redistest"
	"github.com/webhookgate/caddy-openai-webhook/internal/webhooktest"
)

// TestStoreTakeMany: Take returns up to n due messages, the first stored
// first, each taken once.
func TestStoreTakeMany(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		q, _ := e.open(t, options(10))
		enqueue(t, q, "wh_1", "wh_2", "wh_3", "wh_4", "wh_5")
		if none := takeN(t, q, 0, time.Minute); len(none) != 0 {
			t.Fatalf("Take(0): %+v", none)
		}
		first := takeN(t, q, 3, time.Minute)
		if len(first) != 3 || first[0].DeliveryID != "wh_1" || first[1].DeliveryID != "wh_2" || first[2].DeliveryID != "wh_3" {
			t.Fatalf("the first three: %+v", first)
		}
		rest := takeN(t, q, 3, time.Minute)
		if len(rest) != 2 || rest[0].DeliveryID != "wh_4" || rest[1].DeliveryID != "wh_5" {
			t.Fatalf("the rest: %+v", rest)
		}
		if none := takeN(t, q, 3, time.Minute); len(none) != 0 {
			t.Fatalf("all five in flight, yet taken: %+v", none)
		}
		if c := counts(t, q); c != (Counts{InFlight: 5}) {
			t.Fatalf("counts: %+v", c)
		}
		for _, m := range append(first, rest...) {
			if string(m.Body) != body || m.HTTPHeader().Get("Webhook-Id") != m.DeliveryID {
				t.Fatalf("taken: %+v", m)
			}
		}
	})
}

// TestStoreCompleteAtOnce: a completion that is not committed yet (see
// Store.Complete) already counts: the message is neither taken again,
// counted nor listed; its place under max_pending is free; its
// DeliveryID is held for the retention. Every store of the queue in this
// process agrees.
func TestStoreCompleteAtOnce(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		q, _ := e.open(t, options(2))
		other, _ := e.open(t, options(2))
		enqueue(t, q, "wh_done", "wh_other")
		const lease = 100 * time.Millisecond
		ms := takeN(t, q, 2, lease)
		if len(ms) != 2 {
			t.Fatalf("taken: %+v", ms)
		}
		if err := q.Complete(ctx, ms[0], Attempt{At: time.Now(), Status: 200}); err != nil {
			t.Fatal(err)
		}
		if err := q.Extend(ctx, ms[0], lease); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("extending a take completed: %v", err)
		}
		for _, s := range []Store{q, other} {
			if c := counts(t, s); c != (Counts{InFlight: 1}) {
				t.Fatalf("counts: %+v, want wh_other in flight, wh_done gone", c)
			}
			if got := list(t, s, StateInFlight, 10); len(got) != 1 || got[0].DeliveryID != "wh_other" {
				t.Fatalf("in flight: %+v", got)
			}
		}
		e.elapse(lease + 50*time.Millisecond) // both leases ended
		again := takeN(t, other, 5, lease)
		if len(again) != 1 || again[0].DeliveryID != "wh_other" {
			t.Fatalf("taken after the leases ended: %+v, want wh_other only", again)
		}
		// A late settle of the completed message changes nothing.
		if err := q.Reschedule(ctx, ms[0], Attempt{At: time.Now(), Error: "x"}, e.now()); err != nil {
			t.Fatal(err)
		}
		if err := other.Enqueue(ctx, message("wh_done")); !errors.Is(err, ErrDuplicate) {
			t.Fatalf("wh_done again within the retention: %v", err)
		}
		enqueue(t, other, "wh_room") // max_pending 2: wh_other and this one
		if err := other.Enqueue(ctx, message("wh_over")); !errors.Is(err, ErrFull) {
			t.Fatalf("a third: %v", err)
		}
		e.settle(t, q)
		if c := counts(t, q); c != (Counts{InFlight: 1, Pending: 1}) {
			t.Fatalf("once committed: %+v", c)
		}
	})
}

// TestStoreFreesRoomAtOnce: a queue at max_pending takes a new message as
// soon as one is completed.
func TestStoreFreesRoomAtOnce(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		q, _ := e.open(t, options(1))
		for i := range 5 {
			enqueue(t, q, fmt.Sprint("wh_", i))
			m := take(t, q, time.Minute)
			if err := q.Complete(ctx, m, Attempt{At: time.Now(), Status: 200}); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestStoreWait: Wait's channel is closed when a message is stored, and
// when a retry this process scheduled is due.
func TestStoreWait(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		q, _ := e.open(t, options(10))
		other, _ := e.open(t, options(10))
		waited := func(ch <-chan struct{}, what string) {
			t.Helper()
			select {
			case <-ch:
			case <-time.After(5 * time.Second):
				t.Fatalf("Wait's channel not closed after %s", what)
			}
		}
		ch := q.Wait()
		enqueue(t, other, "wh_wait")
		waited(ch, "an enqueue")
		m := take(t, q, time.Minute)
		const retry = 300 * time.Millisecond
		if err := q.Reschedule(ctx, m, Attempt{At: time.Now(), Status: 503}, e.now().Add(retry)); err != nil {
			t.Fatal(err)
		}
		ch = other.Wait()
		if m := take(t, other, time.Minute); m != nil {
			t.Fatalf("taken before it was due: %+v", m)
		}
		waited(ch, "a retry's due time")
		e.elapse(retry)
		if m := take(t, other, time.Minute); m == nil || m.DeliveryID != "wh_wait" {
			t.Fatalf("the retry, once due: %+v", m)
		}
	})
}

// TestFileWaitIdle: an idle file queue's Wait stays open (nothing polls);
// a message scheduled before the store was opened wakes it when due.
func TestFileWaitIdle(t *testing.T) {
	ctx := context.Background()
	path := t.TempDir() + "/q"
	q, stop := openStore(t, &File{Path: path}, options(10))
	enqueue(t, q, "wh_before")
	m := take(t, q, time.Minute)
	if err := q.Reschedule(ctx, m, Attempt{At: time.Now(), Status: 503}, time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	stop()
	q, _ = openStore(t, &File{Path: path}, options(10))
	start := time.Now()
	select {
	case <-q.Wait():
	case <-time.After(5 * time.Second):
		t.Fatal("not woken when the retry was due")
	}
	if m := take(t, q, time.Minute); m == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("woken after %v: %+v", time.Since(start), m)
	}
	ch := q.Wait()
	select {
	case <-ch:
		t.Fatal("an idle queue woke its workers")
	case <-time.After(300 * time.Millisecond):
	}
}

// TestRedisWaitPolls: Redis's Wait channel is closed at least every
// redisPoll, for what other instances stored.
func TestRedisWaitPolls(t *testing.T) {
	srv := startRedis(t)
	q := openRedis(t, srv, options(10))
	for range 2 {
		select {
		case <-q.Wait():
		case <-time.After(redisPoll * 4):
			t.Fatal("Wait's channel not closed after the poll's interval")
		}
	}
}

// TestStoreIdleWritesNothing: an idle queue, whose workers take and wait,
// writes nothing: no commit (file), no change (Redis).
func TestStoreIdleWritesNothing(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		q, _ := e.open(t, options(10))
		enqueue(t, q, "wh_idle")
		m := take(t, q, time.Minute)
		if err := q.Complete(ctx, m, Attempt{At: time.Now(), Status: 200}); err != nil {
			t.Fatal(err)
		}
		e.settle(t, q)
		before := e.writes(t, q)
		var modified time.Time
		if f, ok := q.(*File); ok {
			modified = fileModified(t, f)
		}
		takes := 0
		for end := time.Now().Add(time.Second); time.Now().Before(end); {
			ch := q.Wait()
			for range 4 { // as 4 workers do
				if ms := takeN(t, q, 4, time.Minute); len(ms) != 0 {
					t.Fatalf("taken: %+v", ms)
				}
				takes++
			}
			if _, err := q.Counts(ctx); err != nil {
				t.Fatal(err)
			}
			select {
			case <-ch:
			case <-time.After(100 * time.Millisecond):
			}
		}
		if after := e.writes(t, q); after != before {
			t.Fatalf("%d writes over a second of %d takes of an idle queue, want none", after-before, takes)
		}
		if f, ok := q.(*File); ok && !fileModified(t, f).Equal(modified) {
			t.Fatal("the idle queue's file was modified")
		}
		t.Logf("%d takes, no write", takes)
	})
}

// TestStorePostpone: Postpone records the attempt, schedules the message,
// and costs it no try; a take whose lease ended postpones nothing.
func TestStorePostpone(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		q, _ := e.open(t, options(10))
		enqueue(t, q, "wh_probe")
		m := take(t, q, time.Minute)
		next := e.now().Add(200 * time.Millisecond)
		if err := q.Postpone(ctx, m, Attempt{At: time.Now(), Error: "connection refused"}, next); err != nil {
			t.Fatal(err)
		}
		if c := counts(t, q); c != (Counts{Scheduled: 1}) {
			t.Fatalf("postponed: %+v", c)
		}
		if s := list(t, q, StateScheduled, 10); len(s) != 1 || s[0].Attempts != 1 || s[0].Tries != 0 || s[0].Last.Error != "connection refused" ||
			s[0].Due.Before(next.Add(-time.Millisecond)) || s[0].Due.After(next) {
			t.Fatalf("listed: %+v, want due at %v", s, next)
		}
		e.elapse(250 * time.Millisecond)
		const lease = 100 * time.Millisecond
		again := take(t, q, lease)
		if again == nil || again.Tries != 0 || len(again.Attempts) != 1 {
			t.Fatalf("taken again: %+v, want one attempt and no try", again)
		}
		e.elapse(lease + 50*time.Millisecond)
		if over := take(t, q, lease); over == nil || over.ID != again.ID {
			t.Fatalf("taken over: %+v", over)
		}
		if err := q.Postpone(ctx, again, Attempt{At: time.Now(), Error: "late"}, e.now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if c := counts(t, q); c != (Counts{InFlight: 1}) {
			t.Fatalf("after a late postpone: %+v, want it the other take's", c)
		}
	})
}

// TestStoreList: List shows each state's messages, oldest first, with
// their history's summary; Counts.NextDue is the soonest retry.
func TestStoreList(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		q, _ := e.open(t, options(10))
		enqueue(t, q, "wh_flight", "wh_later", "wh_sooner", "wh_dead", "wh_p1", "wh_p2")
		flight := take(t, q, time.Minute)
		retry := func(at time.Time) {
			t.Helper()
			if err := q.Reschedule(ctx, take(t, q, time.Minute), Attempt{At: time.Now(), Status: 503, Error: "the app answered 503"}, at); err != nil {
				t.Fatal(err)
			}
		}
		sooner, later := e.now().Add(time.Hour), e.now().Add(2*time.Hour)
		retry(later)
		retry(sooner)
		if err := q.Bury(ctx, take(t, q, time.Minute), Attempt{At: time.Now(), Error: "connection refused"}); err != nil {
			t.Fatal(err)
		}
		ids := func(s []Summary) (out []string) {
			for _, x := range s {
				out = append(out, x.DeliveryID)
			}
			return out
		}
		for _, tc := range []struct {
			state State
			limit int
			want  []string
		}{
			{StatePending, 10, []string{"wh_p1", "wh_p2"}},
			{StatePending, 1, []string{"wh_p1"}},
			{StateScheduled, 10, []string{"wh_sooner", "wh_later"}},
			{StateInFlight, 10, []string{"wh_flight"}},
			{StateDead, 10, []string{"wh_dead"}},
			{StateDead, 0, nil},
		} {
			if got := ids(list(t, q, tc.state, tc.limit)); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("%s, limit %d: %v, want %v", tc.state, tc.limit, got, tc.want)
			}
		}
		s := list(t, q, StateScheduled, 1)[0]
		if s.Attempts != 1 || s.Tries != 1 || s.Last == nil || s.Last.Status != 503 || s.Received.IsZero() || s.Due.Sub(sooner).Abs() > time.Millisecond {
			t.Errorf("the scheduled one: %+v", s)
		}
		if p := list(t, q, StatePending, 1)[0]; p.Attempts != 0 || p.Last != nil || p.Due.IsZero() || p.ID == "" {
			t.Errorf("a pending one: %+v", p)
		}
		if f := list(t, q, StateInFlight, 1)[0]; f.ID != flight.ID || !f.Due.IsZero() {
			t.Errorf("the one in flight: %+v", f)
		}
		if _, err := q.List(ctx, "nope", 10); err == nil {
			t.Error("an unknown state listed")
		}
		c, err := q.Counts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if c.NextDue.Sub(sooner).Abs() > time.Millisecond {
			t.Errorf("next due %v, want %v", c.NextDue, sooner)
		}
		if c.Pending != 2 || c.Scheduled != 2 || c.InFlight != 1 || c.Dead != 1 {
			t.Errorf("counts: %+v", c)
		}
	})
}

func startRedis(t *testing.T) *redistest.Server {
	t.Helper()
	return redistest.Start(t, redistest.Options{Durable: true})
}

func openRedis(t *testing.T, srv *redistest.Server, o Options) *Redis {
	t.Helper()
	q, _ := openStore(t, &Redis{Config: redisconn.Config{Address: srv.Addr}}, o)
	return q
}

// fileModified is when q's file was last modified.
func fileModified(t *testing.T, q *File) time.Time {
	t.Helper()
	st, err := os.Stat(q.Path)
	if err != nil {
		t.Fatal(err)
	}
	return st.ModTime()
}

// TestStoreCompletedNotTakenAgain: takes racing the commits of completions
// never take a completed message again. (A take reads a snapshot: the file
// engine once forgot a completion as soon as its commit was done, while a
// take that had begun before the commit could still find the message
// due in its snapshot.)
func TestStoreCompletedNotTakenAgain(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		const n, takers = 20000, 32
		ctx := context.Background()
		q, _ := e.open(t, options(n))
		e.seed(t, q, n, false, Attempt{At: e.now(), Error: "connection refused"})
		if got, err := q.BringForward(ctx, func(Attempt) bool { return true }); err != nil || got != n {
			t.Fatalf("bringing the seeded messages forward: %d, %v", got, err)
		}
		var (
			mu    sync.Mutex
			taken = map[string]int{}
			wg    sync.WaitGroup
		)
		deadline := time.Now().Add(webhooktest.WaitBound)
		for range takers {
			wg.Go(func() {
				for time.Now().Before(deadline) {
					ms, err := q.Take(ctx, 4, time.Hour)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					for _, m := range ms {
						taken[m.ID]++
					}
					all := len(taken) == n
					mu.Unlock()
					for _, m := range ms {
						if err := q.Complete(ctx, m, Attempt{At: time.Now(), Status: 200}); err != nil {
							t.Error(err)
							return
						}
					}
					if all {
						return
					}
				}
			})
		}
		wg.Wait()
		if len(taken) != n {
			t.Fatalf("%d of %d messages taken within %s", len(taken), n, webhooktest.WaitBound)
		}
		for id, times := range taken {
			if times != 1 {
				t.Errorf("%s taken %d times", id, times)
			}
		}
	})
}
