package replaystore

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestMemoryLifecycle(t *testing.T) {
	c := &clock{t: time.Unix(1_750_000_000, 0)}
	m := newMemoryIDs(10*time.Minute, 3, time.Minute, c.now)
	tickets := map[string]Ticket{} // the last claim of each id
	steps := []struct {
		do      string // claim, deliver, release, advance, settle-stale
		id      string
		advance time.Duration
		want    State
	}{
		{do: "claim", id: "a", want: Claimed},
		{do: "claim", id: "a", want: InFlight},
		{do: "release", id: "a"},
		{do: "claim", id: "a", want: Claimed}, // a retry after a failure is forwarded
		{do: "deliver", id: "a"},
		{do: "claim", id: "a", want: Delivered},
		{do: "release", id: "a"}, // releasing a delivered id changes nothing
		{do: "claim", id: "a", want: Delivered},
		{do: "advance", advance: 10*time.Minute - time.Second},
		{do: "claim", id: "a", want: Delivered},
		{do: "advance", advance: time.Second},
		{do: "claim", id: "a", want: Claimed}, // window over
		{do: "deliver", id: "never-claimed"},
		{do: "claim", id: "never-claimed", want: Claimed},

		// A claim left unsettled (its sender hung up) holds the id for
		// its lease, then the id can be claimed again.
		{do: "claim", id: "b", want: Claimed},
		{do: "advance", advance: time.Minute - time.Nanosecond},
		{do: "claim", id: "b", want: InFlight},
		{do: "advance", advance: time.Nanosecond},
		{do: "settle-stale", id: "b"}, // the old claim's holder settles late: nothing happens
		{do: "claim", id: "b", want: Claimed},
		{do: "settle-stale", id: "b"}, // nor to the new claim
		{do: "claim", id: "b", want: InFlight},
		{do: "deliver", id: "b"},
		{do: "claim", id: "b", want: Delivered},
	}
	var stale Ticket
	for i, s := range steps {
		switch s.do {
		case "claim":
			got, ticket := m.Claim(s.id)
			if got != s.want {
				t.Fatalf("step %d: Claim(%q) = %d, want %d", i, s.id, got, s.want)
			}
			if got == Claimed {
				stale, tickets[s.id] = tickets[s.id], ticket
			}
		case "deliver":
			m.Delivered(s.id, tickets[s.id])
		case "release":
			m.Release(s.id, tickets[s.id])
		case "settle-stale":
			m.Delivered(s.id, stale)
			m.Release(s.id, stale)
		case "advance":
			c.t = c.t.Add(s.advance)
		}
	}
}

func TestMemoryEvictsOldestPastCapacity(t *testing.T) {
	c := &clock{t: time.Unix(1_750_000_000, 0)}
	m := newMemoryIDs(time.Hour, 3, time.Minute, c.now)
	for i := range 5 {
		id := fmt.Sprint("id", i)
		_, ticket := m.Claim(id)
		m.Delivered(id, ticket)
		c.t = c.t.Add(time.Second)
	}
	for i, want := range []State{Claimed, Claimed, Delivered, Delivered, Delivered} {
		id := fmt.Sprint("id", i)
		if got, _ := m.Claim(id); got != want {
			t.Errorf("%s: %d, want %d", id, got, want)
		}
	}
	if _, evicted := m.Stats(); evicted != 2 {
		t.Errorf("evicted early = %d, want 2", evicted)
	}
}

// TestMemoryForgetsAbandonedClaims: claims nobody settles (a sender that
// hangs up mid-forward, again and again, with new ids) do not pile up past
// their lease.
func TestMemoryForgetsAbandonedClaims(t *testing.T) {
	c := &clock{t: time.Unix(1_750_000_000, 0)}
	m := newMemoryIDs(time.Hour, 10, time.Minute, c.now)
	for i := range 100_000 {
		m.Claim(fmt.Sprint("abandoned", i))
		c.t = c.t.Add(time.Millisecond) // 60,000 claims a lease
	}
	if held, _ := m.Stats(); held > 2*60_000 {
		t.Fatalf("%d claims held after 100,000 abandoned ones; at most twice a lease's worth (120,000) may wait for a sweep", held)
	}
	c.t = c.t.Add(time.Minute)
	m.Claim("a lease later")
	if held, _ := m.Stats(); held != 1 {
		t.Fatalf("%d claims held at the first claim a lease after the last abandoned one, want 1", held)
	}
}

// BenchmarkMemoryBytesPerEntry measures the heap one delivered id costs,
// for the capacity documentation.
func BenchmarkMemoryBytesPerEntry(b *testing.B) {
	const n = 100_000
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("wh_%032x", i) // OpenAI's id shape, 35 bytes
	}
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		m := newMemoryIDs(time.Hour, n, time.Minute, nil)
		for _, id := range ids {
			_, ticket := m.Claim(id)
			m.Delivered(id, ticket)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/entry")
		runtime.KeepAlive(m)
	}
}

// TestMemoryReconfigure: a new window, capacity or lease keeps the ids; a
// smaller capacity forgets the oldest first.
func TestMemoryReconfigure(t *testing.T) {
	c := &clock{t: time.Unix(1_750_000_000, 0)}
	m := newMemoryIDs(time.Hour, 5, time.Minute, c.now)
	for i := range 5 {
		id := fmt.Sprint("id", i)
		_, ticket := m.Claim(id)
		m.Delivered(id, ticket)
		c.t = c.t.Add(time.Second)
	}
	m.Reconfigure(2*time.Hour, 3, 2*time.Minute)
	for i, want := range []State{Claimed, Claimed, Delivered, Delivered, Delivered} {
		id := fmt.Sprint("id", i)
		if got, _ := m.Claim(id); got != want {
			t.Errorf("%s after shrinking to 3: %d, want %d", id, got, want)
		}
	}
	c.t = c.t.Add(90 * time.Minute) // past the old window, within the new
	if got, _ := m.Claim("id4"); got != Delivered {
		t.Errorf("id4 after the window grew: %d, want Delivered", got)
	}
	_, _ = m.Claim("new")
	c.t = c.t.Add(time.Minute + time.Second) // past the old lease, within the new
	if got, _ := m.Claim("new"); got != InFlight {
		t.Errorf("a claim after the lease grew: %d, want InFlight", got)
	}
}
