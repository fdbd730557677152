package queuestore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(File{})
}

// File keeps the queue in one bbolt file: every enqueue is committed with an
// fsync before the sender is answered, and concurrent enqueues share one
// commit (bbolt's Batch). One Caddy process holds the file (bbolt locks
// it), from when it starts the config, so that caddy validate does not
// need the lock; the queue survives reloads, which share the open file,
// and restarts: messages a killed process had in flight are due again when
// the file is next opened.
//
// Leases are kept in memory, on Go's monotonic clock, so that a step of
// the system clock neither ends them early nor keeps them: only one process
// holds the file, and what it had in flight when it stopped is due at the
// next open anyway. Retries are scheduled, and delivered ids remembered
// (Options.Retention), on the wall clock, which outlives a restart.
//
// The file's buckets:
//
//   - meta: the format of the file ("format": "2").
//   - messages: the messages not dead, by id: the message's due time (8
//     bytes, big-endian Unix nanoseconds), then the message as JSON.
//   - due: every message not dead, in flight included, by due time then
//     id (keys only). A take marks the message in flight in memory only.
//   - ids: the DeliveryIDs held, each either by a message queued, in
//     flight or dead ('h', then the message's id), or by one delivered
//     ('d', then when it is forgotten, in Unix nanoseconds).
//   - forget: the delivered DeliveryIDs by when they are forgotten (keys
//     only), which each Complete sweeps a few of.
//   - dead: the dead letters by id, as JSON.
//   - dead_info: the dead letters by id without headers and body, as JSON:
//     what Dead lists, so that listing reads no body.
type File struct {
	// Path is the file. Default: webhook_queue/<name>.db in Caddy's data
	// directory, <name> being the queue's name made safe for a file name
	// (lower-case letters, digits, '.', '-' and '_'; a name with anything
	// else, or longer than 64 bytes, is changed to those and followed by a
	// hash of itself, so that two queues never share a file: Orders/EU is
	// orders_eu-<8 hex digits>).
	Path string `json:"path,omitempty"`

	opts   Options
	db     *fileDB
	logger *zap.Logger
	// now is the clock: time.Now but in tests. The stores sharing a file
	// use the clock of the first that opened it.
	now func() time.Time
}

// CaddyModule returns the Caddy module information.
func (File) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.webhook_queue.stores.file",
		New: func() caddy.Module { return new(File) },
	}
}

// The buckets, described at File.
var (
	bucketMeta     = []byte("meta")
	bucketMessages = []byte("messages")
	bucketDue      = []byte("due")
	bucketIDs      = []byte("ids")
	bucketForget   = []byte("forget")
	bucketDead     = []byte("dead")
	bucketDeadInfo = []byte("dead_info")

	keyFormat  = []byte("format")
	fileFormat = []byte("2")
)

// Values of the ids bucket: held by a message, or delivered.
const (
	idHeld      = 'h'
	idDelivered = 'd'
)

// forgetPerComplete bounds the expired DeliveryIDs each Complete forgets:
// more than the one it adds, so that the backlog shrinks.
const forgetPerComplete = 8

// files keeps each open file across config reloads.
var files = caddy.NewUsagePool()

// fileDB is one queue file, shared by the handlers that use it, opened on
// first use.
type fileDB struct {
	path   string
	now    func() time.Time
	logger *zap.Logger
	opened atomic.Pointer[bolt.DB]
	mu     sync.Mutex // opening
	// live counts the messages not dead, for max_pending.
	live atomic.Int64
	seq  atomic.Uint64

	// leaseMu guards leases and takes. Take holds it while it reads the
	// file, so that what it reads agrees with the leases: a settle ends
	// its lease only once what it wrote is committed.
	leaseMu sync.Mutex
	// leases are the messages in flight by id (and the expired leases of
	// messages not yet taken again).
	leases map[string]*fileLease
	takes  uint64
}

// fileLease is a take's hold on a message.
type fileLease struct {
	// take numbers the take, which Message.entry names.
	take uint64
	// until is when the lease ends, a time.Now reading: compared with
	// After, on the monotonic clock.
	until time.Time
	// settling: a settle of the message is being written; no take may
	// have it meanwhile.
	settling bool
}

func (f *fileDB) Destruct() error {
	if db := f.opened.Load(); db != nil {
		return db.Close()
	}
	return nil
}

// bolt returns the open file, opening it if need be.
func (f *fileDB) bolt() (*bolt.DB, error) {
	if db := f.opened.Load(); db != nil {
		return db, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if db := f.opened.Load(); db != nil {
		return db, nil
	}
	db, err := f.open()
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", f.path, err)
	}
	f.opened.Store(db)
	return db, nil
}

// Provision keeps the logger; the file is chosen by Open, once the queue's
// name is known.
func (q *File) Provision(ctx caddy.Context) error {
	q.logger = ctx.Logger()
	return nil
}

// Open implements Store: it resolves the path and takes a share of the
// file (opened by Start).
func (q *File) Open(o Options) error {
	q.opts = o
	if q.Path == "" {
		if o.Name == "" {
			return errors.New("path: the queue has no name to derive the default path from")
		}
		q.Path = filepath.Join(caddy.AppDataDir(), "webhook_queue", fileName(o.Name)+".db")
	}
	path, err := filepath.Abs(q.Path)
	if err != nil {
		return fmt.Errorf("path: %w", err)
	}
	q.Path = path
	now, logger := q.now, q.logger
	if now == nil {
		now = time.Now
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	shared, _, err := files.LoadOrNew(path, func() (caddy.Destructor, error) {
		return &fileDB{path: path, now: now, logger: logger, leases: map[string]*fileLease{}}, nil
	})
	if err != nil {
		return fmt.Errorf("path: %w", err)
	}
	q.db = shared.(*fileDB)
	return nil
}

// fileName makes a queue's name safe for a file name, and distinct for
// distinct names: lower-case ASCII letters, digits, '-', '_' and '.' (not
// first) are kept, upper-case letters lowered, anything else replaced by
// '_', and a name so changed, or cut at 64 bytes, gets a hash of itself
// appended. (Lowered: on a case-insensitive file system Queue and queue
// would share a file.)
func fileName(name string) string {
	const maxLen = 64
	var b strings.Builder
	changed := false
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_', c == '.' && i > 0:
			b.WriteByte(c)
		case c >= 'A' && c <= 'Z':
			b.WriteByte(c + 'a' - 'A')
			changed = true
		default:
			b.WriteByte('_')
			changed = true
		}
	}
	s := b.String()
	if len(s) > maxLen {
		s, changed = s[:maxLen], true
	}
	if changed {
		sum := sha256.Sum256([]byte(name))
		s += "-" + hex.EncodeToString(sum[:4])
	}
	return s
}

// Start implements Store: it opens the file.
func (q *File) Start() error {
	_, err := q.db.bolt()
	return err
}

// Cleanup releases the handler's share of the file.
func (q *File) Cleanup() error {
	if q.db == nil {
		return nil
	}
	_, err := files.Delete(q.Path)
	return err
}

// open opens the file, making its buckets if it is new. What a dead
// process had in flight is due already: a take is kept in memory only.
func (f *fileDB) open() (*bolt.DB, error) {
	dir := filepath.Dir(f.path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		// Only Caddy's user may read the deliveries it holds.
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		f.logger.Info("created the queue file's directory, readable by this user only", zap.String("directory", dir), zap.String("mode", "0700"))
	}
	db, err := bolt.Open(f.path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		switch {
		case meta == nil && tx.Bucket(bucketMessages) != nil:
			return errors.New("the file holds a queue in an earlier format, which this version does not read: deliver it with the version that wrote it, or move the file aside")
		case meta != nil && !bytes.Equal(meta.Get(keyFormat), fileFormat):
			return fmt.Errorf("the file's format is %q; this version reads %q", meta.Get(keyFormat), fileFormat)
		}
		for _, name := range [][]byte{bucketMeta, bucketMessages, bucketDue, bucketIDs, bucketForget, bucketDead, bucketDeadInfo} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketMeta).Put(keyFormat, fileFormat); err != nil {
			return err
		}
		f.live.Store(int64(tx.Bucket(bucketMessages).Stats().KeyN))
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// timeKey is an index key: t in big-endian Unix nanoseconds, then id.
func timeKey(t time.Time, id []byte) []byte {
	k := make([]byte, 8, 8+len(id))
	binary.BigEndian.PutUint64(k, uint64(t.UnixNano()))
	return append(k, id...)
}

func keyTime(k []byte) time.Time {
	return time.Unix(0, int64(binary.BigEndian.Uint64(k[:8])))
}

// record is a message as the messages bucket keeps it: its due time, then
// its JSON.
func record(due time.Time, raw []byte) []byte {
	return append(timeKey(due, nil), raw...)
}

// recordDueKey is the key in the due index of the message id stored as
// rec.
func recordDueKey(rec, id []byte) []byte {
	return append(bytes.Clone(rec[:8]), id...)
}

// Name implements Store.
func (q *File) Name() string { return q.opts.Name }

// newID returns an id ordered by time: the nanosecond, then a counter.
func (f *fileDB) newID(now time.Time) string {
	var b [12]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixNano()))
	binary.BigEndian.PutUint32(b[8:], uint32(f.seq.Add(1)))
	return hex.EncodeToString(b[:])
}

// idTime is when the message id was stored, as newID wrote it.
func idTime(id []byte) time.Time {
	var b [8]byte
	if len(id) < 16 {
		return time.Time{}
	}
	if _, err := hex.Decode(b[:], id[:16]); err != nil {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(b[:])))
}

// heldID reports whether v, the ids bucket's value of a DeliveryID, still
// holds it at now: a message that is stored, or one delivered less than
// the retention ago.
func heldID(tx *bolt.Tx, v []byte, now time.Time) bool {
	switch {
	case len(v) == 0:
		return false
	case v[0] == idHeld:
		id := v[1:]
		// A hold is removed with its message; this guards against a file
		// whose ids disagree with its messages rather than lose a delivery.
		return tx.Bucket(bucketMessages).Get(id) != nil || tx.Bucket(bucketDead).Get(id) != nil
	case v[0] == idDelivered && len(v) == 9:
		return keyTime(v[1:]).After(now)
	}
	return false
}

// heldBy reports whether v holds its DeliveryID for the message id.
func heldBy(v []byte, id string) bool {
	return len(v) > 0 && v[0] == idHeld && string(v[1:]) == id
}

// Enqueue implements Store.
func (q *File) Enqueue(_ context.Context, m *Message) error {
	b, err := q.db.bolt()
	if err != nil {
		return err
	}
	f := q.db
	for {
		live := f.live.Load()
		// Each config's handlers hold the count to their own limit: a
		// config that is loading (or failed to) changes nothing for the
		// running one's, whichever of Caddy's apps starts first.
		if live >= int64(q.opts.MaxPending) {
			return q.full(b, m.DeliveryID)
		}
		if f.live.CompareAndSwap(live, live+1) {
			break
		}
	}
	now := f.now()
	m.ID, m.Received, m.Due = f.newID(now), now, now
	raw, err := json.Marshal(m)
	duplicate := false
	if err == nil {
		id := []byte(m.ID)
		// Batch: concurrent enqueues share one commit, one fsync. The
		// DeliveryID's hold is written with the message: both or neither.
		err = b.Batch(func(tx *bolt.Tx) error {
			duplicate = false // Batch may run this again, alone
			if m.DeliveryID != "" {
				ids := tx.Bucket(bucketIDs)
				if heldID(tx, ids.Get([]byte(m.DeliveryID)), now) {
					duplicate = true
					return nil
				}
				if err := ids.Put([]byte(m.DeliveryID), append([]byte{idHeld}, id...)); err != nil {
					return err
				}
			}
			if err := tx.Bucket(bucketMessages).Put(id, record(now, raw)); err != nil {
				return err
			}
			return tx.Bucket(bucketDue).Put(timeKey(now, id), nil)
		})
	}
	if err != nil || duplicate {
		f.live.Add(-1)
	}
	if err == nil && duplicate {
		err = ErrDuplicate
	}
	return err
}

// full is Enqueue's answer for a queue at its limit: ErrDuplicate for a
// DeliveryID held (the sender's repeat of what is stored), else ErrFull.
func (q *File) full(b *bolt.DB, deliveryID string) error {
	if deliveryID == "" {
		return ErrFull
	}
	now := q.db.now()
	duplicate := false
	err := b.View(func(tx *bolt.Tx) error {
		duplicate = heldID(tx, tx.Bucket(bucketIDs).Get([]byte(deliveryID)), now)
		return nil
	})
	switch {
	case err != nil:
		return err
	case duplicate:
		return ErrDuplicate
	}
	return ErrFull
}

// Take implements Store. The message stays in the due index: the take is
// in memory. A message whose lease ended is taken again first, whatever
// the wall clock says of its due time.
func (q *File) Take(_ context.Context, lease time.Duration) (*Message, error) {
	b, err := q.db.bolt()
	if err != nil {
		return nil, err
	}
	f := q.db
	f.leaseMu.Lock()
	defer f.leaseMu.Unlock()
	now := f.now()
	var m *Message
	err = b.View(func(tx *bolt.Tx) error {
		msgs := tx.Bucket(bucketMessages)
		if id := f.endedLease(now); id != "" {
			rec := msgs.Get([]byte(id))
			if len(rec) < 8 {
				delete(f.leases, id) // cannot be: a settle ends the lease of what it removes
				return nil
			}
			m = new(Message)
			return json.Unmarshal(rec[8:], m)
		}
		c := tx.Bucket(bucketDue).Cursor()
		// Due times are on the wall clock (keyTime has no monotonic
		// reading, so After compares wall clocks); leases on the
		// monotonic one.
		for k, _ := c.First(); k != nil && !keyTime(k).After(now); k, _ = c.Next() {
			if f.leases[string(k[8:])] != nil {
				continue // in flight (endedLease found no lease that ended)
			}
			rec := msgs.Get(k[8:])
			if len(rec) < 8 {
				continue // cannot be: a message leaves the index with its record
			}
			m = new(Message)
			return json.Unmarshal(rec[8:], m)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading a message: %w", err)
	}
	if m == nil {
		return nil, nil
	}
	f.takes++
	f.leases[m.ID] = &fileLease{take: f.takes, until: now.Add(lease)}
	m.entry = strconv.FormatUint(f.takes, 10)
	return m, nil
}

// endedLease returns the message whose lease ended first by now, if one
// did (and is not being settled). The leases are the messages in flight,
// as many as the process's workers at most, and the few whose lease ended
// since the last take.
func (f *fileDB) endedLease(now time.Time) string {
	var id string
	var first time.Time
	for k, l := range f.leases {
		if !l.settling && !l.until.After(now) && (id == "" || l.until.Before(first)) {
			id, first = k, l.until
		}
	}
	return id
}

// isTake reports whether l is the lease of m's take.
func isTake(l *fileLease, m *Message) bool {
	return l != nil && strconv.FormatUint(l.take, 10) == m.entry
}

// Extend implements Store: the lease is in memory only.
func (q *File) Extend(_ context.Context, m *Message, lease time.Duration) error {
	f := q.db
	f.leaseMu.Lock()
	defer f.leaseMu.Unlock()
	now := f.now()
	l := f.leases[m.ID]
	if !isTake(l, m) || !l.settling && !l.until.After(now) {
		return ErrLeaseLost
	}
	l.until = now.Add(lease)
	return nil
}

// hold starts a settle of m's take: it returns the take's lease, marked as
// settling, or nil when the take no longer holds the message (its lease
// ended, or the message is another take's or settled).
func (f *fileDB) hold(m *Message) *fileLease {
	f.leaseMu.Lock()
	defer f.leaseMu.Unlock()
	l := f.leases[m.ID]
	if !isTake(l, m) || l.settling || !l.until.After(f.now()) {
		return nil
	}
	l.settling = true
	return l
}

// settled ends the settle that holds l: the lease goes once what the
// settle wrote is committed (a take reading the file now sees it), and is
// held again if the write failed. A lease that Complete replaced meanwhile
// is not the settle's any more.
func (f *fileDB) settled(id string, l *fileLease, err error) {
	f.leaseMu.Lock()
	defer f.leaseMu.Unlock()
	if f.leases[id] != l {
		return
	}
	if err != nil && l.take != 0 {
		l.settling = false
	} else {
		delete(f.leases, id)
	}
}

// Complete implements Store. Whoever holds the message, no take may have
// it while it is removed.
func (q *File) Complete(_ context.Context, m *Message, _ Attempt) error {
	b, err := q.db.bolt()
	if err != nil {
		return err
	}
	f := q.db
	f.leaseMu.Lock()
	l := &fileLease{settling: true}
	f.leases[m.ID] = l
	f.leaseMu.Unlock()
	removed := false
	err = b.Update(func(tx *bolt.Tx) error {
		removed = false
		id := []byte(m.ID)
		msgs := tx.Bucket(bucketMessages)
		rec := msgs.Get(id)
		if rec == nil {
			return nil // completed by another take, or buried meanwhile
		}
		if err := tx.Bucket(bucketDue).Delete(recordDueKey(rec, id)); err != nil {
			return err
		}
		if err := msgs.Delete(id); err != nil {
			return err
		}
		removed = true
		now := f.now()
		if m.DeliveryID != "" {
			if err := q.delivered(tx, m.DeliveryID, m.ID, now); err != nil {
				return err
			}
		}
		return forgetExpired(tx, now, forgetPerComplete)
	})
	f.settled(m.ID, l, err)
	if err == nil && removed {
		f.live.Add(-1)
	}
	return err
}

// delivered remembers the DeliveryID of the message id, delivered at now,
// for the retention (forgets it at once without one).
func (q *File) delivered(tx *bolt.Tx, deliveryID, id string, now time.Time) error {
	ids := tx.Bucket(bucketIDs)
	if !heldBy(ids.Get([]byte(deliveryID)), id) {
		return nil
	}
	if q.opts.Retention <= 0 {
		return ids.Delete([]byte(deliveryID))
	}
	forgetKey := timeKey(now.Add(q.opts.Retention), []byte(deliveryID))
	if err := ids.Put([]byte(deliveryID), append([]byte{idDelivered}, forgetKey[:8]...)); err != nil {
		return err
	}
	return tx.Bucket(bucketForget).Put(forgetKey, nil)
}

// forgetExpired forgets up to n delivered DeliveryIDs whose retention
// ended by now, oldest first. One held again since (its retention ended
// and a message with it was stored, or it was delivered again) is left.
func forgetExpired(tx *bolt.Tx, now time.Time, n int) error {
	ids := tx.Bucket(bucketIDs)
	c := tx.Bucket(bucketForget).Cursor()
	for k, _ := c.First(); k != nil && n > 0 && !keyTime(k).After(now); k, _ = c.First() {
		k = bytes.Clone(k)
		deliveryID := k[8:]
		if v := ids.Get(deliveryID); len(v) == 9 && v[0] == idDelivered && bytes.Equal(v[1:], k[:8]) {
			if err := ids.Delete(deliveryID); err != nil {
				return err
			}
		}
		if err := c.Delete(); err != nil {
			return err
		}
		n--
	}
	return nil
}

// Reschedule implements Store.
func (q *File) Reschedule(_ context.Context, m *Message, a Attempt, next time.Time) error {
	b, err := q.db.bolt()
	if err != nil {
		return err
	}
	m.Due = next
	raw, err := m.recordAttempt(a)
	if err != nil {
		return err
	}
	f := q.db
	l := f.hold(m)
	if l == nil {
		return nil // the take's lease ended: the message is due again, or another take's
	}
	err = b.Update(func(tx *bolt.Tx) error {
		id := []byte(m.ID)
		msgs, due := tx.Bucket(bucketMessages), tx.Bucket(bucketDue)
		rec := msgs.Get(id)
		if rec == nil {
			return nil // completed meanwhile by a take whose lease had ended: it stays so
		}
		if err := due.Delete(recordDueKey(rec, id)); err != nil {
			return err
		}
		if err := msgs.Put(id, record(next, raw)); err != nil {
			return err
		}
		return due.Put(timeKey(next, id), nil)
	})
	f.settled(m.ID, l, err)
	return err
}

// summary is m as Dead lists it: without headers and body.
func summary(m *Message) ([]byte, error) {
	s := *m
	s.Header, s.Body = nil, nil
	return json.Marshal(&s)
}

// Bury implements Store. The DeliveryID stays held by the dead letter.
func (q *File) Bury(_ context.Context, m *Message, a Attempt) error {
	b, err := q.db.bolt()
	if err != nil {
		return err
	}
	raw, err := m.recordAttempt(a)
	if err != nil {
		return err
	}
	info, err := summary(m)
	if err != nil {
		return err
	}
	f := q.db
	l := f.hold(m)
	if l == nil {
		return nil // the take's lease ended: the message is due again, or another take's
	}
	buried := false
	err = b.Update(func(tx *bolt.Tx) error {
		buried = false
		id := []byte(m.ID)
		msgs := tx.Bucket(bucketMessages)
		rec := msgs.Get(id)
		if rec == nil {
			return nil // completed meanwhile: it stays so
		}
		if err := tx.Bucket(bucketDue).Delete(recordDueKey(rec, id)); err != nil {
			return err
		}
		if err := msgs.Delete(id); err != nil {
			return err
		}
		if err := tx.Bucket(bucketDead).Put(id, raw); err != nil {
			return err
		}
		buried = true
		return tx.Bucket(bucketDeadInfo).Put(id, info)
	})
	f.settled(m.ID, l, err)
	if err == nil && buried {
		f.live.Add(-1)
	}
	return err
}

// Counts implements Store.
func (q *File) Counts(context.Context) (Counts, error) {
	b, err := q.db.bolt()
	if err != nil {
		return Counts{}, err
	}
	f := q.db
	f.leaseMu.Lock()
	now := f.now()
	// inFlight: true for a message in flight, false for one whose lease
	// ended (pending, whatever its due time).
	inFlight := make(map[string]bool, len(f.leases))
	for id, l := range f.leases {
		inFlight[id] = l.settling || l.until.After(now)
	}
	f.leaseMu.Unlock()
	var c Counts
	err = b.View(func(tx *bolt.Tx) error {
		_ = tx.Bucket(bucketDue).ForEach(func(k, _ []byte) error {
			live, leased := inFlight[string(k[8:])]
			switch {
			case live:
				c.InFlight++
			case !leased && keyTime(k).After(now):
				c.Scheduled++
			default:
				c.Pending++
			}
			return nil
		})
		c.Dead = tx.Bucket(bucketDeadInfo).Stats().KeyN
		if k, _ := tx.Bucket(bucketMessages).Cursor().First(); k != nil {
			c.Oldest = idTime(k)
		}
		return nil
	})
	return c, err
}

// Dead implements Store: it reads the dead letters' summaries, not the
// letters.
func (q *File) Dead(_ context.Context, limit int) ([]Message, error) {
	b, err := q.db.bolt()
	if err != nil {
		return nil, err
	}
	var out []Message
	err = b.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketDeadInfo).Cursor()
		for k, v := c.First(); k != nil && len(out) < limit; k, v = c.Next() {
			var m Message
			if err := json.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("dead letter %s: %w", k, err)
			}
			out = append(out, m)
		}
		return nil
	})
	return out, err
}

// Revive implements Store.
func (q *File) Revive(_ context.Context, id string) error {
	if id == "" {
		return ErrNotFound
	}
	b, err := q.db.bolt()
	if err != nil {
		return err
	}
	f := q.db
	err = b.Update(func(tx *bolt.Tx) error {
		revived, err := revive(tx, []byte(id), f.now())
		if err == nil && !revived {
			err = ErrNotFound
		}
		return err
	})
	if err == nil {
		f.live.Add(1)
	}
	return err
}

// ReviveAll implements Store.
func (q *File) ReviveAll(context.Context) (int, error) {
	return q.reviveOldest(0)
}

// reviveOldest revives the oldest dead letters, up to limit of them (0:
// all), in one transaction, and returns how many it revived.
func (q *File) reviveOldest(limit int) (int, error) {
	b, err := q.db.bolt()
	if err != nil {
		return 0, err
	}
	f := q.db
	revived := 0
	err = b.Update(func(tx *bolt.Tx) error {
		revived = 0
		var ids [][]byte
		c := tx.Bucket(bucketDeadInfo).Cursor()
		for k, _ := c.First(); k != nil && (limit <= 0 || len(ids) < limit); k, _ = c.Next() {
			ids = append(ids, bytes.Clone(k))
		}
		now := f.now()
		for _, id := range ids {
			ok, err := revive(tx, id, now)
			if err != nil {
				return err
			}
			if ok {
				revived++
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	f.live.Add(int64(revived))
	return revived, nil
}

// revive makes the dead letter id due at now, in tx, with a new round of
// the retry schedule, and reports whether there was one. Its DeliveryID
// stays held.
func revive(tx *bolt.Tx, id []byte, now time.Time) (bool, error) {
	dead := tx.Bucket(bucketDead)
	raw := dead.Get(id)
	if raw == nil {
		return false, nil
	}
	var m Message
	if err := json.Unmarshal(raw, &m); err != nil {
		return false, fmt.Errorf("dead letter %s: %w", id, err)
	}
	m.Due, m.Tries = now, 0
	fresh, err := json.Marshal(&m)
	if err != nil {
		return false, err
	}
	if err := dead.Delete(id); err != nil {
		return false, err
	}
	if err := tx.Bucket(bucketDeadInfo).Delete(id); err != nil {
		return false, err
	}
	if err := tx.Bucket(bucketMessages).Put(id, record(now, fresh)); err != nil {
		return false, err
	}
	return true, tx.Bucket(bucketDue).Put(timeKey(now, id), nil)
}

// Drop implements Store. The dead letter's DeliveryID is released.
func (q *File) Drop(_ context.Context, id string) error {
	b, err := q.db.bolt()
	if err != nil {
		return err
	}
	return b.Update(func(tx *bolt.Tx) error {
		dead, deadInfo := tx.Bucket(bucketDead), tx.Bucket(bucketDeadInfo)
		info := deadInfo.Get([]byte(id))
		if info == nil || dead.Get([]byte(id)) == nil {
			return ErrNotFound
		}
		var held struct {
			DeliveryID string `json:"delivery_id"`
		}
		if err := json.Unmarshal(info, &held); err != nil {
			return fmt.Errorf("dead letter %s: %w", id, err)
		}
		if err := dead.Delete([]byte(id)); err != nil {
			return err
		}
		if err := deadInfo.Delete([]byte(id)); err != nil {
			return err
		}
		ids := tx.Bucket(bucketIDs)
		if held.DeliveryID != "" && heldBy(ids.Get([]byte(held.DeliveryID)), id) {
			return ids.Delete([]byte(held.DeliveryID))
		}
		return nil
	})
}

// Interface guards
var (
	_ Store              = (*File)(nil)
	_ caddy.Provisioner  = (*File)(nil)
	_ caddy.CleanerUpper = (*File)(nil)
)

// UnmarshalCaddyfile sets up the file store from Caddyfile tokens, within
// a webhook_queue block. Syntax:
//
//	store file [<path>]
func (q *File) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume the engine's name
	if d.NextArg() {
		q.Path = d.Val()
	}
	if d.NextArg() || d.NextBlock(0) {
		return d.ArgErr()
	}
	return nil
}

var _ caddyfile.Unmarshaler = (*File)(nil)
