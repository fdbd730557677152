package queuestore

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"
)

// info is what List shows of a message, which both engines keep apart
// from its headers and body (the file engine at the head of each record
// and with each dead letter, Redis in its info and dead_info hashes), so
// that listing decodes no body.
type info struct {
	DeliveryID string    `json:"delivery_id,omitempty"`
	Received   time.Time `json:"received"`
	Attempts   int       `json:"attempts"`
	Tries      int       `json:"tries"`
	Last       *Attempt  `json:"last,omitempty"`
}

// infoOf returns m's info.
func infoOf(m *Message) info {
	i := info{DeliveryID: m.DeliveryID, Received: m.Received, Attempts: len(m.Attempts), Tries: m.Tries}
	if n := len(m.Attempts); n > 0 {
		last := m.Attempts[n-1]
		i.Last = &last
	}
	return i
}

// marshalInfo returns m's info as JSON.
func marshalInfo(m *Message) ([]byte, error) {
	return json.Marshal(infoOf(m))
}

// decodeInfo reads an info. It also reads the summaries of dead letters
// that the version before kept (the letter without headers and body, its
// attempts listed): Redis may hold some.
func decodeInfo(raw []byte) (info, error) {
	var v struct {
		DeliveryID string          `json:"delivery_id"`
		Received   time.Time       `json:"received"`
		Attempts   json.RawMessage `json:"attempts"`
		Tries      int             `json:"tries"`
		Last       *Attempt        `json:"last"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return info{}, err
	}
	i := info{DeliveryID: v.DeliveryID, Received: v.Received, Tries: v.Tries, Last: v.Last}
	switch {
	case len(v.Attempts) > 0 && v.Attempts[0] == '[':
		var all []Attempt
		if err := json.Unmarshal(v.Attempts, &all); err != nil {
			return info{}, err
		}
		i.Attempts = len(all)
		if len(all) > 0 {
			i.Last = &all[len(all)-1]
		}
	case len(v.Attempts) > 0:
		if err := json.Unmarshal(v.Attempts, &i.Attempts); err != nil {
			return info{}, err
		}
	}
	return i, nil
}

// summary is the message id, of info i, as List shows it.
func (i info) summary(id string, due time.Time) Summary {
	return Summary{ID: id, DeliveryID: i.DeliveryID, Received: i.Received, Due: due, Attempts: i.Attempts, Tries: i.Tries, Last: i.Last}
}

// summaryOf decodes the info raw of message id into its summary.
func summaryOf(id string, raw []byte, due time.Time) (Summary, error) {
	i, err := decodeInfo(raw)
	if err != nil {
		return Summary{}, fmt.Errorf("message %s: %w", id, err)
	}
	return i.summary(id, due), nil
}

// recordPostponed adds an attempt to m's history without counting it in
// Tries (Postpone), and returns m as the engines store it.
func (m *Message) recordPostponed(a Attempt) ([]byte, error) {
	m.Attempts = append(m.Attempts, a)
	return json.Marshal(m)
}

// maxTake bounds the messages one Take returns.
const maxTake = 1000

// waker is the channel Store.Wait returns: closed, and replaced, when a
// message may have become due; and the timer that closes it at the next
// time one is known to.
type waker struct {
	mu    sync.Mutex
	ch    chan struct{}
	timer *time.Timer
	// at is when the timer fires (zero: it is not armed).
	at time.Time
}

func newWaker() *waker {
	return &waker{ch: make(chan struct{})}
}

// wait returns the channel, and when the timer fires (zero: not armed).
func (w *waker) wait() (<-chan struct{}, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ch, w.at
}

// notify wakes whoever waits.
func (w *waker) notify() {
	w.mu.Lock()
	defer w.mu.Unlock()
	close(w.ch)
	w.ch = make(chan struct{})
}

// wakeAt makes sure the waiters are woken at t (now being the clock's
// reading that t is compared with): at once if t is not after now, else
// by the timer, armed anew if it was not armed for t or sooner.
func (w *waker) wakeAt(t, now time.Time) {
	d := t.Sub(now)
	if d <= 0 {
		w.notify()
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.at.IsZero() && !t.Before(w.at) {
		return
	}
	if w.timer != nil {
		w.timer.Stop()
	}
	var timer *time.Timer
	timer = time.AfterFunc(d, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.timer != timer {
			return // stopped and replaced meanwhile
		}
		w.timer, w.at = nil, time.Time{}
		close(w.ch)
		w.ch = make(chan struct{})
	})
	w.timer, w.at = timer, t
}

// stop disarms the timer.
func (w *waker) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.timer != nil {
		w.timer.Stop()
	}
	w.timer, w.at = nil, time.Time{}
}

// Completions are committed together (see Store.Complete): once
// completeBatch wait, or completeDelay after the first of them. Either way
// one commit (one fsync), or one script, for many deliveries; meanwhile
// what they completed is neither taken, counted nor listed, and its
// DeliveryID counts as delivered.
const (
	completeBatch = 256
	completeDelay = 10 * time.Millisecond
)

// batcher runs an engine's flushes of its completions, as above, until
// halt; a flush that fails is tried again a second later.
type batcher struct {
	// kick says that a completion waits; full that completeBatch do.
	kick, full chan struct{}
	stop, done chan struct{}
}

func newBatcher() *batcher {
	return &batcher{kick: make(chan struct{}, 1), full: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
}

// added tells the batcher that waiting completions wait.
func (b *batcher) added(waiting int) {
	signal(b.kick)
	if waiting >= completeBatch {
		signal(b.full)
	}
}

// run calls flush for each batch until halt.
func (b *batcher) run(flush func() error) {
	defer close(b.done)
	for {
		select {
		case <-b.stop:
			return
		case <-b.kick:
		}
		timer := time.NewTimer(completeDelay)
		select {
		case <-b.stop:
			timer.Stop()
			return
		case <-b.full:
		case <-timer.C:
		}
		timer.Stop()
		if flush() != nil {
			select {
			case <-b.stop:
				return
			case <-time.After(time.Second):
			}
			signal(b.kick)
		}
	}
}

// halt stops run, and returns once it has.
func (b *batcher) halt() {
	close(b.stop)
	<-b.done
}

// signal sends on ch, made with room for one, unless a send waits there.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
