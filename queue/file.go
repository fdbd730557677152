package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
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
type File struct {
	// Path is the file. Default: openai-webhook.queue in Caddy's data
	// directory.
	Path string `json:"path,omitempty"`

	db         *fileDB
	maxPending int64
}

// CaddyModule returns the Caddy module information.
func (File) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.openai_webhook.queue_stores.file",
		New: func() caddy.Module { return new(File) },
	}
}

// Buckets: live messages (not dead) by id; the due index, by due time and
// id, of live messages not in flight; the lease index, by lease end and id,
// of messages in flight; dead letters by id.
var (
	bucketMessages = []byte("messages")
	bucketDue      = []byte("due")
	bucketLeases   = []byte("leases")
	bucketDead     = []byte("dead")
)

// files keeps each open file across config reloads.
var files = caddy.NewUsagePool()

// fileDB is one queue file, shared by the handlers that use it, opened on
// first use.
type fileDB struct {
	path   string
	opened atomic.Pointer[bolt.DB]
	mu     sync.Mutex // opening
	// live counts the messages not dead, for max_pending.
	live   atomic.Int64
	seq    atomic.Uint64
	logger *zap.Logger
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

// Provision opens the file, or takes a share of it if it is open.
func (q *File) Provision(ctx caddy.Context) error {
	if q.Path == "" {
		q.Path = filepath.Join(caddy.AppDataDir(), "openai-webhook.queue")
	}
	path, err := filepath.Abs(q.Path)
	if err != nil {
		return fmt.Errorf("path: %w", err)
	}
	q.Path = path
	shared, _, err := files.LoadOrNew(path, func() (caddy.Destructor, error) { return &fileDB{path: path, logger: ctx.Logger()}, nil })
	if err != nil {
		return fmt.Errorf("path: %w", err)
	}
	q.db = shared.(*fileDB)
	return nil
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

// open opens the file and makes what a dead process had in flight due
// again.
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
		for _, name := range [][]byte{bucketMessages, bucketDue, bucketLeases, bucketDead} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		now := time.Now()
		leases := tx.Bucket(bucketLeases)
		var stale [][]byte
		_ = leases.ForEach(func(k, _ []byte) error {
			stale = append(stale, bytes.Clone(k))
			return nil
		})
		for _, k := range stale {
			if err := leases.Delete(k); err != nil {
				return err
			}
			if err := tx.Bucket(bucketDue).Put(timeKey(now, k[8:]), nil); err != nil {
				return err
			}
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

// Open implements Store.
func (q *File) Open(maxPending int) error {
	q.maxPending = int64(maxPending)
	return nil
}

// Name implements Store.
func (q *File) Name() string { return "file:" + q.Path }

// newID returns an id ordered by time: the nanosecond, then a counter.
func (f *fileDB) newID(now time.Time) string {
	var b [12]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixNano()))
	binary.BigEndian.PutUint32(b[8:], uint32(f.seq.Add(1)))
	return hex.EncodeToString(b[:])
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
		if live >= q.maxPending {
			return ErrFull
		}
		if f.live.CompareAndSwap(live, live+1) {
			break
		}
	}
	now := time.Now()
	m.ID, m.Received, m.Due = f.newID(now), now, now
	raw, err := json.Marshal(m)
	if err == nil {
		// Batch: concurrent enqueues share one commit, one fsync.
		err = b.Batch(func(tx *bolt.Tx) error {
			if err := tx.Bucket(bucketMessages).Put([]byte(m.ID), raw); err != nil {
				return err
			}
			return tx.Bucket(bucketDue).Put(timeKey(now, []byte(m.ID)), nil)
		})
	}
	if err != nil {
		f.live.Add(-1)
		return err
	}
	return nil
}

// Take implements Store.
func (q *File) Take(_ context.Context, lease time.Duration) (*Message, error) {
	b, err := q.db.bolt()
	if err != nil {
		return nil, err
	}
	var m *Message
	err = b.Update(func(tx *bolt.Tx) error {
		now := time.Now()
		due, leases, msgs := tx.Bucket(bucketDue), tx.Bucket(bucketLeases), tx.Bucket(bucketMessages)
		// Leases that ended: their worker died without settling.
		c := leases.Cursor()
		for k, _ := c.First(); k != nil && !keyTime(k).After(now); k, _ = c.First() {
			id := bytes.Clone(k[8:])
			if err := c.Delete(); err != nil {
				return err
			}
			if err := due.Put(timeKey(now, id), nil); err != nil {
				return err
			}
		}
		c = due.Cursor()
		for k, _ := c.First(); k != nil && !keyTime(k).After(now); k, _ = c.First() {
			id := bytes.Clone(k[8:])
			if err := c.Delete(); err != nil {
				return err
			}
			raw := msgs.Get(id)
			if raw == nil {
				continue // settled meanwhile (completed by a take whose lease had ended)
			}
			m = new(Message)
			if err := json.Unmarshal(raw, m); err != nil {
				return err
			}
			leaseKey := timeKey(now.Add(lease), id)
			m.entry = string(leaseKey)
			return leases.Put(leaseKey, nil)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// endLease removes the lease of m's take, in tx, and reports whether the
// take still held it: a lease that ended was removed by the Take that made
// the message due again, and a later one is not this take's. Lease keys
// are unique: a take-over comes after the previous lease's end, so its own
// ends later.
func endLease(tx *bolt.Tx, m *Message) (bool, error) {
	leases := tx.Bucket(bucketLeases)
	if leases.Get([]byte(m.entry)) == nil {
		return false, nil
	}
	return true, leases.Delete([]byte(m.entry))
}

// Complete implements Store.
func (q *File) Complete(_ context.Context, m *Message, a Attempt) error {
	b, err := q.db.bolt()
	if err != nil {
		return err
	}
	f := q.db
	removed := false
	err = b.Update(func(tx *bolt.Tx) error {
		if _, err := endLease(tx, m); err != nil {
			return err
		}
		msgs := tx.Bucket(bucketMessages)
		removed = msgs.Get([]byte(m.ID)) != nil
		return msgs.Delete([]byte(m.ID))
	})
	if err == nil && removed {
		f.live.Add(-1)
	}
	return err
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
	return b.Update(func(tx *bolt.Tx) error {
		if held, err := endLease(tx, m); err != nil || !held {
			return err
		}
		msgs := tx.Bucket(bucketMessages)
		if msgs.Get([]byte(m.ID)) == nil {
			return nil // settled meanwhile: it stays settled
		}
		if err := msgs.Put([]byte(m.ID), raw); err != nil {
			return err
		}
		return tx.Bucket(bucketDue).Put(timeKey(next, []byte(m.ID)), nil)
	})
}

// Bury implements Store.
func (q *File) Bury(_ context.Context, m *Message, a Attempt) error {
	b, err := q.db.bolt()
	if err != nil {
		return err
	}
	f := q.db
	raw, err := m.recordAttempt(a)
	if err != nil {
		return err
	}
	buried := false
	err = b.Update(func(tx *bolt.Tx) error {
		if held, err := endLease(tx, m); err != nil || !held {
			return err
		}
		msgs := tx.Bucket(bucketMessages)
		if msgs.Get([]byte(m.ID)) == nil {
			return nil // settled meanwhile: it stays settled
		}
		if err := msgs.Delete([]byte(m.ID)); err != nil {
			return err
		}
		buried = true
		return tx.Bucket(bucketDead).Put([]byte(m.ID), raw)
	})
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
	var c Counts
	err = b.View(func(tx *bolt.Tx) error {
		now := time.Now()
		_ = tx.Bucket(bucketDue).ForEach(func(k, _ []byte) error {
			if keyTime(k).After(now) {
				c.Scheduled++
			} else {
				c.Pending++
			}
			return nil
		})
		c.InFlight = tx.Bucket(bucketLeases).Stats().KeyN
		c.Dead = tx.Bucket(bucketDead).Stats().KeyN
		if k, v := tx.Bucket(bucketMessages).Cursor().First(); k != nil {
			var m Message
			if err := json.Unmarshal(v, &m); err != nil {
				return err
			}
			c.Oldest = m.Received
		}
		return nil
	})
	return c, err
}

// Dead implements Store.
func (q *File) Dead(_ context.Context, limit int) ([]Message, error) {
	b, err := q.db.bolt()
	if err != nil {
		return nil, err
	}
	var out []Message
	err = b.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketDead).Cursor()
		for k, v := c.First(); k != nil && len(out) < limit; k, v = c.Next() {
			var m Message
			if err := json.Unmarshal(v, &m); err != nil {
				return err
			}
			m.Header, m.Body = nil, nil
			out = append(out, m)
		}
		return nil
	})
	return out, err
}

// Revive implements Store.
func (q *File) Revive(_ context.Context, id string) (int, error) {
	b, err := q.db.bolt()
	if err != nil {
		return 0, err
	}
	f := q.db
	revived := 0
	err = b.Update(func(tx *bolt.Tx) error {
		dead := tx.Bucket(bucketDead)
		var ids [][]byte
		if id != "" {
			if dead.Get([]byte(id)) == nil {
				return ErrNotFound
			}
			ids = [][]byte{[]byte(id)}
		} else {
			_ = dead.ForEach(func(k, _ []byte) error {
				ids = append(ids, bytes.Clone(k))
				return nil
			})
		}
		now := time.Now()
		for _, k := range ids {
			var m Message
			if err := json.Unmarshal(dead.Get(k), &m); err != nil {
				return err
			}
			m.Due, m.Tries = now, 0
			raw, err := json.Marshal(m)
			if err != nil {
				return err
			}
			if err := dead.Delete(k); err != nil {
				return err
			}
			if err := tx.Bucket(bucketMessages).Put(k, raw); err != nil {
				return err
			}
			if err := tx.Bucket(bucketDue).Put(timeKey(now, k), nil); err != nil {
				return err
			}
		}
		revived = len(ids)
		return nil
	})
	if err == nil {
		f.live.Add(int64(revived))
	}
	return revived, err
}

// Drop implements Store.
func (q *File) Drop(_ context.Context, id string) error {
	b, err := q.db.bolt()
	if err != nil {
		return err
	}
	return b.Update(func(tx *bolt.Tx) error {
		dead := tx.Bucket(bucketDead)
		if dead.Get([]byte(id)) == nil {
			return ErrNotFound
		}
		return dead.Delete([]byte(id))
	})
}

// Interface guards
var (
	_ Store              = (*File)(nil)
	_ caddy.Provisioner  = (*File)(nil)
	_ caddy.CleanerUpper = (*File)(nil)
)

// UnmarshalCaddyfile sets up the file store from Caddyfile tokens, within
// openai_webhook's queue block. Syntax:
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
