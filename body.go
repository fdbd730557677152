package openaiwebhook

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"sync/atomic"
)

// chunkSize is the unit in which bodies are buffered. Pooled fixed-size
// chunks keep the bytes allocated per request independent of body size: a
// growing slice would copy the body again at every doubling.
const chunkSize = 32 << 10

var chunkPool = sync.Pool{New: func() any { return new([chunkSize]byte) }}

// chunkListPool recycles the lists of chunks, so a long body does not cost a
// longer list each time.
var chunkListPool = sync.Pool{New: func() any { return new([][]byte) }}

// heapBodyMax is the largest verified body moved out of its pooled chunk to
// the heap (see moveToHeap): up to it, the copy costs less than holding the
// chunk until the request ends (BenchmarkStep: move-to-heap against
// release-at-request-end).
const heapBodyMax = 2 << 10

var (
	errBodyTooLarge = errors.New("body exceeds max_size")
	errBodyReleased = errors.New("verified body read after the request finished")
	errOverloaded   = errors.New("max_unverified bytes are already held for bodies not yet verified")
)

// budget bounds the bytes held, across requests, in chunks of bodies that
// are not verified yet: anyone can send those, with no secret.
type budget struct {
	limit int64
	used  atomic.Int64
}

// reserve takes n bytes of the budget if they are free.
func (b *budget) reserve(n int64) bool {
	for {
		used := b.used.Load()
		if used+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

func (b *budget) free(n int64) { b.used.Add(-n) }

// bufferedBody is a request body read in full, held in pooled chunks until
// release, or on the heap once moveToHeap moved it there. The request must be
// verified before any byte goes upstream, so the whole body is held; readers
// made by newReader let the transport rewind it.
type bufferedBody struct {
	mu sync.RWMutex // excludes readers from release
	// list is the pooled list whose backing array chunks is; nil once the
	// body is on the heap.
	list *[][]byte
	// chunks are pooled chunks, each chunkSize long, or the body's one heap
	// copy (onHeap[0]).
	chunks   [][]byte
	onHeap   [1][]byte
	size     int64
	released bool
	budget   *budget
	reserved int64 // bytes of budget held until verified or release
}

// bufferBody reads src to its end into b, a zero bufferedBody (the
// caller's, so that it costs no allocation of its own), also writing every
// byte to hash. It takes chunks as bytes arrive, each reserved from budget first,
// so what a sender makes the gateway hold grows with what it sent, never
// with what it announced; errOverloaded means the budget ran out (before
// any byte was read, if it had no room for the first chunk). It reads at
// most limit+1 bytes and returns errBodyTooLarge when the body is longer
// than limit.
func bufferBody(b *bufferedBody, src io.Reader, limit int64, hash io.Writer, budget *budget) error {
	b.list, b.budget = chunkListPool.Get().(*[][]byte), budget
	b.chunks = (*b.list)[:0]
	for {
		if b.size == limit {
			// Only the end may follow; a byte more is refused unbuffered.
			if err := expectEOF(src); err != nil {
				b.release()
				return err
			}
			return nil
		}
		off := int(b.size % chunkSize)
		if b.size == int64(len(b.chunks))*chunkSize { // the last chunk is full
			if !budget.reserve(chunkSize) {
				b.release()
				return errOverloaded
			}
			b.reserved += chunkSize
			b.chunks = append(b.chunks, chunkPool.Get().(*[chunkSize]byte)[:])
		}
		chunk := b.chunks[len(b.chunks)-1]
		room := min(int64(chunkSize-off), limit-b.size)
		n, err := src.Read(chunk[off : off+int(room)])
		if n > 0 {
			_, _ = hash.Write(chunk[off : off+n])
			b.size += int64(n)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			b.release()
			return err
		}
	}
}

// expectEOF reads src, which must have nothing left: errBodyTooLarge if it
// has.
func expectEOF(src io.Reader) error {
	var probe [1]byte
	for {
		n, err := src.Read(probe[:])
		if n > 0 {
			return errBodyTooLarge
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// verified hands the body's share of the budget back: a verified body was
// sent by a holder of the secret, and is bounded by max_size alone.
func (b *bufferedBody) verified() {
	b.budget.free(b.reserved)
	b.reserved = 0
}

// moveToHeap moves a verified body of at most heapBodyMax bytes out of its
// pooled chunk to the heap, gives the chunk back now, and reports whether it
// did. The body then lives as long as anything refers to it, and needs no
// release. Only for a body nothing reads yet.
func (b *bufferedBody) moveToHeap() bool {
	if b.size > heapBodyMax {
		return false
	}
	b.onHeap[0] = bytes.Clone(b.chunks[0][:b.size])
	b.returnChunks()
	b.chunks = b.onHeap[:]
	return true
}

// view calls fn with the whole body in one slice, and returns what fn
// returns, or false once the body is released. The slice is the chunk itself
// for a body that fits in one (most events), a copy otherwise; it is valid
// only during fn.
func (b *bufferedBody) view(fn func([]byte) bool) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	switch {
	case b.released:
		return false
	case b.size <= chunkSize:
		var raw []byte
		if len(b.chunks) > 0 {
			raw = b.chunks[0][:b.size]
		}
		return fn(raw)
	}
	raw := make([]byte, 0, b.size)
	for off := int64(0); off < b.size; off += chunkSize {
		raw = append(raw, b.chunks[off/chunkSize][:min(chunkSize, b.size-off)]...)
	}
	return fn(raw)
}

// all yields the whole body, chunk by chunk: an iter.Seq. The chunks are
// valid only until yield returns.
func (b *bufferedBody) all(yield func([]byte) bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	for off := int64(0); off < b.size; off += chunkSize {
		if !yield(b.chunks[off/chunkSize][:min(chunkSize, b.size-off)]) {
			return
		}
	}
}

// newReader returns a reader over the whole body, from the start.
func (b *bufferedBody) newReader() io.ReadCloser {
	return &bodyReader{body: b}
}

// release returns the chunks to the pool and any budget still held. Readers
// still held elsewhere (a transport may read after the handler returns) get
// errBodyReleased.
func (b *bufferedBody) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.released {
		return
	}
	b.released = true
	b.returnChunks()
}

// returnChunks gives the body's pooled chunks back, and any budget still held.
func (b *bufferedBody) returnChunks() {
	b.budget.free(b.reserved)
	b.reserved = 0
	if b.list != nil {
		for _, c := range b.chunks {
			chunkPool.Put((*[chunkSize]byte)(c))
		}
		clear(b.chunks)
		*b.list = b.chunks[:0]
		chunkListPool.Put(b.list)
	}
	b.chunks, b.list = nil, nil
}

type bodyReader struct {
	body *bufferedBody
	off  int64
}

func (r *bodyReader) Read(p []byte) (int, error) {
	b := r.body
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.released {
		return 0, errBodyReleased
	}
	if r.off >= b.size {
		return 0, io.EOF
	}
	start := r.off % chunkSize
	end := min(chunkSize, start+(b.size-r.off))
	n := copy(p, b.chunks[r.off/chunkSize][start:end])
	r.off += int64(n)
	return n, nil
}

// Close does nothing: the handler releases the body once the request is done.
func (r *bodyReader) Close() error { return nil }

// discard reads src to its end, at most limit bytes, into a pooled chunk
// that is overwritten each time, so it holds nothing. beforeRead is called
// before each read (to move a deadline). It reports whether src ended.
func discard(src io.Reader, limit int64, beforeRead func()) bool {
	scratch := chunkPool.Get().(*[chunkSize]byte)
	defer chunkPool.Put(scratch)
	for read := int64(0); read <= limit; {
		beforeRead()
		n, err := src.Read(scratch[:min(chunkSize, limit+1-read)])
		read += int64(n)
		if err == io.EOF {
			return read <= limit
		}
		if err != nil {
			return false
		}
	}
	return false
}
