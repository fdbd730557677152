package queue

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// TestFileReopen: what a process had in flight when it died is due again
// when the file is opened next; the rest keeps its state.
func TestFileReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "q")
	q, stop := openStore(t, &File{Path: path}, 10)
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
	q, _ = openStore(t, &File{Path: path}, 10)
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

// TestFileLimitPerConfig: handlers of two configs sharing the file (a
// reload) each hold the shared count to their own max_pending, from the
// first request on: a config being loaded, or that failed to load, changes
// nothing for the running one.
func TestFileLimitPerConfig(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "q")
	running, _ := openStore(t, &File{Path: path}, 1)
	loading, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	next := &File{Path: path}
	if err := next.Provision(loading); err != nil {
		t.Fatal(err)
	}
	defer next.Cleanup()
	if err := next.Open(1000); err != nil {
		t.Fatal(err)
	}
	if err := running.Enqueue(ctx, message("wh_1")); err != nil {
		t.Fatal(err)
	}
	if err := running.Enqueue(ctx, message("wh_2")); !errors.Is(err, ErrFull) {
		t.Fatalf("past the running config's max_pending 1: %v", err)
	}
	if err := next.Enqueue(ctx, message("wh_2")); err != nil {
		t.Fatalf("under the next config's max_pending 1000: %v", err)
	}
	if c := counts(t, running); c != (Counts{Pending: 2}) {
		t.Fatalf("the shared count: %+v", c)
	}
}
