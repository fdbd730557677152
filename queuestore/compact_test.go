package queuestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// fileSize is the size of q's file.
func fileSize(t testing.TB, q *File) int64 {
	t.Helper()
	st, err := os.Stat(q.Path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// backlog stores n messages of 1 KiB in q from 64 senders, then delivers
// them with 4 workers, as webhook_queue would after the app was down.
func backlog(t testing.TB, q *File, n int) (stored int64) {
	t.Helper()
	ctx := context.Background()
	body := make([]byte, 1024)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				id := "wh_backlog_" + strconv.FormatInt(i, 10)
				m := &Message{DeliveryID: id, Body: body, Header: Fields(map[string][]string{"Webhook-Id": {id}, "Content-Type": {"application/json"}})}
				if err := q.Enqueue(ctx, m); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	stored = fileSize(t, q)
	var delivered atomic.Int64
	for range 4 {
		wg.Go(func() {
			for delivered.Load() < int64(n) {
				ms, err := q.Take(ctx, 16, time.Minute)
				if err != nil {
					t.Error(err)
					return
				}
				for _, m := range ms {
					if err := q.Complete(ctx, m, Attempt{At: time.Now(), Status: 200}); err != nil {
						t.Error(err)
						return
					}
					delivered.Add(1)
				}
			}
		})
	}
	wg.Wait()
	settleFile(t, q)
	return stored
}

// TestFileCompact: a file that held a backlog of 100,000 messages of
// 1 KiB, since delivered, gives its space back with Compact (figures
// logged for docs/queue.md: go test -run TestFileCompact -v). Enqueues
// during the compaction wait and succeed; a message in flight across it
// is settled after it.
func TestFileCompact(t *testing.T) {
	t.Parallel()
	n := 100_000
	if testing.Short() || raceEnabled {
		n = 10_000
	}
	if s := os.Getenv("QUEUESTORE_COMPACT_N"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "q")
	q, stop := openStore(t, &File{Path: path}, Options{Name: "test", MaxPending: n + 1000, Retention: time.Hour})
	start := time.Now()
	stored := backlog(t, q, n)
	delivered := fileSize(t, q)
	t.Logf("%d messages of 1 KiB stored: %d bytes (%.1f MiB); delivered: %d bytes (%.1f MiB), in %v",
		n, stored, float64(stored)/(1<<20), delivered, float64(delivered)/(1<<20), time.Since(start).Round(time.Millisecond))
	// The freelist is not written with each commit (NoFreelistSync): an
	// enqueue into the file, now mostly free, writes a few pages.
	written := fileWrites(t, q)
	enqueue(t, q, "wh_flight")
	written = fileWrites(t, q) - written
	st := fileBolt(t, q).Stats()
	t.Logf("one enqueue into it wrote %d pages; %d pages are free", written, st.FreePageN)
	if written > 20 {
		t.Errorf("one enqueue wrote %d pages", written)
	}
	flight := take(t, q, time.Minute)
	var wg sync.WaitGroup
	var before, after int64
	var err error
	start = time.Now()
	wg.Go(func() { before, after, err = q.Compact(ctx) })
	for i := range 8 {
		wg.Go(func() {
			for j := range 20 {
				if err := q.Enqueue(ctx, message(fmt.Sprintf("wh_during_%d_%d", i, j))); err != nil {
					t.Errorf("an enqueue during the compaction: %v", err)
				}
			}
		})
	}
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Compact: %d bytes (%.1f MiB) before, %d bytes (%.2f MiB) after, in %v",
		before, float64(before)/(1<<20), after, float64(after)/(1<<20), time.Since(start).Round(time.Millisecond))
	// (The file grows again, by bbolt's doubling steps, with the
	// enqueues made since.)
	if before < delivered || after >= before/4 || after > fileSize(t, q) {
		t.Fatalf("compacted from %d to %d bytes (the file has %d), want a quarter at most", before, after, fileSize(t, q))
	}
	if err := q.Complete(ctx, flight, Attempt{At: time.Now(), Status: 200}); err != nil {
		t.Fatal(err)
	}
	if c := counts(t, q); c != (Counts{Pending: 160}) {
		t.Fatalf("counts: %+v", c)
	}
	if err := q.Enqueue(ctx, message("wh_backlog_7")); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("a delivered DeliveryID after the compaction: %v", err)
	}
	stop()
	q, _ = openStore(t, &File{Path: path}, Options{Name: "test", MaxPending: 1000, Retention: time.Hour})
	if c := counts(t, q); c != (Counts{Pending: 160}) {
		t.Fatalf("counts after reopening: %+v", c)
	}
	if b, a, err := (&Redis{}).Compact(ctx); b != 0 || a != 0 || err != nil {
		t.Fatalf("Redis's Compact: %d, %d, %v", b, a, err)
	}
}

// TestFileCompactAtOpen: a file that is mostly free (here, past a lowered
// threshold) is compacted when it is opened; one mostly full is not.
func TestFileCompactAtOpen(t *testing.T) {
	// Not parallel: it lowers compactAtOpen.
	old := compactAtOpen.Swap(1 << 20)
	defer compactAtOpen.Store(old)
	path := filepath.Join(t.TempDir(), "q")
	q, stop := openStore(t, &File{Path: path}, Options{Name: "test", MaxPending: 10_000, Retention: time.Hour})
	backlog(t, q, 2000)
	enqueue(t, q, "wh_kept")
	full := fileSize(t, q)
	stop()
	q, stop = openStore(t, &File{Path: path}, options(10))
	compacted := fileSize(t, q)
	t.Logf("%d bytes, then %d once opened", full, compacted)
	if compacted >= full/4 {
		t.Fatalf("opened: %d bytes, was %d", compacted, full)
	}
	if m := take(t, q, time.Minute); m == nil || m.DeliveryID != "wh_kept" {
		t.Fatalf("taken: %+v", m)
	}
	stop()
	q, _ = openStore(t, &File{Path: path}, options(10))
	if size := fileSize(t, q); size != compacted {
		t.Fatalf("a file mostly full, opened: %d bytes, was %d", size, compacted)
	}
}

// TestFileFormat2: a file of format 2 (the version before) is converted
// when it is opened: its messages, retries and dead letters keep their
// state, bodies and DeliveryIDs, and are listed.
func TestFileFormat2(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "q")
	now := time.Now()
	ids := &fileDB{}
	mk := func(deliveryID string, due time.Time, attempts ...Attempt) *Message {
		return &Message{ID: ids.newID(now), DeliveryID: deliveryID, Header: Fields(map[string][]string{"Webhook-Id": {deliveryID}}),
			Body: []byte(body), Received: now, Due: due, Attempts: attempts, Tries: len(attempts)}
	}
	pending := mk("wh_v2_pending", now)
	scheduled := mk("wh_v2_scheduled", now.Add(time.Hour), Attempt{At: now, Status: 503, Error: "the app answered 503"})
	dead := mk("wh_v2_dead", now, Attempt{At: now.Add(-time.Minute), Error: "connection refused"})
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		b := map[string]*bolt.Bucket{}
		for _, name := range []string{"meta", "messages", "due", "ids", "forget", "dead", "dead_info"} {
			bk, err := tx.CreateBucket([]byte(name))
			if err != nil {
				return err
			}
			b[name] = bk
		}
		_ = b["meta"].Put(keyFormat, []byte("2"))
		for _, m := range []*Message{pending, scheduled} {
			raw, _ := json.Marshal(m)
			_ = b["messages"].Put([]byte(m.ID), append(timeKey(m.Due, nil), raw...))
			_ = b["due"].Put(timeKey(m.Due, []byte(m.ID)), nil)
		}
		raw, _ := json.Marshal(dead)
		_ = b["dead"].Put([]byte(dead.ID), raw)
		summary := *dead
		summary.Header, summary.Body = nil, nil
		raw, _ = json.Marshal(&summary)
		_ = b["dead_info"].Put([]byte(dead.ID), raw)
		for _, m := range []*Message{pending, scheduled, dead} {
			_ = b["ids"].Put([]byte(m.DeliveryID), append([]byte{idHeld}, m.ID...))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	q, _ := openStore(t, &File{Path: path}, options(10))
	if c := counts(t, q); c != (Counts{Pending: 1, Scheduled: 1, Dead: 1}) {
		t.Fatalf("counts: %+v", c)
	}
	if s := list(t, q, StateScheduled, 10); len(s) != 1 || s[0].DeliveryID != "wh_v2_scheduled" || s[0].Attempts != 1 || s[0].Last.Status != 503 {
		t.Fatalf("scheduled: %+v", s)
	}
	if s := list(t, q, StateDead, 10); len(s) != 1 || s[0].ID != dead.ID || s[0].Last.Error != "connection refused" {
		t.Fatalf("dead: %+v", s)
	}
	for _, id := range []string{"wh_v2_pending", "wh_v2_scheduled", "wh_v2_dead"} {
		if err := q.Enqueue(ctx, message(id)); !errors.Is(err, ErrDuplicate) {
			t.Fatalf("%s: %v", id, err)
		}
	}
	if m := take(t, q, time.Minute); m == nil || m.ID != pending.ID || string(m.Body) != body {
		t.Fatalf("taken: %+v", m)
	}
	if err := q.Revive(ctx, dead.ID); err != nil {
		t.Fatal(err)
	}
	if m := take(t, q, time.Minute); m == nil || m.ID != dead.ID || string(m.Body) != body || len(m.Attempts) != 1 || m.Tries != 0 {
		t.Fatalf("revived: %+v", m)
	}
}
