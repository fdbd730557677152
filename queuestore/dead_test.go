package queuestore

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// bury stores each id and makes it a dead letter, in order.
func bury(t *testing.T, q Store, ids ...string) {
	t.Helper()
	for _, id := range ids {
		enqueue(t, q, id)
		m := take(t, q, time.Minute)
		if m == nil || m.DeliveryID != id {
			t.Fatalf("taken: %+v, want %s", m, id)
		}
		if err := q.Bury(context.Background(), m, Attempt{At: time.Now(), Error: "connection refused"}); err != nil {
			t.Fatal(err)
		}
	}
}

func deadIDs(t *testing.T, q Store) []string {
	t.Helper()
	var ids []string
	for _, s := range list(t, q, StateDead, 1000) {
		ids = append(ids, s.DeliveryID)
	}
	return ids
}

// TestStoreDeadMaxCount: past DeadMaxCount, the first buried are dropped
// as others are buried, counted, their DeliveryIDs released; a config
// with a lower bound drops the excess when it starts.
func TestStoreDeadMaxCount(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		o := options(10)
		o.DeadMaxCount = 3
		q, _ := e.open(t, o)
		bury(t, q, "wh_1", "wh_2", "wh_3", "wh_4", "wh_5")
		if got := fmt.Sprint(deadIDs(t, q)); got != "[wh_3 wh_4 wh_5]" {
			t.Fatalf("dead letters kept: %s", got)
		}
		c, err := q.Counts(context.Background())
		if err != nil || c.Dead != 3 || c.DeadDropped != 2 {
			t.Fatalf("counts: %+v, %v; want 3 dead, 2 dropped", c, err)
		}
		enqueue(t, q, "wh_1", "wh_2") // released
		if err := q.Enqueue(context.Background(), message("wh_3")); !errors.Is(err, ErrDuplicate) {
			t.Fatalf("a dead letter's DeliveryID: %v", err)
		}
		o.DeadMaxCount = 1
		lower, _ := e.open(t, o)
		if got := fmt.Sprint(deadIDs(t, lower)); got != "[wh_5]" {
			t.Fatalf("dead letters kept once a config with max 1 started: %s", got)
		}
		if c, err := lower.Counts(context.Background()); err != nil || c.DeadDropped != 4 {
			t.Fatalf("counts: %+v, %v; want 4 dropped", c, err)
		}
	})
}

// TestStoreDeadMaxAge: dead letters buried more than DeadMaxAge ago are
// dropped at the next burial, and when a config starts.
func TestStoreDeadMaxAge(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		o := options(10)
		q, _ := e.open(t, o)
		bury(t, q, "wh_old_1", "wh_old_2")
		e.elapse(300 * time.Millisecond)
		bury(t, q, "wh_new")
		o.DeadMaxAge = 200 * time.Millisecond
		aging, _ := e.open(t, o) // drops the two old ones as it starts
		if got := fmt.Sprint(deadIDs(t, q)); got != "[wh_new]" {
			t.Fatalf("dead letters kept: %s", got)
		}
		e.elapse(300 * time.Millisecond)
		bury(t, aging, "wh_newer")
		if got := fmt.Sprint(deadIDs(t, q)); got != "[wh_newer]" {
			t.Fatalf("dead letters kept after a burial: %s", got)
		}
		if c, err := q.Counts(context.Background()); err != nil || c.Dead != 1 || c.DeadDropped != 3 {
			t.Fatalf("counts: %+v, %v; want 1 dead, 3 dropped", c, err)
		}
		enqueue(t, q, "wh_old_1", "wh_new")
	})
}

// TestStoreReviveAllRoom: ReviveAll revives the oldest dead letters while
// the queue has room under max_pending, and leaves the rest dead.
func TestStoreReviveAllRoom(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		q, _ := e.open(t, options(10))
		var ids []string
		for i := range 12 {
			ids = append(ids, fmt.Sprintf("wh_%02d", i))
		}
		bury(t, q, ids...)
		enqueue(t, q, "wh_live_1", "wh_live_2", "wh_live_3")
		n, err := q.ReviveAll(ctx)
		if err != nil || n != 7 {
			t.Fatalf("revived %d, %v; want 7 (room for 7 under max_pending 10)", n, err)
		}
		if c := counts(t, q); c != (Counts{Pending: 10, Dead: 5}) {
			t.Fatalf("counts: %+v", c)
		}
		if got := fmt.Sprint(deadIDs(t, q)); got != fmt.Sprint(ids[7:]) {
			t.Fatalf("left dead: %s, want the last buried", got)
		}
		if err := q.Enqueue(ctx, message("wh_over")); !errors.Is(err, ErrFull) {
			t.Fatalf("an enqueue after the revival: %v", err)
		}
		if n, err := q.ReviveAll(ctx); err != nil || n != 0 {
			t.Fatalf("reviving into a full queue: %d, %v", n, err)
		}
		pending := list(t, q, StatePending, 20)
		if len(pending) != 10 || pending[9].Tries != 0 || pending[9].Attempts != 1 {
			t.Fatalf("pending: %+v", pending)
		}
	})
}

// TestStoreDropAll: DropAll drops every dead letter and releases their
// DeliveryIDs.
func TestStoreDropAll(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		q, _ := e.open(t, options(10))
		bury(t, q, "wh_a", "wh_b", "wh_c")
		enqueue(t, q, "wh_live")
		if n, err := q.DropAll(ctx); err != nil || n != 3 {
			t.Fatalf("dropped %d, %v", n, err)
		}
		if c := counts(t, q); c != (Counts{Pending: 1}) {
			t.Fatalf("counts: %+v", c)
		}
		enqueue(t, q, "wh_a", "wh_b", "wh_c")
		if n, err := q.DropAll(ctx); err != nil || n != 0 {
			t.Fatalf("dropping none: %d, %v", n, err)
		}
	})
}

// TestStoreBringForward: BringForward makes due now the scheduled
// messages whose last attempt keep says yes to, and only those.
func TestStoreBringForward(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		q, _ := e.open(t, options(10))
		enqueue(t, q, "wh_refused_1", "wh_500", "wh_refused_2", "wh_flight")
		for _, a := range []Attempt{{Error: "connection refused"}, {Status: 500, Error: "the app answered 500"}, {Error: "connection refused"}} {
			a.At = time.Now()
			if err := q.Reschedule(ctx, take(t, q, time.Minute), a, e.now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
		take(t, q, time.Minute) // wh_flight
		n, err := q.BringForward(ctx, func(a Attempt) bool { return a.Status == 0 })
		if err != nil || n != 2 {
			t.Fatalf("brought forward %d, %v; want 2", n, err)
		}
		if c := counts(t, q); c != (Counts{Pending: 2, Scheduled: 1, InFlight: 1}) {
			t.Fatalf("counts: %+v", c)
		}
		ms := takeN(t, q, 5, time.Minute)
		if len(ms) != 2 || ms[0].DeliveryID != "wh_refused_1" || ms[1].DeliveryID != "wh_refused_2" || ms[0].Tries != 1 {
			t.Fatalf("taken: %+v", ms)
		}
		if n, err := q.BringForward(ctx, func(Attempt) bool { return false }); err != nil || n != 0 {
			t.Fatalf("keeping none: %d, %v", n, err)
		}
	})
}

// TestStoreBulkDoesNotStall: a bulk operation on 40,000 messages holds the
// store's writer one batch at a time: an enqueue issued while it runs
// completes before it does.
func TestStoreBulkDoesNotStall(t *testing.T) {
	if testing.Short() {
		t.Skip("stores 40,000 messages")
	}
	const n = 40_000
	refused := Attempt{At: time.Now(), Error: "connection refused"}
	for _, op := range []struct {
		name string
		dead bool
		run  func(context.Context, Store) (int, error)
		// left is what the operation left of the n messages.
		left func(Counts) int
	}{
		{"revive_all", true, func(ctx context.Context, q Store) (int, error) { return q.ReviveAll(ctx) }, func(c Counts) int { return c.Dead }},
		{"drop_all", true, func(ctx context.Context, q Store) (int, error) { return q.DropAll(ctx) }, func(c Counts) int { return c.Dead }},
		{"bring_forward", false, func(ctx context.Context, q Store) (int, error) {
			return q.BringForward(ctx, func(a Attempt) bool { return a.Status == 0 })
		}, func(c Counts) int { return c.Scheduled }},
	} {
		t.Run(op.name, func(t *testing.T) {
			forEachEngine(t, func(t *testing.T, e engine) {
				ctx := context.Background()
				q, _ := e.open(t, options(2*n))
				seeded := time.Now()
				e.seed(t, q, n, op.dead, refused)
				t.Logf("seeded in %v", time.Since(seeded))
				started := time.Now()
				defer func() { t.Logf("ran in %v", time.Since(started)) }()
				if c := counts(t, q); op.left(c) != n {
					t.Fatalf("seeded: %+v", c)
				}
				type result struct {
					n   int
					err error
				}
				done := make(chan result, 1)
				go func() {
					n, err := op.run(ctx, q)
					done <- result{n, err}
				}()
				// Once the first batch is in, store a message.
				for {
					c, err := q.Counts(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if op.left(c) < n {
						break
					}
				}
				enqueue(t, q, "wh_during")
				select {
				case r := <-done:
					t.Fatalf("the enqueue completed after the bulk operation (%d, %v)", r.n, r.err)
				default:
				}
				r := <-done
				if r.err != nil || r.n != n {
					t.Fatalf("%s: %d, %v; want all %d", op.name, r.n, r.err, n)
				}
				if c := counts(t, q); op.left(c) != 0 {
					t.Fatalf("after: %+v", c)
				}
			})
		})
	}
}

// seedMessages returns n messages of 1 KiB for the engines' seeds, stored
// at now and due an hour later, each with one attempt, last: the message,
// its JSON and its info's, made from one template (the race detector
// makes encoding 40,000 of them slow).
func seedMessages(t testing.TB, n int, now time.Time, newID func(i int) string, last Attempt) (ms []*Message, raws, infs [][]byte) {
	t.Helper()
	body := make([]byte, 1024)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	const idMark, deliveryMark = "SEED-ID-MARK", "SEED-DELIVERY-MARK"
	tmpl := &Message{ID: idMark, DeliveryID: deliveryMark, Body: body, Header: Fields(map[string][]string{"Webhook-Id": {deliveryMark}}),
		Received: now, Due: now.Add(time.Hour), Attempts: []Attempt{last}, Tries: 1}
	raw, err := json.Marshal(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	inf, err := marshalInfo(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	encodedMark := base64.StdEncoding.EncodeToString([]byte(deliveryMark))
	for i := range n {
		id, deliveryID := newID(i), fmt.Sprint("wh_seed_", i)
		m := *tmpl
		m.ID, m.DeliveryID = id, deliveryID
		m.Header = []HeaderField{{Name: "Webhook-Id", Value: []byte(deliveryID)}}
		r := strings.NewReplacer(idMark, id, deliveryMark, deliveryID, encodedMark, base64.StdEncoding.EncodeToString([]byte(deliveryID)))
		ms = append(ms, &m)
		raws = append(raws, []byte(r.Replace(string(raw))))
		infs = append(infs, []byte(r.Replace(string(inf))))
	}
	return ms, raws, infs
}
