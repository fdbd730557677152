// Package lograte lets through at most one of a kind of log line per
// interval, counting those it held back, so that a failure repeated on
// every request does not flood the log.
package lograte

import (
	"sync"
	"time"
)

// Limiter lets one event in every Every through. The zero Limiter lets
// every event through; it is safe for concurrent use.
type Limiter struct {
	Every time.Duration

	mu         sync.Mutex
	last       time.Time
	suppressed int64
}

// Allow reports whether an event at now may be logged and, if so, how many
// were held back since the last that was.
func (l *Limiter) Allow(now time.Time) (suppressed int64, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < l.Every {
		l.suppressed++
		return 0, false
	}
	suppressed, l.suppressed, l.last = l.suppressed, 0, now
	return suppressed, true
}
