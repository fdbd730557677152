package queuestore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	bolt "go.etcd.io/bbolt"
)

// fakeClock is the file engine's clock in tests: time.Now's reading when
// it was made, moved by Advance (the wall and the monotonic clocks, as time
// passing moves them) and by Step (the wall clock only, as setting the
// system's clock does). Each reading is a nanosecond after the previous,
// as a real clock's are.
type fakeClock struct {
	t  testing.TB
	mu sync.Mutex
	at time.Time
}

func newFakeClock(t testing.TB) *fakeClock {
	return &fakeClock{t: t, at: time.Now()}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.at = c.at.Add(time.Nanosecond)
	return c.at
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.at = c.at.Add(d)
}

func (c *fakeClock) Step(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.at = wallStep(c.t, c.at, d)
}

// wallStep returns at with its wall clock reading moved by d (whole
// seconds) and its monotonic reading kept: what time.Now returns once the
// system's clock was set d ahead. Go makes no such reading but from the
// system's clock, so it is made from time.Time's layout (wall: a flag, 33
// bits of seconds since 1885 and 30 of nanoseconds; ext: the monotonic
// reading), and checked.
func wallStep(t testing.TB, at time.Time, d time.Duration) time.Time {
	t.Helper()
	type layout struct {
		wall uint64
		ext  int64
		loc  *time.Location
	}
	const hasMonotonic, secondsShift = 1 << 63, 30
	if unsafe.Sizeof(at) != unsafe.Sizeof(layout{}) || d%time.Second != 0 {
		t.Fatalf("cannot step %v by %v", at, d)
	}
	l := *(*layout)(unsafe.Pointer(&at))
	if l.wall&hasMonotonic == 0 {
		t.Fatalf("%v has no monotonic reading", at)
	}
	l.wall += uint64(int64(d/time.Second)) << secondsShift
	stepped := *(*time.Time)(unsafe.Pointer(&l))
	if stepped.Sub(at) != 0 || stepped.Round(0).Sub(at.Round(0)) != d {
		t.Fatalf("time.Time's layout changed: stepping %v by %v gave %v", at, d, stepped)
	}
	return stepped
}

// TestFileWallClockStep: a step of the wall clock, either way, neither
// ends the leases nor keeps them past their end on the monotonic clock;
// retries are scheduled on the wall clock.
func TestFileWallClockStep(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock(t)
	q, _ := openStore(t, &File{Path: filepath.Join(t.TempDir(), "q"), now: clock.Now}, options(10))
	enqueue(t, q, "wh_a", "wh_b", "wh_retry")
	a, b := take(t, q, time.Minute), take(t, q, 2*time.Minute)
	retry := take(t, q, time.Minute)
	if err := q.Reschedule(ctx, retry, Attempt{At: clock.Now(), Error: "x"}, clock.Now().Add(30*time.Minute)); err != nil {
		t.Fatal(err)
	}
	clock.Step(time.Hour)
	m := take(t, q, 2*time.Minute)
	if m == nil || m.ID != retry.ID {
		t.Fatalf("after the clock was set an hour ahead: %+v, want the retry (due on the wall clock), and no lease ended", m)
	}
	if err := q.Extend(ctx, a, time.Minute); err != nil {
		t.Fatalf("extending a lease after the step: %v", err)
	}
	clock.Step(-2 * time.Hour)
	if m := take(t, q, time.Minute); m != nil {
		t.Fatalf("after the clock was set back: %+v, and no lease ended", m)
	}
	clock.Advance(time.Minute + time.Second)
	// a's lease ended; its due time is ahead on the wall clock, which
	// does not matter.
	if m := take(t, q, time.Minute); m == nil || m.ID != a.ID {
		t.Fatalf("a minute after extending, the clock set back: %+v, want the message whose lease ended", m)
	}
	if err := q.Complete(ctx, b, Attempt{At: clock.Now(), Status: 200}); err != nil {
		t.Fatal(err)
	}
	if c := counts(t, q); c != (Counts{InFlight: 2}) {
		t.Fatalf("counts: %+v", c)
	}
}

// TestFileLeaseEnded: once its lease has ended, a take holds the message
// no more, taken over or not: its Extend is refused and its settle
// changes nothing (the message is due again as it was).
func TestFileLeaseEnded(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock(t)
	q, _ := openStore(t, &File{Path: filepath.Join(t.TempDir(), "q"), now: clock.Now}, options(10))
	enqueue(t, q, "wh_ended")
	m := take(t, q, time.Minute)
	clock.Advance(time.Minute)
	if err := q.Extend(ctx, m, time.Minute); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("extending a lease that ended: %v", err)
	}
	if err := q.Bury(ctx, m, Attempt{At: clock.Now(), Error: "x"}); err != nil {
		t.Fatal(err)
	}
	if c := counts(t, q); c != (Counts{Pending: 1}) {
		t.Fatalf("after the late bury: %+v", c)
	}
	if again := take(t, q, time.Minute); again == nil || again.ID != m.ID || again.Tries != 0 {
		t.Fatalf("taken again: %+v", again)
	}
}

// TestFileReopen: what a process had in flight when it died is due again
// when the file is opened next; the rest keeps its state, the DeliveryIDs
// held included.
func TestFileReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "q")
	q, stop := openStore(t, &File{Path: path}, options(10))
	enqueue(t, q, "wh_inflight", "wh_scheduled", "wh_dead", "wh_pending", "wh_done")
	inflight := take(t, q, time.Hour)
	scheduled := take(t, q, time.Hour)
	if err := q.Reschedule(ctx, scheduled, Attempt{At: time.Now(), Status: 503}, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	dead := take(t, q, time.Hour)
	if err := q.Bury(ctx, dead, Attempt{At: time.Now(), Status: 500}); err != nil {
		t.Fatal(err)
	}
	take(t, q, time.Hour) // wh_pending, in flight
	done := take(t, q, time.Hour)
	if err := q.Complete(ctx, done, Attempt{At: time.Now(), Status: 200}); err != nil {
		t.Fatal(err)
	}
	if err := q.Reschedule(ctx, inflight, Attempt{At: time.Now(), Status: 503}, time.Now()); err != nil {
		t.Fatal(err)
	}
	inflight = take(t, q, time.Hour)
	stop() // the process dies with wh_inflight and wh_pending in flight
	q, _ = openStore(t, &File{Path: path}, options(10))
	if c := counts(t, q); c != (Counts{Pending: 2, Scheduled: 1, Dead: 1}) {
		t.Fatalf("after reopening: %+v", c)
	}
	for _, id := range []string{"wh_inflight", "wh_scheduled", "wh_dead", "wh_pending", "wh_done"} {
		if err := q.Enqueue(ctx, message(id)); !errors.Is(err, ErrDuplicate) {
			t.Fatalf("%s enqueued again after reopening: %v, want ErrDuplicate", id, err)
		}
	}
	got := map[string]bool{}
	for m := take(t, q, time.Hour); m != nil; m = take(t, q, time.Hour) {
		got[m.DeliveryID] = true
		if m.ID == inflight.ID && m.Tries != 1 {
			t.Errorf("%s has %d tries, want its one", m.DeliveryID, m.Tries)
		}
	}
	if len(got) != 2 || !got["wh_inflight"] || !got["wh_pending"] {
		t.Fatalf("due after reopening: %v", got)
	}
	enqueue(t, q, "wh_after")
}

// TestFileLimitPerConfig: handlers of two configs sharing the file (a
// reload) each hold the shared count to their own max_pending, from the
// first request on: a config being loaded, or that failed to load, changes
// nothing for the running one.
func TestFileLimitPerConfig(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "q")
	running, _ := openStore(t, &File{Path: path}, options(1))
	loading, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	next := &File{Path: path}
	if err := next.Provision(loading); err != nil {
		t.Fatal(err)
	}
	defer next.Cleanup()
	if err := next.Open(options(1000)); err != nil {
		t.Fatal(err)
	}
	enqueue(t, running, "wh_1")
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

// TestFileForgetsDeliveryIDs: delivered DeliveryIDs are forgotten once
// their retention passed, a few with each Complete; one expired is no
// duplicate even before it is forgotten.
func TestFileForgetsDeliveryIDs(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock(t)
	q, _ := openStore(t, &File{Path: filepath.Join(t.TempDir(), "q"), now: clock.Now}, Options{Name: "test", MaxPending: 100, Retention: time.Minute})
	deliver := func(ids ...string) {
		t.Helper()
		enqueue(t, q, ids...)
		for range ids {
			m := take(t, q, time.Minute)
			if err := q.Complete(ctx, m, Attempt{At: clock.Now(), Status: 200}); err != nil {
				t.Fatal(err)
			}
		}
	}
	kept := func() (ids, forget int) {
		t.Helper()
		settleFile(t, q)
		b := fileBolt(t, q)
		_ = b.View(func(tx *bolt.Tx) error {
			ids, forget = tx.Bucket(bucketIDs).Stats().KeyN, tx.Bucket(bucketForget).Stats().KeyN
			return nil
		})
		return ids, forget
	}
	var old []string
	for i := range 20 {
		old = append(old, "wh_old_"+string(rune('a'+i)))
	}
	deliver(old...)
	if ids, forget := kept(); ids != 20 || forget != 20 {
		t.Fatalf("kept %d ids, %d to forget; want the 20 delivered", ids, forget)
	}
	clock.Advance(time.Minute + time.Second)
	deliver("wh_old_a") // expired: stored and delivered again
	if ids, forget := kept(); ids != 20-forgetPerComplete+1 || forget != 20-forgetPerComplete+1 {
		t.Fatalf("after one Complete: kept %d ids, %d to forget; want %d forgotten", ids, forget, forgetPerComplete)
	}
	deliver("wh_new_1", "wh_new_2")
	if ids, forget := kept(); ids != 3 || forget != 3 {
		t.Fatalf("after three Completes: kept %d ids, %d to forget; want the 3 within the retention", ids, forget)
	}
	if err := q.Enqueue(ctx, message("wh_old_a")); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("wh_old_a, delivered again within the retention: %v", err)
	}
}

// TestFileListReadsNoBody: List shows each state from the infos, and
// reads no message nor letter (here made unreadable).
func TestFileListReadsNoBody(t *testing.T) {
	ctx := context.Background()
	q, _ := openStore(t, &File{Path: filepath.Join(t.TempDir(), "q")}, options(10))
	enqueue(t, q, "wh_dead", "wh_scheduled", "wh_flight", "wh_pending")
	m := take(t, q, time.Minute)
	if err := q.Bury(ctx, m, Attempt{At: time.Now(), Error: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := q.Reschedule(ctx, take(t, q, time.Minute), Attempt{At: time.Now(), Status: 503}, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	take(t, q, time.Minute)
	if err := fileBolt(t, q).Update(func(tx *bolt.Tx) error {
		if info := tx.Bucket(bucketDeadInfo).Get([]byte(m.ID)); strings.Contains(string(info), "body") || strings.Contains(string(info), "header") {
			t.Errorf("the dead letter's info holds more than its summary: %s", info)
		}
		msgs := tx.Bucket(bucketMessages)
		var recs [][2][]byte
		_ = msgs.ForEach(func(k, v []byte) error {
			_, inf, _, _ := recordParts(v)
			recs = append(recs, [2][]byte{bytes.Clone(k), recordOf(keyTime(v), inf, []byte("not JSON"))})
			return nil
		})
		for _, r := range recs {
			if err := msgs.Put(r[0], r[1]); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketDead).Put([]byte(m.ID), []byte("not JSON"))
	}); err != nil {
		t.Fatal(err)
	}
	for state, want := range map[State]string{StateDead: "wh_dead", StateScheduled: "wh_scheduled", StateInFlight: "wh_flight", StatePending: "wh_pending"} {
		got := list(t, q, state, 10)
		if len(got) != 1 || got[0].DeliveryID != want || got[0].Received.IsZero() {
			t.Errorf("%s: %+v, want %s", state, got, want)
		}
	}
	if _, err := q.Take(ctx, 1, time.Minute); err == nil {
		t.Fatal("the unreadable message was taken")
	}
}

// fileBolt is q's open file.
func fileBolt(t testing.TB, q *File) *bolt.DB {
	t.Helper()
	b, release, err := q.db.use()
	if err != nil {
		t.Fatal(err)
	}
	release()
	return b
}

// settleFile commits the completions that wait.
func settleFile(t testing.TB, q *File) {
	t.Helper()
	if err := q.db.flush(fileBolt(t, q)); err != nil {
		t.Fatal(err)
	}
}

// fileWrites counts the pages bbolt wrote to q's file so far, the meta
// pages of its commits included.
func fileWrites(t testing.TB, q *File) int64 {
	t.Helper()
	st := fileBolt(t, q).Stats()
	return st.TxStats.GetWrite()
}

// seedFile stores n messages of 1 KiB straight into q's file, as the
// engine would: dead letters buried now, or messages scheduled an hour
// ahead; each with one attempt, last.
func seedFile(t testing.TB, q *File, n int, dead bool, last Attempt) {
	t.Helper()
	f := q.db
	now := f.now()
	msgs, raws, infs := seedMessages(t, n, now, func(int) string { return f.newID(now) }, last)
	for start := 0; start < n; start += 5000 {
		if err := fileBolt(t, q).Update(func(tx *bolt.Tx) error {
			for i := start; i < min(n, start+5000); i++ {
				m, raw, inf := msgs[i], raws[i], infs[i]
				id := []byte(m.ID)
				if err := tx.Bucket(bucketIDs).Put([]byte(m.DeliveryID), append([]byte{idHeld}, id...)); err != nil {
					return err
				}
				if dead {
					if err := putDead(tx, id, raw, inf, now); err != nil {
						return err
					}
					continue
				}
				if err := tx.Bucket(bucketMessages).Put(id, recordOf(m.Due, inf, raw)); err != nil {
					return err
				}
				if err := tx.Bucket(bucketDue).Put(timeKey(m.Due, id), nil); err != nil {
					return err
				}
				f.live.Add(1)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFileDefaultPath: without a path, the file is the queue's name, made
// safe, in Caddy's data directory; distinct names, distinct files.
func TestFileDefaultPath(t *testing.T) {
	data := t.TempDir()
	t.Setenv("XDG_DATA_HOME", data)
	dir := filepath.Join(data, "caddy", "webhook_queue")
	for _, tc := range []struct{ name, file string }{
		{"orders", "orders.db"},
		{"orders.eu-1_b", "orders.eu-1_b.db"},
		{"Orders/EU", "orders_eu-"},
		{"a/b", "a_b-"},
		{"a_b", "a_b.db"},
		{"..", "_.-"},
		{strings.Repeat("x", 70), strings.Repeat("x", 64) + "-"},
	} {
		q, _ := openStore(t, &File{}, options(10).with(tc.name))
		if filepath.Dir(q.Path) != dir || !strings.HasPrefix(filepath.Base(q.Path), tc.file) {
			t.Errorf("queue %q: file %s, want %s in %s", tc.name, q.Path, tc.file, dir)
		}
		if _, err := os.Stat(q.Path); err != nil {
			t.Errorf("queue %q: %v", tc.name, err)
		}
		if q.Name() != tc.name {
			t.Errorf("name %q, want %q", q.Name(), tc.name)
		}
	}
	if fileName("a/b") == fileName("a_b") || fileName("a/b") == fileName("a:b") || fileName("Q") == fileName("q") {
		t.Error("distinct names share a file")
	}
	if err := (&File{}).Open(Options{MaxPending: 1}); err == nil {
		t.Error("no name, no path: no error")
	}
}

func (o Options) with(name string) Options {
	o.Name = name
	return o
}

// TestFileEarlierFormat: a file of the earlier format (no meta bucket) is
// refused, not misread.
func TestFileEarlierFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucket(bucketMessages)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	q := &File{Path: path}
	if err := q.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer q.Cleanup()
	if err := q.Open(options(10)); err != nil {
		t.Fatal(err)
	}
	if err := q.Start(); err == nil || !strings.Contains(err.Error(), "earlier format") {
		t.Fatalf("starting on a file of the earlier format: %v", err)
	}
}
