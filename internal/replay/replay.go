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
	// Claimed: the id was unknown and now belongs to the caller, who
	// forwards the delivery and then calls Delivered or Release with the
	// Ticket, or leaves the claim to end with its lease.
	Claimed State = iota
	// InFlight: another claim on this id holds an unexpired lease.
	InFlight
	// Delivered: the id was delivered within the retention window.
	Delivered
)

// Ticket identifies one claim, so that only its holder settles it: a claim
// whose lease ended may have been taken over by another request.
type Ticket uint64

// Memory is an in-process Store. Delivered ids are kept for a fixed window,
// in a FIFO that is also their expiry order; past its capacity the oldest
// is evicted early. Claims are not counted against the capacity: they are
// bounded by the requests being forwarded and, for claims left to their
// lease, by the lease.
//
// Ids are stored as 128-bit keyed hashes in pointer-free structures, so the
// garbage collector never scans the store, and an entry costs the same
// whatever the id's length.
type Memory struct {
	window   time.Duration
	capacity int
	lease    time.Duration
	now      func() time.Time
	seeds    [2]maphash.Seed

	mu sync.Mutex
	// delivered maps an id's digest to the Unix nanosecond of its delivery.
	delivered map[digest]int64
	fifo      []delivery // delivered ids, oldest first, from fifo[head]
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

type delivery struct {
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

func (m *Memory) digestOf(id string) digest {
	return digest{maphash.String(m.seeds[0], id), maphash.String(m.seeds[1], id)}
}

// NewMemory returns a Memory keeping delivered ids for window, at most
// capacity of them, and claims for at most lease each. now may be nil
// (time.Now).
func NewMemory(window time.Duration, capacity int, lease time.Duration, now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	return &Memory{
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
func (m *Memory) Reconfigure(window time.Duration, capacity int, lease time.Duration) {
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
func (m *Memory) Claim(id string) (State, Ticket) {
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
func (m *Memory) Delivered(id string, t Ticket) (evictedEarly bool) {
	d := m.digestOf(id)
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.settle(d, t) {
		return false
	}
	at := m.now().UnixNano()
	m.delivered[d] = at
	m.fifo = append(m.fifo, delivery{id: d, at: at})
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
func (m *Memory) Release(id string, t Ticket) {
	d := m.digestOf(id)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.settle(d, t)
}

// settle ends the claim on d if t is its ticket, and reports whether it was.
func (m *Memory) settle(d digest, t Ticket) bool {
	if c, ok := m.claims[d]; !ok || c.ticket != t {
		return false
	}
	delete(m.claims, d)
	return true
}

// Stats reports the ids held (delivered and claimed) and how many were
// evicted before their window ended.
func (m *Memory) Stats() (held int, evictedEarly uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.delivered) + len(m.claims), m.evicted
}

// expire drops delivered ids whose window has passed.
func (m *Memory) expire(now int64) {
	for m.head < len(m.fifo) && now-m.fifo[m.head].at >= int64(m.window) {
		m.dropOldest()
	}
}

// sweep drops claims whose lease ended, which nobody will settle (their
// sender hung up). The next sweep comes when the claims left have doubled,
// so sweeping costs a constant amount per claim, or a lease from now, so
// no ended lease is kept much longer than another lease.
func (m *Memory) sweep(now int64) {
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
func (m *Memory) dropOldest() {
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
