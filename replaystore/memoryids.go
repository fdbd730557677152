package replaystore

import (
	"hash/maphash"
	"sync"
	"time"
)

// memoryIDs is the ids of the memory store. Delivered ids are kept for a fixed window,
// in a FIFO that is also their expiry order; past its capacity the oldest
// is evicted early. Claims are not counted against the capacity: they are
// bounded by the requests being forwarded and, for claims left to their
// lease, by the lease.
//
// Ids are stored as 128-bit keyed hashes in pointer-free structures, so the
// garbage collector never scans the store, and an entry costs the same
// whatever the id's length.
type memoryIDs struct {
	window   time.Duration
	capacity int
	lease    time.Duration
	now      func() time.Time
	seeds    [2]maphash.Seed

	mu sync.Mutex
	// delivered maps an id's digest to the Unix nanosecond of its delivery.
	delivered map[digest]int64
	fifo      []deliveredID // delivered ids, oldest first, from fifo[head]
	head      int
	// claims maps the digest of an id being forwarded to its claim.
	claims map[digest]claim
	// Expired leases are swept when the claims reach sweepAt, or at the
	// first claim after sweepTime (Unix nanoseconds).
	sweepAt    int
	sweepTime  int64
	lastTicket Ticket
	evicted    uint64 // delivered ids dropped before their window ended
}

// digest is an id's two 64-bit hashes under the store's random seeds. Only
// verified ids reach the store, so nobody can search for collisions.
type digest [2]uint64

type deliveredID struct {
	id digest
	at int64
}

type claim struct {
	ticket Ticket
	until  int64 // Unix nanoseconds at which the lease ends
}

// minSweep is the number of claims below which expired leases are not
// swept: so few cost nothing to keep.
const minSweep = 64

func (m *memoryIDs) digestOf(id string) digest {
	return digest{maphash.String(m.seeds[0], id), maphash.String(m.seeds[1], id)}
}

// newMemoryIDs returns a memoryIDs keeping delivered ids for window, at
// most capacity of them, and claims for at most lease each. now may be nil
// (time.Now).
func newMemoryIDs(window time.Duration, capacity int, lease time.Duration, now func() time.Time) *memoryIDs {
	if now == nil {
		now = time.Now
	}
	return &memoryIDs{
		window: window, capacity: capacity, lease: lease, now: now,
		seeds:     [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		delivered: make(map[digest]int64),
		claims:    make(map[digest]claim),
		sweepAt:   minSweep,
	}
}

// Reconfigure sets a new window, capacity and lease, keeping the ids: a
// smaller capacity forgets the oldest delivered ids now, a shorter window
// at the next claim; leases already given keep their end.
func (m *memoryIDs) Reconfigure(window time.Duration, capacity int, lease time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.window, m.capacity, m.lease = window, capacity, lease
	for len(m.fifo)-m.head > m.capacity {
		m.dropOldest()
		m.evicted++
	}
}

// Claim reports the id's state, claiming it if it is unknown or its last
// claim's lease ended.
func (m *memoryIDs) Claim(id string) (State, Ticket) {
	d := m.digestOf(id)
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now().UnixNano()
	m.expire(now)
	if _, ok := m.delivered[d]; ok {
		return Delivered, 0
	}
	if c, ok := m.claims[d]; ok && now < c.until {
		return InFlight, 0
	}
	m.lastTicket++
	m.claims[d] = claim{ticket: m.lastTicket, until: now + int64(m.lease)}
	if len(m.claims) >= m.sweepAt || now >= m.sweepTime {
		m.sweep(now)
	}
	return Claimed, m.lastTicket
}

// Delivered records the claim's id as delivered, if t is still the
// claim's ticket, and reports whether that made the store forget an older
// id before its window ended.
func (m *memoryIDs) Delivered(id string, t Ticket) (evictedEarly bool) {
	d := m.digestOf(id)
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.settle(d, t) {
		return false
	}
	at := m.now().UnixNano()
	m.delivered[d] = at
	m.fifo = append(m.fifo, deliveredID{id: d, at: at})
	m.expire(at) // what expired is not forgotten early
	for len(m.fifo)-m.head > m.capacity {
		m.dropOldest()
		m.evicted++
		evictedEarly = true
	}
	return evictedEarly
}

// Release ends the claim, if t is still its ticket: its delivery did not
// reach the app, so the sender's retry is forwarded.
func (m *memoryIDs) Release(id string, t Ticket) {
	d := m.digestOf(id)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.settle(d, t)
}

// settle ends the claim on d if t is its ticket, and reports whether it was.
func (m *memoryIDs) settle(d digest, t Ticket) bool {
	if c, ok := m.claims[d]; !ok || c.ticket != t {
		return false
	}
	delete(m.claims, d)
	return true
}

// Stats reports the ids held (delivered and claimed) and how many were
// evicted before their window ended.
func (m *memoryIDs) Stats() (held int, evictedEarly uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.delivered) + len(m.claims), m.evicted
}

// expire drops delivered ids whose window has passed.
func (m *memoryIDs) expire(now int64) {
	for m.head < len(m.fifo) && now-m.fifo[m.head].at >= int64(m.window) {
		m.dropOldest()
	}
}

// sweep drops claims whose lease ended, which nobody will settle (their
// sender hung up). The next sweep comes when the claims left have doubled,
// so sweeping costs a constant amount per claim, or a lease from now, so
// no ended lease is kept much longer than another lease.
func (m *memoryIDs) sweep(now int64) {
	for d, c := range m.claims {
		if now >= c.until {
			delete(m.claims, d)
		}
	}
	m.sweepAt = max(2*len(m.claims), minSweep)
	m.sweepTime = now + int64(m.lease)
}

// dropOldest forgets the oldest delivered id, and compacts the FIFO once
// its dropped prefix is as long as what it holds.
func (m *memoryIDs) dropOldest() {
	oldest := m.fifo[m.head]
	if m.delivered[oldest.id] == oldest.at {
		delete(m.delivered, oldest.id)
	}
	m.head++
	if m.head >= len(m.fifo)-m.head {
		m.fifo = m.fifo[:copy(m.fifo, m.fifo[m.head:])]
		m.head = 0
	}
}
