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
)

// openFile provisions a file store at path as Caddy does and cleans it up
// with the test, or with the returned function.
func openFileStore(t *testing.T, path string, maxPending int) (*File, func()) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	q := &File{Path: path}
	if err := q.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := q.Open(maxPending); err != nil {
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

func TestFileLifecycle(t *testing.T) {
	ctx := context.Background()
	q, _ := openFileStore(t, filepath.Join(t.TempDir(), "q"), 10)
	if m := take(t, q, time.Minute); m != nil {
		t.Fatalf("an empty queue gave %+v", m)
	}
	for _, id := range []string{"wh_1", "wh_2"} {
		if err := q.Enqueue(ctx, message(id)); err != nil {
			t.Fatal(err)
		}
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
}

func TestFileDeadLetters(t *testing.T) {
	ctx := context.Background()
	q, _ := openFileStore(t, filepath.Join(t.TempDir(), "q"), 10)
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
}

// TestFileFull: max_pending bounds the messages not dead, across every
// state; a dead letter frees its place.
func TestFileFull(t *testing.T) {
	ctx := context.Background()
	q, _ := openFileStore(t, filepath.Join(t.TempDir(), "q"), 2)
	for i := range 2 {
		if err := q.Enqueue(ctx, message(fmt.Sprint("wh_", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Enqueue(ctx, message("wh_over")); !errors.Is(err, ErrFull) {
		t.Fatalf("a third message under max_pending 2: %v", err)
	}
	m := take(t, q, time.Minute)
	if err := q.Enqueue(ctx, message("wh_over")); !errors.Is(err, ErrFull) {
		t.Fatalf("with one in flight: %v", err)
	}
	if err := q.Bury(ctx, m, Attempt{At: time.Now(), Error: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(ctx, message("wh_over")); err != nil {
		t.Fatalf("once one is dead: %v", err)
	}
}

// TestFileLeaseEnds: a message whose worker never settles it (it died) is
// due again when its lease ends.
func TestFileLeaseEnds(t *testing.T) {
	ctx := context.Background()
	q, _ := openFileStore(t, filepath.Join(t.TempDir(), "q"), 10)
	if err := q.Enqueue(ctx, message("wh_lease")); err != nil {
		t.Fatal(err)
	}
	if m := take(t, q, 100*time.Millisecond); m == nil {
		t.Fatal("nothing taken")
	}
	if m := take(t, q, time.Minute); m != nil {
		t.Fatal("taken again within its lease")
	}
	time.Sleep(150 * time.Millisecond)
	if m := take(t, q, time.Minute); m == nil || m.WebhookID != "wh_lease" {
		t.Fatalf("after the lease: %+v", m)
	}
}

// TestFileReopen: what a process had in flight when it died is due again
// when the file is opened next; the rest keeps its state.
func TestFileReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "q")
	q, stop := openFileStore(t, path, 10)
	for _, id := range []string{"wh_inflight", "wh_scheduled", "wh_dead", "wh_pending"} {
		if err := q.Enqueue(ctx, message(id)); err != nil {
			t.Fatal(err)
		}
	}
	inflight := take(t, q, time.Hour)
	scheduled := take(t, q, time.Hour)
	if err := q.Reschedule(ctx, scheduled, Attempt{At: time.Now(), Status: 503}, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	dead := take(t, q, time.Hour)
	if err := q.Bury(ctx, dead, Attempt{At: time.Now(), Status: 500}); err != nil {
		t.Fatal(err)
	}
	stop() // the process dies with wh_inflight in flight
	q, _ = openFileStore(t, path, 10)
	if c := counts(t, q); c != (Counts{Pending: 2, Scheduled: 1, Dead: 1}) {
		t.Fatalf("after reopening: %+v", c)
	}
	got := map[string]bool{}
	for m := take(t, q, time.Hour); m != nil; m = take(t, q, time.Hour) {
		got[m.WebhookID] = true
	}
	if len(got) != 2 || !got[inflight.WebhookID] || !got["wh_pending"] {
		t.Fatalf("due after reopening: %v", got)
	}
	if err := q.Enqueue(ctx, message("wh_after")); err != nil {
		t.Fatal(err)
	}
}

// TestFileConcurrentEnqueue: concurrent enqueues all land, with distinct
// ids.
func TestFileConcurrentEnqueue(t *testing.T) {
	ctx := context.Background()
	q, _ := openFileStore(t, filepath.Join(t.TempDir(), "q"), 1000)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			if err := q.Enqueue(ctx, message(fmt.Sprint("wh_", i))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	ids := map[string]bool{}
	for m := take(t, q, time.Hour); m != nil; m = take(t, q, time.Hour) {
		ids[m.ID] = true
	}
	if len(ids) != 200 {
		t.Fatalf("%d distinct messages taken, want 200", len(ids))
	}
}
