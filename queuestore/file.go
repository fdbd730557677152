package queuestore

import (
	"bytes"
	"cmp"
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
	"slices"
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
// commit (bbolt's Batch). Completions are committed together, a few
// milliseconds after they were made (Store.Complete): a crash loses the
// last ones, whose messages are delivered again. One Caddy process holds
// the file (bbolt locks it), from when it starts the config, so that caddy
// validate does not need the lock; the queue survives reloads, which share
// the open file, and restarts: messages a killed process had in flight are
// due again when the file is next opened.
//
// A take only reads the file, so an idle queue writes nothing; its workers
// wait on Wait, whose channel this process closes when it stores a message
// or makes one due, and a timer at the next due time it knows of. The
// space of what was delivered stays in the file (bbolt reuses it) until
// Compact, or the next open of a file mostly free, gives it back.
//
// Leases are kept in memory, on Go's monotonic clock, so that a step of
// the system clock neither ends them early nor keeps them: only one process
// holds the file, and what it had in flight when it stopped is due at the
// next open anyway. Retries are scheduled, and delivered ids remembered
// (Options.Retention), on the wall clock, which outlives a restart.
//
// The file's buckets:
//
//   - meta: the format of the file ("format": "3"), and how many dead
//     letters it holds ("dead_count", 8 bytes, big-endian).
//   - messages: the messages not dead, by id: the message's due time (8
//     bytes, big-endian Unix nanoseconds), the length of its info (4
//     bytes, big-endian), its info (what List shows, as JSON), then the
//     message as JSON.
//   - due: every message not dead, in flight included, by due time then
//     id (keys only). A take marks the message in flight in memory only.
//   - ids: the DeliveryIDs held, each either by a message queued, in
//     flight or dead ('h', then the message's id), or by one delivered
//     ('d', then when it is forgotten, in Unix nanoseconds).
//   - forget: the delivered DeliveryIDs by when they are forgotten (keys
//     only), which each commit of completions sweeps a few of.
//   - dead: the dead letters by id, as JSON.
//   - dead_info: the dead letters by id: when they were buried (8 bytes),
//     then their info; what List shows, so that listing reads no body.
//   - dead_time: the dead letters by when they were buried, then id (keys
//     only): the oldest, which the retention drops first.
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
	bucketDeadTime = []byte("dead_time")

	keyFormat    = []byte("format")
	keyDeadCount = []byte("dead_count")
	fileFormat   = []byte("3")
	// fileFormat2 is the format before, which open converts: its
	// records have no info, its dead letters no time of burial.
	fileFormat2 = []byte("2")
)

// Values of the ids bucket: held by a message, or delivered.
const (
	idHeld      = 'h'
	idDelivered = 'd'
)

// forgetPerComplete bounds the expired DeliveryIDs each completion
// forgets: more than the one it adds, so that the backlog shrinks.
const forgetPerComplete = 8

// compactAtOpen: a file at least this large (32 MiB; tests lower it), and
// at least half free, is compacted when it is opened (see open).
var compactAtOpen = func() *atomic.Int64 {
	var n atomic.Int64
	n.Store(32 << 20)
	return &n
}()

// maxWakeTimer bounds the timer of Wait: a step of the wall clock moves
// the due times of retries, which the timer measures on the monotonic one.
const maxWakeTimer = time.Minute

// files keeps each open file across config reloads.
var files = caddy.NewUsagePool()

// fileDB is one queue file, shared by the handlers that use it, opened on
// first use.
type fileDB struct {
	path   string
	now    func() time.Time
	logger *zap.Logger

	// swap guards db: every use of the file holds it for reading (use);
	// Compact and Destruct hold it for writing, so that the callers wait
	// while the file is replaced or closed. Nothing that holds it for
	// reading takes it again.
	swap   sync.RWMutex
	db     *bolt.DB
	closed bool

	// live counts the messages not dead, for max_pending: those whose
	// completion is not committed yet included.
	live atomic.Int64
	seq  atomic.Uint64
	// deadDropped counts the dead letters the retention dropped.
	deadDropped atomic.Int64

	// leaseMu guards leases and takes. Take holds it while it reads the
	// file, so that what it reads agrees with the leases and done: a
	// settle ends its lease, and a flush forgets its completions, only
	// once what they wrote is committed, and under it.
	leaseMu sync.Mutex
	// leases are the messages in flight by id (and the expired leases of
	// messages not yet taken again).
	leases map[string]*fileLease
	takes  uint64

	// doneMu guards done, the completions not committed yet, by message
	// id. It is taken last: nothing is locked, nor a transaction begun,
	// while it is held.
	doneMu sync.Mutex
	done   map[string]*completion
	// flushMu makes one commit of completions at a time.
	flushMu sync.Mutex
	batch   *batcher
	// startOnce starts the batcher when the file is first opened.
	startOnce sync.Once

	wake *waker
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

// completion is a Complete not committed yet.
type completion struct {
	id, deliveryID string
	// retention is the completing store's Options.Retention.
	retention time.Duration
}

func newFileDB(path string, now func() time.Time, logger *zap.Logger) *fileDB {
	return &fileDB{
		path: path, now: now, logger: logger,
		leases: map[string]*fileLease{}, done: map[string]*completion{},
		batch: newBatcher(), wake: newWaker(),
	}
}

// errClosed: the file was closed (its last config was unloaded).
var errClosed = errors.New("the queue file is closed")

// Destruct commits the completions waiting, and closes the file.
func (f *fileDB) Destruct() error {
	f.startOnce.Do(func() { close(f.batch.done) }) // no batcher ran if never opened
	f.batch.halt()
	f.wake.stop()
	f.swap.Lock()
	defer f.swap.Unlock()
	f.closed = true
	if f.db == nil {
		return nil
	}
	if err := f.flush(f.db); err != nil {
		f.logger.Warn("could not commit the last completions: their messages will be delivered again", zap.String("path", f.path), zap.Error(err))
	}
	err := f.db.Close()
	f.db = nil
	return err
}

// use returns the open file, opening it if need be, and the function that
// ends the use (a compaction waits for it). It is never called while a
// use lasts.
func (f *fileDB) use() (*bolt.DB, func(), error) {
	f.swap.RLock()
	if f.db != nil {
		return f.db, f.swap.RUnlock, nil
	}
	closed := f.closed
	f.swap.RUnlock()
	if closed {
		return nil, nil, errClosed
	}
	f.swap.Lock()
	if f.db == nil && !f.closed {
		db, err := f.open()
		if err != nil {
			f.swap.Unlock()
			return nil, nil, fmt.Errorf("opening %s: %w", f.path, err)
		}
		f.db = db
		f.startOnce.Do(func() { go f.batch.run(f.flushWaiting) })
	}
	f.swap.Unlock()
	return f.use()
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
		return newFileDB(path, now, logger), nil
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

// Start implements Store: it opens the file, and drops the dead letters
// past this config's bounds.
func (q *File) Start() error {
	_, release, err := q.db.use()
	if err != nil {
		return err
	}
	release()
	dropped, err := q.dropPastBounds()
	if dropped > 0 {
		q.db.logger.Info("dropped the dead letters past dead_letters' bounds", zap.String("queue", q.opts.Name), zap.Int("dropped", dropped),
			zap.Duration("max_age", q.opts.DeadMaxAge), zap.Int("max_count", q.opts.DeadMaxCount))
	}
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

// boltOptions are the file's options. The free pages are kept in a hash
// map (FreelistMapType), whose allocations and frees do not scan a sorted
// array of every free page, and the list of them is not written with each
// commit (NoFreelistSync): a file that once held a large backlog has a
// freelist of hundreds of KiB, which bbolt would otherwise write, and
// fsync, on every commit, an enqueue's included. bbolt rebuilds the list
// when it opens the file, by walking its pages: a cost in proportion to
// the file, once per open.
func boltOptions() *bolt.Options {
	return &bolt.Options{Timeout: 5 * time.Second, FreelistType: bolt.FreelistMapType, NoFreelistSync: true}
}

// open opens the file, making its buckets if it is new, converting it if
// it has the format before. What a dead process had in flight is due
// already: a take is kept in memory only.
//
// A file of at least compactAtOpen bytes that is at least half free (it
// held a backlog, since delivered) is compacted first: the copy reads and
// writes only what the file holds, nothing is delivered meanwhile, and the
// space goes back to the system without the operator's Compact.
func (f *fileDB) open() (*bolt.DB, error) {
	dir := filepath.Dir(f.path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		// Only Caddy's user may read the deliveries it holds.
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		f.logger.Info("created the queue file's directory, readable by this user only", zap.String("directory", dir), zap.String("mode", "0700"))
	}
	db, err := bolt.Open(f.path, 0o600, boltOptions())
	if err != nil {
		return nil, err
	}
	converted := false
	err = db.Update(func(tx *bolt.Tx) error {
		converted = false
		meta := tx.Bucket(bucketMeta)
		switch {
		case meta == nil && tx.Bucket(bucketMessages) != nil:
			return errors.New("the file holds a queue in an earlier format, which this version does not read: deliver it with the version that wrote it, or move the file aside")
		case meta != nil && bytes.Equal(meta.Get(keyFormat), fileFormat2):
			converted = true
		case meta != nil && !bytes.Equal(meta.Get(keyFormat), fileFormat):
			return fmt.Errorf("the file's format is %q; this version reads %q", meta.Get(keyFormat), fileFormat)
		}
		for _, name := range [][]byte{bucketMeta, bucketMessages, bucketDue, bucketIDs, bucketForget, bucketDead, bucketDeadInfo, bucketDeadTime} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		if converted {
			if err := convert2(tx, f.now()); err != nil {
				return fmt.Errorf("converting the file from format 2: %w", err)
			}
		}
		meta = tx.Bucket(bucketMeta)
		if err := meta.Put(keyFormat, fileFormat); err != nil {
			return err
		}
		if meta.Get(keyDeadCount) == nil {
			if err := addDeadCount(tx, keyCount(tx.Bucket(bucketDeadInfo))); err != nil {
				return err
			}
		}
		f.live.Store(keyCount(tx.Bucket(bucketMessages)))
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	if converted {
		f.logger.Info("converted the queue file to format 3", zap.String("path", f.path))
	}
	if st, err := os.Stat(f.path); err == nil && st.Size() >= compactAtOpen.Load() {
		free := int64(db.Stats().FreePageN) * int64(db.Info().PageSize)
		if free*2 >= st.Size() {
			compacted, before, after, err := compact(db, f.path)
			if err != nil {
				if compacted == nil {
					return nil, err
				}
				f.logger.Warn("could not compact the queue file", zap.String("path", f.path), zap.Error(err))
			} else {
				f.logger.Info("compacted the queue file, which was mostly free", zap.String("path", f.path), zap.Int64("before", before), zap.Int64("after", after))
			}
			db = compacted
		}
	}
	return db, nil
}

// keyCount counts b's keys. (Bucket.Stats counts only what is on pages
// committed before the transaction: not a bucket made and filled in it.)
func keyCount(b *bolt.Bucket) int64 {
	var n int64
	c := b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		n++
	}
	return n
}

// convert2 converts, in tx, a file of format 2: each record gets its info,
// each dead letter its time of burial (its last attempt's) and its info.
func convert2(tx *bolt.Tx, now time.Time) error {
	type kv struct{ k, v []byte }
	var recs []kv
	msgs := tx.Bucket(bucketMessages)
	if err := msgs.ForEach(func(k, v []byte) error {
		if len(v) < 8 {
			return fmt.Errorf("message %s: a record too short", k)
		}
		var m Message
		if err := json.Unmarshal(v[8:], &m); err != nil {
			return fmt.Errorf("message %s: %w", k, err)
		}
		inf, err := marshalInfo(&m)
		if err != nil {
			return err
		}
		recs = append(recs, kv{bytes.Clone(k), recordOf(keyTime(v), inf, v[8:])})
		return nil
	}); err != nil {
		return err
	}
	for _, r := range recs {
		if err := msgs.Put(r.k, r.v); err != nil {
			return err
		}
	}
	recs = recs[:0]
	var times [][]byte
	if err := tx.Bucket(bucketDead).ForEach(func(k, v []byte) error {
		var m Message
		if err := json.Unmarshal(v, &m); err != nil {
			return fmt.Errorf("dead letter %s: %w", k, err)
		}
		buried := now
		if n := len(m.Attempts); n > 0 && !m.Attempts[n-1].At.IsZero() {
			buried = m.Attempts[n-1].At
		}
		inf, err := marshalInfo(&m)
		if err != nil {
			return err
		}
		recs = append(recs, kv{bytes.Clone(k), append(timeKey(buried, nil), inf...)})
		times = append(times, timeKey(buried, k))
		return nil
	}); err != nil {
		return err
	}
	deadInfo, deadTime := tx.Bucket(bucketDeadInfo), tx.Bucket(bucketDeadTime)
	for i, r := range recs {
		if err := deadInfo.Put(r.k, r.v); err != nil {
			return err
		}
		if err := deadTime.Put(times[i], nil); err != nil {
			return err
		}
	}
	return nil
}

// compact copies db, at path, into a new file that holds only what db
// holds, and puts it in db's place: db is closed, and the new file
// returned open, with db's size and its own. On an error before db was
// closed, db is returned as it was; after, nil.
func compact(db *bolt.DB, path string) (_ *bolt.DB, before, after int64, err error) {
	st, err := os.Stat(path)
	if err != nil {
		return db, 0, 0, err
	}
	before = st.Size()
	tmp := path + ".compact"
	_ = os.Remove(tmp) // left by a compaction that died
	dst, err := bolt.Open(tmp, 0o600, boltOptions())
	if err != nil {
		return db, before, 0, err
	}
	// Each of Compact's transactions is fsynced as it commits.
	err = bolt.Compact(dst, db, 64<<20)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return db, before, 0, err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync() // the rename survives a crash
		d.Close()
	}
	_ = db.Close()
	db, err = bolt.Open(path, 0o600, boltOptions())
	if err != nil {
		return nil, before, 0, err
	}
	if st, err := os.Stat(path); err == nil {
		after = st.Size()
	}
	return db, before, after, nil
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

// recordHead is the length of a record's head: its due time and the
// length of its info.
const recordHead = 12

// recordOf is a message as the messages bucket keeps it: its due time,
// its info, then its JSON.
func recordOf(due time.Time, inf, raw []byte) []byte {
	rec := make([]byte, recordHead, recordHead+len(inf)+len(raw))
	binary.BigEndian.PutUint64(rec, uint64(due.UnixNano()))
	binary.BigEndian.PutUint32(rec[8:], uint32(len(inf)))
	rec = append(rec, inf...)
	return append(rec, raw...)
}

// encodeRecord is m's record, m's JSON being raw.
func encodeRecord(due time.Time, m *Message, raw []byte) ([]byte, error) {
	inf, err := marshalInfo(m)
	if err != nil {
		return nil, err
	}
	return recordOf(due, inf, raw), nil
}

// recordParts splits a record.
func recordParts(rec []byte) (due time.Time, inf, raw []byte, ok bool) {
	if len(rec) < recordHead {
		return time.Time{}, nil, nil, false
	}
	n := uint64(binary.BigEndian.Uint32(rec[8:recordHead]))
	if uint64(len(rec)-recordHead) < n {
		return time.Time{}, nil, nil, false
	}
	return keyTime(rec), rec[recordHead : recordHead+n], rec[recordHead+n:], true
}

// decodeRecord returns the message the record rec of id holds, due when
// the record says.
func decodeRecord(id string, rec []byte) (*Message, error) {
	due, _, raw, ok := recordParts(rec)
	if !ok {
		return nil, fmt.Errorf("message %s: a record too short", id)
	}
	m := new(Message)
	if err := json.Unmarshal(raw, m); err != nil {
		return nil, fmt.Errorf("message %s: %w", id, err)
	}
	m.Due = due
	return m, nil
}

// recordDueKey is the key in the due index of the message id stored as
// rec.
func recordDueKey(rec, id []byte) []byte {
	return append(bytes.Clone(rec[:8]), id...)
}

// deadCount is how many dead letters the file holds.
func deadCount(tx *bolt.Tx) int64 {
	v := tx.Bucket(bucketMeta).Get(keyDeadCount)
	if len(v) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

func addDeadCount(tx *bolt.Tx, d int64) error {
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], uint64(max(deadCount(tx)+d, 0)))
	return tx.Bucket(bucketMeta).Put(keyDeadCount, v[:])
}

// Name implements Store.
func (q *File) Name() string { return q.opts.Name }

// Location implements Store: the file's path.
func (q *File) Location() string { return q.Path }

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
// the retention ago (its completion committed or not).
func (f *fileDB) heldID(tx *bolt.Tx, v []byte, now time.Time) bool {
	switch {
	case len(v) == 0:
		return false
	case v[0] == idHeld:
		id := v[1:]
		// A hold is removed with its message; this guards against a file
		// whose ids disagree with its messages rather than lose a delivery.
		if tx.Bucket(bucketDead).Get(id) != nil {
			return true
		}
		if tx.Bucket(bucketMessages).Get(id) == nil {
			return false
		}
		f.doneMu.Lock()
		c := f.done[string(id)]
		f.doneMu.Unlock()
		return c == nil || c.retention > 0
	case v[0] == idDelivered && len(v) == 9:
		return keyTime(v[1:]).After(now)
	}
	return false
}

// heldBy reports whether v holds its DeliveryID for the message id.
func heldBy(v []byte, id string) bool {
	return len(v) > 0 && v[0] == idHeld && string(v[1:]) == id
}

// reserve counts up to n more live messages under maxPending, and returns
// how many it counted.
func (f *fileDB) reserve(n, maxPending int) int {
	for {
		live := f.live.Load()
		// Each config's handlers hold the count to their own limit: a
		// config that is loading (or failed to) changes nothing for the
		// running one's, whichever of Caddy's apps starts first.
		room := min(int64(maxPending)-live, int64(n))
		if room <= 0 {
			return 0
		}
		if f.live.CompareAndSwap(live, live+room) {
			return int(room)
		}
	}
}

// pendingCompletions is how many completions wait for their commit.
func (f *fileDB) pendingCompletions() int {
	f.doneMu.Lock()
	defer f.doneMu.Unlock()
	return len(f.done)
}

// Enqueue implements Store.
func (q *File) Enqueue(_ context.Context, m *Message) error {
	f := q.db
	b, release, err := f.use()
	if err != nil {
		return err
	}
	defer release()
	if f.reserve(1, q.opts.MaxPending) == 0 {
		// The completions waiting may free room.
		if f.pendingCompletions() == 0 || f.flush(b) != nil || f.reserve(1, q.opts.MaxPending) == 0 {
			return q.full(b, m.DeliveryID)
		}
	}
	now := f.now()
	m.ID, m.Received, m.Due = f.newID(now), now, now
	raw, err := json.Marshal(m)
	var rec []byte
	if err == nil {
		rec, err = encodeRecord(now, m, raw)
	}
	duplicate := false
	if err == nil {
		id := []byte(m.ID)
		// Batch: concurrent enqueues share one commit, one fsync. The
		// DeliveryID's hold is written with the message: both or neither.
		err = b.Batch(func(tx *bolt.Tx) error {
			duplicate = false // Batch may run this again, alone
			if m.DeliveryID != "" {
				ids := tx.Bucket(bucketIDs)
				if f.heldID(tx, ids.Get([]byte(m.DeliveryID)), now) {
					duplicate = true
					return nil
				}
				if err := ids.Put([]byte(m.DeliveryID), append([]byte{idHeld}, id...)); err != nil {
					return err
				}
			}
			if err := tx.Bucket(bucketMessages).Put(id, rec); err != nil {
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
	if err == nil {
		f.wake.notify()
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
		duplicate = q.db.heldID(tx, tx.Bucket(bucketIDs).Get([]byte(deliveryID)), now)
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

// Take implements Store. The messages stay in the due index: the take is
// in memory, and reads the file only. Messages whose lease ended are taken
// again first, whatever the wall clock says of their due time; then the
// due ones, soonest due first.
func (q *File) Take(_ context.Context, n int, lease time.Duration) ([]*Message, error) {
	if n <= 0 {
		return nil, nil
	}
	n = min(n, maxTake)
	f := q.db
	b, release, err := f.use()
	if err != nil {
		return nil, err
	}
	defer release()
	type pick struct {
		id  string
		rec []byte
	}
	var picks []pick
	f.leaseMu.Lock()
	now := f.now()
	ended := f.endedLeases(now, n)
	err = b.View(func(tx *bolt.Tx) error {
		msgs := tx.Bucket(bucketMessages)
		for _, id := range ended {
			rec := msgs.Get([]byte(id))
			if rec == nil {
				delete(f.leases, id) // cannot be: a settle ends the lease of what it removes
				continue
			}
			picks = append(picks, pick{id, bytes.Clone(rec)})
		}
		if len(picks) >= n {
			return nil
		}
		f.doneMu.Lock()
		defer f.doneMu.Unlock()
		c := tx.Bucket(bucketDue).Cursor()
		// Due times are on the wall clock (keyTime has no monotonic
		// reading, so After compares wall clocks); leases on the
		// monotonic one.
		for k, _ := c.First(); k != nil && len(picks) < n && !keyTime(k).After(now); k, _ = c.Next() {
			id := k[8:]
			if f.leases[string(id)] != nil || f.done[string(id)] != nil {
				continue // in flight (or just taken again above), or completed
			}
			rec := msgs.Get(id)
			if rec == nil {
				continue // cannot be: a message leaves the index with its record
			}
			picks = append(picks, pick{string(id), bytes.Clone(rec)})
		}
		return nil
	})
	if err != nil {
		f.leaseMu.Unlock()
		return nil, fmt.Errorf("reading messages: %w", err)
	}
	until := now.Add(lease)
	takes := make([]uint64, len(picks))
	for i, p := range picks {
		f.takes++
		takes[i] = f.takes
		f.leases[p.id] = &fileLease{take: f.takes, until: until}
	}
	f.leaseMu.Unlock()
	if len(picks) == 0 {
		return nil, nil
	}
	f.wake.wakeAt(until, now) // the lease ends: the message is due again unless settled
	out := make([]*Message, 0, len(picks))
	var bad []string
	for i, p := range picks {
		m, err := decodeRecord(p.id, p.rec)
		if err != nil {
			bad = append(bad, p.id)
			q.db.logger.Error("a message cannot be read", zap.String("queue", q.opts.Name), zap.Error(err))
			continue
		}
		m.entry = strconv.FormatUint(takes[i], 10)
		out = append(out, m)
	}
	if len(bad) > 0 {
		f.leaseMu.Lock()
		for _, id := range bad {
			delete(f.leases, id)
		}
		f.leaseMu.Unlock()
		if len(out) == 0 {
			return nil, fmt.Errorf("reading messages: %d cannot be read", len(bad))
		}
	}
	return out, nil
}

// endedLeases returns up to n messages whose lease ended by now (and that
// are not being settled), the first ended first. The leases are the
// messages in flight, as many as the process's workers take at most, and
// the few whose lease ended since the last take.
func (f *fileDB) endedLeases(now time.Time, n int) []string {
	var ids []string
	for id, l := range f.leases {
		if !l.settling && !l.until.After(now) {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	slices.SortFunc(ids, func(a, b string) int { return f.leases[a].until.Compare(f.leases[b].until) })
	return ids[:min(n, len(ids))]
}

// isTake reports whether l is the lease of m's take.
func isTake(l *fileLease, m *Message) bool {
	return l != nil && strconv.FormatUint(l.take, 10) == m.entry
}

// Wait implements Store: the channel is closed when this process stores a
// message or makes one due, and by a timer at the soonest due time of a
// scheduled message, or end of a lease, known.
func (q *File) Wait() <-chan struct{} {
	f := q.db
	ch, at := f.wake.wait()
	if at.IsZero() {
		// The timer fired (or never was armed): arm it for what comes
		// next, as the file and the leases say. A read, no write.
		if t := f.soonest(); !t.IsZero() {
			now := f.now()
			if limit := now.Add(maxWakeTimer); t.After(limit) {
				t = limit
			}
			f.wake.wakeAt(t, now)
		}
	}
	return ch
}

// soonest is the soonest time a message becomes due: a scheduled one's,
// or a lease's end (zero: none).
func (f *fileDB) soonest() time.Time {
	var t time.Time
	f.leaseMu.Lock()
	now := f.now()
	for _, l := range f.leases {
		if !l.settling && (t.IsZero() || l.until.Before(t)) {
			t = l.until
		}
	}
	f.leaseMu.Unlock()
	b, release, err := f.use()
	if err != nil {
		return t
	}
	defer release()
	_ = b.View(func(tx *bolt.Tx) error {
		if k, _ := tx.Bucket(bucketDue).Cursor().Seek(timeKey(now.Add(time.Nanosecond), nil)); k != nil {
			if due := keyTime(k); t.IsZero() || due.Before(t) {
				t = due
			}
		}
		return nil
	})
	return t
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
// ended, or the message is another take's, settled or completed).
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
// held again if the write failed. A lease that Complete ended meanwhile is
// not the settle's any more.
func (f *fileDB) settled(id string, l *fileLease, err error) {
	f.leaseMu.Lock()
	defer f.leaseMu.Unlock()
	if f.leases[id] != l {
		return
	}
	if err != nil {
		l.settling = false
	} else {
		delete(f.leases, id)
	}
}

// Complete implements Store. Whoever holds the message, its lease ends
// now: from here on no take has it, and another take's settle changes
// nothing. The removal is committed with others' (see completeBatch), and
// until then the message is neither taken nor counted.
func (q *File) Complete(_ context.Context, m *Message, _ Attempt) error {
	f := q.db
	_, release, err := f.use()
	if err != nil {
		return err
	}
	release()
	f.leaseMu.Lock()
	delete(f.leases, m.ID)
	f.doneMu.Lock()
	if f.done[m.ID] == nil {
		f.done[m.ID] = &completion{id: m.ID, deliveryID: m.DeliveryID, retention: q.opts.Retention}
	}
	waiting := len(f.done)
	f.doneMu.Unlock()
	f.leaseMu.Unlock()
	f.batch.added(waiting)
	return nil
}

// flushWaiting commits the completions waiting, for the batcher.
func (f *fileDB) flushWaiting() error {
	b, release, err := f.use()
	if err == nil {
		err = f.flush(b)
		release()
	}
	if err != nil {
		f.logger.Error("could not commit completions; trying again", zap.String("path", f.path), zap.Error(err))
	}
	return err
}

// flush commits the completions waiting, in one transaction. Those it
// could not commit wait for the next.
func (f *fileDB) flush(b *bolt.DB) error {
	f.flushMu.Lock()
	defer f.flushMu.Unlock()
	f.doneMu.Lock()
	batch := make([]*completion, 0, len(f.done))
	for _, c := range f.done {
		batch = append(batch, c)
	}
	f.doneMu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	removed := 0
	err := b.Update(func(tx *bolt.Tx) error {
		removed = 0
		now := f.now()
		msgs, due := tx.Bucket(bucketMessages), tx.Bucket(bucketDue)
		for _, c := range batch {
			id := []byte(c.id)
			rec := msgs.Get(id)
			if rec == nil {
				continue // completed by another take, or buried meanwhile
			}
			if err := due.Delete(recordDueKey(rec, id)); err != nil {
				return err
			}
			if err := msgs.Delete(id); err != nil {
				return err
			}
			removed++
			if c.deliveryID != "" {
				if err := delivered(tx, c, now); err != nil {
					return err
				}
			}
		}
		return forgetExpired(tx, now, forgetPerComplete*len(batch))
	})
	if err != nil {
		return err
	}
	f.live.Add(int64(-removed))
	// Forgotten under leaseMu, which a take holds from before its
	// snapshot until it has checked done: a take whose snapshot predates
	// this commit still finds them done.
	f.leaseMu.Lock()
	f.doneMu.Lock()
	for _, c := range batch {
		if f.done[c.id] == c {
			delete(f.done, c.id)
		}
	}
	f.doneMu.Unlock()
	f.leaseMu.Unlock()
	return nil
}

// delivered remembers the DeliveryID of the completion c, delivered at
// now, for its retention (forgets it at once without one).
func delivered(tx *bolt.Tx, c *completion, now time.Time) error {
	ids := tx.Bucket(bucketIDs)
	if !heldBy(ids.Get([]byte(c.deliveryID)), c.id) {
		return nil
	}
	if c.retention <= 0 {
		return ids.Delete([]byte(c.deliveryID))
	}
	forgetKey := timeKey(now.Add(c.retention), []byte(c.deliveryID))
	if err := ids.Put([]byte(c.deliveryID), append([]byte{idDelivered}, forgetKey[:8]...)); err != nil {
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
	m.Due = next
	raw, err := m.recordAttempt(a)
	if err != nil {
		return err
	}
	return q.schedule(m, raw, next)
}

// Postpone implements Store.
func (q *File) Postpone(_ context.Context, m *Message, a Attempt, next time.Time) error {
	m.Due = next
	raw, err := m.recordPostponed(a)
	if err != nil {
		return err
	}
	return q.schedule(m, raw, next)
}

// schedule writes m, whose JSON is raw, due at next, while its take holds
// it.
func (q *File) schedule(m *Message, raw []byte, next time.Time) error {
	rec, err := encodeRecord(next, m, raw)
	if err != nil {
		return err
	}
	f := q.db
	settled, err := f.settle(m, func(tx *bolt.Tx) error {
		id := []byte(m.ID)
		msgs, due := tx.Bucket(bucketMessages), tx.Bucket(bucketDue)
		old := msgs.Get(id)
		if old == nil {
			return nil // completed meanwhile by a take whose lease had ended: it stays so
		}
		if err := due.Delete(recordDueKey(old, id)); err != nil {
			return err
		}
		if err := msgs.Put(id, rec); err != nil {
			return err
		}
		return due.Put(timeKey(next, id), nil)
	})
	if settled {
		f.wake.wakeAt(next, f.now())
	}
	return err
}

// settle writes, in one transaction, the settle of m by the take that
// holds it, and ends that take's hold; it writes nothing when the take's
// lease has ended (the message is due again, or another take's). It says
// whether it wrote.
func (f *fileDB) settle(m *Message, write func(*bolt.Tx) error) (bool, error) {
	b, release, err := f.use()
	if err != nil {
		return false, err
	}
	defer release()
	l := f.hold(m)
	if l == nil {
		return false, nil
	}
	err = b.Update(write)
	f.settled(m.ID, l, err)
	return err == nil, err
}

// Bury implements Store. The DeliveryID stays held by the dead letter.
// The dead letters past this config's bounds are dropped with it.
func (q *File) Bury(_ context.Context, m *Message, a Attempt) error {
	raw, err := m.recordAttempt(a)
	if err != nil {
		return err
	}
	inf, err := marshalInfo(m)
	if err != nil {
		return err
	}
	f := q.db
	buried, dropped := false, 0
	settled, err := f.settle(m, func(tx *bolt.Tx) error {
		buried, dropped = false, 0
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
		now := f.now()
		if err := putDead(tx, id, raw, inf, now); err != nil {
			return err
		}
		buried = true
		dropped, err = retain(tx, q.opts, now, BulkBatch)
		return err
	})
	if settled && buried {
		f.live.Add(-1)
		f.deadDropped.Add(int64(dropped))
	}
	return err
}

// putDead stores the message raw, of summary inf, as a dead letter
// buried at now.
func putDead(tx *bolt.Tx, id, raw, inf []byte, now time.Time) error {
	if err := tx.Bucket(bucketDead).Put(id, raw); err != nil {
		return err
	}
	if err := tx.Bucket(bucketDeadInfo).Put(id, append(timeKey(now, nil), inf...)); err != nil {
		return err
	}
	if err := tx.Bucket(bucketDeadTime).Put(timeKey(now, id), nil); err != nil {
		return err
	}
	return addDeadCount(tx, 1)
}

// unbury removes the dead letter id from the dead letters, and returns its
// info (nil if it was none).
func unbury(tx *bolt.Tx, id []byte) (*info, error) {
	dead, deadInfo := tx.Bucket(bucketDead), tx.Bucket(bucketDeadInfo)
	v := deadInfo.Get(id)
	if v == nil && dead.Get(id) == nil {
		return nil, nil
	}
	var i info
	if len(v) >= 8 {
		if err := tx.Bucket(bucketDeadTime).Delete(timeKey(keyTime(v), id)); err != nil {
			return nil, err
		}
		i, _ = decodeInfo(v[8:]) // an info that cannot be read holds no DeliveryID to release
	}
	if err := dead.Delete(id); err != nil {
		return nil, err
	}
	if err := deadInfo.Delete(id); err != nil {
		return nil, err
	}
	return &i, addDeadCount(tx, -1)
}

// dropDead deletes the dead letter id, releasing its DeliveryID, and
// reports whether there was one.
func dropDead(tx *bolt.Tx, id []byte) (bool, error) {
	i, err := unbury(tx, id)
	if err != nil || i == nil {
		return false, err
	}
	ids := tx.Bucket(bucketIDs)
	if i.DeliveryID != "" && heldBy(ids.Get([]byte(i.DeliveryID)), string(id)) {
		return true, ids.Delete([]byte(i.DeliveryID))
	}
	return true, nil
}

// retain drops, in tx, up to limit of the oldest dead letters past o's
// bounds at now, and returns how many it dropped.
func retain(tx *bolt.Tx, o Options, now time.Time, limit int) (int, error) {
	dropped := 0
	c := tx.Bucket(bucketDeadTime).Cursor()
	for dropped < limit {
		k, _ := c.First()
		if k == nil || !pastBounds(tx, o, keyTime(k), now) {
			break
		}
		k = bytes.Clone(k)
		if _, err := dropDead(tx, k[8:]); err != nil {
			return dropped, err
		}
		if err := tx.Bucket(bucketDeadTime).Delete(k); err != nil { // were the buckets to disagree
			return dropped, err
		}
		dropped++
	}
	return dropped, nil
}

// pastBounds reports whether the oldest dead letter, buried at buried, is
// past o's bounds at now.
func pastBounds(tx *bolt.Tx, o Options, buried, now time.Time) bool {
	return o.DeadMaxAge > 0 && buried.Before(now.Add(-o.DeadMaxAge)) ||
		o.DeadMaxCount > 0 && deadCount(tx) > int64(o.DeadMaxCount)
}

// dropPastBounds drops the dead letters past q's bounds, BulkBatch a transaction,
// and returns how many it dropped. It writes nothing when none is.
func (q *File) dropPastBounds() (int, error) {
	if q.opts.DeadMaxAge <= 0 && q.opts.DeadMaxCount <= 0 {
		return 0, nil
	}
	f := q.db
	total := 0
	for {
		b, release, err := f.use()
		if err != nil {
			return total, err
		}
		now := f.now()
		past := false
		err = b.View(func(tx *bolt.Tx) error {
			if k, _ := tx.Bucket(bucketDeadTime).Cursor().First(); k != nil {
				past = pastBounds(tx, q.opts, keyTime(k), now)
			}
			return nil
		})
		dropped := 0
		if err == nil && past {
			err = b.Update(func(tx *bolt.Tx) error {
				var err error
				dropped, err = retain(tx, q.opts, now, BulkBatch)
				return err
			})
		}
		release()
		f.deadDropped.Add(int64(dropped))
		total += dropped
		if err != nil || dropped < BulkBatch {
			return total, err
		}
	}
}

// inFlight is what Counts and List know of the leases: by id, true for a
// message in flight, false for one whose lease ended (pending, whatever
// its due time); and the completions waiting for their commit.
func (f *fileDB) inFlight(now time.Time) (leased map[string]bool, takes map[string]uint64, done map[string]bool) {
	f.leaseMu.Lock()
	leased = make(map[string]bool, len(f.leases))
	takes = make(map[string]uint64, len(f.leases))
	for id, l := range f.leases {
		leased[id] = l.settling || l.until.After(now)
		takes[id] = l.take
	}
	f.doneMu.Lock()
	done = make(map[string]bool, len(f.done))
	for id := range f.done {
		done[id] = true
	}
	f.doneMu.Unlock()
	f.leaseMu.Unlock()
	return leased, takes, done
}

// Counts implements Store. Completed messages whose completion waits for
// its commit are not counted.
func (q *File) Counts(context.Context) (Counts, error) {
	f := q.db
	b, release, err := f.use()
	if err != nil {
		return Counts{}, err
	}
	defer release()
	now := f.now()
	leased, _, done := f.inFlight(now)
	c := Counts{DeadDropped: f.deadDropped.Load()}
	err = b.View(func(tx *bolt.Tx) error {
		_ = tx.Bucket(bucketDue).ForEach(func(k, _ []byte) error {
			id := string(k[8:])
			live, isLeased := leased[id]
			switch {
			case done[id]:
			case live:
				c.InFlight++
			case !isLeased && keyTime(k).After(now):
				c.Scheduled++
				if c.NextDue.IsZero() {
					c.NextDue = keyTime(k)
				}
			default:
				c.Pending++
			}
			return nil
		})
		c.Dead = int(deadCount(tx))
		cur := tx.Bucket(bucketMessages).Cursor()
		for k, _ := cur.First(); k != nil; k, _ = cur.Next() {
			if !done[string(k)] {
				c.Oldest = idTime(k)
				break
			}
		}
		return nil
	})
	return c, err
}

// List implements Store: it reads the messages' infos, not the messages.
// Pending and scheduled messages are listed soonest due first, those in
// flight in the order they were taken, dead letters in the order they
// were buried.
func (q *File) List(_ context.Context, state State, limit int) ([]Summary, error) {
	switch state {
	case StatePending, StateScheduled, StateInFlight, StateDead:
	default:
		return nil, fmt.Errorf("no state %q", state)
	}
	if limit <= 0 {
		return nil, nil
	}
	f := q.db
	b, release, err := f.use()
	if err != nil {
		return nil, err
	}
	defer release()
	now := f.now()
	leased, takes, done := f.inFlight(now)
	var out []Summary
	add := func(id []byte, rec []byte, due time.Time) error {
		_, inf, _, ok := recordParts(rec)
		if !ok {
			return fmt.Errorf("message %s: a record too short", id)
		}
		s, err := summaryOf(string(id), inf, due)
		if err != nil {
			return err
		}
		out = append(out, s)
		return nil
	}
	err = b.View(func(tx *bolt.Tx) error {
		msgs := tx.Bucket(bucketMessages)
		switch state {
		case StateInFlight:
			var ids []string
			for id, live := range leased {
				if live && !done[id] {
					ids = append(ids, id)
				}
			}
			slices.SortFunc(ids, func(a, b string) int { return cmp.Compare(takes[a], takes[b]) })
			for _, id := range ids[:min(limit, len(ids))] {
				if rec := msgs.Get([]byte(id)); rec != nil {
					if err := add([]byte(id), rec, time.Time{}); err != nil {
						return err
					}
				}
			}
		case StatePending:
			c := tx.Bucket(bucketDue).Cursor()
			for k, _ := c.First(); k != nil && len(out) < limit && !keyTime(k).After(now); k, _ = c.Next() {
				id := k[8:]
				if leased[string(id)] || done[string(id)] {
					continue
				}
				if rec := msgs.Get(id); rec != nil {
					if err := add(id, rec, keyTime(k)); err != nil {
						return err
					}
				}
			}
		case StateScheduled:
			c := tx.Bucket(bucketDue).Cursor()
			for k, _ := c.Seek(timeKey(now.Add(time.Nanosecond), nil)); k != nil && len(out) < limit; k, _ = c.Next() {
				id := k[8:]
				if _, isLeased := leased[string(id)]; isLeased || done[string(id)] {
					continue
				}
				if rec := msgs.Get(id); rec != nil {
					if err := add(id, rec, keyTime(k)); err != nil {
						return err
					}
				}
			}
		case StateDead:
			deadInfo := tx.Bucket(bucketDeadInfo)
			c := tx.Bucket(bucketDeadTime).Cursor()
			for k, _ := c.First(); k != nil && len(out) < limit; k, _ = c.Next() {
				v := deadInfo.Get(k[8:])
				if len(v) < 8 {
					continue
				}
				s, err := summaryOf(string(k[8:]), v[8:], time.Time{})
				if err != nil {
					return fmt.Errorf("dead letter: %w", err)
				}
				out = append(out, s)
			}
		}
		return nil
	})
	return out, err
}

// BringForward implements Store: it reads the infos of the scheduled
// messages, BulkBatch at a time, soonest due first, and makes due now, in
// one transaction a batch, those whose last attempt keep says yes to (and
// that were not rescheduled meanwhile).
func (q *File) BringForward(ctx context.Context, keep func(Attempt) bool) (int, error) {
	f := q.db
	total := 0
	var after []byte // the last due key read
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		b, release, err := f.use()
		if err != nil {
			return total, err
		}
		now := f.now()
		leased, _, done := f.inFlight(now)
		var kept [][]byte
		read := 0
		err = b.View(func(tx *bolt.Tx) error {
			msgs := tx.Bucket(bucketMessages)
			c := tx.Bucket(bucketDue).Cursor()
			start := timeKey(now.Add(time.Nanosecond), nil)
			var k []byte
			if after != nil && bytes.Compare(after, start) >= 0 {
				if k, _ = c.Seek(after); bytes.Equal(k, after) {
					k, _ = c.Next()
				}
			} else {
				k, _ = c.Seek(start)
			}
			for ; k != nil && read < BulkBatch; k, _ = c.Next() {
				read++
				after = bytes.Clone(k)
				id := k[8:]
				if _, isLeased := leased[string(id)]; isLeased || done[string(id)] {
					continue
				}
				_, inf, _, ok := recordParts(msgs.Get(id))
				if !ok {
					continue
				}
				i, err := decodeInfo(inf)
				if err != nil {
					return fmt.Errorf("message %s: %w", id, err)
				}
				if i.Last != nil && keep(*i.Last) {
					kept = append(kept, bytes.Clone(k))
				}
			}
			return nil
		})
		moved := 0
		if err == nil && len(kept) > 0 {
			err = b.Update(func(tx *bolt.Tx) error {
				moved = 0
				msgs, due := tx.Bucket(bucketMessages), tx.Bucket(bucketDue)
				for _, k := range kept {
					id := k[8:]
					rec := msgs.Get(id)
					_, inf, raw, ok := recordParts(rec)
					if !ok || !bytes.Equal(rec[:8], k[:8]) {
						continue // settled, or scheduled anew, meanwhile
					}
					fresh := recordOf(now, inf, raw)
					if err := due.Delete(k); err != nil {
						return err
					}
					if err := msgs.Put(id, fresh); err != nil {
						return err
					}
					if err := due.Put(timeKey(now, id), nil); err != nil {
						return err
					}
					moved++
				}
				return nil
			})
		}
		release()
		if err != nil {
			return total, err
		}
		total += moved
		if moved > 0 {
			f.wake.notify()
		}
		if read < BulkBatch {
			return total, nil
		}
	}
}

// Revive implements Store.
func (q *File) Revive(_ context.Context, id string) error {
	if id == "" {
		return ErrNotFound
	}
	f := q.db
	b, release, err := f.use()
	if err != nil {
		return err
	}
	defer release()
	err = b.Update(func(tx *bolt.Tx) error {
		revived, err := revive(tx, []byte(id), f.now())
		if err == nil && !revived {
			err = ErrNotFound
		}
		return err
	})
	if err == nil {
		f.live.Add(1)
		f.wake.notify()
	}
	return err
}

// ReviveAll implements Store.
func (q *File) ReviveAll(ctx context.Context) (int, error) {
	f := q.db
	b, release, err := f.use()
	if err != nil {
		return 0, err
	}
	err = f.flush(b) // the completions waiting free room
	release()
	if err != nil {
		return 0, err
	}
	total := 0
	for ctx.Err() == nil {
		b, release, err := f.use()
		if err != nil {
			return total, err
		}
		room := f.reserve(BulkBatch, q.opts.MaxPending)
		if room == 0 {
			release()
			return total, nil
		}
		revived := 0
		err = b.Update(func(tx *bolt.Tx) error {
			revived = 0
			now := f.now()
			c := tx.Bucket(bucketDeadTime).Cursor()
			for revived < room {
				k, _ := c.First()
				if k == nil {
					break
				}
				k = bytes.Clone(k)
				ok, err := revive(tx, k[8:], now)
				if err != nil {
					return err
				}
				if !ok { // were the buckets to disagree
					if err := tx.Bucket(bucketDeadTime).Delete(k); err != nil {
						return err
					}
					continue
				}
				revived++
			}
			return nil
		})
		release()
		if err != nil {
			f.live.Add(int64(-room))
			return total, err
		}
		f.live.Add(int64(revived - room))
		total += revived
		if revived > 0 {
			f.wake.notify()
		}
		if revived < room {
			return total, nil
		}
	}
	return total, ctx.Err()
}

// revive makes the dead letter id due at now, in tx, with a new round of
// the retry schedule, and reports whether there was one. Its DeliveryID
// stays held.
func revive(tx *bolt.Tx, id []byte, now time.Time) (bool, error) {
	raw := tx.Bucket(bucketDead).Get(id)
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
	rec, err := encodeRecord(now, &m, fresh)
	if err != nil {
		return false, err
	}
	if _, err := unbury(tx, id); err != nil {
		return false, err
	}
	if err := tx.Bucket(bucketMessages).Put(id, rec); err != nil {
		return false, err
	}
	return true, tx.Bucket(bucketDue).Put(timeKey(now, id), nil)
}

// Drop implements Store. The dead letter's DeliveryID is released.
func (q *File) Drop(_ context.Context, id string) error {
	if id == "" {
		return ErrNotFound
	}
	b, release, err := q.db.use()
	if err != nil {
		return err
	}
	defer release()
	return b.Update(func(tx *bolt.Tx) error {
		dropped, err := dropDead(tx, []byte(id))
		if err == nil && !dropped {
			err = ErrNotFound
		}
		return err
	})
}

// DropAll implements Store: the oldest first, BulkBatch a transaction.
func (q *File) DropAll(ctx context.Context) (int, error) {
	total := 0
	for ctx.Err() == nil {
		b, release, err := q.db.use()
		if err != nil {
			return total, err
		}
		dropped := 0
		err = b.Update(func(tx *bolt.Tx) error {
			dropped = 0
			c := tx.Bucket(bucketDeadTime).Cursor()
			for dropped < BulkBatch {
				k, _ := c.First()
				if k == nil {
					break
				}
				k = bytes.Clone(k)
				if _, err := dropDead(tx, k[8:]); err != nil {
					return err
				}
				if err := tx.Bucket(bucketDeadTime).Delete(k); err != nil {
					return err
				}
				dropped++
			}
			return nil
		})
		release()
		if err != nil {
			return total, err
		}
		total += dropped
		if dropped < BulkBatch {
			return total, nil
		}
	}
	return total, ctx.Err()
}

// Compact implements Store: the file is copied, without its free pages,
// into a new file that replaces it, while every other use of the file
// (enqueues included) waits. The completions waiting are committed first.
// Messages in flight stay so: their leases are in memory.
func (q *File) Compact(context.Context) (before, after int64, err error) {
	f := q.db
	_, release, err := f.use()
	if err != nil {
		return 0, 0, err
	}
	release()
	f.swap.Lock()
	defer f.swap.Unlock()
	if f.db == nil {
		return 0, 0, errClosed
	}
	if err := f.flush(f.db); err != nil {
		return 0, 0, err
	}
	db, before, after, err := compact(f.db, f.path)
	f.db = db // nil if it could not be opened again: the next use tries
	if err != nil {
		return before, after, fmt.Errorf("compacting %s: %w", f.path, err)
	}
	f.logger.Info("compacted the queue file", zap.String("path", f.path), zap.Int64("before", before), zap.Int64("after", after))
	return before, after, nil
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
