package replay

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
	m := NewMemory(10*time.Minute, 3, c.now)
	steps := []struct {
		do      string // claim, deliver, release, advance
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
	}
	for i, s := range steps {
		switch s.do {
		case "claim":
			if got := m.Claim(s.id); got != s.want {
				t.Fatalf("step %d: Claim(%q) = %d, want %d", i, s.id, got, s.want)
			}
		case "deliver":
			m.Delivered(s.id)
		case "release":
			m.Release(s.id)
		case "advance":
			c.t = c.t.Add(s.advance)
		}
	}
}

func TestMemoryEvictsOldestPastCapacity(t *testing.T) {
	c := &clock{t: time.Unix(1_750_000_000, 0)}
	m := NewMemory(time.Hour, 3, c.now)
	for i := range 5 {
		id := fmt.Sprint("id", i)
		m.Claim(id)
		m.Delivered(id)
		c.t = c.t.Add(time.Second)
	}
	for i, want := range []State{Claimed, Claimed, Delivered, Delivered, Delivered} {
		id := fmt.Sprint("id", i)
		if got := m.Claim(id); got != want {
			t.Errorf("%s: %d, want %d", id, got, want)
		}
	}
	if _, evicted := m.Stats(); evicted != 2 {
		t.Errorf("evicted early = %d, want 2", evicted)
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
		m := NewMemory(time.Hour, n, nil)
		for _, id := range ids {
			m.Claim(id)
			m.Delivered(id)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/entry")
		runtime.KeepAlive(m)
	}
}
