// Package replay remembers the webhook-ids of verified deliveries, so a
// captured delivery replayed within its freshness window, or a delivery the
// sender repeats, reaches the app only once.
package replay

import (
	"container/list"
	"sync"
	"time"
)

// State is what a Store knows of an id when it is claimed.
type State int

const (
	// Claimed: the id was unknown and now belongs to the caller, who must
	// forward the delivery and then call Delivered or Release.
	Claimed State = iota
	// InFlight: another request with this id is being forwarded right now.
	InFlight
	// Delivered: the id was delivered within the retention window.
	Delivered
)

// Store records ids. Only ids of verified deliveries may be given to it, so
// nobody without the signing secret can fill it. Implementations are safe
// for concurrent use; a shared one (e.g. Redis) can replace Memory without
// changing the handler.
type Store interface {
	// Claim reports the id's state, claiming it if it is unknown.
	Claim(id string) State
	// Delivered records that the claimed id reached the app.
	Delivered(id string)
	// Release forgets a claimed id that did not reach the app, so the
	// sender's retry is forwarded.
	Release(id string)
}

// Memory is an in-process Store. Delivered ids are kept for a fixed window,
// in a FIFO that is also their expiry order; past its capacity the oldest
// is evicted early. In-flight ids are not counted against the capacity:
// they are bounded by the number of requests being forwarded.
type Memory struct {
	window   time.Duration
	capacity int
	now      func() time.Time

	mu      sync.Mutex
	records map[string]*record
	order   list.List // of *record, oldest delivery first
	evicted uint64    // delivered ids dropped before their window ended
}

type record struct {
	id          string
	deliveredAt time.Time
	elem        *list.Element // nil while in flight
}

// NewMemory returns a Memory keeping delivered ids for window, at most
// capacity of them. now may be nil (time.Now).
func NewMemory(window time.Duration, capacity int, now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	return &Memory{window: window, capacity: capacity, now: now, records: make(map[string]*record)}
}

// Claim implements Store.
func (m *Memory) Claim(id string) State {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expire(m.now())
	rec, ok := m.records[id]
	switch {
	case !ok:
		m.records[id] = &record{id: id}
		return Claimed
	case rec.elem == nil:
		return InFlight
	default:
		return Delivered
	}
}

// Delivered implements Store.
func (m *Memory) Delivered(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.records[id]
	if !ok || rec.elem != nil {
		return // not claimed through this store
	}
	rec.deliveredAt = m.now()
	rec.elem = m.order.PushBack(rec)
	for m.order.Len() > m.capacity {
		m.drop(m.order.Front())
		m.evicted++
	}
}

// Release implements Store.
func (m *Memory) Release(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if rec, ok := m.records[id]; ok && rec.elem == nil {
		delete(m.records, id)
	}
}

// Stats reports the ids held and how many were evicted before expiry.
func (m *Memory) Stats() (held int, evictedEarly uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.records), m.evicted
}

// expire drops delivered ids whose window has passed.
func (m *Memory) expire(now time.Time) {
	for e := m.order.Front(); e != nil; e = m.order.Front() {
		if now.Sub(e.Value.(*record).deliveredAt) < m.window {
			return
		}
		m.drop(e)
	}
}

func (m *Memory) drop(e *list.Element) {
	delete(m.records, e.Value.(*record).id)
	m.order.Remove(e)
}

// Interface guard
var _ Store = (*Memory)(nil)
