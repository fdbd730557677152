// Package replay remembers the webhook-ids of verified deliveries, so a
// captured delivery replayed within its freshness window, or a delivery the
// sender repeats, reaches the app only once.
package replay

import (
	"hash/maphash"
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
//
// Ids are stored as 128-bit keyed hashes in pointer-free structures, so the
// garbage collector never scans the store, and an entry costs the same
// whatever the id's length.
type Memory struct {
	window   time.Duration
	capacity int
	now      func() time.Time
	seeds    [2]maphash.Seed

	mu sync.Mutex
	// records maps an id's digest to the Unix nanosecond of its delivery,
	// or to inFlight.
	records map[digest]int64
	fifo    []delivery // delivered ids, oldest first, from fifo[head]
	head    int
	evicted uint64 // delivered ids dropped before their window ended
}

// digest is an id's two 64-bit hashes under the store's random seeds. Only
// verified ids reach the store, so nobody can search for collisions.
type digest [2]uint64

type delivery struct {
	id digest
	at int64
}

const inFlight = 0

func (m *Memory) digestOf(id string) digest {
	return digest{maphash.String(m.seeds[0], id), maphash.String(m.seeds[1], id)}
}

// NewMemory returns a Memory keeping delivered ids for window, at most
// capacity of them. now may be nil (time.Now).
func NewMemory(window time.Duration, capacity int, now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	return &Memory{
		window: window, capacity: capacity, now: now,
		seeds:   [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		records: make(map[digest]int64),
	}
}

// Claim implements Store.
func (m *Memory) Claim(id string) State {
	d := m.digestOf(id)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expire(m.now().UnixNano())
	at, ok := m.records[d]
	switch {
	case !ok:
		m.records[d] = inFlight
		return Claimed
	case at == inFlight:
		return InFlight
	default:
		return Delivered
	}
}

// Delivered implements Store.
func (m *Memory) Delivered(id string) {
	d := m.digestOf(id)
	m.mu.Lock()
	defer m.mu.Unlock()
	if at, ok := m.records[d]; !ok || at != inFlight {
		return // not claimed through this store
	}
	at := max(m.now().UnixNano(), inFlight+1)
	m.records[d] = at
	m.fifo = append(m.fifo, delivery{id: d, at: at})
	for len(m.fifo)-m.head > m.capacity {
		m.dropOldest()
		m.evicted++
	}
}

// Release implements Store.
func (m *Memory) Release(id string) {
	d := m.digestOf(id)
	m.mu.Lock()
	defer m.mu.Unlock()
	if at, ok := m.records[d]; ok && at == inFlight {
		delete(m.records, d)
	}
}

// Stats reports the ids held and how many were evicted before expiry.
func (m *Memory) Stats() (held int, evictedEarly uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.records), m.evicted
}

// expire drops delivered ids whose window has passed.
func (m *Memory) expire(now int64) {
	for m.head < len(m.fifo) && now-m.fifo[m.head].at >= int64(m.window) {
		m.dropOldest()
	}
}

// dropOldest forgets the oldest delivered id, and compacts the FIFO once
// its dropped prefix is as long as what it holds.
func (m *Memory) dropOldest() {
	oldest := m.fifo[m.head]
	if m.records[oldest.id] == oldest.at {
		delete(m.records, oldest.id)
	}
	m.head++
	if m.head >= len(m.fifo)-m.head {
		m.fifo = m.fifo[:copy(m.fifo, m.fifo[m.head:])]
		m.head = 0
	}
}

// Interface guard
var _ Store = (*Memory)(nil)
