package lograte

import (
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	l := &Limiter{Every: time.Minute}
	start := time.Unix(1_750_000_000, 0)
	for i, step := range []struct {
		at         time.Duration
		ok         bool
		suppressed int64
	}{
		{0, true, 0},
		{time.Second, false, 0},
		{59 * time.Second, false, 0},
		{time.Minute, true, 2},
		{time.Minute + time.Second, false, 0},
		{3 * time.Minute, true, 1},
	} {
		suppressed, ok := l.Allow(start.Add(step.at))
		if ok != step.ok || suppressed != step.suppressed {
			t.Fatalf("step %d: %v, %d held back; want %v, %d", i, ok, suppressed, step.ok, step.suppressed)
		}
	}
}
